// A constant-evaluated mesh given a ninth axis besides the built-in ones.
#include <veomni/core.hpp>
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
constexpr long count = 9;
#else
constexpr long count = 8;
#endif
constexpr mesh_shape m = [] {
  constexpr std::string_view names[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
  mesh_shape x;
  for (long i = 0; i < count; ++i) x.with(names[i], 2);
  return x;
}();
#ifndef VEOMNI_COMPILE_FAIL
static_assert(m.world() == 256);
#endif
