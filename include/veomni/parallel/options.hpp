#pragma once
// parallel::options: how a parallel_model runs its plan (overlap,
// checkpointing, LoRA's settings at run time, the run's precision and
// device). Everything here may change between runs of one compiled recipe.
#include <torch/torch.h>

#include <cstdint>

#include "../core/cost.hpp"
#include "../core/step.hpp"

namespace veomni::parallel {

struct options {
  bool checkpoint = false;  // activation checkpointing per block (recompute in backward)
  bool prefetch = true;     // all-gather the next block while this one computes
  // backward: all-gather the block backward needs next while this one differentiates
  bool backward_prefetch = true;
  // issue each unit's gradient reduction when backward finishes the unit, wait
  // at the end of backward (false: wait for each as soon as it is issued)
  bool async_reduce = true;
  // FSDP/HSDP reduce_scatters in flight at most (0: no limit, all waited at the
  // end of backward): issuing one more first waits for the oldest, so at most
  // this many units' unsharded gradients (and Gloo receive buffers) are held
  // besides the one backward is computing (1 measured as fast as 2 or 0). It
  // also places HSDP's all_reduce (the schedule's reduce lag).
  int max_reduces_in_flight = 1;
  double aux_weight = 0.01;  // MoE load-balancing loss weight
  uint64_t seed = 0;
  // Adapt<LoRA>'s settings at run time, over the policy's own (lora_options):
  // rank (0: the policy's) and targets (layer_kinds bits narrowing the
  // policy's; 0: its own), which size the adapters (the cost model's
  // workload::adapters and memory<P>'s must say the same: adapter()); alpha
  // (0: the policy's); dropout on the adapters' input (negative: the policy's).
  struct adapter_options {
    long rank = 0;
    unsigned targets = 0;
    double alpha = 0;
    double dropout = -1;
    constexpr adapter_settings sizes() const { return {rank, targets}; }
  };
  adapter_options adapters{};
  // The run's precision for the plan's ops whose dtype the recipe leaves
  // unspecified (run_dtype, the cost model's rule): precisions::bf16 gathers
  // and computes the parameters in bf16, exchanges activations in bf16 and
  // reduces gradients in fp32. The masters (shards) and the optimizer stay
  // fp32 either way. Needs the parameters gathered (FSDP, HSDP): a unit
  // held whole (DDP, ZeRO) computes in its masters' fp32.
  precision prec = precisions::fp32;
  // Where the masters, the gathered parameters and each micro-batch's
  // tensors live: the CPU, or a CUDA device (with the NCCL mesh; its
  // communicator's device, cuda:LOCAL_RANK, in the trainer).
  at::Device device = at::kCPU;
};

}  // namespace veomni::parallel
