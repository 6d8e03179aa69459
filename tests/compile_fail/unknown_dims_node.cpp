// d.at<"name">() with a name the model does not have.
#include "../../examples/models.hpp"
using namespace veomni;
constexpr examples::tiny_vl::dims dims() {
  examples::tiny_vl::dims d;
#ifdef VEOMNI_COMPILE_FAIL
  d.at<"decoder">().layers = 2;
#else
  d.at<"lm">().layers = 2;
#endif
  return d;
}
constexpr auto d = dims();
