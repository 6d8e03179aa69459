// plan_explainer: prints the communication plan and its cost for an example
// model, recipe and mesh.
//   plan_explainer [tiny_vl|omni_moe] [--dp-replicate N] [--dp-shard N] [--sp N] [--ep N] [--tokens N]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "models.hpp"

using namespace veomni;
using namespace veomni::examples;

namespace {
[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "plan_explainer: %s\n"
               "usage: plan_explainer [tiny_vl|omni_moe] [--dp-replicate N] [--dp-shard N] [--sp N] [--ep N] "
               "[--tokens N]\n",
               why);
  std::exit(2);
}

long parse_size(std::string_view flag, const char* v) {
  if (!v) usage(("missing value after " + std::string(flag)).c_str());
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (*v == '\0' || *end != '\0' || n < 1)
    usage((std::string(flag) + " needs a positive integer, got '" + v + "'").c_str());
  return n;
}
}  // namespace

int main(int argc, char** argv) {
  std::string model = "omni_moe";
  mesh_shape mesh{.dp_replicate = 1, .dp_shard = 2, .sp = 2, .ep = 2};
  long tokens = 1024;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (a == "--dp-replicate") mesh.dp_replicate = parse_size(a, v), ++i;
    else if (a == "--dp-shard") mesh.dp_shard = parse_size(a, v), ++i;
    else if (a == "--sp") mesh.sp = parse_size(a, v), ++i;
    else if (a == "--ep") mesh.ep = parse_size(a, v), ++i;
    else if (a == "--tokens") tokens = parse_size(a, v), ++i;
    else if (a == "tiny_vl" || a == "omni_moe") model = a;
    else if (a == "-h" || a == "--help") usage("prints the plan of an example model");
    else usage(("unknown argument '" + std::string(a) + "'").c_str());
  }
  if ((mesh.dp_shard * mesh.sp) % mesh.ep != 0)
    usage("--ep must divide dp_shard * sp (expert ranks are carved out of the data/sequence ranks)");

  // Per-rank tokens: the language model sees `tokens` text positions split
  // over sp; each encoder sees a quarter of that many patches / frames.
  workload w;
  w.default_tokens = tokens / 4 / mesh.sp;
  w.with("lm", tokens / mesh.sp);
  w.with("image_out", tokens / mesh.sp);
  if (model == "tiny_vl") {
    using P = plan<tiny_vl, tiny_vl_fsdp>;
    std::printf("model tiny_vl, recipe FSDP + Ulysses(lm)\n%s", describe<P>(tiny_vl_dims(), mesh, w).c_str());
  } else {
    if (mesh.ep > 0 && omni_moe_dims().at<"lm">().experts % mesh.ep != 0)
      usage("--ep must divide the number of experts (4)");
    using P = plan<omni_moe, omni_fsdp_sp_ep>;
    std::printf("model omni_moe, recipe FSDP + Ulysses(lm) + EP(lm)\n%s",
                describe<P>(omni_moe_dims(), mesh, w).c_str());
  }
  return 0;
}
