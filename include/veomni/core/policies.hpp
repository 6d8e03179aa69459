#pragma once
// The built-in policies. Each is an implementation wrapped in its category:
//   Shard<FSDP>, Shard<HSDP>, Shard<DDP>, Split<Ulysses>, Experts<EP>.
//
// Per unit (one block, or the component's root) on a node with Shard<FSDP>:
//   forward   all_gather(params)      over dp_shard x sp
//   backward  all_gather(params)      over dp_shard x sp   (blocks but the last, if reshard_after_forward)
//   backward  reduce_scatter(grads)   over dp_shard x sp
// Per attention layer with Split<Ulysses> (sequence -> heads and back):
//   forward   all_to_all(q), (k), (v), (attn_out)   over sp
//   backward  all_to_all(attn_out), (v), (k), (q)   over sp
// Per MoE layer with Experts<EP>:
//   forward   all_to_all(dispatch), (combine)       over ep
//   backward  all_to_all(combine), (dispatch)       over ep
//
// What runs is what these say: the placements decide how parameters are
// stored and the unit ops (all_gather of params, reduce_scatter and
// all_reduce of grads) have one standard meaning (core/schedule.hpp), so the
// Shard policies need no runtime code; Ulysses and EP carry out their layer
// ops in their runtime halves (parallel/policies/), through the same
// contract a user's policy uses (parallel/contract.hpp).
#include "axis.hpp"
#include "collective.hpp"
#include "policy.hpp"

namespace veomni {

struct fsdp_options {
  // Free a block's gathered parameters after its forward and gather them
  // again in backward (ZeRO-3). The last block keeps them: backward starts
  // with it, right after the loss. false keeps every block's (ZeRO-2-like):
  // no backward gather.
  bool reshard_after_forward = true;
  // Mixed precision: parameters are gathered and computed in param_dtype,
  // gradients reduced in reduce_dtype; the shards (master weights) and the
  // optimizer stay fp32. unspecified: fp32 at run time, and the cost model's
  // `precision` when planning. bf16 / fp32 where the device supports it:
  //   Shard<fsdp<fsdp_options{.param_dtype = dtype::bf16, .reduce_dtype = dtype::f32}>>
  dtype param_dtype = dtype::unspecified;
  dtype reduce_dtype = dtype::unspecified;
};

namespace detail {
// The FSDP family: shard params over dp_shard x sp; optionally all-reduce the
// sharded gradients over `Replicate` axes (HSDP).
template <fsdp_options O, bool Hybrid>
struct fsdp_impl {
  static constexpr std::string_view name = Hybrid ? "HSDP" : "FSDP";
  static constexpr std::array<layer_kind, 0> touches{};
  static constexpr axis_set shard_axes = axes<axis::dp_shard, axis::sp>;
  static constexpr axis_set expert_axes = axes<axis::ep_dp>;
  static constexpr axis_set replicate_axes = axes<axis::dp_replicate>;

  template <class Ctx>
  static constexpr placement_list placements() {
    placement_list out;
    out.push_back({placed_tensor::params, placement::shard(0), shard_axes});
    if (Ctx::experts_split) out.push_back({placed_tensor::expert_params, placement::shard(1), expert_axes});
    if (Hybrid) out.push_back({placed_tensor::params, placement::replicate(), replicate_axes});
    return out;
  }

  template <class Ctx>
  static constexpr op_list ops() {
    using C = typename Ctx::component;
    op_list out;
    // The root unit (embedding, head: used before and after the blocks) stays
    // gathered from its forward to its backward, and so does the last block;
    // the other blocks reshard if asked.
    auto shard_ops = [&](scope s, axis_set over, tensor_role p) {
      const dtype pd = O.param_dtype, rd = O.reduce_dtype;
      out.push_back(unit_op(s, phase::forward, collective::all_gather, over, p, {}, pd));
      if (O.reshard_after_forward && s == scope::block)
        out.push_back(skip_last_block(unit_op(s, phase::backward, collective::all_gather, over, p, {}, pd)));
      out.push_back(unit_op(s, phase::backward, collective::reduce_scatter, over, grad_of(p), {}, rd));
      if (Hybrid)
        out.push_back(unit_op(s, phase::backward, collective::all_reduce, replicate_axes, grad_of(p), over, rd));
    };
    for_each_unit<C>([&](scope s) {
      shard_ops(s, shard_axes, tensor_role::params);
      if (Ctx::experts_split && scope_has_kind<C>(s, layer_kind::moe))
        shard_ops(s, expert_axes, tensor_role::expert_params);
    });
    return out;
  }
};
}  // namespace detail

template <fsdp_options O = fsdp_options{}>
struct fsdp : detail::fsdp_impl<O, false> {};
template <fsdp_options O = fsdp_options{}>
struct hsdp : detail::fsdp_impl<O, true> {};
using FSDP = fsdp<>;
using HSDP = hsdp<>;

// DDP: parameters replicated everywhere; gradients all-reduced per unit.
struct DDP {
  static constexpr std::string_view name = "DDP";
  static constexpr std::array<layer_kind, 0> touches{};
  static constexpr axis_set dense_axes = axes<axis::dp_replicate, axis::dp_shard, axis::sp>;
  static constexpr axis_set expert_axes = axes<axis::dp_replicate, axis::ep_dp>;

  template <class Ctx>
  static constexpr placement_list placements() {
    placement_list out;
    out.push_back({placed_tensor::params, placement::replicate(), dense_axes});
    return out;
  }
  template <class Ctx>
  static constexpr op_list ops() {
    using C = typename Ctx::component;
    op_list out;
    for_each_unit<C>([&](scope s) {
      out.push_back(unit_op(s, phase::backward, collective::all_reduce, dense_axes, tensor_role::grads));
      if (Ctx::experts_split && scope_has_kind<C>(s, layer_kind::moe))
        out.push_back(unit_op(s, phase::backward, collective::all_reduce, expert_axes, tensor_role::expert_grads));
    });
    return out;
  }
};

// Ulysses: activations split on the sequence over sp; around each attention
// core, all-to-all to (full sequence, local heads) and back.
struct Ulysses {
  static constexpr std::string_view name = "Ulysses";
  static constexpr std::array touches{layer_kind::attention};
  static constexpr axis_set over = axes<axis::sp>;

  template <class Ctx>
  static constexpr placement_list placements() {
    placement_list out;
    out.push_back({placed_tensor::activations, placement::shard(1), over});
    return out;
  }
  template <class Ctx>
  static constexpr op_list ops() {
    using C = typename Ctx::component;
    op_list out;
    for_each_layer_of<C>(layer_kind::attention, [&](std::size_t i) {
      for (auto t : {tensor_role::q, tensor_role::k, tensor_role::v, tensor_role::attn_out})
        out.push_back(layer_op(i, phase::forward, collective::all_to_all, over, t));
      // backward in the reverse order of forward (autograd differentiates
      // the last-made of q, k, v first)
      for (auto t : {tensor_role::attn_out, tensor_role::v, tensor_role::k, tensor_role::q})
        out.push_back(layer_op(i, phase::backward, collective::all_to_all, over, t));
    });
    return out;
  }
  // The runtime half: the all_to_alls around the attention core
  // (parallel/policies/ulysses.hpp).
  template <class Node>
  struct runtime;
};

// EP: experts stored [E_local, ...] over ep; tokens dispatched to the ranks
// holding their experts by an (uneven) all-to-all and combined back.
struct EP {
  static constexpr std::string_view name = "EP";
  static constexpr std::array touches{layer_kind::moe};
  static constexpr axis_set over = axes<axis::ep>;

  template <class Ctx>
  static constexpr placement_list placements() {
    placement_list out;
    out.push_back({placed_tensor::expert_params, placement::shard(0), over});
    return out;
  }
  template <class Ctx>
  static constexpr op_list ops() {
    using C = typename Ctx::component;
    op_list out;
    for_each_layer_of<C>(layer_kind::moe, [&](std::size_t i) {
      out.push_back(layer_op(i, phase::forward, collective::all_to_all, over, tensor_role::dispatch));
      out.push_back(layer_op(i, phase::forward, collective::all_to_all, over, tensor_role::combine));
      out.push_back(layer_op(i, phase::backward, collective::all_to_all, over, tensor_role::combine));
      out.push_back(layer_op(i, phase::backward, collective::all_to_all, over, tensor_role::dispatch));
    });
    return out;
  }
  // The runtime half: dispatch and combine around the local experts
  // (parallel/policies/ep.hpp).
  template <class Node>
  struct runtime;
};

}  // namespace veomni
