// Parity: every recipe at world 2 and 4 trains like one process. Each case
// runs the parity worker at world 1 and at world N (veomni-launch, Gloo on
// loopback) and compares per-step losses and gradient norms over 20 fp32
// AdamW steps: relative difference at most 1e-5. The worker itself fails if,
// in any step, a rank's collective trace differs from the plan's schedule op
// for op (node, unit, phase, collective, axes, tensor, dtype, bytes, order),
// if the communicators' counters differ from the plan's cost model, or if the
// memory it holds differs from the cost model's. Then the contract: user
// policies that break it get clear errors, and a step interrupted by an
// exception is retried and trains exactly as an uninterrupted run.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

struct row {
  int step;
  double loss, norm;
};

std::vector<row> read_rows(const std::string& path) {
  std::vector<row> out;
  std::ifstream in(path);
  row r;
  while (in >> r.step >> r.loss >> r.norm) out.push_back(r);
  return out;
}

int sh(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

// `tag` keeps files of concurrently running cases (ctest -j) apart.
// Letters and digits of s (for file names).
std::string alnum(const std::string& s) {
  std::string out;
  for (char c : s)
    if (std::isalnum(static_cast<unsigned char>(c))) out += c;
  return out;
}

std::string run_job(const std::string& tag, const std::string& model, const std::string& recipe, int rep, int shard,
                    int sp, int ep, const std::string& extra = "") {
  const int world = rep * shard * sp;
  const std::string out = std::string(VEOMNI_TEST_TMP) + "/parity_" + tag + "_" + model + "_" + recipe + "_" +
                          std::to_string(rep) + std::to_string(shard) + std::to_string(sp) + std::to_string(ep) +
                          alnum(extra) + ".txt";
  std::remove(out.c_str());
  const std::string cmd = std::string(VEOMNI_TEST_LAUNCH) + " --nproc " + std::to_string(world) +
                          " --timeout 120 -- " + VEOMNI_TEST_WORKER + " " + model + " " + recipe + " " +
                          std::to_string(rep) + " " + std::to_string(shard) + " " + std::to_string(sp) + " " +
                          std::to_string(ep) + " 20 " + out + " " + extra;
  const int rc = sh(cmd);
  REQUIRE_MESSAGE(rc == 0, "job failed (exit ", rc, "): ", cmd);
  return out;
}

// 20 steps each, `got` within `tolerance` (relative) of `ref` in loss and
// gradient norm at every step, and `ref` trains.
void compare_rows(const std::vector<row>& ref, const std::vector<row>& got, const std::string& what, double tolerance) {
  REQUIRE(ref.size() == 20);
  REQUIRE(got.size() == 20);
  double worst_loss = 0, worst_norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    worst_loss = std::max(worst_loss, std::abs(got[i].loss - ref[i].loss) / std::abs(ref[i].loss));
    worst_norm = std::max(worst_norm, std::abs(got[i].norm - ref[i].norm) / std::abs(ref[i].norm));
  }
  MESSAGE(what, ": max rel diff loss ", worst_loss, ", grad norm ", worst_norm, " (step 19 loss ", got.back().loss,
          " vs ", ref.back().loss, ")");
  CHECK(worst_loss <= tolerance);
  CHECK(worst_norm <= tolerance);
  CHECK(ref.back().loss < ref.front().loss);  // it trains
}

// `micro` > 1: both runs cut each step into that many micro-batches.
// `reference`: the recipe of the one-process run (FSDP on one rank is the
// plain single-process model; a LoRA recipe compares with itself on one rank).
void check_parity(const std::string& model, const std::string& recipe, int rep, int shard, int sp, int ep,
                  const std::string& extra = "", double tolerance = 1e-5, int micro = 1,
                  const std::string& reference = "fsdp") {
  const std::string split = micro > 1 ? " --micro=" + std::to_string(micro) : "";
  const char* targets = std::getenv("VEOMNI_PARITY_LORA_TARGETS");  // set by a case for both runs
  const std::string tag = recipe + std::to_string(rep) + std::to_string(shard) + std::to_string(sp) +
                          std::to_string(ep) + alnum(extra + split) + (targets ? targets : "");
  const auto ref = read_rows(run_job(tag, model, reference, 1, 1, 1, 1, split));
  const auto got = read_rows(run_job(tag, model, recipe, rep, shard, sp, ep, extra + split));
  compare_rows(ref, got,
               model + " " + recipe + " mesh " + std::to_string(rep) + "x" + std::to_string(shard) + "x" +
                   std::to_string(sp) + " ep " + std::to_string(ep),
               tolerance);
}

}  // namespace

// mesh arguments: dp_replicate dp_shard sp ep
TEST_CASE("parity dense_lm ddp world 2") { check_parity("dense_lm", "ddp", 1, 2, 1, 1); }
TEST_CASE("parity dense_lm ddp world 4") { check_parity("dense_lm", "ddp", 2, 2, 1, 1); }
TEST_CASE("parity dense_lm fsdp world 2") { check_parity("dense_lm", "fsdp", 1, 2, 1, 1); }
TEST_CASE("parity dense_lm fsdp world 4") { check_parity("dense_lm", "fsdp", 1, 4, 1, 1); }
TEST_CASE("parity dense_lm hsdp world 2") { check_parity("dense_lm", "hsdp", 2, 1, 1, 1); }
TEST_CASE("parity dense_lm hsdp world 4") { check_parity("dense_lm", "hsdp", 2, 2, 1, 1); }
TEST_CASE("parity dense_lm fsdp_sp world 2") { check_parity("dense_lm", "fsdp_sp", 1, 1, 2, 1); }
TEST_CASE("parity dense_lm fsdp_sp world 4") { check_parity("dense_lm", "fsdp_sp", 1, 2, 2, 1); }
TEST_CASE("parity dense_lm fsdp world 2 with activation checkpointing") {
  check_parity("dense_lm", "fsdp", 1, 2, 1, 1, "--checkpoint");
}
// reshard_after_forward = false: every block keeps its gathered parameters
// for backward (no backward all_gather in the plan, none run), also when
// checkpointing recomputes the blocks.
TEST_CASE("parity dense_lm fsdp keeping gathered parameters world 2") { check_parity("dense_lm", "fsdp_keep", 1, 2, 1, 1); }
TEST_CASE("parity dense_lm fsdp keeping gathered parameters world 4 with activation checkpointing") {
  check_parity("dense_lm", "fsdp_keep", 1, 4, 1, 1, "--checkpoint");
}

// Mixed precision as a policy setting: bf16 gathers and compute, fp32
// reduction and master shards. Not bitwise fp32, so a loose bound; the
// worker still holds the counters (bf16 bytes) to the plan exactly.
TEST_CASE("mixed precision: dense_lm FSDP with bf16 parameters at world 2 tracks fp32") {
  check_parity("dense_lm", "fsdp_bf16", 1, 2, 1, 1, "", 2e-2);
}

// Mixed precision as the run's option (parallel::options::prec, the
// trainer's train.mixed_precision): one compiled recipe whose ops leave the
// dtype open gathers and computes in bf16, exchanges activations in bf16
// and reduces in fp32; each rank's trace has the dtypes and bytes of the
// plan in that precision (run_dtype), checked by the worker every step.
TEST_CASE("mixed precision at run time: dense_lm FSDP+Ulysses world 4 in bf16 tracks fp32") {
  check_parity("dense_lm", "fsdp_sp", 1, 2, 2, 1, "--precision=bf16", 2e-2);
}
TEST_CASE("mixed precision at run time: omni_moe FSDP+EP world 2 in bf16 tracks fp32") {
  check_parity("omni_moe", "fsdp_ep", 1, 2, 1, 2, "--precision=bf16", 2e-2);
}
TEST_CASE("mixed precision at run time: a unit held whole (DDP) is refused, naming the node") {
  const std::string log = std::string(VEOMNI_TEST_TMP) + "/bf16_ddp.log";
  const int rc = sh(std::string(VEOMNI_TEST_LAUNCH) + " --nproc 2 --timeout 60 -- " + VEOMNI_TEST_WORKER +
                    " dense_lm ddp 1 2 1 1 2 " + VEOMNI_TEST_TMP + "/bf16_ddp.txt --precision=bf16 > " + log + " 2>&1");
  std::ifstream in(log);
  const std::string out{std::istreambuf_iterator<char>(in), {}};
  CHECK(rc != 0);
  CHECK_MESSAGE(out.find("node 'lm' holds its parameters whole (DDP, ZeRO, or no Shard<> policy), so they compute in "
                         "their fp32 masters: the run's precision with 2-byte parameters needs them gathered") !=
                    std::string::npos,
                out);
}

// Split<Ring>, a user policy (examples/ring_attention.hpp), with DDP and with FSDP.
TEST_CASE("parity dense_lm ring (user policy) with ddp world 2") { check_parity("dense_lm", "ring_ddp", 1, 1, 2, 1); }
TEST_CASE("parity dense_lm ring (user policy) with ddp world 4") { check_parity("dense_lm", "ring_ddp", 1, 1, 4, 1); }
TEST_CASE("parity dense_lm ring (user policy) with fsdp world 2") { check_parity("dense_lm", "ring_fsdp", 1, 1, 2, 1); }
TEST_CASE("parity dense_lm ring (user policy) with fsdp world 4") { check_parity("dense_lm", "ring_fsdp", 1, 2, 2, 1); }

TEST_CASE("parity tiny_vl ddp world 2") { check_parity("tiny_vl", "ddp", 1, 2, 1, 1); }
TEST_CASE("parity tiny_vl ddp world 4") { check_parity("tiny_vl", "ddp", 2, 2, 1, 1); }
TEST_CASE("parity tiny_vl fsdp world 2") { check_parity("tiny_vl", "fsdp", 1, 2, 1, 1); }
TEST_CASE("parity tiny_vl fsdp world 4") { check_parity("tiny_vl", "fsdp", 1, 4, 1, 1); }
TEST_CASE("parity tiny_vl hsdp world 2") { check_parity("tiny_vl", "hsdp", 2, 1, 1, 1); }
TEST_CASE("parity tiny_vl hsdp world 4") { check_parity("tiny_vl", "hsdp", 2, 2, 1, 1); }
TEST_CASE("parity tiny_vl fsdp_sp world 2") { check_parity("tiny_vl", "fsdp_sp", 1, 1, 2, 1); }
TEST_CASE("parity tiny_vl fsdp_sp world 4") { check_parity("tiny_vl", "fsdp_sp", 1, 2, 2, 1); }

TEST_CASE("parity omni_moe ddp world 2") { check_parity("omni_moe", "ddp", 1, 2, 1, 1); }
TEST_CASE("parity omni_moe ddp world 4") { check_parity("omni_moe", "ddp", 2, 2, 1, 1); }
TEST_CASE("parity omni_moe fsdp world 2") { check_parity("omni_moe", "fsdp", 1, 2, 1, 1); }
TEST_CASE("parity omni_moe fsdp world 4") { check_parity("omni_moe", "fsdp", 1, 4, 1, 1); }
TEST_CASE("parity omni_moe hsdp world 2") { check_parity("omni_moe", "hsdp", 2, 1, 1, 1); }
TEST_CASE("parity omni_moe hsdp world 4") { check_parity("omni_moe", "hsdp", 2, 2, 1, 1); }
TEST_CASE("parity omni_moe fsdp_sp world 2") { check_parity("omni_moe", "fsdp_sp", 1, 1, 2, 1); }
TEST_CASE("parity omni_moe fsdp_sp world 4") { check_parity("omni_moe", "fsdp_sp", 1, 2, 2, 1); }
TEST_CASE("parity omni_moe fsdp_ep world 2") { check_parity("omni_moe", "fsdp_ep", 1, 2, 1, 2); }
TEST_CASE("parity omni_moe fsdp_ep world 4") { check_parity("omni_moe", "fsdp_ep", 1, 4, 1, 2); }
TEST_CASE("parity omni_moe fsdp_sp_ep world 2") { check_parity("omni_moe", "fsdp_sp_ep", 1, 1, 2, 2); }
TEST_CASE("parity omni_moe fsdp_sp_ep world 4") { check_parity("omni_moe", "fsdp_sp_ep", 1, 2, 2, 4); }
TEST_CASE("parity omni_moe fsdp_sp_ep world 4 with activation checkpointing") {
  check_parity("omni_moe", "fsdp_sp_ep", 1, 2, 2, 4, "--checkpoint");
}

// Gradient accumulation: each step in 2 micro-batches. Every rank's
// gradient of each micro-batch is reduced once (DDP: not the accumulated
// .grad again), so the step is that of the whole batch in one process.
// The language models with Hugging Face's options on (biases, q/k norms, tied
// head: the root unit holds 2 tensors, the table gets both uses' gradients).
TEST_CASE("parity dense_lm_hf fsdp world 2") { check_parity("dense_lm_hf", "fsdp", 1, 2, 1, 1); }
TEST_CASE("parity dense_lm_hf fsdp_sp world 4") { check_parity("dense_lm_hf", "fsdp_sp", 1, 2, 2, 1); }
TEST_CASE("parity omni_moe_hf fsdp_sp_ep world 4") { check_parity("omni_moe_hf", "fsdp_sp_ep", 1, 2, 2, 4); }

TEST_CASE("parity dense_lm ddp world 2 with 2 micro-batches") { check_parity("dense_lm", "ddp", 1, 2, 1, 1, "", 1e-5, 2); }
TEST_CASE("parity dense_lm hsdp world 4 with 2 micro-batches") { check_parity("dense_lm", "hsdp", 2, 2, 1, 1, "", 1e-5, 2); }
TEST_CASE("parity tiny_vl ddp world 4 with 2 micro-batches") { check_parity("tiny_vl", "ddp", 2, 2, 1, 1, "", 1e-5, 2); }
TEST_CASE("parity omni_moe fsdp_sp_ep world 4 with 2 micro-batches and activation checkpointing") {
  check_parity("omni_moe", "fsdp_sp_ep", 1, 2, 2, 4, "--checkpoint", 1e-5, 2);
}

// User policies written in examples/ with only public headers, trained by
// the same runtime (their placements and unit ops are the whole policy):
// ZeRO-2 (gradients reduce-scattered, optimizer sharded) and ZeRO-1
// (gradients all-reduced, optimizer sharded); the worker also holds their
// trace to the plan and their memory to the cost model's.
TEST_CASE("parity dense_lm zero2 (user policy) world 2") { check_parity("dense_lm", "zero2", 1, 2, 1, 1); }
TEST_CASE("parity dense_lm zero2 (user policy) world 4") { check_parity("dense_lm", "zero2", 1, 4, 1, 1); }
TEST_CASE("parity dense_lm zero1 (user policy) world 2") { check_parity("dense_lm", "zero1", 1, 2, 1, 1); }
TEST_CASE("parity dense_lm zero1 (user policy) world 4 with 2 micro-batches") {
  check_parity("dense_lm", "zero1", 1, 4, 1, 1, "", 1e-5, 2);
}
TEST_CASE("parity dense_lm zero2 (user policy) world 4 with activation checkpointing") {
  check_parity("dense_lm", "zero2", 1, 4, 1, 1, "--checkpoint");
}

// ---- the contract --------------------------------------------------------------------------

namespace {
struct job {
  int rc;
  std::string output;
};
job contract_job(int world, const std::string& args) {
  const std::string log = std::string(VEOMNI_TEST_TMP) + "/contract_" + alnum(args) + ".log";
  const std::string cmd = std::string(VEOMNI_TEST_LAUNCH) + " --nproc " + std::to_string(world) + " --timeout 60 -- " +
                          VEOMNI_TEST_CONTRACT_WORKER + " " + args + " > " + log + " 2>&1";
  const int rc = sh(cmd);
  std::ifstream in(log);
  return {rc, std::string(std::istreambuf_iterator<char>(in), {})};
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("contract: a runtime half that asks for an op its policy does not declare is refused, naming policy, node and op") {
  const job j = contract_job(1, "undeclared_op");
  CHECK(j.rc != 0);
  CHECK_MESSAGE(contains(j.output, "Split<UndeclaredOp> on node 'lm' asks for a forward op on kv_block (layer) that its "
                                   "ops<Ctx>() does not declare: it is not in the plan"),
                j.output);
}

TEST_CASE("contract: a collective other than its op's, under the op's tag, is refused by the communicator") {
  const job j = contract_job(2, "wrong_collective");
  CHECK(j.rc != 0);
  CHECK_MESSAGE(contains(j.output, "Split<WrongCollective> on node 'lm' runs all_gather over sp for its plan op "
                                   "all_to_all(q) over sp (attn, forward): a collective the plan does not have"),
                j.output);
}

TEST_CASE("contract: ops issued out of the plan's order are an error naming both, before the collective runs") {
  const job j = contract_job(1, "out_of_order");
  CHECK(j.rc != 0);
  CHECK_MESSAGE(contains(j.output, "the computation asks for lm block 0 attn forward all_to_all(k) over sp "
                                   "[Split<OutOfOrder>] while the plan's schedule runs lm block 0 attn forward "
                                   "all_to_all(q) over sp [Split<OutOfOrder>] first"),
                j.output);
}

// A step whose forward throws (block 1's attention) and a later one whose
// backward throws (inside block 0's backward), each retried: the run's
// losses and gradient norms equal an uninterrupted run's, bit for bit. What
// a step keeps for its backward is owned by its graph, so nothing leaks
// (the asan preset runs this under LeakSanitizer).
TEST_CASE("contract: a step interrupted by an exception in forward or backward is retried and trains as if it never was") {
  const std::string clean = std::string(VEOMNI_TEST_TMP) + "/contract_clean.txt",
                    interrupted = std::string(VEOMNI_TEST_TMP) + "/contract_interrupted.txt";
  const job c = contract_job(2, "clean 1 2 " + clean);
  REQUIRE_MESSAGE(c.rc == 0, c.output);
  const job i = contract_job(2, "interrupted 1 2 " + interrupted);
  REQUIRE_MESSAGE(i.rc == 0, i.output);
  CHECK(contains(i.output, "step 1 interrupted: contract_worker: thrown in forward"));
  CHECK(contains(i.output, "step 2 interrupted: contract_worker: thrown in backward"));
  const auto a = read_rows(clean), b = read_rows(interrupted);
  REQUIRE(a.size() == 4);
  REQUIRE(b.size() == 4);
  for (size_t k = 0; k < a.size(); ++k) {
    CHECK(a[k].loss == b[k].loss);
    CHECK(a[k].norm == b[k].norm);
  }
}

// ---- long context -------------------------------------------------------------------------

// Flash attention keeps each row's log-sum-exp, not the [L, L] probabilities:
// a training step's peak memory grows linearly in the sample's length. Peak
// RSS of fresh processes at 2k, 4k and 8k tokens (world 1, activation
// checkpointing): the growth from 4k to 8k is at most 2.3x the growth from
// 2k to 4k (quadratic memory would make it about 4x: the probabilities alone
// are 2 heads x L^2 x 4 bytes, 512 MB at 8k).
TEST_CASE("long context: a step's peak memory grows linearly with the sample's length") {
  auto peak_kb = [](int64_t len) {
    const std::string log = std::string(VEOMNI_TEST_TMP) + "/memory_" + std::to_string(len) + ".log";
    const int rc = sh(std::string(VEOMNI_TEST_MEMORY_WORKER) + " " + std::to_string(len) + " > " + log + " 2>&1");
    std::ifstream in(log);
    const std::string out(std::istreambuf_iterator<char>(in), {});
    REQUIRE_MESSAGE(rc == 0, out);
    const auto at = out.find("peak_rss_kb=");
    REQUIRE(at != std::string::npos);
    return std::stod(out.substr(at + 12));
  };
  const double a = peak_kb(2048), b = peak_kb(4096), c = peak_kb(8192);
  const double first = b - a, second = c - b;
  MESSAGE("peak RSS 2k / 4k / 8k tokens: ", a / 1024, " / ", b / 1024, " / ", c / 1024, " MB; growth ", first / 1024,
          " then ", second / 1024, " MB (ratio ", second / first, ")");
  CHECK(first > 0);
  CHECK(second <= 2.3 * first);
}

// LoRA (Adapt<LoRA>): against the same recipe on one process; the worker
// also fails if a frozen parameter changed by a single bit in 20 steps.
// omni_moe: the encoders' attention and MLPs, the language model's attention
// and experts (under EP the experts' adapters split with the experts, their
// gradients summed over dp_replicate x ep_dp).
namespace {
void check_lora_parity(const std::string& model, const std::string& recipe, int rep, int shard, int sp, int ep) {
  check_parity(model, recipe, rep, shard, sp, ep, "", 1e-5, 1, recipe);
}
}  // namespace
TEST_CASE("parity dense_lm LoRA ddp world 2") { check_lora_parity("dense_lm", "lora_ddp", 2, 1, 1, 1); }
TEST_CASE("parity dense_lm LoRA fsdp world 2") { check_lora_parity("dense_lm", "lora_fsdp", 1, 2, 1, 1); }
TEST_CASE("parity dense_lm LoRA fsdp world 4") { check_lora_parity("dense_lm", "lora_fsdp", 1, 4, 1, 1); }
TEST_CASE("parity dense_lm LoRA fsdp_sp world 2") { check_lora_parity("dense_lm", "lora_fsdp_sp", 1, 1, 2, 1); }
TEST_CASE("parity dense_lm LoRA fsdp_sp world 4") { check_lora_parity("dense_lm", "lora_fsdp_sp", 1, 2, 2, 1); }
TEST_CASE("parity omni_moe LoRA fsdp world 2") { check_lora_parity("omni_moe", "lora_fsdp", 1, 2, 1, 1); }
TEST_CASE("parity omni_moe LoRA fsdp world 4") { check_lora_parity("omni_moe", "lora_fsdp", 1, 4, 1, 1); }
TEST_CASE("parity omni_moe LoRA fsdp_sp world 2") { check_lora_parity("omni_moe", "lora_fsdp_sp", 1, 1, 2, 1); }
TEST_CASE("parity omni_moe LoRA fsdp_sp world 4") { check_lora_parity("omni_moe", "lora_fsdp_sp", 1, 2, 2, 1); }
TEST_CASE("parity omni_moe LoRA fsdp_ep world 2") { check_lora_parity("omni_moe", "lora_fsdp_ep", 1, 2, 1, 2); }
TEST_CASE("parity omni_moe LoRA fsdp_ep world 4") { check_lora_parity("omni_moe", "lora_fsdp_ep", 1, 4, 1, 4); }
TEST_CASE("parity omni_moe LoRA fsdp_sp_ep world 4") { check_lora_parity("omni_moe", "lora_fsdp_sp_ep", 1, 2, 2, 2); }
TEST_CASE("parity dense_lm LoRA fsdp world 2 with activation checkpointing") {
  check_parity("dense_lm", "lora_fsdp", 1, 2, 1, 1, "--checkpoint", 1e-5, 1, "lora_fsdp");
}
// train.lora.targets at run time: the dense_lm recipe's LoRA (attention and
// MLP) narrowed to the MLP alone, in the runtime and in the cost model.
TEST_CASE("parity dense_lm LoRA fsdp_sp world 4 with its targets narrowed to the MLP at run time") {
  setenv("VEOMNI_PARITY_LORA_TARGETS", "mlp", 1);
  check_lora_parity("dense_lm", "lora_fsdp_sp", 1, 2, 2, 1);
  unsetenv("VEOMNI_PARITY_LORA_TARGETS");
}
// the experts' adapters narrowed away at run time (whole: held with the attention's, in one op)
TEST_CASE("parity omni_moe LoRA fsdp world 2 with its targets narrowed to attention at run time") {
  setenv("VEOMNI_PARITY_LORA_TARGETS", "attention", 1);
  check_lora_parity("omni_moe", "lora_fsdp", 1, 2, 1, 1);
  unsetenv("VEOMNI_PARITY_LORA_TARGETS");
}

// A component of a user's own (docs/extending.md, part A): the depth-map
// encoder of examples/depth_encoder.hpp with its math in
// examples/depth_encoder_nn.hpp, its input in the batch's open map, trained
// by examples/train_depth_lm.cpp under its FSDP recipe. FSDP-2 and FSDP-4
// train like one process over 20 steps.
TEST_CASE("a user's component trains with FSDP at world 2 and 4 like one process") {
  auto run = [](int world) {
    const std::string out = std::string(VEOMNI_TEST_TMP) + "/depth_lm_w" + std::to_string(world) + ".txt";
    std::remove(out.c_str());
    const std::string cmd = std::string(VEOMNI_TEST_LAUNCH) + " --nproc " + std::to_string(world) +
                            " --timeout 120 -- " + VEOMNI_TEST_DEPTH_LM + " " + out + " 20";
    REQUIRE_MESSAGE(sh(cmd) == 0, "job failed: ", cmd);
    return read_rows(out);
  };
  const auto ref = run(1);
  for (int world : {2, 4}) compare_rows(ref, run(world), "depth_lm FSDP-" + std::to_string(world), 1e-5);
}
