// libFuzzer target: the trainer's config reader (config.hpp) on arbitrary bytes.
//
//   input = [world byte] YAML text [\0 override]...      e.g. "\x01train:\n  lr: 3\0--train.max_steps=2"
//
// What veomni-train does with them: parse_config, apply_overrides, resolve
// against WORLD_SIZE = world byte % 8 + 1. config_error is the expected answer
// to bad input; any other exception escaping (YAML::Exception,
// std::out_of_range, ...), a sanitizer report, or a config whose to_yaml
// (output_dir/config.yaml) does not read back as itself is a finding.
#include <veomni/train/config.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_config: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace veomni::train;
  if (size == 0) return 0;
  const long world = data[0] % 8 + 1;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<std::string> parts;
  for (size_t a = 0;;) {
    const size_t b = rest.find('\0', a);
    parts.emplace_back(rest.substr(a, b == std::string_view::npos ? std::string_view::npos : b - a));
    if (b == std::string_view::npos) break;
    a = b + 1;
  }
  config c;
  try {
    c = parse_config(parts[0], "fuzz.yaml");
    apply_overrides(c, std::vector<std::string>(parts.begin() + 1, parts.end()));
  } catch (const config_error&) {
    return 0;
  }
  // the resolved config the trainer writes must read back as the same config
  const std::string written = to_yaml(c);
  try {
    const config back = parse_config(written, "config.yaml");
    if (to_yaml(back) != written) finding("to_yaml does not read back as itself:\n" + written + "---\n" + to_yaml(back));
  } catch (const config_error& e) {
    finding(std::string("to_yaml wrote a config that does not read back: ") + e.what() + "\n" + written);
  }
  try {
    resolve(c, world);
  } catch (const config_error&) {
  }
  return 0;
}
