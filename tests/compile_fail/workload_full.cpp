// A constant-evaluated workload given a 33rd node with its own tokens: an
// error naming the limit, not a node dropped (the mesh and the
// training_step's streams fail the same way, each naming its own limit).
#include <veomni/core.hpp>
using namespace veomni;
constexpr std::string_view names[] = {"n0",  "n1",  "n2",  "n3",  "n4",  "n5",  "n6",  "n7",  "n8",  "n9",  "n10",
                                      "n11", "n12", "n13", "n14", "n15", "n16", "n17", "n18", "n19", "n20", "n21",
                                      "n22", "n23", "n24", "n25", "n26", "n27", "n28", "n29", "n30", "n31", "n32"};
#ifdef VEOMNI_COMPILE_FAIL
constexpr long count = 33;
#else
constexpr long count = 32;
#endif
constexpr workload w = [] {  // used below only where it compiles
  workload x;
  for (long i = 0; i < count; ++i) x.with(names[i], i + 1);
  return x;
}();
#ifndef VEOMNI_COMPILE_FAIL
static_assert(w.tokens_for("n31") == 32);
#endif
