#pragma once
// Activation memory per rank: what the forward keeps for the backward.
//
// Per token and block, a layer keeps `geometry::saved_per_token` elements
// (its input and what its math saves) and `saved_fp32_per_token` fp32 values.
// Attention is FlashAttention's: q, k, v, the output and one log-sum-exp per
// head, no seq x seq matrix (veomni's CPU attention, nn/flash_attention.hpp,
// keeps exactly these). A decoder block (RMSNorm, GQA attention, RMSNorm,
// SwiGLU) keeps
//   4 h + 2 q_width + 2 kv_width + 3 ffn      elements per token
//   + heads                                   fp32 per token
// Qwen2-7B: 4*3584 + 2*3584 + 2*512 + 3*18944 = 79,360 -> 158,720 bytes in
// bf16, + 28 * 4 = 158,832.
//
// Without checkpointing every block keeps that. With full activation
// checkpointing a block keeps only its input (h per token) and recomputes the
// rest in backward, one block at a time: the peak adds one block's full set.
// The root layers (final norm, head) are not checkpointed. The loss
// (training_step::loss):
//   chunked (veomni's): the gradient of the head's input, h per token, plus
//     one chunk of fp32 logits (loss_chunk x vocab x 4 bytes) while it runs
//   logits (a whole-tensor loss, the reference system's): bf16 logits and
//     their fp32 upcast, 6 bytes x vocab per token, which dominates at long
//     sequence (Qwen2-72B, 16k tokens per rank: 14.9 GB)
//
// Backward adds, at its peak, the gradients in flight through one layer
// (geometry::grad_working_per_token, the largest layer's): measured against
// veomni's runtime on the dense_peer model (benchmarks/RESULTS.md, "Long
// context"), SwiGLU's h + 2 ffn per token is what a step adds beyond the
// saved sets.
//
// Tokens are per rank: with Ulysses a rank holds seq/sp tokens outside
// attention and seq x heads/sp inside it, the same count either way.
#include <algorithm>
#include <cstddef>

#include "component.hpp"
#include "graph.hpp"
#include "step.hpp"

namespace veomni {

struct activation_memory {
  long kept = 0;     // bytes kept across the whole forward (all blocks)
  long working = 0;  // one block recomputed during backward (checkpointing only)
  long root = 0;     // root layers and the loss's logits
  long backward = 0; // gradients in flight through the largest layer during backward
  constexpr long total() const { return kept + working + root + backward; }
};

namespace detail {
// Bytes per token the layers of scope s keep, activations of `element_bytes`.
template <Component C>
constexpr long saved_bytes_per_token(const typename C::dims& d, scope s, long element_bytes) {
  long n = 0;
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].where == s) {
      const geometry g = C::shape(i, d);
      n += g.saved_per_token * element_bytes + g.saved_fp32_per_token * 4;
    }
  return n;
}
// Bytes per token of the largest layer's gradients in flight in backward.
template <Component C>
constexpr long grad_working_bytes_per_token(const typename C::dims& d, long element_bytes) {
  long n = 0;
  for (std::size_t i = 0; i < C::layers.size(); ++i) n = std::max(n, C::shape(i, d).grad_working_per_token);
  return n * element_bytes;
}
// The width entering a block: what a checkpointed block keeps.
template <Component C>
constexpr long block_input_width(const typename C::dims& d) {
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].where == scope::block) return C::shape(i, d).width;
  return 0;
}
// The loss of a component's head layers over `tokens` tokens.
template <Component C>
constexpr long loss_bytes(const typename C::dims& d, long tokens, long element_bytes, loss_memory keeps,
                          long chunk) {
  long b = 0;
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].kind == layer_kind::head && C::layers[i].where == scope::model) {
      const geometry g = C::shape(i, d);
      const long vocab = g.width > 0 ? g.flops_per_token / (2 * g.width) : 0;
      if (keeps == loss_memory::logits)
        b += vocab * (2 + 4) * tokens;  // bf16 logits + fp32 upcast
      else
        b += g.width * element_bytes * tokens + std::min(tokens, chunk) * vocab * 4;  // d(input), one fp32 chunk
    }
  return b;
}
}  // namespace detail

// Activation bytes of one component for `tokens` tokens on this rank.
template <Component C>
constexpr activation_memory activations(const typename C::dims& d, long tokens, bool checkpointing,
                                        long element_bytes, loss_memory loss = loss_memory::chunked,
                                        long loss_chunk = 1024) {
  activation_memory a;
  const long blocks = C::blocks(d);
  const long block_set = detail::saved_bytes_per_token<C>(d, scope::block, element_bytes) * tokens;
  if (checkpointing && blocks > 0) {
    a.kept = blocks * detail::block_input_width<C>(d) * tokens * element_bytes;
    a.working = block_set;
  } else {
    a.kept = blocks * block_set;
  }
  a.root = detail::saved_bytes_per_token<C>(d, scope::model, element_bytes) * tokens +
           detail::loss_bytes<C>(d, tokens, element_bytes, loss, loss_chunk);
  a.backward = detail::grad_working_bytes_per_token<C>(d, element_bytes) * tokens;
  return a;
}

// Activation bytes per rank of a whole model for one micro-batch: every
// node's kept and root bytes add up; backward recomputes one block at a time.
template <Model G>
constexpr activation_memory activations(const typename G::dims& d, const training_step& st, const mesh_shape& m) {
  activation_memory total;
  for_each_node<G>([&](auto I) {
    using C = typename G::template component_at<I.value>;
    const activation_memory a = activations<C>(veomni::get<I.value>(d), st.tokens_per_rank(G::names[I.value], m),
                                               st.checkpointing, activation_bytes_of(st.prec), st.loss, st.loss_chunk);
    total.kept += a.kept;
    total.root += a.root;
    total.working = std::max(total.working, a.working);
    total.backward = std::max(total.backward, a.backward);
  });
  return total;
}

}  // namespace veomni
