// A launch whose predicted memory per GPU exceeds its stated budget: Qwen2-72B,
// FSDP + Ulysses over 128 GPUs at 128k tokens (about 58 GB per GPU) against
// 80 GiB (fits) and 40 GiB (does not).
#include <veomni/core.hpp>
#include <veomni/models/paper.hpp>
using namespace veomni;
namespace paper = veomni::models::paper;

struct launch {
  static constexpr auto dims = paper::qwen2_72b();
  static constexpr mesh_shape mesh{.dp_shard = 16, .sp = 8};
  static constexpr training_step step{.seq = 131072};
#ifdef VEOMNI_COMPILE_FAIL
  static constexpr long budget_bytes = 40L << 30;
#else
  static constexpr long budget_bytes = 80L << 30;
#endif
};
static_assert(fits_memory_budget<plan<paper::qwen2, paper::fsdp_sp>, launch>);
