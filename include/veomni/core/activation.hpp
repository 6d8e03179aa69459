#pragma once
// Activation memory per rank: what the forward keeps for the backward.
//
// Per token and block, a layer keeps `geometry::saved_per_token` elements
// (its input and what its math saves; FlashAttention keeps q, k, v and the
// output, no seq x seq matrix). A decoder block (RMSNorm, GQA attention,
// RMSNorm, SwiGLU) keeps
//   4 h + 2 q_width + 2 kv_width + 3 ffn      elements per token
// Qwen2-7B: 4*3584 + 2*3584 + 2*512 + 3*18944 = 79,360 -> 158,720 bytes in bf16.
//
// Without checkpointing every block keeps that. With full activation
// checkpointing a block keeps only its input (h per token) and recomputes the
// rest in backward, one block at a time: the peak adds one block's full set.
// The root layers (final norm, head) are not checkpointed, and the loss keeps
// the logits in bf16 and their fp32 upcast: 6 bytes x vocab per token, which
// dominates at long sequence (Qwen2-72B, 16k tokens per rank: 14.9 GB).
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
  constexpr long total() const { return kept + working + root; }
};

namespace detail {
template <Component C>
constexpr long saved_per_token(const typename C::dims& d, scope s) {
  long n = 0;
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].where == s) n += C::shape(i, d).saved_per_token;
  return n;
}
// The width entering a block: what a checkpointed block keeps.
template <Component C>
constexpr long block_input_width(const typename C::dims& d) {
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].where == scope::block) return C::shape(i, d).width;
  return 0;
}
// fp32 logits of a head layer for the loss, bytes per token.
template <Component C>
constexpr long loss_bytes_per_token(const typename C::dims& d) {
  long b = 0;
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].kind == layer_kind::head && C::layers[i].where == scope::model) {
      const geometry g = C::shape(i, d);
      const long vocab = g.width > 0 ? g.flops_per_token / (2 * g.width) : 0;
      b += vocab * (2 + 4);  // bf16 logits + fp32 upcast
    }
  return b;
}
}  // namespace detail

// Activation bytes of one component for `tokens` tokens on this rank.
template <Component C>
constexpr activation_memory activations(const typename C::dims& d, long tokens, bool checkpointing,
                                        long element_bytes) {
  activation_memory a;
  const long blocks = C::blocks(d);
  const long block_set = detail::saved_per_token<C>(d, scope::block) * tokens * element_bytes;
  if (checkpointing && blocks > 0) {
    a.kept = blocks * detail::block_input_width<C>(d) * tokens * element_bytes;
    a.working = block_set;
  } else {
    a.kept = blocks * block_set;
  }
  a.root = detail::saved_per_token<C>(d, scope::model) * tokens * element_bytes +
           detail::loss_bytes_per_token<C>(d) * tokens;
  return a;
}

// Activation bytes per rank of a whole model for one micro-batch: every
// node's kept and root bytes add up; backward recomputes one block at a time.
template <Model G>
constexpr activation_memory activations(const typename G::dims& d, const training_step& st, const mesh_shape& m) {
  activation_memory total;
  for_each_node<G>([&](auto I) {
    using C = typename G::template component_at<I.value>;
    const activation_memory a = activations<C>(std::get<I.value>(d), st.tokens_per_rank(G::names[I.value], m),
                                               st.checkpointing, activation_bytes_of(st.prec));
    total.kept += a.kept;
    total.root += a.root;
    total.working = std::max(total.working, a.working);
  });
  return total;
}

}  // namespace veomni
