// Checkpoint integrity: each rank file's size and CRC-32 are in meta.json
// and verified before loading; a truncated, damaged or incomplete checkpoint
// is refused with a message naming the file (exit 2, before any collective),
// "auto" falls back to the newest checkpoint that verifies, and the previous
// good one stays loadable. Retention: train.keep_checkpoints keeps the newest
// N, never the one being read; a save that runs out of space ends the run
// with the error and leaves the previous checkpoint whole.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
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

namespace {
bool exists(const std::string& p) { return fs::exists(p); }
}  // namespace

TEST_CASE("keep_checkpoints keeps the newest N, never one being read, and 0 keeps all" * doctest::timeout(180)) {
  const std::string tag = "ck_keep", cfg = ckpt_config(tag, 10);
  const job j = train(tag, 1, cfg, "--train.keep_checkpoints=2");
  ok_metrics(j, tag, 10);
  for (int s : {2, 4, 6}) {
    CHECK_FALSE(exists(ckpt(tag, s)));
    CHECK(contains(j.output, "removed " + ckpt(tag, s) + " (train.keep_checkpoints = 2)"));
  }
  CHECK(exists(ckpt(tag, 8)));
  CHECK(exists(ckpt(tag, 10)));
  CHECK(slurp(tmp_root + "/" + tag + "/out/checkpoints/latest") == "step_000010\n");
  for (const auto& e : fs::directory_iterator(tmp_root + "/" + tag + "/out/checkpoints")) CHECK_MESSAGE(!e.path().has_extension(), e.path());
  // another process reads step 8 (a shared lock on the folder, as verifying and loading take): it stays
  const int fd = ::open(ckpt(tag, 8).c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(fd >= 0);
  REQUIRE(::flock(fd, LOCK_SH) == 0);
  const job k = train(tag, 1, cfg, "--train.load_checkpoint_path=auto --train.max_steps=14 --train.keep_checkpoints=1");
  ::close(fd);
  ok_metrics(k, tag, 14);
  CHECK(contains(k.output, "resumed from " + ckpt(tag, 10)));
  CHECK(contains(k.output, "kept " + ckpt(tag, 8) + " past train.keep_checkpoints = 1: another process is reading it"));
  CHECK(exists(ckpt(tag, 8)));
  for (int s : {10, 12}) CHECK_FALSE(exists(ckpt(tag, s)));
  CHECK(exists(ckpt(tag, 14)));
  // the reader gone, the next save removes it
  const job l = train(tag, 1, cfg, "--train.load_checkpoint_path=auto --train.max_steps=16 --train.keep_checkpoints=1");
  ok_metrics(l, tag, 16);
  CHECK_FALSE(exists(ckpt(tag, 8)));
  CHECK_FALSE(exists(ckpt(tag, 14)));
  // 0: every checkpoint stays (more than the default 3)
  const std::string all = "ck_keep_all";
  ok_metrics(train(all, 1, ckpt_config(all, 8), "--train.keep_checkpoints=0"), all, 8);
  for (int s : {2, 4, 6, 8}) CHECK(exists(ckpt(all, s)));
}

namespace {
uint64_t folder_bytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += (fs::file_size(e.path()) + 4095) / 4096 * 4096;
  return n;
}
}  // namespace

// The output folder on a tmpfs with room for two checkpoints and not three
// (root: mount; otherwise a file-size limit, `ulimit -f`, fails the save the
// same way, with EFBIG instead of ENOSPC).
TEST_CASE("a save that fails for lack of space: the run exits with the error, the previous checkpoint verifies and resumes exactly" *
          doctest::timeout(240)) {
  const std::string tag = "ck_full";
  const auto ref = ok_metrics(train(tag + "_ref", 1, ckpt_config(tag + "_ref", 8)), tag + "_ref", 8);
  const uint64_t one = folder_bytes(ckpt(tag + "_ref", 8));
  MESSAGE("one checkpoint: ", one, " bytes");
  REQUIRE(one > 256 * 1024);  // big enough against the run's small files
  const std::string disk = tmp_root + "/" + tag + "/disk";
  (void)std::system(("umount " + disk + " 2>/dev/null").c_str());  // left by an earlier run killed midway
  std::string cfg = ckpt_config(tag, 8);  // a fresh tmp/ck_full
  const std::string dir = tmp_root + "/" + tag, out = disk + "/out", ck = out + "/checkpoints/";
  cfg.replace(cfg.find(dir + "/out"), (dir + "/out").size(), out);
  write_file(dir + "/config.in.yaml", cfg);
  fs::create_directories(disk);
  const uint64_t room = 2 * one + one / 2;
  const bool mounted = std::system(("mount -t tmpfs -o size=" + std::to_string(room) + " tmpfs " + disk + " 2>/dev/null").c_str()) == 0;
  struct unmount {
    bool on;
    std::string at;
    ~unmount() {
      if (on && std::system(("umount " + at).c_str()) != 0) std::fprintf(stderr, "could not unmount %s\n", at.c_str());
    }
  } unmount_at_end{mounted, disk};
  auto run_here = [&](const std::string& limit, const std::string& overrides, const std::string& name) {
    return run("bash -c '" + limit + "exec " + train_bin + " " + dir + "/config.in.yaml " + overrides + "'", name);
  };
  job failed;
  if (mounted) {
    MESSAGE("a tmpfs of ", room, " bytes");
    failed = run_here("", "--train.keep_checkpoints=2", tag + "_fill");
  } else {
    MESSAGE("mount not permitted here: a file-size limit instead");
    ok_metrics(run_here("", "--train.max_steps=4", tag + "_first"), tag + "/disk", 4);
    failed = run_here("ulimit -f " + std::to_string(one / 2 / 1024) + "; ", "--train.load_checkpoint_path=auto", tag + "_fill");
  }
  {
    INFO(failed.output);
    CHECK(failed.rc == 1);
    CHECK(contains(failed.output, "veomni-train: failed: writing '" + ck + "step_000006.tmp/rank_00000.safetensors.tmp' failed: " +
                                      (mounted ? "No space left on device" : "File too large")));
  }
  CHECK(slurp(ck + "latest") == "step_000004\n");
  CHECK(exists(ck + "step_000004/meta.json"));
  CHECK_FALSE(exists(ck + "step_000006"));
  // the previous checkpoint verifies and the run resumes from it exactly; keeping one, the run
  // removes step 2 at the start (step 4 is newer and verified), and the next save fits
  const job again = run_here("", "--train.load_checkpoint_path=auto --train.keep_checkpoints=1", tag + "_again");
  INFO(again.output);
  CHECK(contains(again.output, "resumed from " + ck + "step_000004"));
  if (mounted) CHECK(contains(again.output, "removed " + ck + "step_000002 (train.keep_checkpoints = 1)"));
  CHECK_FALSE(contains(again.output, "refusing"));
  const auto got = ok_metrics(again, tag + "/disk", 8);
  for (size_t i = 4; i < 8; ++i) {
    CHECK(got[i]["loss"].get<double>() == ref[i]["loss"].get<double>());
    CHECK(got[i]["grad_norm"].get<double>() == ref[i]["grad_norm"].get<double>());
  }
}
}
