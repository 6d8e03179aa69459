// Two nodes with the same name.
#include <veomni/core.hpp>
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = graph<nodes<node<"p", projector>, node<"p", projector>>>;
#else
using bad = graph<nodes<node<"p", projector>, node<"q", projector>>>;
#endif
constexpr auto first = bad::order[0];
