#pragma once
// Split<Ring>: context parallelism written as a user policy, with only the
// public extension points (nothing under include/veomni/ knows it).
//
// The sequence is split over sp in zig-zag order: with P ranks the pack is
// cut into 2P chunks and rank r holds chunks r and 2P-1-r, so under a causal
// mask every rank has the same amount of work. Around each attention core
// the ranks' key/value blocks travel by one all-gather per layer (the form
// the design allows in place of P-1 send/recv rounds: one collective, which
// the plan prices like any other) and each rank attends with its queries to
// the P blocks one at a time, accumulating with the online-softmax rescaling:
//   m' = max(m, rowmax(S_b)),  l' = l e^(m-m') + sum e^(S_b-m'),
//   o' = o e^(m-m') + e^(S_b-m') V_b,   out = o / l
// The backward of the all-gather reduce-scatters the key/value gradients
// back to their owners (the blocks travel the other way).
//
//   plan, per attention layer:  forward  all_gather(kv_block)      over sp
//                               backward reduce_scatter(kv_block)  over sp
#include <cmath>
#include <vector>

#include <veomni/parallel.hpp>

#include "ring_policy.hpp"

namespace user {


// Attention of local queries against every rank's keys and values, in
// blocks with online softmax. q [T, Hq, D], k and v [T, Hkv, D] local rows.
// gather: the all_gather op of this layer, scatter: its backward dual.
template <class H>
at::Tensor ring_attention(const H& gather, const H& scatter, const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v, const nn::seq_layout& s) {
  const int64_t p = gather.size(), t = q.size(0), hq = q.size(1), hkv = k.size(1), d = q.size(2);
  const int64_t total = p * t;
  const at::Tensor all = parallel::gather_rows(gather, scatter, at::cat({k, v}, 1));  // [P*T, 2 Hkv, D], rank order
  const at::Tensor q_index = s.global_index.defined() ? s.global_index : at::arange(t, at::kLong);
  // segment (sample) of a global token index, from the pack's cumulative lengths
  const at::Tensor bounds = s.cu_seqlens.narrow(0, 1, s.cu_seqlens.size(0) - 1).contiguous();
  auto segment = [&](const at::Tensor& idx) { return at::searchsorted(bounds, idx, false, true); };
  const at::Tensor q_seg = segment(q_index);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const at::Tensor qh = q.transpose(0, 1) * scale;  // [Hq, T, D]
  const auto opts = q.options();
  at::Tensor m = at::full({hq, t, 1}, -1e30, opts), l = at::zeros({hq, t, 1}, opts), o = at::zeros({hq, t, d}, opts);
  for (int64_t r = 0; r < p; ++r) {
    const at::Tensor block = all.narrow(0, r * t, t);
    at::Tensor kb = block.narrow(1, 0, hkv).transpose(0, 1), vb = block.narrow(1, hkv, hkv).transpose(0, 1);
    if (hkv != hq) kb = kb.repeat_interleave(hq / hkv, 0), vb = vb.repeat_interleave(hq / hkv, 0);
    const at::Tensor k_index = parallel::sequence_indices(total, r, p, parallel::sequence_layout::zigzag);
    at::Tensor allowed = q_seg.unsqueeze(1).eq(segment(k_index).unsqueeze(0));
    if (s.causal) allowed = allowed.logical_and(k_index.unsqueeze(0).le(q_index.unsqueeze(1)));
    const at::Tensor scores = at::matmul(qh, kb.transpose(1, 2)).masked_fill(allowed.logical_not(), -1e30);
    const at::Tensor m_new = at::maximum(m, std::get<0>(scores.max(-1, true)));
    const at::Tensor alpha = at::exp(m - m_new), e = at::exp(scores - m_new);
    l = l * alpha + e.sum(-1, true);
    o = o * alpha + at::matmul(e, vb);
    m = m_new;
  }
  return (o / l).transpose(0, 1);  // [T, Hq, D]
}

// Split<Ring>'s runtime half (parallel/contract.hpp): constructed once per
// node it is applied to; it wraps the node's attention hook with ring
// attention, issuing its plan ops through their handles.
template <class Node>
struct Ring::runtime {
  static constexpr parallel::sequence_layout layout = parallel::sequence_layout::zigzag;
  explicit runtime(Node& node) {
    const auto gather = node.op(phase::forward, tensor_role::kv_block);
    const auto scatter = node.op(phase::backward, tensor_role::kv_block);
    node.hooks().attention = [gather, scatter](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const nn::seq_layout& s) {
      return ring_attention(gather, scatter, q, k, v, s);
    };
  }
};

}  // namespace user
