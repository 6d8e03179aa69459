#pragma once
// <veomni/nn/generate.hpp>: incremental decoding of a language-model node
// (impl<text_decoder>, impl<moe_text_decoder>) with a KV cache, and sampling.
//
// The decoder runs the training weights, in the training layout
// (impl<C>::root_specs, block_specs), through the training functions and the
// dims' options: rms_norm (rms_norm_eps), the q/k/v projections with their
// biases and per-head q/k norms (detail::project_qkv: qkv_bias, qk_norm), rope
// (rope_theta, rotate-half), swiglu, route (softmax, top-k, norm_topk_prob),
// hooks::experts (sort by expert, grouped experts, weighted sum) and the head
// (lm_head, or embed_tokens with tie_word_embeddings); a position at or past
// max_position_embeddings (when set) is an error. Only the
// attention differs in form: the queries of the new tokens against the
// cached keys and values of every earlier position, with grouped-query heads
// (query head h reads kv head h / (heads / kv_heads), as varlen_attention's
// repeat_interleave) and scale 1 / sqrt(head_dim). A prefill into an empty
// cache runs varlen_attention itself (flash attention, memory O(T)).
// tests/nn/test_generate.cpp holds it to the training forward: logits within
// 1e-5 relative in fp32 (measured: 1e-6), dense and MoE.
//
// Worked example, a prompt of 5 tokens, then one more:
//   decoder<text_decoder> lm(d, weights_by_name<text_decoder>(d, named, "lm."));
//   at::Tensor l = lm.prefill({256, 'h', 'i', '?', ' '});  // positions 0..4: logits of 4, [vocab] fp32
//   l = lm.step(greedy(l));  // position 5: each layer's cache holds K, V of 0..5, [6, kv_heads, head_dim]
// or the whole loop (sampling, stop ids, streaming: generate_options):
//   generation g = generate(lm, prompt, opts);  // g.tokens: the new ids, without the stop id
//
// Text only: the prompt is token ids. Media placeholders (the image and audio
// rows an encoder puts in the training batch) are out of scope here.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "components.hpp"
#include "functional.hpp"
#include "model.hpp"

namespace veomni::nn {

// ---- the cache ---------------------------------------------------------------------------

// Per layer, the keys and values (after rope) of every position decoded so
// far: [capacity, kv_heads, head_dim] each, positions [0, length()) valid.
// capacity > 0 preallocates and a longer sequence is an error; 0 grows
// (doubling), for a caller that does not know the length in advance.
class kv_cache {
 public:
  kv_cache() = default;
  kv_cache(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t capacity = 0,
           at::ScalarType dtype = at::kFloat)
      : k_(static_cast<size_t>(layers)), v_(static_cast<size_t>(layers)), kv_heads_(kv_heads), head_dim_(head_dim),
        fixed_(capacity > 0), dtype_(dtype) {
    if (capacity > 0) reserve(capacity);
  }

  int64_t length() const { return length_; }
  int64_t capacity() const { return k_.empty() || !k_[0].defined() ? 0 : k_[0].size(0); }
  int64_t layers() const { return static_cast<int64_t>(k_.size()); }

  // Writes layer l's k, v [n, kv_heads, head_dim] at positions [length(),
  // length() + n) and returns that layer's keys and values of [0, length() + n).
  // length() moves on once every layer has written: advance(n).
  std::pair<at::Tensor, at::Tensor> append(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
    const int64_t n = k.size(0), end = length_ + n;
    TORCH_CHECK(layer >= 0 && layer < layers(), "veomni::nn::kv_cache: layer ", layer, " of a cache of ", layers(), " layers");
    TORCH_CHECK(k.dim() == 3 && k.size(1) == kv_heads_ && k.size(2) == head_dim_ && v.sizes() == k.sizes(),
                "veomni::nn::kv_cache: keys ", k.sizes(), " and values ", v.sizes(), " do not fit a cache of ", kv_heads_,
                " kv heads of dim ", head_dim_);
    if (end > capacity()) {
      TORCH_CHECK(!fixed_, "veomni::nn::kv_cache: ", end, " positions exceed its capacity of ", capacity(),
                  " (allocate a longer cache, or capacity 0 to grow)");
      reserve(std::max<int64_t>(end, 2 * capacity()));
    }
    auto& kl = k_[static_cast<size_t>(layer)];
    auto& vl = v_[static_cast<size_t>(layer)];
    kl.narrow(0, length_, n).copy_(k);
    vl.narrow(0, length_, n).copy_(v);
    return {kl.narrow(0, 0, end), vl.narrow(0, 0, end)};
  }
  void advance(int64_t n) { length_ += n; }
  // Keeps positions [0, n): a conversation that shares its first n tokens
  // with what is cached decodes only the rest.
  void truncate(int64_t n) {
    TORCH_CHECK(n >= 0 && n <= length_, "veomni::nn::kv_cache::truncate: ", n, " is outside [0, ", length_, "]");
    length_ = n;
  }
  void clear() { length_ = 0; }

 private:
  void reserve(int64_t cap) {
    for (size_t l = 0; l < k_.size(); ++l) {
      at::Tensor k = at::empty({cap, kv_heads_, head_dim_}, at::TensorOptions().dtype(dtype_));
      at::Tensor v = at::empty_like(k);
      if (length_ > 0) {
        k.narrow(0, 0, length_).copy_(k_[l].narrow(0, 0, length_));
        v.narrow(0, 0, length_).copy_(v_[l].narrow(0, 0, length_));
      }
      k_[l] = k, v_[l] = v;
    }
  }
  std::vector<at::Tensor> k_, v_;
  int64_t kv_heads_ = 0, head_dim_ = 0, length_ = 0;
  bool fixed_ = false;
  at::ScalarType dtype_ = at::kFloat;
};

// Queries of positions [start, start + n), q [n, heads, D], against keys and
// values of positions [0, L), [L, kv_heads, D] (L = start + n): causal, each
// sees the keys up to its own position. Returns [n, heads, D].
// Grouped heads without copies: q viewed [kv_heads, group * n, D], one
// batched matmul per kv head's group.
inline at::Tensor cached_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) {
  const int64_t n = q.size(0), hq = q.size(1), d = q.size(2), hkv = k.size(1), len = k.size(0);
  TORCH_CHECK(hq % hkv == 0 && len == start + n, "veomni::nn::cached_attention: ", hq, " query heads at positions [", start,
              ", ", start + n, ") against ", hkv, " kv heads of ", len, " positions");
  const int64_t g = hq / hkv;
  const at::Tensor qg = q.view({n, hkv, g, d}).permute({1, 2, 0, 3}).reshape({hkv, g * n, d});
  const at::Tensor kk = k.permute({1, 0, 2}), vv = v.permute({1, 0, 2});  // [kv_heads, L, D]
  at::Tensor s = at::bmm(qg, kk.transpose(1, 2)).mul_(1.0 / std::sqrt(static_cast<double>(d)));  // [kv_heads, g n, L]
  if (n > 1) {  // query i (position start + i) sees keys j <= start + i
    const at::Tensor above = at::ones({n, len}, at::TensorOptions().dtype(at::kBool)).triu(start + 1);
    s.view({hkv, g, n, len}).masked_fill_(above, -std::numeric_limits<double>::infinity());
  }
  const at::Tensor o = at::bmm(s.softmax(-1), vv);  // [kv_heads, g n, D]
  return o.view({hkv, g, n, d}).permute({2, 0, 1, 3}).reshape({n, hq, d});
}

// ---- weights ----------------------------------------------------------------------------------

// A language model's parameters in the training layout: root = embed_tokens,
// norm, lm_head (not when tied); blocks[i] = block i's parameters in block_specs order.
struct lm_weights {
  tensors root;
  std::vector<tensors> blocks;
};

template <class C>
concept language_model = std::is_same_v<C, text_decoder> || std::is_same_v<C, moe_text_decoder>;

// The weights from tensors by name ("lm.model.layers.0.self_attn.q_proj.weight"
// with prefix "lm."): every spec of the dims must be there with its shape.
// Throws c10::Error naming the weight that is missing or of another shape.
template <language_model C>
lm_weights weights_by_name(const typename C::dims& d, const std::map<std::string, at::Tensor>& named,
                           const std::string& prefix = "") {
  auto take = [&](const std::vector<param_spec>& specs) {
    tensors out;
    for (const auto& s : specs) {
      const auto it = named.find(s.name);
      TORCH_CHECK(it != named.end(), "veomni::nn::weights_by_name: no weight '", s.name, "'");
      TORCH_CHECK(it->second.sizes() == at::IntArrayRef(s.shape), "veomni::nn::weights_by_name: weight '", s.name,
                  "' has shape ", it->second.sizes(), " but the model's dims give ", at::IntArrayRef(s.shape));
      out.push_back(it->second);
    }
    return out;
  };
  lm_weights w;
  w.root = take(impl<C>::root_specs(d, prefix));
  for (int64_t b = 0; b < C::blocks(d); ++b) w.blocks.push_back(take(impl<C>::block_specs(d, b, prefix)));
  return w;
}

// The weights of node `node` of a model from a unit source (local_params,
// train::named_params): what the training forward reads.
inline lm_weights weights_of_units(unit_source& units, std::size_t node, int64_t blocks) {
  lm_weights w;
  w.root = units.unit({node, -1});
  for (int64_t b = 0; b < blocks; ++b) w.blocks.push_back(units.unit({node, b}));
  return w;
}

// ---- the decoder -------------------------------------------------------------------------------

template <language_model C>
class decoder {
 public:
  using dims = typename C::dims;

  // max_length > 0 preallocates the cache for that many positions; 0 grows it.
  decoder(const dims& d, lm_weights w, int64_t max_length = 0) : d_(d), w_(std::move(w)) {
    const size_t roots = d_.tie_word_embeddings ? 2 : 3;
    TORCH_CHECK(static_cast<int64_t>(w_.blocks.size()) == d_.layers && w_.root.size() == roots,
                "veomni::nn::decoder: weights of ", w_.blocks.size(), " blocks and ", w_.root.size(),
                " root tensors for a model of ", d_.layers, " layers (", roots, " root tensors: embed_tokens, norm",
                d_.tie_word_embeddings ? "; the head tied to embed_tokens)" : ", lm_head)");
    TORCH_CHECK(d_.heads % d_.kv_heads == 0, "veomni::nn::decoder: ", d_.heads, " query heads are not a multiple of ",
                d_.kv_heads, " kv heads");
    for (auto& t : w_.root) t = t.detach();
    for (auto& b : w_.blocks)
      for (auto& t : b) t = t.detach();
    cache_ = kv_cache(d_.layers, d_.kv_heads, d_.head_dim, max_length, w_.root[0].scalar_type());
  }

  // Runs the prompt from position 0 (the cache is cleared): the logits of its last position, [vocab] fp32.
  at::Tensor prefill(const std::vector<int64_t>& tokens) {
    TORCH_CHECK(!tokens.empty(), "veomni::nn::decoder::prefill: an empty prompt");
    truncate(0);
    return extend(tokens).select(0, 0);
  }
  // The same logits, decoding only what follows the longest prefix that the
  // cache shares with `tokens` (at least the last token is run): a chat
  // re-rendered with one more turn decodes the new turn only.
  at::Tensor resume(const std::vector<int64_t>& tokens) {
    TORCH_CHECK(!tokens.empty(), "veomni::nn::decoder::resume: an empty prompt");
    const auto limit = std::min(tokens.size() - 1, history_.size());
    const auto shared = static_cast<int64_t>(
        std::mismatch(history_.begin(), history_.begin() + static_cast<std::ptrdiff_t>(limit), tokens.begin()).first -
        history_.begin());
    truncate(shared);
    return extend(std::vector<int64_t>(tokens.begin() + shared, tokens.end())).select(0, 0);
  }
  // One more token at position length(): its logits, [vocab] fp32.
  at::Tensor step(int64_t token) { return extend({token}).select(0, 0); }

  // Tokens at positions [length(), length() + n) into the cache: the logits
  // of the last ([1, vocab]), or of every one ([n, vocab]) with all_positions.
  at::Tensor extend(const std::vector<int64_t>& tokens, bool all_positions = false) {
    torch::NoGradGuard no_grad;
    const int64_t n = static_cast<int64_t>(tokens.size()), start = cache_.length();
    TORCH_CHECK(n > 0, "veomni::nn::decoder::extend: no tokens");
    for (int64_t t : tokens)
      TORCH_CHECK(t >= 0 && t < d_.vocab, "veomni::nn::decoder: token id ", t, " is outside the vocabulary [0, ", d_.vocab, ")");
    TORCH_CHECK(d_.max_position_embeddings <= 0 || start + n <= d_.max_position_embeddings, "veomni::nn::decoder: ",
                start + n, " positions exceed max_position_embeddings = ", d_.max_position_embeddings);
    const at::Tensor ids = at::tensor(tokens, at::kLong);
    at::Tensor x = w_.root[0].index_select(0, ids);
    const rope_table table =
        make_rope_table(at::arange(start, start + n, at::kLong), d_.head_dim, x.scalar_type(), d_.rope_theta);
    for (int64_t l = 0; l < d_.layers; ++l) x = block(l, x, table, start);
    cache_.advance(n);
    history_.insert(history_.end(), tokens.begin(), tokens.end());
    at::Tensor h = rms_norm(x, w_.root[1], d_.rms_norm_eps);
    if (!all_positions) h = h.narrow(0, n - 1, 1);
    return at::matmul(h, impl<C>::head_weight(d_, w_.root).t()).to(at::kFloat);
  }

  int64_t length() const { return cache_.length(); }
  // The tokens whose keys and values the cache holds, in position order.
  const std::vector<int64_t>& history() const { return history_; }
  // Keeps positions [0, n).
  void truncate(int64_t n) {
    cache_.truncate(n);
    history_.resize(static_cast<size_t>(n));
  }
  const kv_cache& cache() const { return cache_; }
  const dims& model_dims() const { return d_; }

 private:
  at::Tensor block(int64_t l, const at::Tensor& x, const rope_table& table, int64_t start) {
    const tensors& w = w_.blocks[static_cast<size_t>(l)];
    const int64_t n = x.size(0);
    // attention sublayer (detail::attention_sublayer with the cache in place of the packed batch)
    const detail::attention_geometry att = impl<C>::attention(d_);
    const auto m = static_cast<size_t>(att.tensors());  // the feed-forward's tensors follow
    const detail::attention_inputs in = detail::project_qkv(rms_norm(x, w[0], d_.rms_norm_eps), w, att, table);
    const auto [keys, values] = cache_.append(l, in.k, in.v);
    const at::Tensor o =
        start == 0 ? varlen_attention(in.q, in.k, in.v, at::tensor({int64_t{0}, n}, at::kLong), /*causal=*/true)
                   : cached_attention(in.q, keys, values, start);
    const at::Tensor a = x + project(o.reshape({n, d_.heads * d_.head_dim}), w[4]);
    if constexpr (std::is_same_v<C, text_decoder>) {
      return a + swiglu(rms_norm(a, w[m], d_.rms_norm_eps), w[m + 1], w[m + 2], w[m + 3]);
    } else {
      const at::Tensor h = rms_norm(a, w[m], d_.rms_norm_eps);
      const routing r = route(h, w[m + 1], d_.top_k, d_.norm_topk_prob);
      return a + hooks_.experts(h, r, expert_weights{w[m + 2], w[m + 3], w[m + 4], {}});
    }
  }

  dims d_;
  lm_weights w_;
  kv_cache cache_;
  std::vector<int64_t> history_;
  hooks hooks_;  // the default experts: what one rank computes
};

// ---- sampling ---------------------------------------------------------------------------------

// temperature 0: greedy (the first of equal maxima). Otherwise softmax of
// logits / temperature, cut to the nucleus: the fewest most probable tokens
// whose probabilities sum to at least top_p (at least one: top_p -> 0 is
// greedy), renormalised, drawn with a 64-bit Mersenne twister from `seed`
// (one draw a token).
// Worked example, probabilities {0.5, 0.3, 0.15, 0.05}, top_p 0.75: the
// nucleus is {0, 1} (0.5 + 0.3 >= 0.75), drawn as {0.625, 0.375}.
// Cost a token, vocabulary V: top_p = 1 draws from the whole softmax in id
// order, O(V), no sort; top_p < 1 sorts only as far as the nucleus reaches
// (partial sorts of 64, 128, 256, ... more ids: O(V log K) for a nucleus of
// K ids), in the order of a stable sort by logit (equal logits: lower id
// first).
// A row with a NaN or +inf logit, or no logit above -inf, is an error
// (std::runtime_error naming it): the model's output is broken, and no token
// drawn from it would mean anything.
struct sampling {
  double temperature = 0.0;
  double top_p = 1.0;
  uint64_t seed = 0;
};

namespace detail {

// The first index of the largest logit of a row of v; throws std::runtime_error
// for a NaN or +inf logit, or a row with nothing above -inf (or empty).
inline int64_t checked_argmax(const float* p, int64_t v, const char* who) {
  int64_t best = -1;
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < v; ++i) {
    const float x = p[i];
    if (std::isnan(x) || x == std::numeric_limits<float>::infinity())
      throw std::runtime_error(std::string(who) + ": the logits hold " + (std::isnan(x) ? "NaN" : "+inf") + " (id " +
                               std::to_string(i) + " of " + std::to_string(v) +
                               "): the model's output is broken (diverged weights, or an overflow in its dtype)");
    if (x > top) top = x, best = i;  // strictly greater: the first of equal maxima
  }
  if (best < 0)
    throw std::runtime_error(std::string(who) + ": the logits of " + std::to_string(v) +
                             " ids are all -inf (or none): no token can be drawn");
  return best;
}

inline at::Tensor logit_row(const at::Tensor& logits) { return logits.to(at::kFloat).contiguous().reshape({-1}); }

}  // namespace detail

inline int64_t greedy(const at::Tensor& logits) {
  const at::Tensor l = detail::logit_row(logits);
  return detail::checked_argmax(l.data_ptr<float>(), l.numel(), "veomni::nn::greedy");
}

class sampler {
 public:
  explicit sampler(sampling s) : s_(s), rng_(s.seed) {
    TORCH_CHECK(std::isfinite(s.temperature) && s.temperature >= 0, "veomni::nn::sampler: temperature ", s.temperature,
                " must be >= 0 (0: greedy)");
    TORCH_CHECK(s.top_p >= 0 && s.top_p <= 1, "veomni::nn::sampler: top_p ", s.top_p, " must be in [0, 1]");
  }

  int64_t next(const at::Tensor& logits) {
    if (s_.temperature == 0) return greedy(logits);
    const at::Tensor l = detail::logit_row(logits);
    const float* p = l.data_ptr<float>();
    const int64_t v = l.numel();
    const double top = p[detail::checked_argmax(p, v, "veomni::nn::sampler")];
    // unnormalised probabilities, in id order
    prob_.resize(static_cast<size_t>(v));
    double sum = 0;
    for (int64_t i = 0; i < v; ++i) sum += prob_[static_cast<size_t>(i)] = std::exp((static_cast<double>(p[i]) - top) / s_.temperature);
    if (s_.top_p >= 1) {  // the whole softmax: no order needed
      const double u = uniform() * sum;  // in [0, sum)
      double c = 0;
      int64_t last = 0;
      for (int64_t i = 0; i < v; ++i) {
        const double q = prob_[static_cast<size_t>(i)];
        if (q > 0) last = i;
        if ((c += q) > u) return i;
      }
      return last;  // rounding: the last id with any probability
    }
    // the nucleus: most probable first, sorted only as far as it reaches
    const auto before = [p](int64_t a, int64_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
    order_.resize(static_cast<size_t>(v));
    std::iota(order_.begin(), order_.end(), int64_t{0});
    const double target = s_.top_p * sum;
    size_t keep = 0, sorted = 0, chunk = 64;
    double mass = 0;
    while (keep < order_.size() && (keep == 0 || mass < target)) {
      if (keep == sorted) {  // the next most probable ids, in order, after the `sorted` already placed
        const size_t end = std::min(order_.size(), sorted + chunk);
        std::partial_sort(order_.begin() + static_cast<std::ptrdiff_t>(sorted), order_.begin() + static_cast<std::ptrdiff_t>(end),
                          order_.end(), before);
        sorted = end, chunk *= 2;
      }
      mass += prob_[static_cast<size_t>(order_[keep++])];
    }
    const double u = uniform() * mass;  // in [0, mass)
    double c = 0;
    for (size_t i = 0; i < keep; ++i)
      if ((c += prob_[static_cast<size_t>(order_[i])]) > u) return order_[i];
    return order_[keep - 1];
  }

 private:
  double uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }  // in [0, 1)

  sampling s_;
  std::mt19937_64 rng_;
  std::vector<double> prob_;    // per id, exp((logit - max) / temperature)
  std::vector<int64_t> order_;  // ids, the first `sorted` of them most probable first
};

// ---- the loop --------------------------------------------------------------------------------

struct generate_options {
  int64_t max_new_tokens = 64;
  bool reuse_cache = false;       // decoder::resume instead of prefill: keep the prefix the cache shares with the prompt
  std::vector<int64_t> stop_ids;  // end of turn / end of sequence: ends the generation, not part of it
  sampling sample;
  std::function<bool(int64_t)> on_token;  // each new token as it comes (streaming); false stops
};

struct generation {
  enum class stop_reason { stop_id, max_new_tokens, callback };
  std::vector<int64_t> tokens;  // the new tokens, without the stop id
  stop_reason reason = stop_reason::max_new_tokens;
  int64_t stop_id = -1;  // which one, for stop_reason::stop_id
};

// Prefill of `prompt` (or resume), then one token at a time until a stop id, max_new_tokens or on_token says stop.
template <language_model C>
generation generate(decoder<C>& lm, const std::vector<int64_t>& prompt, const generate_options& o) {
  generation g;
  if (o.max_new_tokens <= 0) return g;
  sampler pick(o.sample);
  at::Tensor logits = o.reuse_cache ? lm.resume(prompt) : lm.prefill(prompt);
  for (;;) {
    const int64_t t = pick.next(logits);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), t) != o.stop_ids.end()) {
      g.reason = generation::stop_reason::stop_id;
      g.stop_id = t;
      return g;
    }
    g.tokens.push_back(t);
    if (o.on_token && !o.on_token(t)) {
      g.reason = generation::stop_reason::callback;
      return g;
    }
    if (static_cast<int64_t>(g.tokens.size()) >= o.max_new_tokens) return g;
    logits = lm.step(t);
  }
}

}  // namespace veomni::nn
