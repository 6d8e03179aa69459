// A user-defined policy that plugs into veomni without editing the library:
// ZeRO-2 (examples/zero_policies.hpp): parameters replicated, gradients
// reduce-scattered, each rank updates its shard and the updated parameters
// are all-gathered in the optimizer phase. This prints its plan; the
// parallel tests train it (tests/parallel, recipe zero2).
//
//   per unit:  backward   reduce_scatter(grads)   over dp_shard x sp
//              optimizer  all_gather(params)      over dp_shard x sp
#include <cstdio>

#include "models.hpp"
#include "zero_policies.hpp"


using namespace veomni;
using dense = graph<nodes<node<"lm", text_decoder>>>;
using zero2_recipe = recipe<apply<"lm", Shard<user::ZeRO2>>>;
using P = plan<dense, zero2_recipe>;

static_assert(Policy<Shard<user::ZeRO2>>);
static_assert(Shard<user::ZeRO2>::name == "Shard<ZeRO2>");
// root unit + block unit: one reduce_scatter and one optimizer all_gather each
static_assert(P::count(phase::backward, collective::reduce_scatter) == 2);
static_assert(P::count(phase::optimizer, collective::all_gather) == 2);
static_assert(P::count(phase::forward, collective::all_gather) == 0);

int main() {
  dense::dims d;
  d.at<"lm">() = {.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16, .ffn = 128};
  workload w;
  w.default_tokens = 512;
  std::printf("%s", describe<P>(d, mesh_shape{.dp_shard = 2}, w).c_str());
}
