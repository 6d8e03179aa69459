// The architecture details of Hugging Face's Llama, Qwen2, Qwen3 and
// Qwen3-MoE in the language-model components (core/components.hpp dims,
// nn/components.hpp math): q/k/v biases, per-head q/k RMSNorm, rope_theta,
// rms_norm_eps, tied embeddings, the Qwen3-MoE router with and without
// norm_topk_prob, max_position_embeddings.
//
// Each configuration runs the training forward (fp32, parameters handed in as
// views of a flat buffer with direct gradients, as FSDP hands them) against
// `ref`: the published definitions written out plainly in at:: ops in double,
// reading the parameters by their Hugging Face names. Loss, logits and every
// parameter's gradient agree within 1e-5 relative. The defaults reproduce the
// code before these options bit for bit (`before`: the old block math).
// torch first: doctest's CHECK must replace c10's one-argument CHECK
#include <torch/torch.h>
#include <doctest/doctest.h>

#include <veomni/core/flops.hpp>
#include <veomni/models/zoo.hpp>
#include <veomni/nn.hpp>
#include <veomni/nn/generate.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

using namespace veomni;
using namespace veomni::nn;

namespace {

using moe_lm = graph<nodes<node<"lm", moe_text_decoder>>>;

// ---- the reference: Hugging Face's definitions, in double ------------------------------

namespace ref {
using T = at::Tensor;
using named = std::map<std::string, T>;

// LlamaRMSNorm / Qwen3RMSNorm: x * rsqrt(mean(x^2) + eps) * weight
T rms(const T& x, const T& w, double eps) { return x * (x.pow(2).mean(-1, true) + eps).rsqrt() * w; }

T rotate_half(const T& x) {
  const int64_t h = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}
// x [T, H, D] at positions pos [T]: inv_freq = 1 / theta^(2i/D), emb = cat(freqs, freqs),
// x cos(emb) + rotate_half(x) sin(emb)
T apply_rope(const T& x, const T& pos, double theta) {
  const int64_t d = x.size(-1);
  const T inv = 1.0 / at::pow(theta, at::arange(0, d, 2, at::kDouble) / static_cast<double>(d));
  const T freqs = pos.to(at::kDouble).unsqueeze(1) * inv.unsqueeze(0);
  const T emb = at::cat({freqs, freqs}, -1).unsqueeze(1);
  return x * emb.cos() + rotate_half(x) * emb.sin();
}
// causal attention per sample, kv heads repeated for grouped queries
T attention(const T& q, const T& k, const T& v, const std::vector<int64_t>& lens) {
  const int64_t g = q.size(1) / k.size(1), d = q.size(2);
  std::vector<T> outs;
  int64_t at = 0;
  for (int64_t len : lens) {
    const T qs = q.narrow(0, at, len).transpose(0, 1);  // [H, L, D]
    const T ks = k.narrow(0, at, len).transpose(0, 1).repeat_interleave(g, 0);
    const T vs = v.narrow(0, at, len).transpose(0, 1).repeat_interleave(g, 0);
    T s = at::matmul(qs, ks.transpose(1, 2)) / std::sqrt(static_cast<double>(d));
    s = s.masked_fill(at::ones({len, len}, at::kBool).triu(1), -INFINITY);
    outs.push_back(at::matmul(s.softmax(-1), vs).transpose(0, 1));  // [L, H, D]
    at += len;
  }
  return at::cat(outs, 0);
}
T swiglu(const T& x, const T& gate, const T& up, const T& down) {
  return at::matmul(at::silu(at::matmul(x, gate.t())) * at::matmul(x, up.t()), down.t());
}

struct options {
  int64_t layers, heads, kv_heads, head_dim;
  bool qkv_bias, qk_norm, tied;
  double theta, eps;
  // MoE (experts > 0)
  int64_t experts = 0, top_k = 0;
  bool norm_topk_prob = true;
};

struct result {
  T logits;  // [T, V]
  T loss;    // summed over targets != -100
};

// Qwen2/Qwen3(-MoE)/Llama forward over packed samples of lengths `lens`.
result forward(const named& p, const options& o, const T& tokens, const T& targets, const std::vector<int64_t>& lens) {
  std::vector<int64_t> pos_v;
  for (int64_t l : lens)
    for (int64_t i = 0; i < l; ++i) pos_v.push_back(i);
  const T pos = at::tensor(pos_v, at::kLong);
  const int64_t t = tokens.size(0);
  T x = p.at("model.embed_tokens.weight").index_select(0, tokens);
  for (int64_t l = 0; l < o.layers; ++l) {
    const std::string b = "model.layers." + std::to_string(l) + ".";
    auto w = [&](const std::string& n) { return p.at(b + n); };
    const T h = rms(x, w("input_layernorm.weight"), o.eps);
    auto proj = [&](const char* n, int64_t heads) {
      T y = at::matmul(h, w(std::string("self_attn.") + n + "_proj.weight").t());
      if (o.qkv_bias) y = y + w(std::string("self_attn.") + n + "_proj.bias");
      return y.view({t, heads, o.head_dim});
    };
    T q = proj("q", o.heads), k = proj("k", o.kv_heads);
    const T v = proj("v", o.kv_heads);
    if (o.qk_norm) {
      q = rms(q, w("self_attn.q_norm.weight"), o.eps);
      k = rms(k, w("self_attn.k_norm.weight"), o.eps);
    }
    q = apply_rope(q, pos, o.theta);
    k = apply_rope(k, pos, o.theta);
    x = x + at::matmul(attention(q, k, v, lens).reshape({t, o.heads * o.head_dim}), w("self_attn.o_proj.weight").t());
    const T h2 = rms(x, w("post_attention_layernorm.weight"), o.eps);
    if (o.experts == 0) {
      x = x + swiglu(h2, w("mlp.gate_proj.weight"), w("mlp.up_proj.weight"), w("mlp.down_proj.weight"));
    } else {  // Qwen3MoeSparseMoeBlock: softmax, top-k, optional renormalisation, weighted sum of experts
      const T probs = at::matmul(h2, w("mlp.gate.weight").t()).softmax(-1);
      auto [top, idx] = probs.topk(o.top_k, -1);
      if (o.norm_topk_prob) top = top / top.sum(-1, true);
      T y = at::zeros_like(h2);
      for (int64_t e = 0; e < o.experts; ++e) {
        const T weight = (top * idx.eq(e).to(at::kDouble)).sum(-1, true);  // [T, 1]: 0 where not routed
        // HF's experts.{e}.gate_proj.weight is veomni's stacked experts.gate_proj[e]
        y = y + weight * swiglu(h2, w("mlp.experts.gate_proj")[e], w("mlp.experts.up_proj")[e],
                                w("mlp.experts.down_proj")[e]);
      }
      x = x + y;
    }
  }
  x = rms(x, p.at("model.norm.weight"), o.eps);
  const T head = o.tied ? p.at("model.embed_tokens.weight") : p.at("lm_head.weight");
  const T logits = at::matmul(x, head.t());
  const T valid = targets.ne(-100);
  const T safe = at::where(valid, targets, at::zeros_like(targets));
  const T nll = logits.logsumexp(-1) - logits.gather(1, safe.unsqueeze(1)).squeeze(1);
  return {logits, (nll * valid.to(at::kDouble)).sum()};
}
}  // namespace ref

// ---- the training forward on flat buffers -------------------------------------------------

// Each unit one flat fp32 leaf; the model sees split_flat views with direct
// gradients (the path of parallel/'s gathered units): a tied table's two
// uses meet in one place of the flat gradient.
template <Model G>
struct flat_units : unit_source {
  std::vector<unit_id> ids;
  std::vector<at::Tensor> flats;
  std::vector<std::vector<std::vector<int64_t>>> shapes;
  std::vector<std::vector<param_spec>> specs;

  // from local_params: normal weights x2 (sharper attention and routing),
  // biases and norm weights random so that each one matters
  flat_units(const typename G::dims& d, uint64_t seed) {
    local_params<G> p(d, seed, at::kFloat);
    at::manual_seed(seed + 1);
    for (const unit_id& u : model_units<G>(d)) {
      std::vector<at::Tensor> parts;
      ids.push_back(u);
      specs.push_back(unit_specs<G>(d, u.node, u.block));
      shapes.emplace_back();
      const tensors ts = p.unit(u);
      for (std::size_t i = 0; i < ts.size(); ++i) {
        const auto& s = specs.back()[i];
        at::Tensor t = ts[i].detach().clone();
        if (s.init == init_kind::normal) t.mul_(2.0);
        if (s.init == init_kind::zeros) t = 0.3 * at::randn_like(t);
        if (s.init == init_kind::ones) t = 1.0 + 0.3 * at::randn_like(t);
        parts.push_back(t.reshape({-1}));
        shapes.back().push_back(s.shape);
      }
      flats.push_back(at::cat(parts).set_requires_grad(true));
    }
  }
  tensors unit(const unit_id& u) override {
    for (std::size_t i = 0; i < ids.size(); ++i)
      if (ids[i] == u) return split_flat(flats[i], shapes[i], /*direct_grads=*/true);
    TORCH_CHECK(false, "flat_units: no unit");
  }
  // name (without the node's "lm." prefix) -> a double copy of the parameter, or of its gradient
  ref::named by_name(bool grads) const {
    ref::named out;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const at::Tensor src = grads ? flats[i].grad() : flats[i].detach();
      REQUIRE(src.defined());
      const auto views = split_flat(src, shapes[i]);
      for (std::size_t j = 0; j < views.size(); ++j)
        out[specs[i][j].name.substr(3)] = views[j].to(at::kDouble).detach();
    }
    return out;
  }
};

struct packed {
  std::vector<int64_t> lens;
  batch b;
};
packed two_samples(int64_t vocab, uint64_t seed, std::vector<int64_t> lens = {7, 10}) {
  packed p{lens, {}};
  int64_t t = 0;
  std::vector<int64_t> cu{0}, pos;
  for (int64_t l : lens) {
    t += l;
    cu.push_back(t);
    for (int64_t i = 0; i < l; ++i) pos.push_back(i);
  }
  at::manual_seed(seed);
  p.b.tokens = at::randint(vocab, {t}, at::kLong);
  p.b.targets = at::roll(p.b.tokens, -1).clone();
  for (std::size_t s = 1; s < cu.size(); ++s) p.b.targets[cu[s] - 1] = -100;  // no target across samples
  p.b.targets[2] = -100;
  p.b.cu_seqlens = at::tensor(cu, at::kLong);
  p.b.position_ids = at::tensor(pos, at::kLong);
  return p;
}

double rel(const at::Tensor& got, const at::Tensor& want) {
  const double scale = want.abs().max().item<double>();
  return (got.to(at::kDouble) - want).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

template <class D>
ref::options options_of(const D& d) {
  ref::options o{d.layers, d.heads, d.kv_heads, d.head_dim, d.qkv_bias, d.qk_norm, d.tie_word_embeddings,
                 d.rope_theta, d.rms_norm_eps};
  if constexpr (std::is_same_v<D, moe_text_decoder::dims>) {
    o.experts = d.experts;
    o.top_k = d.top_k;
    o.norm_topk_prob = d.norm_topk_prob;
  }
  return o;
}

struct differences {
  double loss = 0, logits = 0, grads = 0;
};

// The training forward and backward (fp32) of a one-node model G against ref (double).
template <Model G>
differences against_reference(const typename G::dims& d, uint64_t seed) {
  using C = typename G::template component_at<0>;
  const auto& lm = veomni::get<0>(d);
  flat_units<G> units(d, seed);
  const packed p = two_samples(lm.vocab, seed);
  context ctx;
  ctx.data = &p.b;
  const port_map out = forward<G>(d, units, ctx);
  REQUIRE(ctx.losses.size() == 1);
  const at::Tensor loss = ctx.losses[0].sum;
  const tensors root = units.unit({0, -1});
  const at::Tensor logits = at::matmul(out.at("lm.hidden"), impl<C>::head_weight(lm, root).t());
  loss.backward();  // the auxiliary load-balancing loss is not the reference's

  ref::named w = units.by_name(false);
  CHECK(w.count("lm_head.weight") == !lm.tie_word_embeddings);
  for (auto& [n, t] : w) t.set_requires_grad(true);
  const ref::result r = ref::forward(w, options_of(lm), p.b.tokens, p.b.targets, p.lens);
  r.loss.backward();

  differences diff;
  diff.loss = std::abs(loss.item<double>() - r.loss.item<double>()) / std::abs(r.loss.item<double>());
  diff.logits = rel(logits.detach(), r.logits.detach());
  const ref::named g = units.by_name(true);
  for (const auto& [n, t] : w) {
    REQUIRE(t.grad().defined());
    const double e = rel(g.at(n), t.grad());
    if (e > 1e-5) MESSAGE(n, ": gradient differs by ", e);
    diff.grads = std::max(diff.grads, e);
  }
  return diff;
}

// ---- the configurations ---------------------------------------------------------------------

text_decoder::dims dense_base() { return models::dense_lm_tiny().at<"lm">(); }  // 4 heads / 2 kv, head_dim 16
moe_text_decoder::dims moe_base() {
  return {.vocab = 256, .hidden = 48, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16,  // head_dim != 48 / 4
          .experts = 4, .top_k = 2, .expert_ffn = 32};
}
template <class D>
models::dense_lm::dims dense_model(const D& lm) {
  models::dense_lm::dims d;
  d.at<"lm">() = lm;
  return d;
}
moe_lm::dims moe_model(const moe_text_decoder::dims& lm) {
  moe_lm::dims d;
  d.at<"lm">() = lm;
  return d;
}

void check(const differences& e, const char* what) {
  MESSAGE(std::string(what), ": relative difference to the double reference: loss ", e.loss, ", logits ", e.logits, ", gradients ",
          e.grads);
  CHECK(e.loss <= 1e-5);
  CHECK(e.logits <= 1e-5);
  CHECK(e.grads <= 1e-5);
}

}  // namespace

TEST_CASE("hf arch: Llama defaults (untied, theta 1e4, eps 1e-6) against the double reference") {
  check(against_reference<models::dense_lm>(dense_model(dense_base()), 1), "llama");
}

TEST_CASE("hf arch: Qwen2 q/k/v biases, rope_theta 1e6, rms_norm_eps 1e-5") {
  auto lm = dense_base();
  lm.qkv_bias = true;
  lm.rope_theta = 1e6;
  lm.rms_norm_eps = 1e-5;
  const auto specs = impl<text_decoder>::block_specs(lm, 1);
  CHECK(std::count_if(specs.begin(), specs.end(), [](const param_spec& s) {
          return s.name == "model.layers.1.self_attn.q_proj.bias" || s.name == "model.layers.1.self_attn.k_proj.bias" ||
                 s.name == "model.layers.1.self_attn.v_proj.bias";
        }) == 3);
  check(against_reference<models::dense_lm>(dense_model(lm), 2), "qwen2");
}

TEST_CASE("hf arch: Qwen3 per-head q/k RMSNorm before rope, tied embeddings") {
  auto lm = dense_base();
  lm.qk_norm = true;
  lm.tie_word_embeddings = true;
  lm.rope_theta = 1e6;
  const auto root = impl<text_decoder>::root_specs(lm);
  REQUIRE(root.size() == 2);  // embed_tokens and norm: no lm_head.weight
  CHECK(root[0].name == "model.embed_tokens.weight");
  const auto specs = impl<text_decoder>::block_specs(lm, 0);
  CHECK(std::any_of(specs.begin(), specs.end(), [&](const param_spec& s) {
    return s.name == "model.layers.0.self_attn.q_norm.weight" && s.shape == std::vector<int64_t>{lm.head_dim};
  }));
  check(against_reference<models::dense_lm>(dense_model(lm), 3), "qwen3 (tied)");
}

TEST_CASE("hf arch: a dense decoder with every option on") {
  auto lm = dense_base();
  lm.qkv_bias = lm.qk_norm = lm.tie_word_embeddings = true;
  lm.rope_theta = 5e5;
  lm.rms_norm_eps = 1e-5;
  lm.head_dim = 24;  // not hidden / heads = 16
  check(against_reference<models::dense_lm>(dense_model(lm), 4), "dense, all options");
}

TEST_CASE("hf arch: Qwen3-MoE router with and without norm_topk_prob") {
  auto lm = moe_base();
  lm.qk_norm = true;
  lm.rope_theta = 1e6;
  lm.rms_norm_eps = 1e-6;
  check(against_reference<moe_lm>(moe_model(lm), 5), "qwen3-moe, norm_topk_prob");
  lm.norm_topk_prob = false;
  check(against_reference<moe_lm>(moe_model(lm), 6), "qwen3-moe, raw top-k probabilities");
  lm.qkv_bias = lm.tie_word_embeddings = true;
  lm.rms_norm_eps = 1e-5;
  check(against_reference<moe_lm>(moe_model(lm), 7), "moe, all options");
  // the names a Qwen3-MoE loader maps: router as HF's, experts stacked [E, ...]
  const auto specs = impl<moe_text_decoder>::block_specs(lm, 0);
  std::map<std::string, std::vector<int64_t>> shape;
  for (const auto& s : specs) shape[s.name] = s.shape;
  CHECK(shape.at("model.layers.0.mlp.gate.weight") == std::vector<int64_t>{4, 48});
  CHECK(shape.at("model.layers.0.mlp.experts.gate_proj") == std::vector<int64_t>{4, 32, 48});
  CHECK(shape.at("model.layers.0.mlp.experts.up_proj") == std::vector<int64_t>{4, 32, 48});
  CHECK(shape.at("model.layers.0.mlp.experts.down_proj") == std::vector<int64_t>{4, 48, 32});
  CHECK(specs.back().expert);  // the experts stay last: parallel/ keeps them in a group of their own
}

TEST_CASE("hf arch: the core's geometry counts the new parameters") {
  auto count = [](const std::vector<param_spec>& s) { return total_numel(s); };
  for (int mask = 0; mask < 8; ++mask) {
    auto lm = dense_base();
    lm.qkv_bias = mask & 1, lm.qk_norm = mask & 2, lm.tie_word_embeddings = mask & 4;
    int64_t n = count(impl<text_decoder>::root_specs(lm));
    for (int64_t b = 0; b < lm.layers; ++b) n += count(impl<text_decoder>::block_specs(lm, b));
    CHECK(n == total_params<text_decoder>(lm));
    auto m = moe_base();
    m.qkv_bias = mask & 1, m.qk_norm = mask & 2, m.tie_word_embeddings = mask & 4;
    n = count(impl<moe_text_decoder>::root_specs(m));
    for (int64_t b = 0; b < m.layers; ++b) n += count(impl<moe_text_decoder>::block_specs(m, b));
    CHECK(n == total_params<moe_text_decoder>(m));
  }
  // a tied head costs its matmul still
  auto tied = dense_base();
  tied.tie_word_embeddings = true;
  CHECK(forward_flops<text_decoder>(tied, 64, true).gemm == forward_flops<text_decoder>(dense_base(), 64, true).gemm);
}

// The defaults compute exactly what the decoders computed before the options:
// the old block math, written out again with the old fixed constants.
namespace {
namespace before {
at::Tensor attention(const at::Tensor& x, const tensors& w, int64_t heads, int64_t kv, int64_t hd, const seq_layout& s) {
  const int64_t t = x.size(0);
  const at::Tensor h = rms_norm(x, w[0]);
  at::Tensor q = project(h, w[1]).view({t, heads, hd});
  at::Tensor k = project(h, w[2]).view({t, kv, hd});
  const at::Tensor v = project(h, w[3]).view({t, kv, hd});
  const rope_table table = make_rope_table(s.position_ids, hd, x.scalar_type());
  q = rope(q, table);
  k = rope(k, table);
  return x + project(varlen_attention(q, k, v, s.cu_seqlens, true).reshape({t, heads * hd}), w[4]);
}
template <Model G>
at::Tensor hidden(const typename G::dims& d, unit_source& units, const batch& b) {
  const auto& lm = veomni::get<0>(d);
  const tensors root = units.unit({0, -1});
  const seq_layout s{b.cu_seqlens, b.position_ids, true, {}};
  at::Tensor x = root[0].index_select(0, b.tokens);
  for (int64_t l = 0; l < lm.layers; ++l) {
    const tensors w = units.unit({0, l});
    const at::Tensor a = attention(x, w, lm.heads, lm.kv_heads, lm.head_dim, s);
    if constexpr (std::is_same_v<G, models::dense_lm>) {
      x = a + swiglu(rms_norm(a, w[5]), w[6], w[7], w[8]);
    } else {
      const at::Tensor h = rms_norm(a, w[5]);
      x = a + hooks{}.experts(h, route(h, w[6], lm.top_k, true), expert_weights{w[7], w[8], w[9], {}});
    }
  }
  return rms_norm(x, root[1]);
}
}  // namespace before
}  // namespace

TEST_CASE("hf arch: the default dims reproduce the decoders as they were, bit for bit") {
  torch::NoGradGuard no_grad;
  {
    const auto d = models::dense_lm_tiny();
    local_params<models::dense_lm> p(d, 8);
    const packed s = two_samples(512, 8);
    context ctx;
    ctx.data = &s.b;
    const at::Tensor now = forward<models::dense_lm>(d, p, ctx).at("lm.hidden");
    CHECK(at::equal(now, before::hidden<models::dense_lm>(d, p, s.b)));
    CHECK(at::equal(ctx.losses[0].sum, lm_loss_sum(now, p.unit({0, -1})[2], s.b.targets)));
  }
  {
    const auto d = moe_model(moe_base());
    local_params<moe_lm> p(d, 9);
    const packed s = two_samples(256, 9);
    context ctx;
    ctx.data = &s.b;
    CHECK(at::equal(forward<moe_lm>(d, p, ctx).at("lm.hidden"), before::hidden<moe_lm>(d, p, s.b)));
  }
}

TEST_CASE("hf arch: a sample past max_position_embeddings is an error naming it") {
  auto lm = dense_base();
  lm.max_position_embeddings = 10;
  const auto d = dense_model(lm);
  local_params<models::dense_lm> p(d, 1);
  torch::NoGradGuard no_grad;
  const packed fits = two_samples(512, 1, {10, 4});
  context ok;
  ok.data = &fits.b;
  CHECK_NOTHROW(forward<models::dense_lm>(d, p, ok));
  const packed longer = two_samples(512, 1, {3, 11});
  context bad;
  bad.data = &longer.b;
  CHECK_THROWS_WITH(forward<models::dense_lm>(d, p, bad),
                    doctest::Contains("a sample of 11 tokens is longer than max_position_embeddings = 10"));
  decoder<text_decoder> dec(lm, weights_of_units(p, 0, lm.layers));
  CHECK_NOTHROW(dec.prefill(std::vector<int64_t>(10, 1)));
  CHECK_THROWS_WITH(dec.step(1), doctest::Contains("11 positions exceed max_position_embeddings = 10"));
}
