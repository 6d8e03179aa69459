// A policy type that does not model veomni::Policy (it has no ops<Ctx>()).
#include "../../examples/models.hpp"
using namespace veomni;
struct half_policy {
  static constexpr std::string_view name = "half";
  static constexpr std::array<layer_kind, 0> touches{};
  template <class Ctx>
  static constexpr placement_list placements() { return {}; }
#ifndef VEOMNI_COMPILE_FAIL
  template <class Ctx>
  static constexpr op_list ops() { return {}; }
#endif
};
using r = recipe<apply<"lm", half_policy>>;
constexpr auto n = plan<examples::tiny_vl, r>::size;
