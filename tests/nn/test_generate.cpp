// Incremental decoding (nn/generate.hpp) against the training forward: the
// logits of a prefill and then one token at a time equal those of one
// nn::forward over the same tokens (its "lm.hidden" times lm_head), fp32,
// within 1e-5 relative, for the dense decoder (dense_lm) and the MoE decoder
// (omni_moe, text only), and both again with every Hugging Face option on
// (q/k/v biases, q/k norms, rope_theta, rms_norm_eps, tied head, head_dim
// apart from hidden / heads, norm_topk_prob off); and the sampling loop's promises.
// torch first: doctest's CHECK must replace c10's one-argument CHECK
#include <torch/torch.h>
#include <doctest/doctest.h>

#include <veomni/models/zoo.hpp>
#include <veomni/nn.hpp>
#include <veomni/nn/generate.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <vector>

using namespace veomni;
using namespace veomni::nn;

namespace {

// Weights of a model, normal ones scaled from the init's std 0.02 to 0.08 so
// that attention and routing are far from uniform (a stricter comparison;
// at 0.2 fp32 rounding alone puts the training forward 4e-6 from its fp64
// self, and the cached decoder is as close to fp64 as the training forward).
// With `perturbed`, biases and norm weights (zeros and ones at init) are
// drawn at random too, so that each one changes the logits.
template <Model G>
local_params<G> sharp_params(const typename G::dims& d, uint64_t seed, bool perturbed = false) {
  local_params<G> p(d, seed, at::kFloat);
  torch::NoGradGuard no_grad;
  at::manual_seed(seed + 100);
  for (std::size_t i = 0; i < p.parameters().size(); ++i) {
    const at::Tensor& t = p.parameters()[i];
    const init_kind k = p.specs()[i].init;
    if (k == init_kind::normal) t.mul_(4.0);
    if (perturbed && k == init_kind::zeros) t.copy_(0.3 * at::randn_like(t));
    if (perturbed && k == init_kind::ones) t.add_(0.3 * at::randn_like(t));
  }
  return p;
}

// Logits [T, V] of every position of one sample, by the training code path.
template <Model G>
at::Tensor training_logits(const typename G::dims& d, local_params<G>& params, const std::vector<int64_t>& toks) {
  const int64_t t = static_cast<int64_t>(toks.size());
  batch b;
  b.tokens = at::tensor(toks, at::kLong);
  b.targets = at::roll(b.tokens, -1).clone();
  b.targets[t - 1] = -100;
  b.cu_seqlens = at::tensor({int64_t{0}, t}, at::kLong);
  b.position_ids = at::arange(t, at::kLong);
  context ctx;
  ctx.data = &b;
  const port_map out = forward<G>(d, params, ctx);
  constexpr std::size_t lm = G::index_of("lm");
  using C = typename G::template component_at<lm>;
  const tensors root = params.unit({lm, -1});
  return at::matmul(out.at("lm.hidden"), impl<C>::head_weight(veomni::get<lm>(d), root).t()).detach();
}

std::vector<int64_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor t = at::randint(vocab, {n}, at::kLong);
  return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n};
}

// max |a - b| / max |b| of one position's logits
double rel_diff(const at::Tensor& got, const at::Tensor& ref) {
  return (got - ref).abs().max().item<double>() / ref.abs().max().item<double>();
}

// Prefill of `prefix` tokens, a chunk of 5 at once, then one at a time: every
// position's logits against the training forward. Returns the worst relative difference.
template <Model G, language_model C>
double incremental_vs_training(const typename G::dims& d, uint64_t seed, int64_t len, int64_t prefix, int64_t max_length,
                               bool perturbed = false) {
  auto params = sharp_params<G>(d, seed, perturbed);
  const auto& lm = veomni::get<G::index_of("lm")>(d);
  const auto toks = random_tokens(len, lm.vocab, seed);
  const at::Tensor ref = training_logits<G>(d, params, toks);
  decoder<C> dec(lm, weights_of_units(params, G::index_of("lm"), lm.layers), max_length);
  double worst = 0;
  at::Tensor l = dec.prefill({toks.begin(), toks.begin() + prefix});
  CHECK(l.dim() == 1);
  CHECK((l.scalar_type() == at::kFloat));
  worst = std::max(worst, rel_diff(l, ref[prefix - 1]));
  const at::Tensor chunk = dec.extend({toks.begin() + prefix, toks.begin() + prefix + 5}, /*all_positions=*/true);
  REQUIRE(chunk.size(0) == 5);
  for (int64_t i = 0; i < 5; ++i) worst = std::max(worst, rel_diff(chunk[i], ref[prefix + i]));
  for (int64_t p = prefix + 5; p < len; ++p) {
    CHECK(dec.length() == p);
    worst = std::max(worst, rel_diff(dec.step(toks[static_cast<size_t>(p)]), ref[p]));
  }
  CHECK(dec.cache().length() == len);
  // a whole prefill equals too, and resume() reuses the shared prefix
  worst = std::max(worst, rel_diff(dec.prefill(toks), ref[len - 1]));
  auto shorter = toks;
  shorter.back() = (shorter.back() + 1) % lm.vocab;
  const at::Tensor other = training_logits<G>(d, params, shorter);
  worst = std::max(worst, rel_diff(dec.resume(shorter), other[len - 1]));
  CHECK(dec.history() == shorter);
  return worst;
}

}  // namespace

TEST_CASE("generate: cached decoding of the dense decoder equals the training forward (fp32, 1e-5)") {
  const auto d = models::dense_lm_tiny();  // 4 query heads over 2 kv heads
  const double worst = incremental_vs_training<models::dense_lm, text_decoder>(d, 3, 48, 11, 0);
  MESSAGE("dense: max relative difference of the logits ", worst);
  CHECK(worst <= 1e-5);
}

TEST_CASE("generate: cached decoding of the MoE decoder equals the training forward (fp32, 1e-5)") {
  const auto d = models::omni_moe_tiny();  // 4 experts, top 2, renormalised; text only
  const double worst = incremental_vs_training<models::omni_moe, moe_text_decoder>(d, 5, 48, 13, 64);
  MESSAGE("moe: max relative difference of the logits ", worst);
  CHECK(worst <= 1e-5);
}

TEST_CASE("generate: cached decoding with every Hugging Face option on equals the training forward (fp32, 1e-5)") {
  auto dense = models::dense_lm_tiny();
  auto& lm = dense.at<"lm">();
  lm.qkv_bias = lm.qk_norm = lm.tie_word_embeddings = true;
  lm.rope_theta = 1e6;
  lm.rms_norm_eps = 1e-5;
  lm.head_dim = 24;  // not hidden / heads = 16
  lm.max_position_embeddings = 64;
  const double worst = incremental_vs_training<models::dense_lm, text_decoder>(dense, 11, 48, 11, 0, true);
  MESSAGE("dense, all options: max relative difference of the logits ", worst);
  CHECK(worst <= 1e-5);

  using moe_lm = graph<nodes<node<"lm", moe_text_decoder>>>;
  moe_lm::dims moe;
  moe.at<"lm">() = {.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 24,
                    .experts = 4, .top_k = 2, .expert_ffn = 64, .qkv_bias = true, .qk_norm = true,
                    .rope_theta = 1e6, .rms_norm_eps = 1e-5, .tie_word_embeddings = true,
                    .max_position_embeddings = 64, .norm_topk_prob = false};
  const double worst_moe = incremental_vs_training<moe_lm, moe_text_decoder>(moe, 13, 48, 13, 64, true);
  MESSAGE("moe, all options: max relative difference of the logits ", worst_moe);
  CHECK(worst_moe <= 1e-5);
}

TEST_CASE("generate: the kv cache grows, or refuses past its preallocated length") {
  kv_cache grow(2, 2, 4);
  for (int i = 0; i < 5; ++i) {
    for (int64_t l = 0; l < 2; ++l) {
      const at::Tensor k = at::full({3, 2, 4}, static_cast<float>(i));
      const auto [keys, values] = grow.append(l, k, k + 1);
      CHECK(keys.size(0) == 3 * (i + 1));
      CHECK(keys[3 * i].min().item<float>() == static_cast<float>(i));
      CHECK(keys[0].max().item<float>() == 0.0f);  // earlier positions survive the growth
    }
    grow.advance(3);
  }
  CHECK(grow.capacity() >= 15);
  kv_cache fixed(1, 2, 4, 4);
  (void)fixed.append(0, at::zeros({4, 2, 4}), at::zeros({4, 2, 4}));
  fixed.advance(4);
  CHECK_THROWS_WITH(fixed.append(0, at::zeros({1, 2, 4}), at::zeros({1, 2, 4})),
                    doctest::Contains("5 positions exceed its capacity of 4"));
  CHECK_THROWS_WITH(fixed.append(0, at::zeros({1, 3, 4}), at::zeros({1, 3, 4})), doctest::Contains("do not fit a cache of 2 kv heads"));
}

TEST_CASE("generate: greedy is deterministic, top-p near 0 is greedy, stop ids stop") {
  const auto d = models::dense_lm_tiny();
  auto params = sharp_params<models::dense_lm>(d, 7);
  const auto& lm = veomni::get<0>(d);
  decoder<text_decoder> dec(lm, weights_of_units(params, 0, lm.layers));
  const std::vector<int64_t> prompt{256, 'a', 'b', 'c'};
  generate_options o;
  o.max_new_tokens = 20;
  std::vector<int64_t> streamed;
  o.on_token = [&](int64_t t) {
    streamed.push_back(t);
    return true;
  };
  const generation g1 = generate(dec, prompt, o);
  CHECK(g1.tokens.size() == 20);
  CHECK(g1.reason == generation::stop_reason::max_new_tokens);
  CHECK(streamed == g1.tokens);
  o.on_token = nullptr;
  CHECK(generate(dec, prompt, o).tokens == g1.tokens);  // greedy: the same tokens again
  // greedy by hand: argmax of each step's logits
  std::vector<int64_t> by_hand;
  at::Tensor l = dec.prefill(prompt);
  for (int i = 0; i < 20; ++i) {
    by_hand.push_back(l.argmax().item<int64_t>());
    l = dec.step(by_hand.back());
  }
  CHECK(by_hand == g1.tokens);

  generate_options nucleus = o;
  nucleus.sample = {.temperature = 1.5, .top_p = 1e-9, .seed = 123};
  CHECK(generate(dec, prompt, nucleus).tokens == g1.tokens);

  // sampling at temperature 1 over the whole vocabulary: the seed decides, and decides alike
  generate_options hot = o;
  hot.sample = {.temperature = 1.0, .top_p = 1.0, .seed = 1};
  const auto a = generate(dec, prompt, hot).tokens;
  CHECK(generate(dec, prompt, hot).tokens == a);
  hot.sample.seed = 2;
  CHECK(generate(dec, prompt, hot).tokens != a);

  // a stop id ends the generation before it; the callback can end it too
  generate_options stop = o;
  stop.stop_ids = {999, g1.tokens[5]};
  const generation g2 = generate(dec, prompt, stop);
  CHECK(g2.reason == generation::stop_reason::stop_id);
  CHECK(g2.stop_id == g1.tokens[5]);
  const auto first = std::find(g1.tokens.begin(), g1.tokens.end(), g1.tokens[5]);
  CHECK(g2.tokens == std::vector<int64_t>(g1.tokens.begin(), first));
  generate_options three = o;
  three.on_token = [n = 0](int64_t) mutable { return ++n < 3; };
  const generation g3 = generate(dec, prompt, three);
  CHECK(g3.reason == generation::stop_reason::callback);
  CHECK(g3.tokens == std::vector<int64_t>(g1.tokens.begin(), g1.tokens.begin() + 3));
}

TEST_CASE("generate: the nucleus keeps the fewest most probable tokens reaching top_p") {
  // probabilities {0.5, 0.3, 0.15, 0.05} (logits = their logs): top_p 0.75 keeps {0, 1}
  const at::Tensor logits = at::tensor({0.5, 0.3, 0.15, 0.05}, at::kDouble).log().to(at::kFloat);
  sampler s({.temperature = 1.0, .top_p = 0.75, .seed = 9});
  int64_t counts[4] = {0, 0, 0, 0};
  for (int i = 0; i < 4000; ++i) ++counts[s.next(logits)];
  CHECK(counts[2] == 0);
  CHECK(counts[3] == 0);
  CHECK(std::abs(counts[0] / 4000.0 - 0.625) < 0.03);
  sampling cold;
  cold.temperature = -1.0;
  CHECK_THROWS_WITH(sampler{cold}, doctest::Contains("temperature -1 must be >= 0"));
}

TEST_CASE("generate: top_p 1 draws from the whole softmax, in proportion") {
  const at::Tensor logits = at::tensor({0.5, 0.3, 0.15, 0.05}, at::kDouble).log().to(at::kFloat);
  sampler s({.temperature = 1.0, .top_p = 1.0, .seed = 5});
  int64_t counts[4] = {0, 0, 0, 0};
  std::vector<int64_t> drawn;
  for (int i = 0; i < 8000; ++i) drawn.push_back(s.next(logits)), ++counts[drawn.back()];
  const double want[4] = {0.5, 0.3, 0.15, 0.05};
  for (int k = 0; k < 4; ++k) CHECK(std::abs(counts[k] / 8000.0 - want[k]) < 0.02);
  sampler again({.temperature = 1.0, .top_p = 1.0, .seed = 5});  // the seed decides
  for (int i = 0; i < 8000; ++i) REQUIRE(again.next(logits) == drawn[static_cast<size_t>(i)]);
  // -inf logits are never drawn
  const at::Tensor masked = at::tensor({-std::numeric_limits<float>::infinity(), 0.0f, -std::numeric_limits<float>::infinity()});
  for (int i = 0; i < 100; ++i) CHECK(s.next(masked) == 1);
}

TEST_CASE("generate: a nucleus past the first partial sort is the one a full stable sort gives") {
  // 5000 ids of close logits (and some equal ones): the nucleus of top_p 0.9 holds thousands of ids,
  // so the partial sort grows several times; every draw is in the nucleus of the full stable sort
  at::manual_seed(3);
  at::Tensor logits = (at::randn({5000}) * 0.5).to(at::kFloat);
  logits.narrow(0, 100, 50).fill_(0.25f);  // ties: the lower id first
  const float* p = logits.data_ptr<float>();
  for (double top_p : {0.05, 0.5, 0.9}) {
    std::vector<int64_t> order(5000);
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
    double sum = 0;
    std::vector<double> prob(5000);
    for (size_t i = 0; i < 5000; ++i) sum += prob[i] = std::exp(static_cast<double>(p[order[i]]) - p[order[0]]);
    size_t keep = 0;
    for (double mass = 0; keep == 0 || mass < top_p * sum;) mass += prob[keep++];
    const std::set<int64_t> nucleus(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep));
    sampler s({.temperature = 1.0, .top_p = top_p, .seed = 11});
    std::set<int64_t> seen;
    for (int i = 0; i < 3000; ++i) {
      const int64_t t = s.next(logits);
      REQUIRE(nucleus.count(t) == 1);
      seen.insert(t);
    }
    if (top_p == 0.9) {
      CHECK(keep > 1000);
      CHECK(seen.size() > 500);  // drawn from all over it, not only the first sorted chunk
    }
  }
}

TEST_CASE("generate: a NaN, +inf or all -inf logit row is an error, greedy or sampled") {
  const float inf = std::numeric_limits<float>::infinity();
  at::Tensor nan_row = at::zeros({8});
  nan_row[5] = std::numeric_limits<float>::quiet_NaN();
  sampler hot({.temperature = 1.0, .top_p = 1.0, .seed = 1});
  sampler nucleus({.temperature = 0.7, .top_p = 0.9, .seed = 1});
  sampler cold({.temperature = 0.0});
  for (sampler* s : {&hot, &nucleus, &cold}) {
    CHECK_THROWS_AS(s->next(nan_row), std::runtime_error);
    CHECK_THROWS_WITH(s->next(nan_row), doctest::Contains("the logits hold NaN (id 5 of 8)"));
    CHECK_THROWS_WITH(s->next(at::full({4}, -inf)), doctest::Contains("are all -inf"));
    at::Tensor big = at::zeros({4});
    big[2] = inf;
    CHECK_THROWS_WITH(s->next(big), doctest::Contains("the logits hold +inf (id 2 of 4)"));
  }
  CHECK_THROWS_WITH(greedy(nan_row), doctest::Contains("veomni::nn::greedy: the logits hold NaN"));
  // a row with some -inf is fine
  at::Tensor some = at::full({4}, -inf);
  some[3] = 1.0f;
  CHECK(greedy(some) == 3);
  CHECK(hot.next(some) == 3);
  CHECK(nucleus.next(some) == 3);
}

TEST_CASE("generate: weights by name name what is missing or of another shape") {
  const auto d = models::dense_lm_tiny();
  const auto& lm = veomni::get<0>(d);
  std::map<std::string, at::Tensor> named;
  for (const auto& s : impl<text_decoder>::root_specs(lm, "lm.")) named[s.name] = materialize(s, 1);
  for (int64_t b = 0; b < lm.layers; ++b)
    for (const auto& s : impl<text_decoder>::block_specs(lm, b, "lm.")) named[s.name] = materialize(s, 1);
  CHECK(weights_by_name<text_decoder>(lm, named, "lm.").blocks.size() == 2);
  auto wrong = named;
  wrong["lm.model.norm.weight"] = at::ones({32});
  CHECK_THROWS_WITH(weights_by_name<text_decoder>(lm, wrong, "lm."),
                    doctest::Contains("weight 'lm.model.norm.weight' has shape [32] but the model's dims give [64]"));
  wrong = named;
  wrong.erase("lm.model.layers.1.mlp.up_proj.weight");
  CHECK_THROWS_WITH(weights_by_name<text_decoder>(lm, wrong, "lm."), doctest::Contains("no weight 'lm.model.layers.1.mlp.up_proj.weight'"));
}
