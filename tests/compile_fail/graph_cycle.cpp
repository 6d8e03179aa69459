// A model graph with a cycle: a -> b -> a.
#include <veomni/core.hpp>
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = graph<nodes<node<"a", projector>, node<"b", projector>>, edges<edge<"a.out", "b.in">, edge<"b.out", "a.in">>>;
#else
using bad = graph<nodes<node<"a", projector>, node<"b", projector>>, edges<edge<"a.out", "b.in">>>;
#endif
constexpr auto first = bad::order[0];
