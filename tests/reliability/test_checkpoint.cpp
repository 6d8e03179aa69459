// Checkpoint integrity: each rank file's size and CRC-32 are in meta.json
// and verified before loading; a truncated, damaged or incomplete checkpoint
// is refused with a message naming the file (exit 2, before any collective),
// "auto" falls back to the newest checkpoint that verifies, and the previous
// good one stays loadable.
#include <doctest/doctest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "harness.hpp"

using namespace veomni::testing;
namespace fs = std::filesystem;

namespace {

// dense_lm on synthetic data, a checkpoint every 2 steps (and at the end).
std::string ckpt_config(const std::string& tag, int steps) {
  const std::string dir = case_dir(tag);
  return "model:\n  name: dense_lm\ndata:\n  type: synthetic\n  synthetic_seq_len: 32\n"
         "train:\n  output_dir: " + dir + "/out\n  max_steps: " + std::to_string(steps) +
         "\n  global_batch_size: 4\n  lr: 0.003\n  lr_decay_style: constant\n  save_steps: 2\n  log_steps: 100\n"
         "  export_safetensors: false\n  peak_flops_per_rank: 1e9\n";
}

std::string ckpt(const std::string& tag, int step) {
  char b[32];
  std::snprintf(b, sizeof b, "step_%06d", step);
  return tmp_root + "/" + tag + "/out/checkpoints/" + b;
}

// A 2-rank run of 4 steps (checkpoints at 2 and 4), and the uninterrupted 6-step reference.
struct runs {
  std::string tag, cfg;
  std::vector<nlohmann::json> reference;
};
runs written(const std::string& tag) {
  runs r{tag, ckpt_config(tag, 6), {}};
  r.reference = ok_metrics(train(tag + "_ref", 2, ckpt_config(tag + "_ref", 6)), tag + "_ref", 6);
  ok_metrics(train(tag, 2, r.cfg, "--train.max_steps=4"), tag, 4);
  return r;
}

// Resuming `r` with `spec` to step 6 repeats the reference's steps 3..6 exactly.
void resumes_exactly(const runs& r, const std::string& spec, const std::string& from) {
  const job j = train(r.tag, 2, r.cfg, "--train.load_checkpoint_path=" + spec);
  CHECK(contains(j.output, "resumed from " + from));
  const auto got = ok_metrics(j, r.tag, 6);
  for (size_t i = 2; i < 6; ++i) {
    CHECK(got[i]["loss"].get<double>() == r.reference[i]["loss"].get<double>());
    CHECK(got[i]["grad_norm"].get<double>() == r.reference[i]["grad_norm"].get<double>());
  }
}

uint32_t crc_of(const std::string& path) {
  const std::string bytes = slurp(path);
  return static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
}
}  // namespace

TEST_SUITE("checkpoint") {
TEST_CASE("meta.json lists every rank file with its size and CRC-32, and no temporaries are left" * doctest::timeout(120)) {
  const std::string tag = "ck_meta";
  ok_metrics(train(tag, 2, ckpt_config(tag, 4)), tag, 4);
  const auto meta = nlohmann::json::parse(slurp(ckpt(tag, 4) + "/meta.json"));
  REQUIRE(meta["files"].size() == 2);
  for (const char* f : {"rank_00000.safetensors", "rank_00001.safetensors"}) {
    const std::string p = ckpt(tag, 4) + "/" + f;
    CHECK(meta["files"][f]["bytes"].get<uint64_t>() == fs::file_size(p));
    CHECK(meta["files"][f]["crc32"].get<uint32_t>() == crc_of(p));
  }
  CHECK(slurp(tmp_root + "/" + tag + "/out/checkpoints/latest") == "step_000004\n");
  for (const auto& e : fs::recursive_directory_iterator(tmp_root + "/" + tag + "/out"))
    CHECK_MESSAGE(e.path().extension() != ".tmp", e.path().string());
}

TEST_CASE("a truncated rank file is refused by name, and auto falls back to the previous checkpoint" * doctest::timeout(180)) {
  const runs r = written("ck_trunc");
  const std::string bad = ckpt(r.tag, 4) + "/rank_00001.safetensors";
  const auto size = fs::file_size(bad);
  fs::resize_file(bad, size - 100);
  const std::string why = bad + ": " + std::to_string(size - 100) + " bytes, meta.json says " + std::to_string(size) +
                          ": the file is truncated or damaged";
  // named explicitly: refused on every rank, exit 2
  expect_error(train(r.tag, 2, r.cfg, "--train.load_checkpoint_path=" + ckpt(r.tag, 4)), why, 2);
  expect_error_on_each_rank(r.tag, "--train.load_checkpoint_path=" + ckpt(r.tag, 4), "train.load_checkpoint_path: " + why);
  // auto: step 4 refused with the reason, step 2 loads, and the run repeats the reference
  resumes_exactly(r, "auto", ckpt(r.tag, 2));
}

TEST_CASE("a flipped byte is refused (CRC-32), and the previous checkpoint, named, still loads" * doctest::timeout(180)) {
  const runs r = written("ck_flip");
  const std::string bad = ckpt(r.tag, 4) + "/rank_00000.safetensors";
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-7, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(-7, std::ios::end);
    f.write(&c, 1);
  }
  const job j = train(r.tag, 2, r.cfg, "--train.load_checkpoint_path=" + ckpt(r.tag, 4));
  expect_error(j, bad + ": CRC-32 " + std::to_string(crc_of(bad)) + ", meta.json says ", 2);
  CHECK(contains(j.output, ": the file is damaged"));
  resumes_exactly(r, ckpt(r.tag, 2), ckpt(r.tag, 2));
}

TEST_CASE("an incomplete checkpoint: meta.json missing, a rank file missing, an unlisted rank file" * doctest::timeout(180)) {
  const runs r = written("ck_parts");
  const std::string c4 = ckpt(r.tag, 4), c2 = ckpt(r.tag, 2);
  const std::string load = "--train.load_checkpoint_path=" + c4;
  fs::copy_file(c4 + "/rank_00001.safetensors", c4 + "/rank_00002.safetensors");
  expect_error(train(r.tag, 2, r.cfg, load), c4 + "/rank_00002.safetensors: not listed in meta.json", 2);
  fs::remove(c4 + "/rank_00002.safetensors");
  fs::remove(c4 + "/rank_00001.safetensors");
  expect_error(train(r.tag, 2, r.cfg, load), c4 + "/rank_00001.safetensors: missing: the checkpoint is incomplete", 2);
  fs::remove(c4 + "/meta.json");
  expect_error(train(r.tag, 2, r.cfg, load), c4 + "/meta.json: missing: the checkpoint is incomplete or damaged", 2);
  // a save killed half-way leaves step_N.tmp behind: never a candidate
  fs::create_directories(ckpt(r.tag, 8) + ".tmp");
  std::ofstream(ckpt(r.tag, 8) + ".tmp/rank_00000.safetensors") << "partial";
  resumes_exactly(r, "auto", c2);
}

TEST_CASE("when no checkpoint verifies, auto refuses them all instead of starting afresh" * doctest::timeout(180)) {
  const std::string tag = "ck_none", cfg = ckpt_config(tag, 4);
  ok_metrics(train(tag, 1, cfg), tag, 4);
  for (int s : {2, 4}) fs::remove(ckpt(tag, s) + "/meta.json");
  const job j = train(tag, 1, cfg, "--train.load_checkpoint_path=auto");
  expect_error(j, "train.load_checkpoint_path: " + tmp_root + "/" + tag + "/out/checkpoints: no checkpoint verifies (");
  CHECK(contains(j.output, "refusing checkpoint " + ckpt(tag, 4)));
  CHECK(contains(j.output, "refusing checkpoint " + ckpt(tag, 2)));
}

TEST_CASE("a `latest` that names a path outside the checkpoints folder is ignored" * doctest::timeout(120)) {
  const std::string tag = "ck_latest", cfg = ckpt_config(tag, 4);
  ok_metrics(train(tag, 1, cfg), tag, 4);
  const std::string out = tmp_root + "/" + tag + "/out";
  write_file(out + "/checkpoints/latest", "../../ck_meta/out/checkpoints/step_000004\n");
  const job j = train(tag, 1, cfg, "--train.load_checkpoint_path=auto --train.max_steps=6");
  INFO(j.output);
  CHECK(j.rc == 0);
  CHECK(contains(j.output, "names '../../ck_meta/out/checkpoints/step_000004', not a step_N folder"));
  CHECK(contains(j.output, "resumed from " + ckpt(tag, 4)));
}
}
