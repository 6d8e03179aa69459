// describe(): golden output for one example, and the table's totals.
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "../../examples/models.hpp"

using namespace veomni;
using namespace veomni::examples;

namespace {
std::string tiny_vl_description() {
  workload w;
  w.default_tokens = 64;
  w.with("lm", 256);
  return describe<plan<tiny_vl, tiny_vl_fsdp>>(tiny_vl_dims(), mesh_shape{.dp_shard = 2, .sp = 2}, w);
}
}  // namespace

TEST_CASE("describe: tiny_vl with FSDP + Ulysses matches the golden table") {
  const std::string path = std::string(VEOMNI_GOLDEN_DIR) + "/tiny_vl_describe.txt";
  const std::string got = tiny_vl_description();
  if (std::getenv("VEOMNI_UPDATE_GOLDEN")) {
    std::ofstream(path) << got;
    MESSAGE("golden file rewritten: " << path);
  }
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "missing golden file " << path << " (run with VEOMNI_UPDATE_GOLDEN=1)");
  std::stringstream want;
  want << in.rdbuf();
  CHECK(got == want.str());
}

TEST_CASE("describe: one row per plan op, and per-axis totals that add up") {
  const std::string s = tiny_vl_description();
  using P = plan<tiny_vl, tiny_vl_fsdp>;
  std::size_t rows = 0, pos = 0;
  while ((pos = s.find("Shard<FSDP>", pos)) != std::string::npos) ++rows, ++pos;
  for (const char* policy : {"Split<Ulysses>", "  Step  "}) {
    pos = 0;
    while ((pos = s.find(policy, pos)) != std::string::npos) ++rows, ++pos;
  }
  CHECK(rows == P::size);
  CHECK(s.find("dp_shard*sp") != std::string::npos);
  CHECK(s.find("memory per rank") != std::string::npos);
  CHECK(s.find("(world 4)") != std::string::npos);
}

TEST_CASE("describe: human-readable byte counts") {
  CHECK(human_bytes(512) == "512 B");
  CHECK(human_bytes(1536) == "1.50 KiB");
  CHECK(human_bytes(3.0 * 1024 * 1024 * 1024) == "3.00 GiB");
  CHECK(to_string(axes<axis::dp_shard, axis::sp>) == "dp_shard*sp");
  CHECK(to_string(axis_set{}) == "-");
}

TEST_CASE("describe: each op's dtype, and each axis's bytes by dtype") {
  workload w;
  w.default_tokens = 64;
  using P = plan<tiny_vl, tiny_vl_fsdp>;
  const std::string s = describe<P>(tiny_vl_dims(), mesh_shape{.dp_shard = 2, .sp = 2}, w, precisions::bf16);
  INFO(s);
  auto row = [&](const std::string& start) {  // the first line holding `start`
    const std::size_t at = s.find(start);
    return at == std::string::npos ? std::string{} : s.substr(at, s.find('\n', at) - at);
  };
  // bf16 gathers and exchanges, fp32 gradient reduction and statistics (precisions::bf16)
  CHECK(row("vision  root            x1  forward    all_gather").find(" bf16 ") != std::string::npos);
  CHECK(row("lm      attn            x2  forward    all_to_all").find(" bf16 ") != std::string::npos);
  CHECK(row("lm      block           x2  backward   reduce_scatter").find(" f32 ") != std::string::npos);
  CHECK(row("step    step            x1  forward    all_reduce").find(" f32 ") != std::string::npos);
  // dp_shard*sp carries both: bf16 gathers, f32 reductions (and the grad-norm); the sums add up to the total
  const std::string fsdp_axis = row("dp_shard*sp               4");
  CHECK(fsdp_axis.find("bf16 ") != std::string::npos);
  CHECK(fsdp_axis.find("f32 ") != std::string::npos);
  CHECK(row("sp                        2").find("bf16 ") != std::string::npos);
  CHECK(row("sp                        2").find("f32 ") == std::string::npos);
  CHECK(row("total").find("bf16 ") != std::string::npos);
}
