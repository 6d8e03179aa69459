// Bad manifests: veomni-train exits 2 before any collective, with a message
// naming the file and line. (Bad configs: tests/reliability/test_config.cpp.)
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "harness.hpp"

using namespace veomni::testing;

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
