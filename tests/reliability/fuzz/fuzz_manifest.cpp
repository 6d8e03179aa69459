// libFuzzer target: one manifest line (manifest.hpp) on arbitrary bytes.
//
//   input = [flags byte] line      flags: 1 the model takes images, 2 audio, 4 generates images
//
// data_error (with a known reason) is the expected answer to a bad line; any
// other exception escaping (nlohmann type_error, std::out_of_range, ...), a
// sanitizer report, or an accepted line whose layout breaks the sample's
// invariants is a finding:
//   one slot per image and clip; tokens and targets of one length; bos first;
//   a target is -100 or the next token, never a media placeholder;
//   a sample with an answer or text has a target.
#include <veomni/train/manifest.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_manifest: %s\n", what.c_str());
  std::abort();
}

bool known_reason(const std::string& r) {
  namespace b = veomni::train::bad_sample;
  for (const char* k : {b::malformed_json, b::invalid, b::empty, b::missing_media, b::corrupt_image, b::corrupt_audio,
                        b::unsupported_media, b::too_long})
    if (r == k) return true;
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace veomni::train;
  using tok = byte_tokenizer;
  if (size == 0) return 0;
  media_spec m;
  m.images = data[0] & 1, m.audio = data[0] & 2, m.generation = data[0] & 4;
  const std::string_view line(reinterpret_cast<const char*>(data + 1), size - 1);
  manifest_entry e;
  try {
    e = parse_manifest_line(line, "data", m);
  } catch (const data_error& err) {
    if (!known_reason(err.reason)) finding("unknown reason '" + err.reason + "': " + err.what());
    return 0;
  }
  size_t image_slots = 0, audio_slots = 0;
  for (int64_t t : e.prompt) {
    image_slots += t == tok::image, audio_slots += t == tok::audio;
    if (t < 0 || t > tok::audio || t == tok::bos || t == tok::eos) finding("prompt token " + std::to_string(t));
  }
  if (image_slots != e.images.size() || audio_slots != e.audio.size()) finding("slots do not match the media");
  if ((!e.images.empty() && !m.images) || (!e.audio.empty() && !m.audio) || (!e.generate_image.empty() && !m.generation))
    finding("media the model does not take were accepted");
  for (const auto& p : e.images)
    if (p.empty()) finding("an empty image path");
  // some token counts per image and clip, and some codes, from the input
  std::vector<int64_t> image_n, audio_n;
  for (size_t i = 0; i < e.images.size(); ++i) image_n.push_back(static_cast<int64_t>((i * 7 + size) % 5));
  for (size_t i = 0; i < e.audio.size(); ++i) audio_n.push_back(static_cast<int64_t>((i * 3 + size) % 4));
  const size_t n_codes = e.generate_image.empty() ? 0 : 1 + size % 4;
  const sample_layout l = lay_out(e, image_n, audio_n, n_codes);
  if (l.tokens.size() != l.targets.size()) finding("tokens and targets differ in length");
  if (l.tokens.empty() || l.tokens[0] != tok::bos) finding("no bos first");
  if (l.codes_from + n_codes != l.tokens.size()) finding("codes are not last");
  bool learns = n_codes > 0;
  for (size_t p = 0; p < l.targets.size(); ++p) {
    const int64_t t = l.targets[p];
    if (t == -100) continue;
    learns = true;
    if (p + 1 >= l.tokens.size() || t != l.tokens[p + 1]) finding("a target that is not the next token");
    if (t == tok::image || t == tok::audio || t == tok::gen) finding("a target on a placeholder");
  }
  if (!learns) finding("an accepted sample with nothing to learn");
  return 0;
}
