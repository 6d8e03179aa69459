#pragma once
// Predicted step time and throughput of a plan on a hardware profile.
//
// Compute: FLOPs (flops.hpp) at an achievable fraction of the bf16 peak, one
// fraction for weight matmuls, one for the attention core:
//   forward   gemm / (peak * e.gemm) + attention / (peak * e.attention)
//   backward  2 x the gemm, e.attention_backward x the attention (FlashAttention-2
//             recomputes q k^T: 5 matmuls against the forward's 2 -> 2.5)
//   checkpointing adds one forward of every block to the backward, and its
//   layer ops (Ulysses', EP's all-to-alls) run again there.
// MoE layers: the routed experts' matmuls run as grouped GEMMs at
// e.grouped_gemm (less with few rows per expert), paced by the busiest
// rank (e.expert_imbalance, also on the dispatch and combine all-to-alls);
// their router, permutation, SwiGLU and combine stream top_k copies of each
// token through HBM at e.memory of its bandwidth (moe_forward_bytes).
// Communication: every plan op priced by cost.hpp (bytes) and hardware.hpp
// (which links its group uses), at e.network of the link rate.
// Overlap, as the plan runs: a unit's parameter collectives (FSDP's gathers
// and gradient reduce-scatters, `target.is_unit`) are prefetched on a
// communication stream while the neighbouring block computes, so per block
//   forward   max(compute + blocking, gather of the next block)
//   backward  max(compute + blocking, gather + reduce-scatter)
// Layer ops (Ulysses' and EP's all-to-alls) sit between two matmuls of the
// same layer and block the compute stream: they add. A root unit's
// collectives (embedding, head) have nothing to hide behind: they add.
// The optimizer step streams each local parameter's state through HBM.
//
// Worked example (H100, Qwen2-7B, FSDP over 128 GPUs, 8k, checkpointing):
//   a block: 0.23 G params -> forward 9.2 ms of compute, its bf16 gather
//   0.47 GB at 0.8 x 400 GB/s (8 NICs per node) = 1.5 ms: hidden; the step is
//   compute-bound and predicts ~7,200 tokens/s/GPU (paper: 6,940).
#include <algorithm>
#include <cstddef>

#include "activation.hpp"
#include "cost.hpp"
#include "flops.hpp"
#include "hardware.hpp"
#include "plan.hpp"
#include "static_vector.hpp"
#include "step.hpp"

namespace veomni {

// One model of efficiency for every prediction (see docs/cost_model.md for
// where the numbers come from; they are not tuned per model or per row).
struct efficiency {
  double gemm = 0.50;       // bf16 matmuls inside a training step (cuBLAS alone: ~0.7 of peak)
  double attention = 0.33;  // FlashAttention-2 forward and backward on H100 (~330 TFLOP/s)
  double attention_backward = 2.5;  // backward / forward FLOPs of the attention core
  double network = 0.80;    // achieved / line rate of NVLink and InfiniBand collectives
  // MoE layers (docs/cost_model.md, "MoE layers"):
  double grouped_gemm = 0.12;       // the routed experts' grouped GEMMs, with many rows per expert
  double grouped_rows_half = 1024;  // rows per expert at which a grouped GEMM runs at half that
  double memory = 0.70;             // of HBM bandwidth: the gathers, scatters and elementwise kernels
  double expert_imbalance = 1.20;   // the busiest rank's routed rows / the mean: it sets the pace
};
struct axis_seconds {
  axis_set over;
  double seconds = 0;  // per step, if nothing overlapped
};

struct step_prediction {
  long micro_batches = 0;
  double compute_s = 0;        // per step, all micro-batches: the four terms below
  double gemm_s = 0;           //   dense matmuls (forward, recompute, backward)
  double attention_s = 0;      //   the attention core
  double experts_s = 0;        //   the routed experts' grouped GEMMs, at the busiest rank's rows
  double moe_memory_s = 0;     //   MoE layers' router, permutation, SwiGLU and combine traffic through HBM
  double comm_s = 0;           // per step, every collective, as if serial
  double exposed_comm_s = 0;   // what communication adds to the step
  double forward_s = 0;        // per step, with exposed communication
  double backward_s = 0;
  double optimizer_s = 0;
  double step_s = 0;
  double tokens_per_step = 0;  // the default stream's tokens (text), all ranks
  double tokens_per_s_per_gpu = 0;
  double mfu = 0;        // executed-FLOP convention (causal attention halved)
  double mfu_paper = 0;  // the VeOmni paper's convention
  static_vector<axis_seconds, 16> by_axis;
};

namespace detail {
// Seconds of one call of a plan op, and whether it hides behind compute.
template <class P>
constexpr double op_seconds(const plan_op& o, const typename P::model::dims& d, const mesh_shape& m,
                            const workload& w, const precision& prec, const hardware& hw, const efficiency& e) {
  const op_cost c = cost_of<P>(o, d, m, w, prec);
  if (c.group <= 1) return 0;
  const group_shape g = placement_of(o.over, m, hw.gpus_per_node);
  if (o.coll == collective::all_to_all) return all_to_all_seconds(static_cast<double>(c.payload_bytes), g, hw, e.network);
  return ring_seconds(c.wire_bytes, g, hw, e.network);
}

// Bytes one token moves through HBM in a MoE layer's forward, besides its
// matmuls (activations of `b` bytes, router in fp32):
//   router      read x, write the E logits, softmax them, read for top-k   h b + 16 E
//   permute     gather top_k copies of x into expert order                2 k h b
//   SwiGLU      read gate and up, write their product                      3 k f b
//   combine     read the k expert outputs, write the weighted sum          k h b + h b
//   EP only     regroup the rows a dispatch brought by expert, and back    4 k h b
// The backward moves about twice that (each gather's gradient is a
// scatter-add of the same rows; SwiGLU's backward reads three and writes two).
constexpr double moe_forward_bytes(const geometry& g, long act_bytes, bool split_by_ep) {
  if (g.experts <= 0 || g.width <= 0) return 0;
  const double h = static_cast<double>(g.width), k = static_cast<double>(g.top_k), b = static_cast<double>(act_bytes);
  const double f = static_cast<double>(g.expert_params) / (3.0 * static_cast<double>(g.experts) * h);
  return 2 * h * b + 16.0 * static_cast<double>(g.experts) + 3 * k * h * b + 3 * k * f * b +
         (split_by_ep ? 4 * k * h * b : 0.0);
}

// A grouped GEMM's efficiency with `rows` rows per expert: e.grouped_gemm
// when each expert's matmul is large, half of it at e.grouped_rows_half rows
// (tiles left partly empty, too few tiles per expert to fill the GPU).
constexpr double grouped_gemm_efficiency(double rows, const efficiency& e) {
  return rows > 0 ? e.grouped_gemm * rows / (rows + e.grouped_rows_half) : e.grouped_gemm;
}

struct unit_times {
  double compute_fwd = 0, compute_bwd = 0;
  double gemm = 0, attention = 0, experts = 0, memory = 0;  // compute_fwd + compute_bwd by term
  double blocking_fwd = 0, blocking_bwd = 0;  // layer ops: add to compute
  double prefetch_fwd = 0, prefetch_bwd = 0;  // unit ops: overlap with compute (blocks), or add (root)
  double optimizer = 0;
};
}  // namespace detail

template <class P>
constexpr step_prediction predict(const typename P::model::dims& d, const mesh_shape& m, const training_step& st,
                                  const hardware& hw, const efficiency& e = {}) {
  using G = typename P::model;
  step_prediction r;
  r.micro_batches = st.micro_batches(m);
  const double mb = static_cast<double>(r.micro_batches);
  const workload w = st.template micro_workload<G>(m);
  const double peak = hw.bf16_dense_flops;
  double micro_s = 0, micro_fwd = 0, micro_compute = 0, optimizer_comm = 0;
  auto add_to_axis = [&r](const axis_set& over, double seconds) {
    r.comm_s += seconds;
    for (std::size_t k = 0; k < r.by_axis.size(); ++k)
      if (r.by_axis[k].over == over) {
        r.by_axis[k].seconds += seconds;
        return;
      }
    r.by_axis.push_back({over, seconds});
  };

  for_each_node<G>([&](auto I) {
    using C = typename G::template component_at<I.value>;
    const auto& nd = veomni::get<I.value>(d);
    const auto name = G::names[I.value];
    const double tokens = static_cast<double>(st.tokens_per_rank(name, m));
    const double blocks = static_cast<double>(C::blocks(nd));
    detail::unit_times blk, root;
    // Experts split over ep (the node's plan dispatches tokens): each rank's
    // experts take the routed rows of the whole ep group.
    bool split_by_ep = false;
    for (const auto& o : P::ops) split_by_ep = split_by_ep || (o.node_index == I.value && o.tensor == tensor_role::dispatch);
    const double ep = split_by_ep ? static_cast<double>(m.ep) : 1.0;
    auto compute = [&](detail::unit_times& u, scope s, bool recompute) {
      const flop_split f = forward_flops<C>(nd, s, st.context(name), causal_attention<C>());
      double experts_s = 0, moe_bytes = 0;  // per token, forward: grouped GEMMs (busiest rank), HBM traffic
      for (std::size_t i = 0; i < C::layers.size(); ++i) {
        if (C::layers[i].where != s) continue;
        const geometry g = C::shape(i, nd);
        if (g.experts <= 0) continue;
        const double rows = tokens * static_cast<double>(g.top_k) * ep / static_cast<double>(g.experts);
        experts_s += e.expert_imbalance * routed_expert_flops(g) / (peak * detail::grouped_gemm_efficiency(rows, e));
        moe_bytes += detail::moe_forward_bytes(g, st.prec.comm_bytes, split_by_ep);
      }
      const double dense_s = (f.gemm - f.experts) / (peak * e.gemm);
      const double memory_s = moe_bytes / (hw.hbm_bytes_per_s * e.memory);
      const double attention_s = f.attention / (peak * e.attention);
      const double fwd = tokens * (dense_s + experts_s + memory_s + attention_s);
      u.compute_fwd = fwd;
      u.compute_bwd = tokens * (2.0 * (dense_s + experts_s + memory_s) + e.attention_backward * attention_s) +
                      (recompute ? fwd : 0.0);
      const double passes = recompute ? 4.0 : 3.0;  // forward (+ recompute) + backward at 2x
      u.gemm = passes * tokens * dense_s;
      u.experts = passes * tokens * experts_s;
      u.memory = passes * tokens * memory_s;
      u.attention = tokens * attention_s * (1.0 + e.attention_backward + (recompute ? 1.0 : 0.0));
    };
    compute(blk, scope::block, st.checkpointing);
    compute(root, scope::model, false);

    for (const auto& o : P::ops) {
      if (o.node_index != I.value) continue;
      double t = detail::op_seconds<P>(o, d, m, w, st.prec, hw, e);
      if (o.tensor == tensor_role::dispatch || o.tensor == tensor_role::combine) t *= e.expert_imbalance;
      const bool per_block = o.repeat == scope::block;
      detail::unit_times& u = per_block ? blk : root;
      const double reps = static_cast<double>(repeats<C>(o, nd));
      // checkpointing runs a block's forward layer ops again in its backward
      const bool recomputed = st.checkpointing && per_block && !o.target.is_unit && o.ph == phase::forward;
      double* slot = nullptr;
      if (o.ph == phase::optimizer) slot = &u.optimizer;
      else if (o.target.is_unit) slot = o.ph == phase::forward ? &u.prefetch_fwd : &u.prefetch_bwd;
      else slot = o.ph == phase::forward ? &u.blocking_fwd : &u.blocking_bwd;
      const double share = per_block && blocks > 0 ? t * reps / blocks : t;  // a block's share (an op skipping the last block)
      *slot += share;
      if (recomputed) u.blocking_bwd += share;
      const double step_t = t * reps * (o.ph == phase::optimizer ? 1.0 : mb) * (recomputed ? 2.0 : 1.0);
      add_to_axis(o.over, step_t);
    }
    const double fwd = root.prefetch_fwd + root.blocking_fwd + root.compute_fwd +
                       blocks * std::max(blk.compute_fwd + blk.blocking_fwd, blk.prefetch_fwd);
    const double bwd = blocks * std::max(blk.compute_bwd + blk.blocking_bwd, blk.prefetch_bwd) + root.compute_bwd +
                       root.blocking_bwd + root.prefetch_bwd;
    micro_fwd += fwd;
    micro_s += fwd + bwd;
    micro_compute += root.compute_fwd + root.compute_bwd + blocks * (blk.compute_fwd + blk.compute_bwd);
    r.gemm_s += mb * (root.gemm + blocks * blk.gemm);
    r.attention_s += mb * (root.attention + blocks * blk.attention);
    r.experts_s += mb * (root.experts + blocks * blk.experts);
    r.moe_memory_s += mb * (root.memory + blocks * blk.memory);
    optimizer_comm += root.optimizer + blocks * blk.optimizer;
  });

  // Step-level ops (node index G::size: loss statistics, gradient norm):
  // small, blocking, once per micro-batch or once per step (optimizer).
  for (const auto& o : P::ops) {
    if (o.node_index != G::size) continue;
    const double t = detail::op_seconds<P>(o, d, m, w, st.prec, hw, e);
    const double step_t = o.ph == phase::optimizer ? t : t * mb;
    if (o.ph == phase::optimizer) optimizer_comm += t;
    else micro_s += t;
    add_to_axis(o.over, step_t);
  }

  // AdamW on the local shard: read and write master weights and moments, read
  // the gradient, write the bf16 copy.
  const memory_per_rank states = memory<P>(d, m, st.prec);
  const double hbm_bytes = 2.0 * static_cast<double>(states.optimizer) + static_cast<double>(states.grads) +
                           static_cast<double>(states.params);
  // optimizer_s is the update itself; its collectives (the gradient-norm
  // reduction) count as exposed communication, so step = compute + exposed + optimizer
  r.optimizer_s = hbm_bytes / hw.hbm_bytes_per_s;
  r.forward_s = mb * micro_fwd;
  r.backward_s = mb * (micro_s - micro_fwd);
  r.compute_s = mb * micro_compute;
  r.step_s = mb * micro_s + r.optimizer_s + optimizer_comm;
  r.exposed_comm_s = mb * micro_s - r.compute_s + optimizer_comm;
  const double world = static_cast<double>(m.world());
  r.tokens_per_step = static_cast<double>(st.global_batch) * static_cast<double>(st.seq);
  r.tokens_per_s_per_gpu = r.step_s > 0 ? r.tokens_per_step / world / r.step_s : 0;
  const double denom = r.step_s * world * peak;
  const double samples = static_cast<double>(st.global_batch);
  r.mfu = denom > 0 ? samples * training_flops_per_sample<G>(d, st) / denom : 0;
  r.mfu_paper = denom > 0 ? samples * training_flops_per_sample<G>(d, st, flop_convention::paper) / denom : 0;
  return r;
}

}  // namespace veomni
