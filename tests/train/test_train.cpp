// Bad configs and bad manifests: veomni-train exits 2 before any collective,
// on every rank, with a message naming the key, or the file and line.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "harness.hpp"

using namespace veomni::testing;

namespace {
const std::string synthetic = "data:\n  type: synthetic\ntrain:\n  max_steps: 2\n  global_batch_size: 4\n";

void expect_error(const job& j, const std::string& message, int ranks = 1) {
  INFO(j.output);
  CHECK(j.rc == (ranks == 1 ? 2 : 1));  // veomni-launch reports a failed job as 1
  CHECK(contains(j.output, message));
}

// Each rank of a 2-rank launch alone, with no peer to talk to: it must fail
// with the message before any collective (a rank that tried to connect would
// wait for its peer instead).
void expect_error_on_each_rank(const std::string& tag, const std::string& overrides, const std::string& message) {
  const std::string yaml = tmp_root + "/" + tag + "/config.in.yaml";
  for (int r = 0; r < 2; ++r) {
    const job j = run("RANK=" + std::to_string(r) + " WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 VEOMNI_COMM_TIMEOUT=5 timeout 30 " +
                          train_bin + " " + yaml + " " + overrides,
                      tag + "_rank" + std::to_string(r));
    INFO("rank ", r, ": ", j.output);
    CHECK(j.rc == 2);
    CHECK(contains(j.output, "veomni-train: error: " + message));
  }
}
}  // namespace

TEST_CASE("config: an unknown key is named, with the closest known one") {
  expect_error(train("cfg_unknown", 1, "train:\n  max_step: 3\n"), "train.max_step: unknown key (did you mean train.max_steps?)");
}

TEST_CASE("config: an unknown section is named") {
  expect_error(train("cfg_section", 1, "trian:\n  lr: 1\n"), "trian: unknown key");
}

TEST_CASE("config: a wrong type names the key, in the file and in an override") {
  expect_error(train("cfg_type_file", 1, "train:\n  max_steps: many\n"), "train.max_steps: expected an integer, got 'many'");
  expect_error(train("cfg_type_cli", 1, synthetic, "--train.lr=fast"), "train.lr: expected a number, got 'fast'");
  expect_error(train("cfg_type_bool", 1, synthetic, "--train.activation_checkpointing=maybe"),
               "train.activation_checkpointing: expected true or false, got 'maybe'");
  expect_error(train("cfg_choice", 1, synthetic, "--train.lr_decay_style=exp"),
               "train.lr_decay_style: 'exp' is not one of constant | linear | cosine");
  expect_error(train("cfg_model", 1, synthetic, "--model.name=gpt"), "model.name: 'gpt' is not one of dense_lm | tiny_vl | omni_moe");
}

TEST_CASE("config: a dimension the model lacks is named") {
  expect_error(train("cfg_dim", 1, synthetic, "--model.name=dense_lm --model.vision.hidden=8"),
               "model.vision.hidden: model dense_lm has no such dimension");
}

TEST_CASE("config: mesh sizes whose product is not the world size") {
  expect_error(train("cfg_mesh", 1, synthetic, "--train.accelerator.dp_shard_size=2"),
               "train.accelerator: dp_replicate_size*dp_shard_size*ulysses_size = 2 but WORLD_SIZE = 1");
}

TEST_CASE("config: attention heads that ulysses_size does not divide, on every rank of 2" * doctest::timeout(60)) {
  const std::string o = "--train.accelerator.ulysses_size=2 --model.lm.heads=3 --model.lm.kv_heads=3";
  const std::string msg = "train.accelerator.ulysses_size: 2 does not divide model.lm.heads = 3";
  expect_error(train("cfg_heads", 2, synthetic, o), msg, 2);
  expect_error_on_each_rank("cfg_heads", o, msg);
}

TEST_CASE("config: experts that ep_size does not divide, on every rank of 2" * doctest::timeout(60)) {
  const std::string o = "--train.accelerator.ep_size=2 --model.lm.experts=3";
  const std::string msg = "train.accelerator.ep_size: 2 does not divide model.lm.experts = 3";
  expect_error(train("cfg_experts", 2, synthetic, o), msg, 2);
  expect_error_on_each_rank("cfg_experts", o, msg);
}

TEST_CASE("config: a global batch that does not split over the data ranks") {
  expect_error(train("cfg_batch", 1, synthetic, "--train.global_batch_size=6 --train.micro_batch_size=4"),
               "train.micro_batch_size: 4 does not divide each data rank's 6 samples");
}

TEST_CASE("manifest: a malformed JSON line is named by file and line") {
  const std::string dir = case_dir("man_json");
  write_file(dir + "/m.jsonl", "{\"text\": \"fine\"}\n{\"text\": \"broken\"\n");
  expect_error(train("man_json", 1, "data:\n  manifest: " + dir + "/m.jsonl\n  eval_manifest: ''\n"), dir + "/m.jsonl:2: malformed JSON");
}

TEST_CASE("manifest: a missing image is named with its line") {
  const std::string dir = case_dir("man_missing");
  write_file(dir + "/m.jsonl", "{\"prompt\": \"<image>colour?\", \"answer\": \" red\", \"images\": [\"nope.png\"]}\n");
  expect_error(train("man_missing", 1, "data:\n  manifest: " + dir + "/m.jsonl\n  eval_manifest: ''\n"),
               dir + "/m.jsonl:1: image '" + dir + "/nope.png': not found");
}

TEST_CASE("manifest: a missing manifest and an unknown field") {
  expect_error(train("man_none", 1, "data:\n  manifest: /nonexistent/m.jsonl\n"), "/nonexistent/m.jsonl: cannot open the manifest");
  const std::string dir = case_dir("man_field");
  write_file(dir + "/m.jsonl", "{\"text\": \"a\"}\n{\"txt\": \"b\"}\n");
  expect_error(train("man_field", 1, "data:\n  manifest: " + dir + "/m.jsonl\n  eval_manifest: ''\n"),
               dir + "/m.jsonl:2: unknown field 'txt'");
}
