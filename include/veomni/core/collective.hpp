#pragma once
// Collectives, phases, tensor roles and placements: the vocabulary of the plan.
//
// Each transition between placements implies one collective (as in DTensor):
//   Shard(d) -> Replicate   all_gather        (backward dual: reduce_scatter)
//   Partial  -> Shard(d)    reduce_scatter    (backward dual: all_gather)
//   Partial  -> Replicate   all_reduce        (backward dual: identity / all_reduce)
//   Shard(a) -> Shard(b)    all_to_all        (backward dual: the inverse all_to_all)
#include <string_view>

#include "axis.hpp"

namespace veomni {

enum class phase { forward, backward, optimizer };

// Element types a policy may choose for what it stores and moves.
// unspecified: the cost model's `precision` decides.
enum class dtype { unspecified, f32, bf16, f16 };

constexpr long bytes_of(dtype t) { return t == dtype::bf16 || t == dtype::f16 ? 2 : 4; }
constexpr std::string_view to_string(dtype t) {
  switch (t) {
    case dtype::unspecified: return "-";
    case dtype::f32: return "f32";
    case dtype::bf16: return "bf16";
    case dtype::f16: return "f16";
  }
  return "?";
}
enum class collective { all_gather, reduce_scatter, all_reduce, all_to_all };

constexpr std::string_view to_string(phase p) {
  switch (p) {
    case phase::forward: return "forward";
    case phase::backward: return "backward";
    case phase::optimizer: return "optimizer";
  }
  return "?";
}
constexpr std::string_view to_string(collective c) {
  switch (c) {
    case collective::all_gather: return "all_gather";
    case collective::reduce_scatter: return "reduce_scatter";
    case collective::all_reduce: return "all_reduce";
    case collective::all_to_all: return "all_to_all";
  }
  return "?";
}

// The collective whose backward undoes (transposes) a forward collective.
constexpr collective dual(collective c) {
  switch (c) {
    case collective::all_gather: return collective::reduce_scatter;
    case collective::reduce_scatter: return collective::all_gather;
    case collective::all_reduce: return collective::all_reduce;
    case collective::all_to_all: return collective::all_to_all;
  }
  return c;
}

// What a collective moves. Sizes follow from the role and the layer's geometry:
//   params / grads                 the unit's dense parameters (elements P)
//   expert_params / expert_grads   the unit's local experts (E/ep of them)
//   q, k, v, attn_out              tokens x q_width (k, v: kv_width)
//   dispatch, combine              tokens x top_k x width (routed copies)
//   scalar                         one element
//   loss_stats                     (loss sum, target count) per loss head
//   router_stats                   a MoE layer's expert counts and probability sums, and its token count: 2E+1
//   grad_norm                      the squared norm of this rank's gradient shards
//   adapter_grads                  the gradient of a unit's adapters (LoRA): rank x the sum of
//                                  (in + out) over the linear maps it adapts (geometry::adapter_width)
//   expert_adapter_grads           the gradient of the adapters of a unit's local experts (LoRA
//                                  on experts split by Experts<EP>): the moe layers' share / ep
enum class tensor_role {
  params, grads, expert_params, expert_grads,
  q, k, v, attn_out, dispatch, combine, kv_block, scalar,
  loss_stats, router_stats, grad_norm, adapter_grads, expert_adapter_grads,
};

constexpr std::string_view to_string(tensor_role t) {
  switch (t) {
    case tensor_role::params: return "params";
    case tensor_role::grads: return "grads";
    case tensor_role::expert_params: return "expert_params";
    case tensor_role::expert_grads: return "expert_grads";
    case tensor_role::q: return "q";
    case tensor_role::k: return "k";
    case tensor_role::v: return "v";
    case tensor_role::attn_out: return "attn_out";
    case tensor_role::dispatch: return "dispatch";
    case tensor_role::combine: return "combine";
    case tensor_role::kv_block: return "kv_block";
    case tensor_role::scalar: return "scalar";
    case tensor_role::loss_stats: return "loss_stats";
    case tensor_role::router_stats: return "router_stats";
    case tensor_role::grad_norm: return "grad_norm";
    case tensor_role::adapter_grads: return "adapter_grads";
    case tensor_role::expert_adapter_grads: return "expert_adapter_grads";
  }
  return "?";
}

// An Adapt policy's gradient: a unit's adapters', or its local experts' adapters'.
constexpr bool is_adapter_grad_role(tensor_role t) {
  return t == tensor_role::adapter_grads || t == tensor_role::expert_adapter_grads;
}

// The tensor whose gradient a backward collective carries.
constexpr tensor_role grad_of(tensor_role t) {
  switch (t) {
    case tensor_role::params: return tensor_role::grads;
    case tensor_role::expert_params: return tensor_role::expert_grads;
    default: return t;  // activations: the backward moves d(activation), same shape
  }
}

// DTensor-style placements of a tensor over one set of axes.
enum class placement_kind { shard, replicate, partial };

struct placement {
  placement_kind kind = placement_kind::replicate;
  int dim = -1;  // for shard
  static constexpr placement shard(int d) { return {placement_kind::shard, d}; }
  static constexpr placement replicate() { return {placement_kind::replicate, -1}; }
  static constexpr placement partial() { return {placement_kind::partial, -1}; }
  friend constexpr bool operator==(const placement&, const placement&) = default;
};

// Tensors a policy places, the unit of the "one tensor dim, one axis" rule.
// Gradients and optimizer state follow the parameters' placement unless a
// policy places them itself (ZeRO-1/2 shard them while parameters stay whole).
// adapters: trainable low-rank factors beside frozen parameters (Adapt<LoRA>);
// a node with them trains only them. expert_adapters: the experts' adapters,
// when they are split with the experts (Shard(0) over ep, beside EP's
// expert_params) rather than held whole with the other adapters.
enum class placed_tensor { params, expert_params, grads, optimizer_state, activations, adapters, expert_adapters };

constexpr std::string_view to_string(placed_tensor t) {
  switch (t) {
    case placed_tensor::params: return "params";
    case placed_tensor::expert_params: return "expert_params";
    case placed_tensor::grads: return "grads";
    case placed_tensor::optimizer_state: return "optimizer_state";
    case placed_tensor::activations: return "activations";
    case placed_tensor::adapters: return "adapters";
    case placed_tensor::expert_adapters: return "expert_adapters";
  }
  return "?";
}

// "This policy places `tensor` as `how` over `over`."
struct placement_decl {
  placed_tensor tensor;
  placement how;
  axis_set over;
};

}  // namespace veomni
