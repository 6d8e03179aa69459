#pragma once
// Two user policies written outside the library, with only its public
// headers: ZeRO-2 and ZeRO-1 (the DeepSpeed stages), as Shard policies.
//
//   ZeRO-2: parameters replicated; gradients reduce-scattered, so each rank
//           keeps a 1/n shard of them and updates only its shard of the
//           parameters (its optimizer state is 1/n too); the updated shards
//           are all-gathered into every rank's whole parameters.
//   ZeRO-1: parameters and gradients replicated (gradients all-reduced);
//           the optimizer state is sharded: each rank updates its 1/n of
//           the parameters and the updated shards are all-gathered.
//
//   per unit      ZeRO-2                                ZeRO-1
//   backward      reduce_scatter(grads)  dp_shard*sp    all_reduce(grads)     dp_shard*sp
//   optimizer     all_gather(params)     dp_shard*sp    all_gather(params)    dp_shard*sp
//
// Neither needs a runtime half: what their placements say (replicated
// parameters, sharded gradients or optimizer state) is how the runtime
// stores the unit, and their ops are unit ops with a standard meaning
// (core/schedule.hpp), which the runtime carries out for any policy. The
// plan, the cost model (memory<P>: 1/n of the gradients or not) and the
// trace all follow from these few lines; docs/extending.md walks through it.
#include <veomni/core.hpp>

namespace user {

using namespace veomni;

struct ZeRO2 {
  static constexpr std::string_view name = "ZeRO2";
  static constexpr std::array<layer_kind, 0> touches{};  // every layer
  static constexpr axis_set over = axes<axis::dp_shard, axis::sp>;

  template <class Ctx>
  static constexpr placement_list placements() {
    placement_list out;
    out.push_back({placed_tensor::params, placement::replicate(), over});
    out.push_back({placed_tensor::grads, placement::shard(0), over});
    out.push_back({placed_tensor::optimizer_state, placement::shard(0), over});
    return out;
  }
  template <class Ctx>
  static constexpr op_list ops() {
    op_list out;
    for_each_unit<typename Ctx::component>([&](scope s) {
      out.push_back(unit_op(s, phase::backward, collective::reduce_scatter, over, tensor_role::grads));
      out.push_back(unit_op(s, phase::optimizer, collective::all_gather, over, tensor_role::params));
    });
    return out;
  }
};

struct ZeRO1 {
  static constexpr std::string_view name = "ZeRO1";
  static constexpr std::array<layer_kind, 0> touches{};
  static constexpr axis_set over = axes<axis::dp_shard, axis::sp>;

  template <class Ctx>
  static constexpr placement_list placements() {
    placement_list out;
    out.push_back({placed_tensor::params, placement::replicate(), over});
    out.push_back({placed_tensor::optimizer_state, placement::shard(0), over});
    return out;
  }
  template <class Ctx>
  static constexpr op_list ops() {
    op_list out;
    for_each_unit<typename Ctx::component>([&](scope s) {
      out.push_back(unit_op(s, phase::backward, collective::all_reduce, over, tensor_role::grads));
      out.push_back(unit_op(s, phase::optimizer, collective::all_gather, over, tensor_role::params));
    });
    return out;
  }
};

}  // namespace user
