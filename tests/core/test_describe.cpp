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
