// Bad configuration: one case per rule. veomni-train exits 2 with a message
// naming the key and the rule, before any collective, on every rank (each
// rank of a 2-rank job is also started alone: with no peer to reach it can
// only pass by failing before it connects).
#include <doctest/doctest.h>

#include <cstdlib>

#include "harness.hpp"

using namespace veomni::testing;

namespace {
const std::string synthetic = "data:\n  type: synthetic\ntrain:\n  max_steps: 2\n  global_batch_size: 4\n  peak_flops_per_rank: 1e9\n";

// The launched job at `world` ranks and each rank alone both fail with `message`.
void expect_rule(const std::string& tag, const std::string& yaml, const std::string& overrides, const std::string& message,
                 int world = 2) {
  expect_error(train(tag, world, yaml, overrides), message, world);
  expect_error_on_each_rank(tag, overrides, message);
}
}  // namespace

TEST_SUITE("config") {
TEST_CASE("an unknown key is named, with the closest known one" * doctest::timeout(180)) {
  expect_rule("cfg_unknown", "train:\n  max_step: 3\n", "", "train.max_step: unknown key (did you mean train.max_steps?)");
  expect_rule("cfg_section", "trian:\n  lr: 1\n", "", "trian: unknown key");
  expect_rule("cfg_unknown_cli", synthetic, "--train.learning_rate=1", "train.learning_rate: unknown key");
}

// train.device and train.comm_backend: a device or backend this build or machine
// cannot run is refused on each rank before it connects (this machine: a CPU LibTorch).
TEST_CASE("train.device: cuda without CUDA, and a backend that does not fit the device" * doctest::timeout(180)) {
  expect_rule("cfg_cuda", synthetic, "--train.device=cuda", "train.device: cuda, but ");
  expect_rule("cfg_nccl_cpu", synthetic, "--train.comm_backend=nccl", "train.comm_backend: nccl needs train.device: cuda");
  expect_error(train("cfg_device_name", 1, synthetic, "--train.device=tpu"), "train.device: 'tpu' is not one of cpu | cuda");
  expect_error(train("cfg_precision_name", 1, synthetic, "--train.mixed_precision=fp16"),
               "train.mixed_precision: 'fp16' is not one of fp32 | bf16");
}

TEST_CASE("a wrong type names the key, in the file and in an override" * doctest::timeout(180)) {
  expect_rule("cfg_type_file", "train:\n  max_steps: many\n", "", "train.max_steps: expected an integer, got 'many'");
  expect_rule("cfg_type_list", "train:\n  lr: [1, 2]\n", "", "train.lr: expected a number, got a list");
  expect_error(train("cfg_type_cli", 1, synthetic, "--train.lr=fast"), "train.lr: expected a number, got 'fast'");
  expect_error(train("cfg_type_bool", 1, synthetic, "--train.activation_checkpointing=maybe"),
               "train.activation_checkpointing: expected true or false, got 'maybe'");
  expect_error(train("cfg_choice", 1, synthetic, "--train.lr_decay_style=exp"),
               "train.lr_decay_style: 'exp' is not one of constant | linear | cosine");
  expect_error(train("cfg_model", 1, synthetic, "--model.name=gpt"), "model.name: 'gpt' is not one of dense_lm | tiny_vl | omni_moe");
  expect_error(train("cfg_dim", 1, synthetic, "--model.name=dense_lm --model.vision.hidden=8"),
               "model.vision.hidden: model dense_lm has no such dimension");
}

TEST_CASE("numbers that are not finite, or negative" * doctest::timeout(180)) {
  expect_rule("cfg_nan", synthetic, "--train.lr=.nan", "train.lr: must be a finite number >= 0, got nan");
  expect_rule("cfg_inf", synthetic, "--train.max_grad_norm=.inf", "train.max_grad_norm: must be a finite number >= 0, got inf");
  expect_rule("cfg_negative", synthetic, "--train.weight_decay=-0.1", "train.weight_decay: must be a finite number >= 0, got -0.1");
  expect_rule("cfg_keep", synthetic, "--train.keep_checkpoints=-1", "train.keep_checkpoints: must be >= 0 (0 keeps every checkpoint)");
  expect_rule("cfg_threads", synthetic, "--train.threads=-2",
              "train.threads: must be >= 0 (0 chooses from the CPUs this rank may use)");
}

TEST_CASE("an OMP_NUM_THREADS that is not a number of threads" * doctest::timeout(180)) {
  ::setenv("OMP_NUM_THREADS", "lots", 1);
  expect_rule("cfg_omp", synthetic, "", "OMP_NUM_THREADS: 'lots' is not a positive number of threads (unset it, or set train.threads)");
  ::unsetenv("OMP_NUM_THREADS");
}

TEST_CASE("mesh sizes whose product is not the world size" * doctest::timeout(180)) {
  expect_rule("cfg_mesh", synthetic, "--train.accelerator.dp_shard_size=3",
              "train.accelerator: dp_replicate_size*dp_shard_size*ulysses_size = 3 but WORLD_SIZE = 2");
  expect_rule("cfg_mesh_rest", synthetic, "--train.accelerator.ulysses_size=4",
              "train.accelerator: dp_replicate_size*ulysses_size = 4 does not divide WORLD_SIZE = 2");
}

TEST_CASE("attention heads that ulysses_size does not divide" * doctest::timeout(180)) {
  expect_rule("cfg_heads", synthetic, "--train.accelerator.ulysses_size=2 --model.lm.heads=3 --model.lm.kv_heads=3",
              "train.accelerator.ulysses_size: 2 does not divide model.lm.heads = 3 and model.lm.kv_heads = 3");
}

TEST_CASE("KV heads that ulysses_size does not divide" * doctest::timeout(180)) {
  expect_rule("cfg_kv_heads", synthetic, "--train.accelerator.ulysses_size=2 --model.lm.heads=4 --model.lm.kv_heads=1",
              "train.accelerator.ulysses_size: 2 does not divide model.lm.heads = 4 and model.lm.kv_heads = 1");
}

TEST_CASE("experts that ep_size does not divide" * doctest::timeout(180)) {
  expect_rule("cfg_experts", synthetic, "--train.accelerator.ep_size=2 --model.lm.experts=3",
              "train.accelerator.ep_size: 2 does not divide model.lm.experts = 3");
}

TEST_CASE("ep_size that does not divide dp_shard x sp" * doctest::timeout(180)) {
  expect_rule("cfg_ep_mesh", synthetic, "--train.accelerator.ep_size=4",
              "train.accelerator.ep_size: 4 must divide dp_shard_size*ulysses_size = 2");
}

TEST_CASE("a token budget that the sequence-parallel ranks cannot share" * doctest::timeout(180)) {
  expect_rule("cfg_budget", synthetic, "--train.accelerator.ulysses_size=2 --data.token_budget=51",
              "data.token_budget: 51 is not a multiple of train.accelerator.ulysses_size = 2");
}

TEST_CASE("a global batch that does not split over the data ranks" * doctest::timeout(180)) {
  expect_rule("cfg_batch", synthetic, "--train.global_batch_size=5",
              "train.global_batch_size: 5 does not split over 2 data-parallel ranks");
  expect_rule("cfg_micro", synthetic, "--train.global_batch_size=12 --train.micro_batch_size=4",
              "train.micro_batch_size: 4 does not divide each data rank's 6 samples");
}

TEST_CASE("missing files: the config, the manifests, the checkpoint to resume from" * doctest::timeout(180)) {
  const std::string dir = case_dir("cfg_files");
  expect_error(run(train_bin + " " + dir + "/nope.yaml", "cfg_files_config"), dir + "/nope.yaml: cannot open the config file");
  expect_error_on_each_rank("cfg_files_config", "", dir + "/nope.yaml: cannot open the config file", dir + "/nope.yaml");
  expect_rule("cfg_files_manifest", "data:\n  manifest: " + dir + "/none.jsonl\n", "", dir + "/none.jsonl: cannot open the manifest");
  const std::string data = small_dataset(dir);
  expect_rule("cfg_files_eval", "data:\n  manifest: " + data + "/train.jsonl\n  eval_manifest: " + dir + "/none.jsonl\n", "",
              dir + "/none.jsonl: cannot open the manifest");
  expect_rule("cfg_files_ckpt", synthetic + "  output_dir: " + dir + "/out\n  load_checkpoint_path: " + dir + "/no_ckpt\n", "",
              "train.load_checkpoint_path: " + dir + "/no_ckpt: no such checkpoint folder");
}
}
