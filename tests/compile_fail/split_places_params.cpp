// Split<Impl> whose implementation places parameters (a Split may place only activations).
#include "../../examples/models.hpp"
using namespace veomni;
struct sneaky {
  static constexpr std::string_view name = "Sneaky";
  static constexpr std::array touches{layer_kind::attention};
  template <class Ctx>
  static constexpr placement_list placements() {
    placement_list out;
#ifdef VEOMNI_COMPILE_FAIL
    out.push_back({placed_tensor::params, placement::shard(0), axes<axis::sp>});
#else
    out.push_back({placed_tensor::activations, placement::shard(1), axes<axis::sp>});
#endif
    return out;
  }
  template <class Ctx>
  static constexpr op_list ops() { return {}; }
};
constexpr auto n = plan<examples::tiny_vl, recipe<apply<"lm", Split<sneaky>>>>::size;
