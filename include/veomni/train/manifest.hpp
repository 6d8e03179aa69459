#pragma once
// <veomni/train/manifest.hpp>: one manifest line, checked and laid out as
// tokens, before any image or clip is read. No torch (nlohmann json only), so
// that fuzzers built with clang drive the same code the trainer runs
// (tests/reliability/fuzz).
//
// A manifest line (paths relative to the manifest's folder):
//   {"prompt": "<image>colour?", "answer": " red", "images": ["images/0001.png"]}
//   {"prompt": "<audio>digit?", "answer": " 7", "audio": ["audio/0001.wav"]}
//   {"prompt": "draw: red square, top left", "generate_image": "images/0002.png"}
//   {"text": "loss on every token of this"}
// "<image>" / "<audio>" in a prompt mark where each image / clip goes (in
// order; media without markers go first). The loss is on the answer (and the
// end-of-sequence token), or on every token of "text"; an image to generate
// becomes one placeholder per image_out patch with its colour code as target.
//
//   parse_manifest_line(R"({"prompt": "<image>colour?", "answer": " red", "images": ["a.png"]})", "data", m)
//     -> images {"data/a.png"}, prompt [<image> 'c' 'o' ... '?'], answer [' ' 'r' 'e' 'd']
//   lay_out(entry, {4}, {}, 0)
//     -> tokens  [bos <image>x4 c o l o u r ?  ' ' r e d eos]
//        targets  -100 on the prompt, the answer's next token from '?' on, -100 on eos
//
// Every problem is a data_error with a reason (what data.bad_samples: skip
// counts it under); the caller adds the file and line.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace veomni::train {

// Why a sample is bad: the keys of summary.json's "skipped_samples".
namespace bad_sample {
inline constexpr const char* malformed_json = "malformed_json";        // not JSON
inline constexpr const char* invalid = "invalid";                      // not an object, unknown field, wrong type, markers
inline constexpr const char* empty = "empty";                          // nothing to condition on, or nothing to learn
inline constexpr const char* missing_media = "missing_media";          // an image or clip that is not there
inline constexpr const char* corrupt_image = "corrupt_image";          // a file that does not decode as an image
inline constexpr const char* corrupt_audio = "corrupt_audio";          // not a WAV file, no samples, NaN samples
inline constexpr const char* unsupported_media = "unsupported_media";  // media the model cannot take (kind, size, rate)
inline constexpr const char* too_long = "too_long";                    // more tokens than data.max_seq_len
}  // namespace bad_sample

struct data_error : std::runtime_error {
  explicit data_error(const std::string& what, std::string why = bad_sample::invalid)
      : std::runtime_error(what), reason(std::move(why)) {}
  std::string reason;  // a bad_sample:: name
};

// ---- tokenizer -------------------------------------------------------------------------

struct byte_tokenizer {
  static constexpr int64_t bos = 256, eos = 257, image = 258, audio = 259, gen = 260, pad = 261;
  static constexpr int64_t vocab_size = 262;

  static std::vector<int64_t> encode(std::string_view s) {
    std::vector<int64_t> out;
    out.reserve(s.size());
    for (unsigned char ch : s) out.push_back(ch);
    return out;
  }
  static std::string decode(const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t t : ids)
      if (t >= 0 && t < 256) s.push_back(static_cast<char>(t));
    return s;
  }
};

// ---- what the model expects of its inputs ----------------------------------------------

struct media_spec {
  int64_t vision_patch = 4;   // image sides must be multiples of 2 * patch; tokens = (H/2p) * (W/2p)
  int64_t channels = 3;
  int64_t mel_bins = 16;
  int64_t audio_kernel = 3;   // audio tokens = frames after the stride-2 conv
  int64_t code_patch = 4;     // image_out patch; one code per patch
  int64_t codebook = 256;
  int64_t sample_rate = 8000;
  bool images = false, audio = false, generation = false;  // what the model can take
};

inline int64_t image_tokens(const media_spec& m, int64_t h, int64_t w) {
  return (h / (2 * m.vision_patch)) * (w / (2 * m.vision_patch));
}
inline int64_t audio_tokens(const media_spec& m, int64_t frames) {
  return (frames + 2 * (m.audio_kernel / 2) - m.audio_kernel) / 2 + 1;
}

// ---- one line ---------------------------------------------------------------------------

struct manifest_entry {
  std::vector<std::string> images, audio;  // resolved paths, in the order of their slots
  std::string generate_image;              // resolved path; "" : none
  std::vector<int64_t> prompt;             // the prompt's (or text's) bytes; one byte_tokenizer::image / audio per slot
  std::vector<int64_t> answer;             // the answer's bytes
  bool text = false;                       // a "text" sample: the loss is on every token
  std::string kind = "all";                // for per-kind evaluation
};

namespace detail {

inline std::string manifest_string(const nlohmann::json& j, const char* k) {
  const auto it = j.find(k);
  if (it == j.end()) return {};
  if (!it->is_string()) throw data_error(std::string("field '") + k + "' must be a string");
  return it->get<std::string>();
}

inline std::string manifest_path(const nlohmann::json& p, const std::filesystem::path& dir, const char* k) {
  const std::string& s = p.get_ref<const std::string&>();
  if (s.empty()) throw data_error(std::string("field '") + k + "' holds an empty path");
  if (s.find('\0') != std::string::npos) throw data_error(std::string("field '") + k + "' holds a path with a NUL character");
  return (dir / s).string();
}

inline std::vector<std::string> manifest_paths(const nlohmann::json& j, const std::filesystem::path& dir, const char* k) {
  std::vector<std::string> out;
  const auto it = j.find(k);
  if (it == j.end()) return out;
  if (!it->is_array()) throw data_error(std::string("field '") + k + "' must be a list of paths");
  for (const auto& p : *it) {
    if (!p.is_string()) throw data_error(std::string("field '") + k + "' must be a list of paths");
    out.push_back(manifest_path(p, dir, k));
  }
  return out;
}

}  // namespace detail

// One parsed manifest line -> its entry. `dir`: the manifest's folder.
inline manifest_entry parse_manifest_entry(const nlohmann::json& j, const std::filesystem::path& dir, const media_spec& m) {
  using tok = byte_tokenizer;
  if (!j.is_object()) throw data_error("expected a JSON object");
  static const std::vector<std::string> known{"prompt", "answer", "text", "images", "audio", "generate_image", "id", "kind"};
  for (const auto& [k, v] : j.items())
    if (std::find(known.begin(), known.end(), k) == known.end()) throw data_error("unknown field '" + k + "'");
  manifest_entry e;
  e.images = detail::manifest_paths(j, dir, "images");
  e.audio = detail::manifest_paths(j, dir, "audio");
  if (!e.images.empty() && !m.images) throw data_error("this model takes no images", bad_sample::unsupported_media);
  if (!e.audio.empty() && !m.audio) throw data_error("this model takes no audio", bad_sample::unsupported_media);
  if (const auto it = j.find("generate_image"); it != j.end()) {
    if (!it->is_string()) throw data_error("field 'generate_image' must be a path");
    e.generate_image = detail::manifest_path(*it, dir, "generate_image");
    if (!m.generation) throw data_error("this model does not generate images", bad_sample::unsupported_media);
  }
  if (const auto it = j.find("kind"); it != j.end()) {
    if (!it->is_string()) throw data_error("field 'kind' must be a string");
    e.kind = it->get<std::string>();
  }
  const std::string text = detail::manifest_string(j, "text"), prompt = detail::manifest_string(j, "prompt"),
                    answer = detail::manifest_string(j, "answer");
  if (!text.empty() && (!prompt.empty() || !answer.empty())) throw data_error("'text' goes without 'prompt' and 'answer'");
  e.text = !text.empty();
  const bool media = !e.images.empty() || !e.audio.empty();
  if (!e.text) {
    if (prompt.empty() && !media && answer.empty() && e.generate_image.empty())
      throw data_error("empty sample (no prompt, answer, text or generate_image)", bad_sample::empty);
    if (prompt.empty() && !media)
      throw data_error("no prompt: an 'answer' or 'generate_image' needs a 'prompt' or media (or use 'text')", bad_sample::empty);
    if (answer.empty() && e.generate_image.empty())
      throw data_error("nothing to learn: a prompt needs an 'answer' or 'generate_image' (or use 'text')", bad_sample::empty);
  }
  // the prompt with its media slots
  const std::string& body = e.text ? text : prompt;
  const bool marked = body.find("<image>") != std::string::npos || body.find("<audio>") != std::string::npos;
  size_t next_image = 0, next_audio = 0;
  if (!marked) {
    e.prompt.insert(e.prompt.end(), e.images.size(), tok::image);
    e.prompt.insert(e.prompt.end(), e.audio.size(), tok::audio);
    next_image = e.images.size(), next_audio = e.audio.size();
  }
  e.prompt.reserve(e.prompt.size() + body.size());
  for (size_t i = 0; i < body.size();) {
    if (body.compare(i, 7, "<image>") == 0) {
      if (next_image++ >= e.images.size()) throw data_error("more <image> markers than images");
      e.prompt.push_back(tok::image);
      i += 7;
    } else if (body.compare(i, 7, "<audio>") == 0) {
      if (next_audio++ >= e.audio.size()) throw data_error("more <audio> markers than audio clips");
      e.prompt.push_back(tok::audio);
      i += 7;
    } else {
      e.prompt.push_back(static_cast<unsigned char>(body[i++]));
    }
  }
  if (next_image != e.images.size()) throw data_error("fewer <image> markers than images");
  if (next_audio != e.audio.size()) throw data_error("fewer <audio> markers than audio clips");
  e.answer = tok::encode(answer);
  return e;
}

// One manifest line (text) -> its entry; "malformed JSON: ..." when it is not JSON.
inline manifest_entry parse_manifest_line(std::string_view line, const std::filesystem::path& dir, const media_spec& m) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    throw data_error(std::string("malformed JSON: ") + e.what(), bad_sample::malformed_json);
  }
  return parse_manifest_entry(j, dir, m);
}

// A sample's tokens and targets once its media are measured: image_n / audio_n
// tokens of each image / clip (in slot order), n_codes image codes to generate.
struct sample_layout {
  std::vector<int64_t> tokens, targets;  // targets[p]: the token after p where the loss is on it, else -100
  size_t codes_from = 0;                 // tokens[codes_from ..] are the n_codes generation placeholders
};

inline sample_layout lay_out(const manifest_entry& e, const std::vector<int64_t>& image_n, const std::vector<int64_t>& audio_n,
                             size_t n_codes) {
  using tok = byte_tokenizer;
  if (image_n.size() != e.images.size() || audio_n.size() != e.audio.size())
    throw std::invalid_argument("lay_out: one token count per image and per clip");
  for (int64_t n : image_n)
    if (n < 0) throw std::invalid_argument("lay_out: negative token count");
  for (int64_t n : audio_n)
    if (n < 0) throw std::invalid_argument("lay_out: negative token count");
  sample_layout s;
  std::vector<int64_t>& tokens = s.tokens;
  tokens.push_back(tok::bos);
  size_t next_image = 0, next_audio = 0;
  for (int64_t t : e.prompt) {
    if (t == tok::image) tokens.insert(tokens.end(), static_cast<size_t>(image_n[next_image++]), tok::image);
    else if (t == tok::audio) tokens.insert(tokens.end(), static_cast<size_t>(audio_n[next_audio++]), tok::audio);
    else tokens.push_back(t);
  }
  const bool lm_loss = e.text || !e.answer.empty();
  const size_t loss_from = e.text ? 1 : tokens.size();  // the first token with a loss on it
  if (lm_loss) {
    tokens.insert(tokens.end(), e.answer.begin(), e.answer.end());
    tokens.push_back(tok::eos);
  }
  s.codes_from = tokens.size();
  tokens.insert(tokens.end(), n_codes, tok::gen);
  s.targets.assign(tokens.size(), -100);
  if (lm_loss)
    for (size_t p = loss_from - 1; p + 1 < s.codes_from; ++p) {
      const int64_t next = tokens[p + 1];
      if (next != tok::image && next != tok::audio) s.targets[p] = next;
    }
  return s;
}

}  // namespace veomni::train
