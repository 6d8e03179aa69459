// A user Shard policy whose op on a unit has no standard meaning (an
// all_reduce of parameters in forward): the runtime would not know what to do.
#include <veomni/comm.hpp>
#include <veomni/models/zoo.hpp>
#include <veomni/parallel.hpp>
using namespace veomni;
struct sum_params {
  static constexpr std::string_view name = "sum_params";
  static constexpr std::array<layer_kind, 0> touches{};
  static constexpr axis_set over = axes<axis::dp_shard, axis::sp>;
  template <class Ctx>
  static constexpr placement_list placements() { return {}; }
  template <class Ctx>
  static constexpr op_list ops() {
    op_list out;
    for_each_unit<typename Ctx::component>([&](scope s) {
#ifdef VEOMNI_COMPILE_FAIL
      out.push_back(unit_op(s, phase::forward, collective::all_reduce, over, tensor_role::params));
#endif
      out.push_back(unit_op(s, phase::backward, collective::all_reduce, over, tensor_role::grads));
    });
    return out;
  }
};
using R = recipe<apply<"lm", Shard<sum_params>>>;
void train(comm::gloo_mesh& mesh) {
  parallel::parallel_model<models::dense_lm, R, comm::gloo_mesh> model(models::dense_lm_tiny(), mesh);
}
