#pragma once
// Split<Ulysses>'s runtime half: around each attention core, all_to_all
// from (local sequence, all heads) to (full sequence, local heads) and back.
// Its compile-time half is in core/policies.hpp; it uses only the public
// contract (parallel/contract.hpp), as a user's policy does.
//
//   q, k, v  [T/P, H, D] --seq_to_heads--> [T, H/P, D]   attention   [T, H/P, D] --heads_to_seq--> [T/P, H, D]
#include <torch/torch.h>

#include "../../core/policies.hpp"
#include "../collectives.hpp"
#include "../contract.hpp"

namespace veomni {

template <class Node>
struct Ulysses::runtime {
  explicit runtime(Node& node) {
    using H = typename Node::op_type;
    struct pairs {
      H qf, qb, kf, kb, vf, vb, of, ob;
    };
    const pairs o{node.op(phase::forward, tensor_role::q),        node.op(phase::backward, tensor_role::q),
                  node.op(phase::forward, tensor_role::k),        node.op(phase::backward, tensor_role::k),
                  node.op(phase::forward, tensor_role::v),        node.op(phase::backward, tensor_role::v),
                  node.op(phase::forward, tensor_role::attn_out), node.op(phase::backward, tensor_role::attn_out)};
    node.hooks().attention = [o](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const nn::seq_layout& l) {
      // in the plan's order, one statement each (argument order is unspecified)
      const at::Tensor qh = parallel::seq_to_heads(o.qf, o.qb, q);
      const at::Tensor kh = parallel::seq_to_heads(o.kf, o.kb, k);
      const at::Tensor vh = parallel::seq_to_heads(o.vf, o.vb, v);
      return parallel::heads_to_seq(o.of, o.ob, nn::varlen_attention(qh, kh, vh, l.cu_seqlens, l.causal));
    };
  }
};

}  // namespace veomni
