// A user policy whose forward all_gather has no backward reduce_scatter.
#include "../../examples/models.hpp"
using namespace veomni;
struct gather_only {
  static constexpr std::string_view name = "GatherOnly";
  static constexpr std::array<layer_kind, 0> touches{};
  template <class Ctx>
  static constexpr placement_list placements() {
    placement_list out;
    out.push_back({placed_tensor::params, placement::shard(0), axes<axis::dp_shard>});
    return out;
  }
  template <class Ctx>
  static constexpr op_list ops() {
    op_list out;
    out.push_back(unit_op(scope::block, phase::forward, collective::all_gather, axes<axis::dp_shard>,
                          tensor_role::params));
#ifndef VEOMNI_COMPILE_FAIL
    out.push_back(unit_op(scope::block, phase::backward, collective::reduce_scatter, axes<axis::dp_shard>,
                          tensor_role::grads));
#endif
    return out;
  }
};
using r = recipe<apply<"lm", Shard<gather_only>>>;
constexpr auto n = plan<examples::tiny_vl, r>::size;
