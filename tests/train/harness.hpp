#pragma once
// Runs veomni-train (alone, under veomni-launch, under torchrun) and reads
// what it wrote. Every job has a deadline (veomni-launch --timeout, timeout(1)).
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace veomni::testing {

inline const std::string train_bin = VEOMNI_TEST_TRAIN;
inline const std::string launch_bin = VEOMNI_TEST_LAUNCH;
inline const std::string dataset_bin = VEOMNI_TEST_DATASET;
inline const std::string tmp_root = VEOMNI_TEST_TMP;

struct job {
  int rc = -1;
  std::string output;
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline job run(const std::string& cmd, const std::string& tag) {
  const std::string log = tmp_root + "/" + tag + ".log";
  const int rc = std::system((cmd + " > " + log + " 2>&1").c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : 128, slurp(log)};
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A fresh folder for one test case.
inline std::string case_dir(const std::string& tag) {
  const std::string d = tmp_root + "/" + tag;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

inline void write_file(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// The small default dataset (the same generator as the bundled one).
inline std::string small_dataset(const std::string& dir) {
  const std::string d = dir + "/data";
  const int rc = std::system((dataset_bin + " --out " + d + " --train 96 --eval 24 > /dev/null").c_str());
  if (rc != 0) throw std::runtime_error("veomni-dataset failed");
  return d;
}

// veomni-train on `world` ranks (veomni-launch), config text + overrides.
inline job train(const std::string& tag, int world, const std::string& yaml, const std::string& overrides = "") {
  const std::string dir = tmp_root + "/" + tag;
  std::filesystem::create_directories(dir);
  write_file(dir + "/config.in.yaml", yaml);
  const std::string cmd = world == 1 ? train_bin + " " + dir + "/config.in.yaml " + overrides
                                     : launch_bin + " --nproc " + std::to_string(world) + " --timeout 150 -- " + train_bin +
                                           " " + dir + "/config.in.yaml " + overrides;
  return run("VEOMNI_COMM_TIMEOUT=60 " + cmd, tag + "_run");
}

// A job that must fail on bad input: exit 2 alone, 1 from veomni-launch (a
// failed job), with `message` in its output.
#ifdef DOCTEST_VERSION
inline void expect_error(const job& j, const std::string& message, int ranks = 1) {
  INFO(j.output);
  CHECK(j.rc == (ranks == 1 ? 2 : 1));
  CHECK(contains(j.output, message));
}

// Each rank of a 2-rank job started alone, with no peer to talk to (the
// store's port is closed): it must fail with the message before any
// collective, with exit 2 — a rank that tried to connect would wait instead.
// The config is tmp/<tag>/config.in.yaml (written by train()), or `config`.
inline void expect_error_on_each_rank(const std::string& tag, const std::string& overrides, const std::string& message,
                                      const std::string& config = "") {
  const std::string yaml = config.empty() ? tmp_root + "/" + tag + "/config.in.yaml" : config;
  for (int r = 0; r < 2; ++r) {
    const job j = run("RANK=" + std::to_string(r) + " WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 VEOMNI_COMM_TIMEOUT=5 timeout 30 " +
                          train_bin + " " + yaml + " " + overrides,
                      tag + "_rank" + std::to_string(r));
    INFO("rank ", r, ": ", j.output);
    CHECK(j.rc == 2);
    CHECK(contains(j.output, "veomni-train: error: " + message));
  }
}

#endif

inline std::vector<nlohmann::json> metrics(const std::string& out_dir) {
  std::vector<nlohmann::json> m;
  std::ifstream in(out_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) m.push_back(nlohmann::json::parse(line));
  return m;
}

#ifdef DOCTEST_VERSION
// The metrics of a job that must succeed with `steps` steps, written to tmp/<tag>/out.
inline std::vector<nlohmann::json> ok_metrics(const job& j, const std::string& tag, size_t steps) {
  INFO(j.output);
  REQUIRE(j.rc == 0);
  auto m = metrics(tmp_root + "/" + tag + "/out");
  REQUIRE(m.size() == steps);
  return m;
}
#endif

inline double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

// A safetensors file read back by hand: name -> (shape, float values).
struct tensor_f32 {
  std::vector<int64_t> shape;
  std::vector<float> values;
};
inline std::map<std::string, tensor_f32> read_safetensors(const std::string& path, nlohmann::json* meta = nullptr) {
  const std::string bytes = slurp(path);
  uint64_t len = 0;
  for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(static_cast<unsigned char>(bytes.at(static_cast<size_t>(i)))) << (8 * i);
  const nlohmann::json h = nlohmann::json::parse(bytes.substr(8, len));
  std::map<std::string, tensor_f32> out;
  for (const auto& [k, v] : h.items()) {
    if (k == "__metadata__") {
      if (meta) *meta = v;
      continue;
    }
    tensor_f32 t;
    t.shape = v.at("shape").get<std::vector<int64_t>>();
    const uint64_t b = v.at("data_offsets")[0], e = v.at("data_offsets")[1];
    t.values.resize((e - b) / 4);
    std::memcpy(t.values.data(), bytes.data() + 8 + len + b, e - b);
    out[k] = std::move(t);
  }
  return out;
}

}  // namespace veomni::testing
