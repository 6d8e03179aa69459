#pragma once
// The math of the standard components (core/components.hpp declares their
// ports, layers and sizes). For each component C, nn::impl<C> gives
//   root_specs(d), block_specs(d, i)  parameter specs, in flat-buffer order
//   pre(d, root, ctx, inputs)         what runs before the blocks
//   block(d, params, x, ctx, seq)     one block (one FSDP unit)
//   post(d, root, x, ctx, inputs)     what runs after them; returns outputs by port
// Parameters are handed in as tensors in spec order; where they come from
// (local, gathered, checkpointed) is the executor's and the policies' business.
#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../core/components.hpp"
#include "functional.hpp"
#include "init.hpp"

namespace veomni::nn {

using tensors = std::vector<at::Tensor>;
using port_map = std::map<std::string, at::Tensor>;

// A packed multimodal micro-batch.
struct batch {
  at::Tensor tokens;        // [T] int64 token ids, samples back to back
  at::Tensor targets;       // [T] next-token targets, -100 where no loss
  at::Tensor position_ids;  // [T] positions restarting at 0 per sample
  at::Tensor cu_seqlens;    // [S+1] cumulative sample lengths
  at::Tensor pixels;        // [N, C, H, W] input images (undefined: none)
  at::Tensor mel;           // [N, F, M] input audio clips as log-mel frames (undefined: none)
  at::Tensor code_targets;  // [T] VQ code to predict from each position, -100 elsewhere (undefined: none)
  at::Tensor token_mask;    // [T] 1 for real tokens, 0 for padding (undefined: all real)
  // Inputs of components outside the library, by the name their math reads
  // them under (examples/depth_encoder_nn.hpp: inputs["depth"]).
  std::map<std::string, at::Tensor> inputs;
  int64_t image_token = -1;  // placeholder id replaced by image embeddings
  int64_t audio_token = -1;  // placeholder id replaced by audio embeddings
  // Sequence parallel: this rank holds a slice of the tokens while the
  // encoders see every image and clip; its placeholders take these encoder
  // rows, and global_index gives each local token's place in the whole pack
  // (the layout, cu_seqlens, stays global).
  bool sequence_slice = false;
  at::Tensor image_rows, audio_rows;  // [placeholders here] int64
  at::Tensor global_index;            // [T local] int64
};

// The batch's tensors on `device` (what the data pipeline builds on the CPU,
// for a run on a GPU); undefined ones stay undefined. cu_seqlens stays on
// the host: the attention reads the layout there (no device sync per layer).
inline batch to_device(const batch& b, const at::Device& device) {
  batch out = b;
  auto move = [&](at::Tensor& t) {
    if (t.defined()) t = t.to(device, /*non_blocking=*/false);
  };
  for (at::Tensor* t : {&out.tokens, &out.targets, &out.position_ids, &out.pixels, &out.mel,
                        &out.code_targets, &out.token_mask, &out.image_rows, &out.audio_rows, &out.global_index})
    move(*t);
  for (auto& [name, t] : out.inputs) move(t);
  return out;
}

// Sequence layout of the rows a component works on.
struct seq_layout {
  at::Tensor cu_seqlens;
  at::Tensor position_ids;
  bool causal = true;
  at::Tensor global_index;  // sequence parallel: each local row's index in the whole pack (else undefined)
  // rotary tables of these positions, built on first use and shared by every
  // block (and every copy of this layout)
  std::shared_ptr<std::vector<rope_table>> rope_tables = std::make_shared<std::vector<rope_table>>();

  rope_table rope_for(int64_t head_dim, at::ScalarType type, double theta = 10000.0) const {
    for (const auto& t : *rope_tables)
      if (t.dim == head_dim && t.theta == theta && t.cos.scalar_type() == type && t.pos.is_same(position_ids)) return t;
    rope_tables->push_back(make_rope_table(position_ids, head_dim, type, theta));
    return rope_tables->back();
  }
};

// Where parallel policies interpose on the math.
struct hooks {
  // attention core on local tokens with all heads: q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D]
  std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const seq_layout&)> attention =
      [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const seq_layout& s) {
        return varlen_attention(q, k, v, s.cu_seqlens, s.causal);
      };
  // experts on routed tokens: x [T, H] -> weighted sum of the chosen experts' outputs [T, H]
  std::function<at::Tensor(const at::Tensor&, const routing&, const expert_weights&)> experts =
      [](const at::Tensor& x, const routing& r, const expert_weights& w) {
        const dispatch_order d = sort_by_expert(r, w.count());
        const at::Tensor y = grouped_experts(x.index_select(0, d.token_of), d.counts, w);
        return at::zeros_like(x).index_add(0, d.token_of, y * d.weight_of.unsqueeze(1));
      };
  // sums router statistics over the ranks that share a batch (identity alone)
  std::function<at::Tensor(const at::Tensor&)> reduce_router_stats = [](const at::Tensor& t) { return t; };
  // a linear map of the unit's tensor w[i] (a spec marked `linear`) on x: x w[i]^T.
  // Adapters (Adapt<LoRA>) add their low-rank term here; w is the unit's
  // whole list, the adapters after its own tensors.
  std::function<at::Tensor(const at::Tensor&, const tensors&, std::size_t)> linear =
      [](const at::Tensor& x, const tensors& w, std::size_t i) { return project(x, w[i]); };
  // the same for expert e of a stacked expert tensor w[i] [E, out, in] (a
  // spec marked `linear` and `expert`) on its routed rows x: x w[i][e]^T. e
  // counts the experts this rank holds (its local experts under EP).
  std::function<at::Tensor(const at::Tensor&, const tensors&, std::size_t, int64_t)> expert_linear =
      [](const at::Tensor& x, const tensors& w, std::size_t i, int64_t e) { return project(x, w[i][e]); };
};

// A loss as (sum, count) so that the global mean divides by the global count.
struct loss_term {
  std::string name;
  at::Tensor sum;
  at::Tensor count;
};

struct context {
  const batch* data = nullptr;
  hooks h;
  std::vector<loss_term> losses;
  std::vector<at::Tensor> aux_losses;  // already normalised (MoE load balancing)
};

template <class C>
struct impl;

namespace detail {
inline std::string block_name(const std::string& prefix, int64_t i, const char* rest) {
  return prefix + "layers." + std::to_string(i) + "." + rest;
}
inline param_spec weight(std::string name, std::vector<int64_t> shape) {
  return {std::move(name), std::move(shape), init_kind::normal, 0.02, true, false};
}
// A weight [out, in] that the component applies through hooks::linear.
inline param_spec linear_weight(std::string name, std::vector<int64_t> shape, layer_kind kind) {
  param_spec s = weight(std::move(name), std::move(shape));
  s.linear = true;
  s.kind = kind;
  return s;
}
// x w[i]^T through the hooks (adapters), or plainly without them (generation).
inline at::Tensor linear(const hooks* h, const at::Tensor& x, const tensors& w, std::size_t i) {
  return h ? h->linear(x, w, i) : project(x, w[i]);
}
inline param_spec norm_weight(std::string name, int64_t n) {
  return {std::move(name), {n}, init_kind::ones, 0.0, false, false};
}
inline param_spec bias(std::string name, int64_t n) { return {std::move(name), {n}, init_kind::zeros, 0.0, false, false}; }

// The pre-norm attention sublayer of a block, shared by the decoders and the
// encoders: its heads, its options and where its tensors sit in the block's
// list. The list starts [0] norm, [1] q, [2] k, [3] v, [4] o (weights); the
// options add theirs after o, so that a model without them has the list it
// always had:
//   qkv_bias   q, k, v biases                  (Qwen2: self_attn.q_proj.bias, ...)
//   qk_norm    q_norm, k_norm weights [head_dim] (Qwen3: self_attn.q_norm.weight, ...)
// Worked example, Qwen3 with both: [norm, q, k, v, o, bq, bk, bv, q_norm, k_norm],
// tensors() = 10, the block's next sublayer starts at w[10].
struct attention_geometry {
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  bool qkv_bias = false, qk_norm = false;
  double rope_theta = 10000.0, rms_norm_eps = 1e-6;

  int64_t tensors() const { return 5 + (qkv_bias ? 3 : 0) + (qk_norm ? 2 : 0); }
  int64_t bias_at() const { return 5; }                       // bq; bk, bv follow
  int64_t q_norm_at() const { return 5 + (qkv_bias ? 3 : 0); }  // q_norm; k_norm follows
};

// q [T, heads, D], k and v [T, kv_heads, D] from the normed input h [T, hidden],
// as Hugging Face's Qwen3 attention: project (+ bias), per-head RMSNorm of q
// and k over D, then rope on q and k (v is not rotated).
struct attention_inputs {
  at::Tensor q, k, v;
};
inline attention_inputs project_qkv(const at::Tensor& h, const tensors& w, const attention_geometry& a,
                                    const rope_table& table, const hooks* hk = nullptr) {
  const int64_t t = h.size(0);
  auto heads_of = [&](int64_t i, int64_t heads) {
    at::Tensor y = linear(hk, h, w, static_cast<size_t>(i));
    if (a.qkv_bias) y = y + w[static_cast<size_t>(a.bias_at() + i - 1)];
    return y.view({t, heads, a.head_dim});
  };
  at::Tensor q = heads_of(1, a.heads), k = heads_of(2, a.kv_heads);
  const at::Tensor v = heads_of(3, a.kv_heads);
  if (a.qk_norm) {
    q = rms_norm(q, w[static_cast<size_t>(a.q_norm_at())], a.rms_norm_eps);
    k = rms_norm(k, w[static_cast<size_t>(a.q_norm_at() + 1)], a.rms_norm_eps);
  }
  return {rope(q, table), rope(k, table), v};
}

// x + o_proj(attention(q, k, v)) with q, k, v from rms_norm(x): w is the
// block's list (above).
inline at::Tensor attention_sublayer(const at::Tensor& x, const tensors& w, const attention_geometry& a,
                                     const seq_layout& s, context& ctx) {
  const int64_t t = x.size(0);
  const at::Tensor h = rms_norm(x, w[0], a.rms_norm_eps);
  const attention_inputs in = project_qkv(h, w, a, s.rope_for(a.head_dim, x.scalar_type(), a.rope_theta), &ctx.h);
  const at::Tensor o = ctx.h.attention(in.q, in.k, in.v, s).reshape({t, a.heads * a.head_dim});
  return x + ctx.h.linear(o, w, 4);
}

// SwiGLU with w[g] gate, w[g + 1] up, w[g + 2] down, through the hooks
// (plainly without them): nn::swiglu's math.
inline at::Tensor swiglu_sublayer(const at::Tensor& h, const tensors& w, std::size_t g, const hooks* hk) {
  return linear(hk, kernels::silu_mul(linear(hk, h, w, g), linear(hk, h, w, g + 1)), w, g + 2);
}

inline std::vector<param_spec> attention_specs(const std::string& p, int64_t hidden, const attention_geometry& a,
                                               const char* norm) {
  const int64_t q = a.heads * a.head_dim, kv = a.kv_heads * a.head_dim;
  constexpr layer_kind at = layer_kind::attention;
  std::vector<param_spec> s{norm_weight(p + norm, hidden), linear_weight(p + "self_attn.q_proj.weight", {q, hidden}, at),
                            linear_weight(p + "self_attn.k_proj.weight", {kv, hidden}, at),
                            linear_weight(p + "self_attn.v_proj.weight", {kv, hidden}, at),
                            linear_weight(p + "self_attn.o_proj.weight", {hidden, q}, at)};
  if (a.qkv_bias) {
    s.push_back(bias(p + "self_attn.q_proj.bias", q));
    s.push_back(bias(p + "self_attn.k_proj.bias", kv));
    s.push_back(bias(p + "self_attn.v_proj.bias", kv));
  }
  if (a.qk_norm) {
    s.push_back(norm_weight(p + "self_attn.q_norm.weight", a.head_dim));
    s.push_back(norm_weight(p + "self_attn.k_norm.weight", a.head_dim));
  }
  return s;
}
inline std::vector<param_spec> mlp_specs(const std::string& p, int64_t hidden, int64_t ffn, const char* norm) {
  constexpr layer_kind k = layer_kind::mlp;
  return {norm_weight(p + norm, hidden), linear_weight(p + "mlp.gate_proj.weight", {ffn, hidden}, k),
          linear_weight(p + "mlp.up_proj.weight", {ffn, hidden}, k),
          linear_weight(p + "mlp.down_proj.weight", {hidden, ffn}, k)};
}
inline void append(std::vector<param_spec>& a, std::vector<param_spec> b) {
  for (auto& s : b) a.push_back(std::move(s));
}

// Token embeddings with placeholder rows replaced by encoder outputs, in order.
inline at::Tensor embed_with_media(const at::Tensor& table, const batch& b, const port_map& in) {
  at::Tensor x = table.index_select(0, b.tokens);
  auto scatter = [&](const char* port, int64_t token, const at::Tensor& rows) {
    auto it = in.find(port);
    if (it == in.end() || !it->second.defined() || token < 0) return;
    const at::Tensor idx = b.tokens.eq(token).nonzero().reshape({-1});
    const int64_t have = it->second.size(0);
    at::Tensor src;
    if (b.sequence_slice) {
      TORCH_CHECK(rows.defined() && rows.numel() == idx.numel() && (rows.numel() == 0 || rows.max().item<int64_t>() < have),
                  "veomni::nn: this rank's ", idx.numel(), " '", port, "' placeholder tokens do not match its ",
                  rows.defined() ? rows.numel() : 0, " encoder rows (of ", have, ")");
      src = it->second.index_select(0, rows);
    } else {
      TORCH_CHECK(idx.numel() == have, "veomni::nn: the batch has ", idx.numel(), " '", port,
                  "' placeholder tokens but the encoder produced ", have, " embeddings");
      src = it->second;
    }
    // always connected, also with no placeholder: the encoder's backward runs on every rank
    x = x.index_copy(0, idx, src.to(x.scalar_type()));
  };
  scatter("image_embeds", b.image_token, b.image_rows);
  scatter("audio_embeds", b.audio_token, b.audio_rows);
  return x;
}

// The language model's layout of a batch; with a position limit
// (max_position_embeddings > 0), a sample reaching past it is an error naming it.
inline seq_layout text_layout(const batch& b, long max_positions = 0) {
  if (max_positions > 0 && b.position_ids.defined() && b.position_ids.numel() > 0) {
    const int64_t last = b.position_ids.max().item<int64_t>();
    TORCH_CHECK(last < max_positions, "veomni::nn::text_decoder: a sample of ", last + 1,
                " tokens is longer than max_position_embeddings = ", max_positions);
  }
  return {b.cu_seqlens, b.position_ids, true, b.global_index};
}

// n segments of equal length L: cu = [0, L, 2L, ...], positions 0..L-1 each.
inline seq_layout uniform_layout(int64_t n, int64_t len, bool causal) {
  const auto opts = at::TensorOptions().dtype(at::kLong);
  return {at::arange(0, n + 1, opts) * len, at::arange(0, len, opts).repeat({n}), causal, {}};
}
}  // namespace detail

// ---- language models ------------------------------------------------------------

// Hugging Face's LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM, by
// the dims' options (core/components.hpp). Parameters, with HF's names:
//   root   model.embed_tokens.weight [V, H], model.norm.weight [H],
//          lm_head.weight [V, H] (none when tie_word_embeddings: the head is embed_tokens)
//   block  input_layernorm, self_attn.{q,k,v,o}_proj.weight, [q,k,v]_proj.bias,
//          [q_norm, k_norm], post_attention_layernorm, mlp.{gate,up,down}_proj.weight
// A tied table gets the gradients of both of its uses, summed.
template <>
struct impl<text_decoder> {
  using dims = text_decoder::dims;
  static detail::attention_geometry attention(const dims& d) {
    return {d.heads, d.kv_heads, d.head_dim, d.qkv_bias, d.qk_norm, d.rope_theta, d.rms_norm_eps};
  }
  static std::vector<param_spec> root_specs(const dims& d, const std::string& p = "") {
    std::vector<param_spec> s{detail::weight(p + "model.embed_tokens.weight", {d.vocab, d.hidden}),
                              detail::norm_weight(p + "model.norm.weight", d.hidden)};
    if (!d.tie_word_embeddings) s.push_back(detail::weight(p + "lm_head.weight", {d.vocab, d.hidden}));
    return s;
  }
  // The output head among the root tensors: lm_head.weight, or embed_tokens when tied.
  static const at::Tensor& head_weight(const dims& d, const tensors& root) {
    TORCH_CHECK(root.size() == (d.tie_word_embeddings ? 2u : 3u), "veomni::nn::text_decoder: ", root.size(),
                " root tensors, but the dims give ", d.tie_word_embeddings ? "2 (tied: embed_tokens, norm)" : "3 (embed_tokens, norm, lm_head)");
    return root[d.tie_word_embeddings ? 0 : 2];
  }
  static std::vector<param_spec> block_specs(const dims& d, int64_t i, const std::string& p = "") {
    const std::string b = detail::block_name(p + "model.", i, "");
    auto s = detail::attention_specs(b, d.hidden, attention(d), "input_layernorm.weight");
    detail::append(s, detail::mlp_specs(b, d.hidden, d.ffn, "post_attention_layernorm.weight"));
    return s;
  }
  static at::Tensor pre(const dims&, const tensors& root, context& ctx, const port_map& in) {
    return detail::embed_with_media(root[0], *ctx.data, in);
  }
  static seq_layout layout(const dims& d, context& ctx, const port_map&) {
    return detail::text_layout(*ctx.data, d.max_position_embeddings);
  }
  static at::Tensor block(const dims& d, const tensors& w, const at::Tensor& x, context& ctx, const seq_layout& s) {
    const auto att = attention(d);
    const auto m = static_cast<size_t>(att.tensors());  // the MLP's tensors follow the attention's
    const at::Tensor a = detail::attention_sublayer(x, w, att, s, ctx);
    return a + detail::swiglu_sublayer(rms_norm(a, w[m], d.rms_norm_eps), w, m + 1, &ctx.h);
  }
  static port_map post(const dims& d, const tensors& root, const at::Tensor& x, context& ctx, const port_map&) {
    const at::Tensor h = rms_norm(x, root[1], d.rms_norm_eps);
    const batch& b = *ctx.data;
    ctx.losses.push_back({"lm", lm_loss_sum(h, head_weight(d, root), b.targets), b.targets.ne(-100).sum()});
    return {{"hidden", h}};
  }
};

// Hugging Face's Qwen3MoeForCausalLM (every layer sparse): the dense
// decoder's root and attention, and a routed SwiGLU MoE. Its parameters:
//   mlp.gate.weight [E, H]        the router, HF's name and shape
//   mlp.experts.gate_proj [E, F, H], mlp.experts.up_proj [E, F, H], mlp.experts.down_proj [E, H, F]
// the experts stacked; HF's mlp.experts.{e}.gate_proj.weight is gate_proj[e]
// (likewise up_proj, down_proj), so a loader maps names and slices, no transposes.
template <>
struct impl<moe_text_decoder> {
  using dims = moe_text_decoder::dims;
  using dense = impl<text_decoder>;  // the same root: embedding, final norm, head
  static text_decoder::dims root_dims(const dims& d) {
    return {.vocab = d.vocab, .hidden = d.hidden, .rms_norm_eps = d.rms_norm_eps,
            .tie_word_embeddings = d.tie_word_embeddings, .max_position_embeddings = d.max_position_embeddings};
  }
  static detail::attention_geometry attention(const dims& d) {
    return {d.heads, d.kv_heads, d.head_dim, d.qkv_bias, d.qk_norm, d.rope_theta, d.rms_norm_eps};
  }
  static std::vector<param_spec> root_specs(const dims& d, const std::string& p = "") {
    return dense::root_specs(root_dims(d), p);
  }
  static const at::Tensor& head_weight(const dims& d, const tensors& root) { return dense::head_weight(root_dims(d), root); }
  // Dense block parameters first, then the experts [E, ...] (marked expert).
  static std::vector<param_spec> block_specs(const dims& d, int64_t i, const std::string& p = "") {
    const std::string b = detail::block_name(p + "model.", i, "");
    auto s = detail::attention_specs(b, d.hidden, attention(d), "input_layernorm.weight");
    s.push_back(detail::norm_weight(b + "post_attention_layernorm.weight", d.hidden));
    s.push_back(detail::weight(b + "mlp.gate.weight", {d.experts, d.hidden}));
    for (auto [n, shape] : {std::pair{"mlp.experts.gate_proj", std::vector<int64_t>{d.experts, d.expert_ffn, d.hidden}},
                            std::pair{"mlp.experts.up_proj", std::vector<int64_t>{d.experts, d.expert_ffn, d.hidden}},
                            std::pair{"mlp.experts.down_proj", std::vector<int64_t>{d.experts, d.hidden, d.expert_ffn}}}) {
      param_spec e = detail::linear_weight(b + n, shape, layer_kind::moe);  // applied through hooks::expert_linear
      e.expert = true;
      s.push_back(e);
    }
    return s;
  }
  static at::Tensor pre(const dims& d, const tensors& root, context& ctx, const port_map& in) {
    return dense::pre(root_dims(d), root, ctx, in);
  }
  static seq_layout layout(const dims& d, context& ctx, const port_map& in) { return dense::layout(root_dims(d), ctx, in); }
  static at::Tensor block(const dims& d, const tensors& w, const at::Tensor& x, context& ctx, const seq_layout& s) {
    const auto att = attention(d);
    const auto f = static_cast<size_t>(att.tensors());  // norm, router, experts follow the attention's tensors
    const at::Tensor a = detail::attention_sublayer(x, w, att, s, ctx);
    const at::Tensor h = rms_norm(a, w[f], d.rms_norm_eps);
    const routing r = route(h, w[f + 1], d.top_k, d.norm_topk_prob);
    // load balancing from statistics summed over the ranks sharing the batch,
    // over real tokens only (padding added for sequence parallelism is not data)
    const at::Tensor& mask = ctx.data->token_mask;
    // (in fp32 at least, whatever the compute dtype: bf16 counts past 256 would round)
    const at::ScalarType st = at::promote_types(h.scalar_type(), at::kFloat);
    const at::Tensor m = mask.defined() ? mask.to(h.options().dtype(st)) : at::ones({h.size(0)}, h.options().dtype(st));
    const at::Tensor counts = at::bincount(r.experts.reshape({-1}), m.repeat_interleave(d.top_k), d.experts).to(st);
    const at::Tensor stats =
        ctx.h.reduce_router_stats(at::cat({counts, (r.probs.to(st) * m.unsqueeze(1)).sum(0), m.sum().reshape({1})}));
    ctx.aux_losses.push_back(load_balancing_loss(stats.narrow(0, 0, d.experts), stats.narrow(0, d.experts, d.experts),
                                                 stats[2 * d.experts], d.top_k));
    expert_weights ew{w[f + 2], w[f + 3], w[f + 4], {}};
    ew.linear = [&ctx, &w, f](const at::Tensor& x, int k, int64_t e) {
      return ctx.h.expert_linear(x, w, f + 2 + static_cast<std::size_t>(k), e);
    };
    return a + ctx.h.experts(h, r, ew);
  }
  static port_map post(const dims& d, const tensors& root, const at::Tensor& x, context& ctx, const port_map& in) {
    return dense::post(root_dims(d), root, x, ctx, in);
  }
};

// ---- encoders ----------------------------------------------------------------------

namespace detail {
inline attention_geometry encoder_attention(int64_t hidden, int64_t heads) {
  return {.heads = heads, .kv_heads = heads, .head_dim = hidden / heads};
}
inline std::vector<param_spec> encoder_block_specs(const std::string& b, int64_t hidden, int64_t heads, int64_t ffn) {
  auto s = attention_specs(b, hidden, encoder_attention(hidden, heads), "norm1.weight");
  append(s, mlp_specs(b, hidden, ffn, "norm2.weight"));
  return s;
}
inline at::Tensor encoder_block(int64_t hidden, int64_t heads, const tensors& w, const at::Tensor& x, context& ctx,
                                const seq_layout& s) {
  const at::Tensor a = attention_sublayer(x, w, encoder_attention(hidden, heads), s, ctx);
  return a + swiglu_sublayer(rms_norm(a, w[5]), w, 6, &ctx.h);
}
}  // namespace detail

// Images [N, C, H, W] -> patches -> ViT blocks (each image attends to itself)
// -> 2x2 merge -> [N * (H/2p) * (W/2p), hidden].
template <>
struct impl<vision_encoder> {
  using dims = vision_encoder::dims;
  static std::vector<param_spec> root_specs(const dims& d, const std::string& p = "") {
    return {detail::weight(p + "patch_embed.weight", {d.hidden, d.channels * d.patch * d.patch}),
            detail::bias(p + "patch_embed.bias", d.hidden),
            detail::weight(p + "merger.weight", {d.hidden, 4 * d.hidden}), detail::bias(p + "merger.bias", d.hidden)};
  }
  static std::vector<param_spec> block_specs(const dims& d, int64_t i, const std::string& p = "") {
    return detail::encoder_block_specs(detail::block_name(p, i, ""), d.hidden, d.heads, d.ffn);
  }
  static at::Tensor pixels(const context& ctx, const dims& d) {
    const at::Tensor& px = ctx.data->pixels;
    return px.defined() ? px : at::zeros({0, d.channels, 2 * d.patch, 2 * d.patch});
  }
  static at::Tensor pre(const dims& d, const tensors& root, context& ctx, const port_map&) {
    const at::Tensor px = pixels(ctx, d);
    const int64_t n = px.size(0), gh = px.size(2) / d.patch, gw = px.size(3) / d.patch;
    TORCH_CHECK(px.size(2) % (2 * d.patch) == 0 && px.size(3) % (2 * d.patch) == 0, "veomni::nn::vision_encoder: image ",
                px.size(2), "x", px.size(3), " is not a multiple of 2 x patch size ", d.patch);
    // [N, C, gh, p, gw, p] -> [N, gh, gw, C*p*p]
    const at::Tensor patches = px.reshape({n, d.channels, gh, d.patch, gw, d.patch})
                                   .permute({0, 2, 4, 1, 3, 5})
                                   .reshape({n * gh * gw, d.channels * d.patch * d.patch});
    return project(patches.to(root[0].scalar_type()), root[0]) + root[1];  // inputs take the weights' dtype
  }
  static seq_layout layout(const dims& d, context& ctx, const port_map&) {
    const at::Tensor px = pixels(ctx, d);
    return detail::uniform_layout(px.size(0), (px.size(2) / d.patch) * (px.size(3) / d.patch), false);
  }
  static at::Tensor block(const dims& d, const tensors& w, const at::Tensor& x, context& ctx, const seq_layout& s) {
    return detail::encoder_block(d.hidden, d.heads, w, x, ctx, s);
  }
  static port_map post(const dims& d, const tensors& root, const at::Tensor& x, context& ctx, const port_map&) {
    const at::Tensor px = pixels(ctx, d);
    const int64_t n = px.size(0), gh = px.size(2) / d.patch, gw = px.size(3) / d.patch;
    // 2x2 neighbourhoods: [N, gh/2, 2, gw/2, 2, H] -> [N * gh/2 * gw/2, 4H]
    const at::Tensor merged = x.reshape({n, gh / 2, 2, gw / 2, 2, d.hidden})
                                  .permute({0, 1, 3, 2, 4, 5})
                                  .reshape({n * (gh / 2) * (gw / 2), 4 * d.hidden});
    return {{"embeds", project(merged, root[2]) + root[3]}};
  }
};

// Log-mel clips [N, F, M] -> conv1d (k) -> GELU -> conv1d (k, stride 2) -> GELU
// -> transformer blocks (each clip attends to itself) -> norm -> [N * F', hidden].
template <>
struct impl<audio_encoder> {
  using dims = audio_encoder::dims;
  static std::vector<param_spec> root_specs(const dims& d, const std::string& p = "") {
    return {detail::weight(p + "conv1.weight", {d.hidden, d.mel_bins, d.kernel}), detail::bias(p + "conv1.bias", d.hidden),
            detail::weight(p + "conv2.weight", {d.hidden, d.hidden, d.kernel}), detail::bias(p + "conv2.bias", d.hidden),
            detail::norm_weight(p + "norm.weight", d.hidden)};
  }
  static std::vector<param_spec> block_specs(const dims& d, int64_t i, const std::string& p = "") {
    return detail::encoder_block_specs(detail::block_name(p, i, ""), d.hidden, d.heads, d.ffn);
  }
  static at::Tensor mel(const context& ctx, const dims& d) {
    const at::Tensor& m = ctx.data->mel;
    return m.defined() ? m : at::zeros({0, 2, d.mel_bins});
  }
  static int64_t frames_out(int64_t f, int64_t k) { return (f + 2 * (k / 2) - k) / 2 + 1; }
  static at::Tensor pre(const dims& d, const tensors& root, context& ctx, const port_map&) {
    const at::Tensor m = mel(ctx, d).to(root[0].scalar_type());  // [N, F, M]
    at::Tensor h = at::gelu(conv1d_frames(m, root[0], root[1], 1, d.kernel / 2));
    h = at::gelu(conv1d_frames(h, root[2], root[3], 2, d.kernel / 2));  // [N, F', H]
    return h.reshape({-1, d.hidden});
  }
  static seq_layout layout(const dims& d, context& ctx, const port_map&) {
    const at::Tensor m = mel(ctx, d);
    return detail::uniform_layout(m.size(0), frames_out(m.size(1), d.kernel), false);
  }
  static at::Tensor block(const dims& d, const tensors& w, const at::Tensor& x, context& ctx, const seq_layout& s) {
    return detail::encoder_block(d.hidden, d.heads, w, x, ctx, s);
  }
  static port_map post(const dims&, const tensors& root, const at::Tensor& x, context&, const port_map&) {
    return {{"embeds", rms_norm(x, root[4])}};
  }
};

// Two-layer MLP from an encoder's width to the decoder's.
template <>
struct impl<projector> {
  using dims = projector::dims;
  static std::vector<param_spec> root_specs(const dims& d, const std::string& p = "") {
    return {detail::weight(p + "fc1.weight", {d.out, d.in}), detail::bias(p + "fc1.bias", d.out),
            detail::weight(p + "fc2.weight", {d.out, d.out}), detail::bias(p + "fc2.bias", d.out)};
  }
  static std::vector<param_spec> block_specs(const dims&, int64_t, const std::string& = "") { return {}; }
  static at::Tensor pre(const dims&, const tensors& w, context&, const port_map& in) {
    return in.at("in").to(w[0].scalar_type());
  }
  static seq_layout layout(const dims&, context&, const port_map&) { return {}; }
  static at::Tensor block(const dims&, const tensors&, const at::Tensor& x, context&, const seq_layout&) { return x; }
  static port_map post(const dims&, const tensors& w, const at::Tensor& x, context&, const port_map&) {
    return {{"out", project(at::gelu(project(x, w[0]) + w[1]), w[2]) + w[3]}};
  }
};

// Image generation: a head predicting VQ codebook indices from the language
// model's hidden states, and a small VQ decoder from codes back to pixels.
template <>
struct impl<image_token_decoder> {
  using dims = image_token_decoder::dims;
  static std::vector<param_spec> root_specs(const dims& d, const std::string& p = "") {
    return {detail::weight(p + "code_head.weight", {d.codebook, d.hidden}),
            detail::weight(p + "codebook.weight", {d.codebook, d.code_dim}),
            detail::weight(p + "to_pixels.weight", {d.channels * d.patch * d.patch, d.code_dim}),
            detail::bias(p + "to_pixels.bias", d.channels * d.patch * d.patch)};
  }
  static std::vector<param_spec> block_specs(const dims&, int64_t, const std::string& = "") { return {}; }
  static at::Tensor pre(const dims&, const tensors& w, context&, const port_map& in) {
    return in.at("hidden").to(w[0].scalar_type());
  }
  static seq_layout layout(const dims&, context&, const port_map&) { return {}; }
  static at::Tensor block(const dims&, const tensors&, const at::Tensor& x, context&, const seq_layout&) { return x; }
  static port_map post(const dims&, const tensors& w, const at::Tensor& x, context& ctx, const port_map&) {
    const batch& b = *ctx.data;
    if (b.code_targets.defined())
      ctx.losses.push_back({"image_codes", lm_loss_sum(x, w[0], b.code_targets), b.code_targets.ne(-100).sum()});
    else  // keep the head in the graph: a zero loss over no targets
      ctx.losses.push_back({"image_codes", 0 * w[0].sum(), at::zeros({}, at::kLong)});
    return {{"codes", at::matmul(x, w[0].t()).argmax(-1)}};
  }
  // codes [N, gh, gw] -> pixels [N, C, gh*p, gw*p]
  static at::Tensor decode(const dims& d, const tensors& w, const at::Tensor& codes) {
    const int64_t n = codes.size(0), gh = codes.size(1), gw = codes.size(2);
    const at::Tensor e = w[1].index_select(0, codes.reshape({-1}));
    const at::Tensor px = project(e, w[2]) + w[3];  // [N*gh*gw, C*p*p]
    return px.reshape({n, gh, gw, d.channels, d.patch, d.patch}).permute({0, 3, 1, 4, 2, 5}).reshape(
        {n, d.channels, gh * d.patch, gw * d.patch});
  }
};

}  // namespace veomni::nn
