// One rank of a parity job: trains MODEL with RECIPE on the mesh given on the
// command line for STEPS fp32 AdamW steps on the synthetic global batches,
// and (rank 0) writes "step loss grad_norm" lines to OUT. Every step it also
// holds what ran against the plan, and fails (exit 3) on any difference:
//   - the trace: this rank's collectives of the step, one by one, are the
//     plan's schedule (core/schedule.hpp) for this mesh: the same plan op
//     (node, unit, phase, tensor role, policy), block, collective, axes,
//     dtype and bytes, in the same order; EP's data-dependent all_to_all
//     bytes summed over the ranks, their positions exact;
//   - the counters: bytes per (collective, axes) equal the cost model's;
//   - memory (after the first step): the parameter, gradient and optimizer
//     bytes this rank holds equal the cost model's memory<P>;
//   - an adapted node's frozen parameters (Adapt<LoRA>) are bit-identical
//     after the last step to what they were before the first (exit 4).
// With --micro=N each step's global batch is cut into N micro-batches
// (contiguous runs of samples), whose gradients accumulate. The trace is
// also written to OUT.trace.rank<R>.csv.
//   parity_worker MODEL RECIPE DP_REPLICATE DP_SHARD SP EP STEPS OUT [--checkpoint] [--micro=N] [--precision=bf16]
// --precision=bf16 runs with parallel::options::prec = precisions::bf16 (the
// trace's dtypes and bytes are then the plan's in that precision).
// VEOMNI_PARITY_LORA_TARGETS=attention,mlp,moe (any of them) narrows a LoRA recipe's targets at
// run time (parallel::options::adapters), the cost model told the same.
#include "parity_worker.hpp"

using namespace parity;

int main(int argc, char** argv) {
  if (argc < 9) {
    std::fprintf(stderr,
                 "usage: parity_worker MODEL RECIPE DP_REPLICATE DP_SHARD SP EP STEPS OUT [--checkpoint] [--micro=N] "
                 "[--precision=bf16]\n");
    return 2;
  }
  args a;
  a.model = argv[1];
  a.recipe = argv[2];
  a.mesh = {.dp_replicate = std::atol(argv[3]), .dp_shard = std::atol(argv[4]), .sp = std::atol(argv[5]),
            .ep = std::atol(argv[6])};
  a.steps = std::atoi(argv[7]);
  a.out = argv[8];
  for (int i = 9; i < argc; ++i) {
    const std::string o = argv[i];
    if (o == "--checkpoint") {
      a.checkpoint = true;
    } else if (o == "--precision=bf16") {
      parity::g_precision = precisions::bf16;
    } else if (o.rfind("--micro=", 0) == 0 && std::atoi(o.c_str() + 8) > 0) {
      a.micro = std::atoi(o.c_str() + 8);
      if (8 % a.micro != 0) {
        std::fprintf(stderr, "parity_worker: --micro=%d does not divide the 8 samples of a step\n", a.micro);
        return 2;
      }
    } else {
      std::fprintf(stderr, "parity_worker: unknown option '%s'\n", o.c_str());
      return 2;
    }
  }
  try {
    static const char* const dense_names[] = {"ddp",       "fsdp",      "hsdp",      "fsdp_sp",  "fsdp_bf16",
                                              "ring_ddp",  "ring_fsdp", "fsdp_keep", "zero2",    "zero1",
                                              "lora_ddp",  "lora_fsdp", "lora_fsdp_sp"};
    using bf16_fsdp = fsdp<fsdp_options{.param_dtype = dtype::bf16, .reduce_dtype = dtype::f32}>;
    using keep_fsdp = fsdp<fsdp_options{.reshard_after_forward = false}>;
    if (a.model == "dense_lm" || a.model == "dense_lm_hf")
      return dispatch<dense_lm, recipe<apply<"lm", Shard<DDP>>>, recipe<apply<"lm", Shard<FSDP>>>,
                      recipe<apply<"lm", Shard<HSDP>>>, recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>>>,
                      recipe<apply<"lm", Shard<bf16_fsdp>>>, recipe<apply<"lm", Shard<DDP>, Split<user::Ring>>>,
                      recipe<apply<"lm", Shard<FSDP>, Split<user::Ring>>>, recipe<apply<"lm", Shard<keep_fsdp>>>,
                      recipe<apply<"lm", Shard<user::ZeRO2>>>, recipe<apply<"lm", Shard<user::ZeRO1>>>,
                      recipe<apply<"lm", Shard<DDP>, Adapt<LoRA>>>, recipe<apply<"lm", Shard<FSDP>, Adapt<LoRA>>>,
                      recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>, Adapt<LoRA>>>>(
          a, a.model == "dense_lm" ? models::dense_lm_tiny() : dense_lm_hf(), testing::kind::text, dense_names);
    if (a.model == "tiny_vl")
      return dispatch<tiny_vl,
                      recipe<apply<"vision", Shard<DDP>>, apply<"proj", Shard<DDP>>, apply<"lm", Shard<DDP>>>,
                      recipe<fsdp_on<"vision">, fsdp_on<"proj">, fsdp_on<"lm">>,
                      recipe<apply<"vision", Shard<HSDP>>, apply<"proj", Shard<HSDP>>, apply<"lm", Shard<HSDP>>>,
                      recipe<fsdp_on<"vision">, fsdp_on<"proj">, apply<"lm", Shard<FSDP>, Split<Ulysses>>>>(
          a, models::tiny_vl_tiny(), testing::kind::vision, dense_names);
    if (a.model == "omni_moe" || a.model == "omni_moe_hf") return parity::run_omni(a);
    std::fprintf(stderr, "parity_worker: unknown model '%s'\n", a.model.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity_worker: %s\n", e.what());
    return 1;
  }
}
