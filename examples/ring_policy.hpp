#pragma once
// Split<Ring>'s compile-time half: what it places and which collectives it
// adds (torch-free, so plans with it are made and described without torch).
// Its runtime is in ring_attention.hpp.
//
//   plan, per attention layer:  forward  all_gather(kv_block)      over sp
//                               backward reduce_scatter(kv_block)  over sp
#include <veomni/core.hpp>

namespace user {

using namespace veomni;

struct Ring {
  static constexpr std::string_view name = "Ring";
  static constexpr std::array touches{layer_kind::attention};
  static constexpr axis_set over = axes<axis::sp>;

  template <class Ctx>
  static constexpr placement_list placements() {
    placement_list out;
    out.push_back({placed_tensor::activations, placement::shard(1), over});  // the sequence, over sp
    return out;
  }
  template <class Ctx>
  static constexpr op_list ops() {
    op_list out;
    for_each_layer_of<typename Ctx::component>(layer_kind::attention, [&](std::size_t i) {
      out.push_back(layer_op(i, phase::forward, collective::all_gather, over, tensor_role::kv_block));
      out.push_back(layer_op(i, phase::backward, collective::reduce_scatter, over, tensor_role::kv_block));
    });
    return out;
  }

  // Its runtime half: defined in ring_attention.hpp (needs torch).
  template <class Node>
  struct runtime;
};

}  // namespace user
