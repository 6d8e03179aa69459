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

// Where adapter gradients are summed: every axis over which ranks see other data.
inline constexpr axis_set data_axes_of_adapters = axes<axis::dp_replicate, axis::dp_shard, axis::sp>;

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
      if (Ctx::frozen) return;  // an adapted node: no gradient of its parameters to reduce
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
    if (Ctx::frozen) return out;  // an adapted node: its parameters have no gradient
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

// LoRA (Hu et al. 2021): each linear map W [out, in] of the targeted layers
// gains trainable factors A [rank, in] and B [out, rank], and computes
//   y = x W^T + (alpha / rank) * dropout(x) A^T B^T
// while W and every other parameter of the node stay frozen. B starts at
// zero, so training starts from the base model. On experts (moe layers)
// each expert's gate, up and down projections get their own factors,
// stacked like the experts ([E, rank, in], [E, out, rank]). The adapters are
// replicated; their gradients are all-reduced over the data axes, once per
// unit (a block, or the root) that has targeted layers:
//   backward  all_reduce(adapter_grads)          over dp_replicate x dp_shard x sp
// On a node whose experts Experts<EP> splits, the experts' adapters are split
// with them (Shard(0) over ep: each rank holds its local experts' adapters)
// and summed over the ranks that hold the same experts instead:
//   backward  all_reduce(expert_adapter_grads)   over dp_replicate x ep_dp
// Frozen, the node's Shard policy gathers its parameters as before and
// reduces none of their gradients; only the adapters have optimizer state.
// rank, alpha and dropout may be overridden at run time
// (parallel::options::adapters; the trainer's train.lora).
struct lora_options {
  long rank = 8;
  long alpha = 16;
  double dropout = 0;  // on the adapters' input, in training
  unsigned targets = layer_kinds({layer_kind::attention, layer_kind::mlp});
};

namespace detail {
constexpr std::size_t kind_count(unsigned m) {
  std::size_t n = 0;
  for (unsigned i = 0; i < 32; ++i) n += (m >> i) & 1u;
  return n;
}
template <unsigned M>
constexpr auto kinds_of() {
  std::array<layer_kind, kind_count(M)> out{};
  std::size_t n = 0;
  for (unsigned i = 0; i < 32; ++i)
    if ((M >> i) & 1u) out[n++] = static_cast<layer_kind>(i);
  return out;
}
}  // namespace detail

namespace detail {
template <lora_options O>
constexpr bool report_lora_options() {
  constexpr bool adaptable =
      (O.targets & ~layer_kinds({layer_kind::attention, layer_kind::mlp, layer_kind::moe})) == 0;
  static_assert(O.rank > 0, "veomni::lora: rank must be positive");
  static_assert(O.targets != 0, "veomni::lora: targets must name at least one layer kind (layer_kinds({...}))");
  static_assert(adaptable,
                "veomni::lora: LoRA adapts attention, mlp and moe layers (their linear maps; on moe, every "
                "expert's projections); embeddings, heads, norms and other kinds are not adapted");
  return O.rank > 0 && O.targets != 0 && adaptable;
}
}  // namespace detail

template <lora_options O = lora_options{}>
struct lora {
  // read by Adapt<> when a recipe uses it (one error each, diagnostics.hpp)
  static constexpr bool checks_ok = detail::report_lora_options<O>();
  static constexpr std::string_view name = "LoRA";
  static constexpr lora_options options = O;
  static constexpr auto touches = detail::kinds_of<O.targets>();
  static constexpr bool touches_all = true;  // each target must be a layer kind of the node
  static constexpr axis_set over = data_axes_of_adapters;
  // the experts' adapters split with the experts: held over ep, summed over the ranks holding the same experts
  static constexpr axis_set expert_rows = axes<axis::ep>;
  static constexpr axis_set expert_over = axes<axis::dp_replicate, axis::ep_dp>;
  template <class Ctx>
  static constexpr bool splits_expert_adapters() {
    return Ctx::experts_split && has_kind(O.targets, layer_kind::moe);
  }

  template <class Ctx>
  static constexpr placement_list placements() {
    placement_list out;
    out.push_back({placed_tensor::adapters, placement::replicate(), over});
    if (splits_expert_adapters<Ctx>()) out.push_back({placed_tensor::expert_adapters, placement::shard(0), expert_rows});
    return out;
  }
  template <class Ctx>
  static constexpr op_list ops() {
    using C = typename Ctx::component;
    constexpr bool split = splits_expert_adapters<Ctx>();
    constexpr unsigned whole = split ? O.targets & ~layer_kinds({layer_kind::moe}) : O.targets;
    op_list out;
    for_each_unit<C>([&](scope s) {
      bool any = false;
      for (const auto& l : C::layers) any = any || (l.where == s && has_kind(whole, l.kind));
      if (any) out.push_back(adapter_op(s, over, {O.rank, whole}));
      if (split && scope_has_kind<C>(s, layer_kind::moe)) out.push_back(expert_adapter_op(s, expert_over, O.rank));
    });
    return out;
  }
  // The runtime half: the adapters on the node's linear maps (parallel/policies/lora.hpp).
  template <class Node>
  struct runtime;
};
using LoRA = lora<>;

}  // namespace veomni
