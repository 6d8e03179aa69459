// A consumer's model and recipe, declared outside the library.
#include <cstdio>
#include <veomni/core.hpp>

using namespace veomni;
using my_model = graph<nodes<node<"lm", text_decoder>>>;
using my_plan = plan<my_model, recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>>>>;
static_assert(my_plan::size == 15);  // FSDP 5, Ulysses 8, step 2

int main() {
  my_model::dims d;
  d.at<"lm">() = {.vocab = 256, .hidden = 32, .layers = 2, .heads = 2, .kv_heads = 2, .head_dim = 16, .ffn = 64};
  workload w;
  w.default_tokens = 32;
  std::printf("%s", describe<my_plan>(d, mesh_shape{.dp_shard = 2, .sp = 2}, w).c_str());
}
