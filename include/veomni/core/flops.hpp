#pragma once
// FLOPs per token, from the components' geometry: the matmuls (2 FLOPs per
// multiply-add, `geometry::flops_per_token`) and the attention core
// (softmax(q k^T) v), which grows with the context.
//
// Attention core, forward, per token, per attention layer:
//   q k^T and p v:  2 matmuls x 2 FLOPs x context x q_width  = 4 * ctx * q_width
//   causal:         each query sees on average ctx/2 keys    = 2 * ctx * q_width
// Worked example, Qwen2-7B at 8k (q_width 3584, 28 layers, causal):
//   matmuls   2 * (28 * 233,046,016 + 3584 * 152064)  = 14.14 GFLOP per token
//   attention 28 * 2 * 8192 * 3584                    =  1.64 GFLOP per token
// Training runs the forward once and the backward at 2x (the matmuls; see
// predict.hpp for attention's backward): the model FLOPs of a step are
// 3 x forward. The VeOmni paper's MFU follows Megatron's 6N + 12 L h s: the
// attention core without the causal halving, and N with the embedding table;
// flop_convention::paper does that (Qwen2-7B at 8k: 55.4 GFLOP per token,
// against 47.3 executed).
#include <cstddef>

#include "component.hpp"
#include "graph.hpp"
#include "step.hpp"

namespace veomni {

struct flop_split {
  double gemm = 0;       // matmuls of the weights (dense layers, experts, head)
  double attention = 0;  // the attention core
  double experts = 0;    // of `gemm`: the routed experts' matmuls (top_k x 3 x 2 h ffn_e a token), grouped GEMMs

  constexpr double total() const { return gemm + attention; }
  friend constexpr flop_split operator+(flop_split a, const flop_split& b) {
    a.gemm += b.gemm;
    a.attention += b.attention;
    a.experts += b.experts;
    return a;
  }
  friend constexpr flop_split operator*(double k, flop_split a) {
    a.gemm *= k;
    a.attention *= k;
    a.experts *= k;
    return a;
  }
};

// The routed experts' forward matmul FLOPs per token of a layer: each token
// runs top_k experts of expert_params / experts parameters each.
constexpr double routed_expert_flops(const geometry& g) {
  return g.experts > 0 ? 2.0 * static_cast<double>(g.top_k) * static_cast<double>(g.expert_params) /
                             static_cast<double>(g.experts)
                       : 0.0;
}

// Whether a component's attention is causal: the language model's is; the
// encoders attend both ways within an image or an utterance.
template <Component C>
constexpr bool causal_attention() { return C::mod == modality::text; }

// Forward FLOPs per token of one unit of component C: one block (scope::block)
// or the component's root layers (scope::model).
template <Component C>
constexpr flop_split forward_flops(const typename C::dims& d, scope s, long context, bool causal) {
  flop_split f;
  for (std::size_t i = 0; i < C::layers.size(); ++i) {
    if (C::layers[i].where != s) continue;
    const geometry g = C::shape(i, d);
    f.gemm += static_cast<double>(g.flops_per_token);
    f.experts += routed_expert_flops(g);
    if (C::layers[i].kind == layer_kind::attention)
      f.attention += 4.0 * static_cast<double>(g.q_width) * (causal ? context / 2.0 : static_cast<double>(context));
  }
  return f;
}

// Forward FLOPs per token of the whole component (root + every block).
template <Component C>
constexpr flop_split forward_flops(const typename C::dims& d, long context, bool causal) {
  return forward_flops<C>(d, scope::model, context, causal) +
         static_cast<double>(C::blocks(d)) * forward_flops<C>(d, scope::block, context, causal);
}

enum class flop_convention {
  executed,  // causal attention counts the half it computes
  paper,     // attention over the whole context, embedding as a matmul (Megatron / VeOmni paper MFU)
};

// Model FLOPs of one training sample (forward + backward = 3 x forward) of
// a whole model, over every node's tokens.
template <Model G>
constexpr double training_flops_per_sample(const typename G::dims& d, const training_step& st,
                                           flop_convention conv = flop_convention::executed) {
  double total = 0;
  for_each_node<G>([&](auto I) {
    using C = typename G::template component_at<I.value>;
    const auto name = G::names[I.value];
    const bool causal = causal_attention<C>() && conv == flop_convention::executed;
    const auto& nd = veomni::get<I.value>(d);
    double f = forward_flops<C>(nd, st.context(name), causal).total();
    if (conv == flop_convention::paper)  // 6N counts the embedding table as if it were a matmul
      for (std::size_t i = 0; i < C::layers.size(); ++i)
        if (C::layers[i].kind == layer_kind::embedding) f += 2.0 * static_cast<double>(C::shape(i, nd).params);
    total += 3.0 * f * static_cast<double>(st.tokens_per_sample(name));
  });
  return total;
}

}  // namespace veomni
