// A user policy that adds collectives on layers (activations) but has no
// runtime half to carry them out: the runtime cannot train it.
#include <veomni/comm.hpp>
#include <veomni/models/zoo.hpp>
#include <veomni/parallel.hpp>
using namespace veomni;
struct split_heads {
  static constexpr std::string_view name = "split_heads";
  static constexpr std::array touches{layer_kind::attention};
  template <class Ctx>
  static constexpr placement_list placements() { return Ulysses::placements<Ctx>(); }
  template <class Ctx>
  static constexpr op_list ops() { return Ulysses::ops<Ctx>(); }
#ifndef VEOMNI_COMPILE_FAIL
  template <class Node>
  struct runtime {
    explicit runtime(Node&) {}
  };
#endif
};
using R = recipe<apply<"lm", Shard<FSDP>, Split<split_heads>>>;
void train(comm::gloo_mesh& mesh) {
  parallel::parallel_model<models::dense_lm, R, comm::gloo_mesh> model(models::dense_lm_tiny(), mesh);
}
