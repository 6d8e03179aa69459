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
//   {"messages": [{"role": "user", "content": "<image>colour?"}, {"role": "assistant", "content": "red"}],
//    "images": ["images/0001.png"]}
//   {"input_ids": [9707, 11, 1879], "labels": [-100, -100, 1879]}   (tokenized offline; labels optional)
// "<image>" / "<audio>" in a prompt mark where each image / clip goes (in
// order; media without markers go first). The loss is on the answer (and the
// end-of-sequence token), or on every token of "text", or on the assistant
// turns of a conversation rendered with the tokenizer's chat template
// (data.tokenizer; text/chat.hpp: the content and its end-of-turn token); an image to generate
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
#include <functional>
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

// What a sample's layout needs of its tokenizer: how text becomes ids, the
// ids of its special positions, and (with a chat template) how a conversation
// becomes ids with the loss on the assistant's turns. The byte tokenizer by
// default; train/vocabulary.hpp makes one of a tokenizer.json (data.tokenizer),
// whose placeholders (image, audio, gen, pad) take the ids past its own.
struct chat_tokens {
  std::vector<int64_t> ids;  // the rendered conversation; one image / audio id per "<image>" / "<audio>" marker
  std::vector<uint8_t> loss;  // per id: 1 on the assistant turns (their content and end-of-turn token)
};
struct vocabulary {
  int64_t bos = byte_tokenizer::bos;  // -1: the tokenizer has none (Qwen); prompts and text start without one
  int64_t eos = byte_tokenizer::eos;
  int64_t image = byte_tokenizer::image, audio = byte_tokenizer::audio, gen = byte_tokenizer::gen, pad = byte_tokenizer::pad;
  int64_t size = byte_tokenizer::vocab_size;  // the ids the model's vocabulary must hold
  std::string name = "bytes";                 // for messages: "bytes" or the tokenizer.json's path
  std::vector<std::string> files;             // the tokenizer's files, copied beside an export (hf/)
  std::function<std::vector<int64_t>(std::string_view)> encode = [](std::string_view s) { return byte_tokenizer::encode(s); };
  // a manifest line's "messages" -> ids and loss flags; empty: no chat data (a data_error says why)
  std::function<chat_tokens(const nlohmann::json& messages)> chat;
};

inline const vocabulary& byte_vocabulary() {
  static const vocabulary v;
  return v;
}

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
  std::vector<int64_t> prompt;             // the prompt's (text's, conversation's) ids; one vocabulary::image / audio per slot
  std::vector<int64_t> answer;             // the answer's ids
  bool text = false;                       // a "text" sample: the loss is on every token
  std::vector<int64_t> labels;             // "messages" and "input_ids" samples: per prompt id, the label at it (-100: no
                                           // loss), as Hugging Face's labels (position p learns labels[p + 1]); no bos/eos added
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

// A manifest's "messages": a list of {role, content} objects (reasoning_content
// on an assistant turn), with at least one assistant turn. Tool calls and tool
// lists (tool_calls, tools) are not manifest fields: such lines are invalid.
struct messages_problem {
  std::string what;                        // "" : fine
  std::string reason = bad_sample::invalid;
};
inline messages_problem check_messages(const nlohmann::json& m) {
  if (!m.is_array() || m.empty()) return {"'messages' must be a non-empty list of {\"role\", \"content\"}"};
  bool assistant = false;
  for (std::size_t i = 0; i < m.size(); ++i) {
    const auto& x = m[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!x.is_object()) return {at + " is not an object"};
    for (const auto& [k, v] : x.items())
      if (k != "role" && k != "content" && k != "reasoning_content") return {at + ": unknown field '" + k + "'"};
    if (!x.contains("role") || !x["role"].is_string()) return {at + ": 'role' must be a string"};
    const std::string role = x["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant" && role != "tool")
      return {at + ": unknown role '" + role + "' (system, user, assistant or tool)"};
    if (!x.contains("content") || !x["content"].is_string()) return {at + ": 'content' must be a string"};
    if (x.contains("reasoning_content") && (role != "assistant" || !(x["reasoning_content"].is_string() || x["reasoning_content"].is_null())))
      return {at + ": 'reasoning_content' must be a string (or null), on an assistant turn"};
    assistant = assistant || role == "assistant";
  }
  if (!assistant) return {"no assistant turn: nothing to learn", bad_sample::empty};
  return {};
}

namespace detail {
// A conversation's entry: the chat template's ids, a loss flag each, the media
// placed by their markers (v.chat renders and tokenizes: vocabulary.hpp).
inline void chat_entry(manifest_entry& e, const nlohmann::json& messages, const vocabulary& v) {
  if (const messages_problem p = check_messages(messages); !p.what.empty()) throw data_error(p.what, p.reason);
  if (!v.chat)
    throw data_error("'messages' needs a tokenizer with a chat template (data.tokenizer: a folder with tokenizer.json and "
                     "tokenizer_config.json); the tokenizer here is " + v.name);
  chat_tokens ct = v.chat(messages);
  const auto count = [&](int64_t id) { return static_cast<size_t>(std::count(ct.ids.begin(), ct.ids.end(), id)); };
  if (count(v.image) != e.images.size())
    throw data_error("the conversation has " + std::to_string(count(v.image)) + " <image> markers for " +
                     std::to_string(e.images.size()) + " images (a conversation places each with a marker)");
  if (count(v.audio) != e.audio.size())
    throw data_error("the conversation has " + std::to_string(count(v.audio)) + " <audio> markers for " +
                     std::to_string(e.audio.size()) + " audio clips (a conversation places each with a marker)");
  bool learn = false;
  for (size_t i = 0; i < ct.ids.size(); ++i) {
    if (ct.loss[i] && (ct.ids[i] == v.image || ct.ids[i] == v.audio))
      throw data_error("an <image> or <audio> marker in an assistant turn: the model reads media, it does not write them this way");
    learn = learn || ct.loss[i];
  }
  if (!learn) throw data_error("the assistant turns render to no tokens: nothing to learn", bad_sample::empty);
  e.labels.resize(ct.ids.size());
  for (size_t i = 0; i < ct.ids.size(); ++i) e.labels[i] = ct.loss[i] ? ct.ids[i] : -100;
  e.prompt = std::move(ct.ids);
}
// Pre-tokenized ids (any tokenizer's, as long as the model's vocabulary holds
// them) with Hugging Face's labels: labels[p] is what position p - 1 learns to
// predict, -100 for nothing; no labels: every id after the first. v.image /
// v.audio in input_ids are the media slots (one per image / clip, label -100).
//   {"input_ids": [9707, 11, 1879], "labels": [-100, -100, 1879]}  -> the loss on predicting 1879 only
inline void pretokenized_entry(manifest_entry& e, const nlohmann::json& ids, const nlohmann::json* labels, const vocabulary& v) {
  auto ints = [](const nlohmann::json& a, const char* field) {
    if (!a.is_array() || a.empty()) throw data_error(std::string("'") + field + "' must be a non-empty list of integers");
    std::vector<int64_t> out;
    out.reserve(a.size());
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].is_number_integer())
        throw data_error(std::string(field) + "[" + std::to_string(i) + "] = " + a[i].dump() + " is not an integer");
      out.push_back(a[i].get<int64_t>());
    }
    return out;
  };
  e.prompt = ints(ids, "input_ids");
  e.labels = labels ? ints(*labels, "labels") : e.prompt;
  if (!labels)
    for (int64_t& l : e.labels)
      if (l == v.image || l == v.audio) l = -100;
  if (e.labels.size() != e.prompt.size())
    throw data_error("'labels' holds " + std::to_string(e.labels.size()) + " entries for " + std::to_string(e.prompt.size()) +
                     " input_ids (one label per id)");
  // the tokenizer's own ids lie below the placeholders (the byte tokenizer's: below <image> = 258)
  const auto slot = [&](int64_t t) { return t == v.image || t == v.audio; };
  size_t images = 0, audio = 0;
  bool learn = false;
  for (size_t i = 0; i < e.prompt.size(); ++i) {
    const int64_t t = e.prompt[i], l = e.labels[i];
    if (!slot(t) && (t < 0 || t >= v.image))
      throw data_error("input_ids[" + std::to_string(i) + "] = " + std::to_string(t) + " is not a token of " + v.name + " (0 to " +
                       std::to_string(v.image - 1) + "; " + std::to_string(v.image) + " and " + std::to_string(v.audio) +
                       " place an image and a clip)");
    images += t == v.image, audio += t == v.audio;
    if (l == -100) continue;
    if (slot(t)) throw data_error("labels[" + std::to_string(i) + "]: a media slot takes no label (-100)");
    if (l < 0 || l >= v.image)
      throw data_error("labels[" + std::to_string(i) + "] = " + std::to_string(l) + " is neither -100 nor a token of " + v.name);
    learn = learn || i > 0;  // the first position's label has nothing before it to predict it
  }
  if (images != e.images.size())
    throw data_error("input_ids hold " + std::to_string(images) + " image slots (" + std::to_string(v.image) + ") for " +
                     std::to_string(e.images.size()) + " images");
  if (audio != e.audio.size())
    throw data_error("input_ids hold " + std::to_string(audio) + " audio slots (" + std::to_string(v.audio) + ") for " +
                     std::to_string(e.audio.size()) + " audio clips");
  if (!learn) throw data_error("every label after the first is -100: nothing to learn", bad_sample::empty);
}
}  // namespace detail

// One parsed manifest line -> its entry. `dir`: the manifest's folder; `v`:
// the tokenizer (bytes by default).
inline manifest_entry parse_manifest_entry(const nlohmann::json& j, const std::filesystem::path& dir, const media_spec& m,
                                           const vocabulary& v = byte_vocabulary()) {
  if (!j.is_object()) throw data_error("expected a JSON object");
  static const std::vector<std::string> known{"prompt",         "answer", "text", "messages", "input_ids", "labels",
                                              "images",         "audio",  "id",   "kind",     "generate_image"};
  for (const auto& [k, x] : j.items())
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
  if (const auto it = j.find("messages"); it != j.end()) {  // a conversation, rendered by the chat template
    if (!text.empty() || !prompt.empty() || !answer.empty() || !e.generate_image.empty())
      throw data_error("'messages' goes without 'text', 'prompt', 'answer' and 'generate_image'");
    detail::chat_entry(e, *it, v);
    return e;
  }
  if (const auto it = j.find("input_ids"); it != j.end()) {  // tokenized offline: the ids as they are
    if (!text.empty() || !prompt.empty() || !answer.empty() || !e.generate_image.empty())
      throw data_error("'input_ids' goes without 'text', 'prompt', 'answer' and 'generate_image'");
    detail::pretokenized_entry(e, *it, j.find("labels") == j.end() ? nullptr : &j["labels"], v);
    return e;
  }
  if (j.contains("labels")) throw data_error("'labels' goes with 'input_ids'");
  if (!text.empty() && (!prompt.empty() || !answer.empty())) throw data_error("'text' goes without 'prompt' and 'answer'");
  e.text = !text.empty();
  const bool media = !e.images.empty() || !e.audio.empty();
  if (!e.text) {
    if (prompt.empty() && !media && answer.empty() && e.generate_image.empty())
      throw data_error("empty sample (no prompt, answer, text, messages or generate_image)", bad_sample::empty);
    if (prompt.empty() && !media)
      throw data_error("no prompt: an 'answer' or 'generate_image' needs a 'prompt' or media (or use 'text')", bad_sample::empty);
    if (answer.empty() && e.generate_image.empty())
      throw data_error("nothing to learn: a prompt needs an 'answer' or 'generate_image' (or use 'text')", bad_sample::empty);
  }
  // the prompt with its media slots: the text between markers is tokenized piece by piece
  const std::string& body = e.text ? text : prompt;
  const bool marked = body.find("<image>") != std::string::npos || body.find("<audio>") != std::string::npos;
  size_t next_image = 0, next_audio = 0;
  if (!marked) {
    e.prompt.insert(e.prompt.end(), e.images.size(), v.image);
    e.prompt.insert(e.prompt.end(), e.audio.size(), v.audio);
    next_image = e.images.size(), next_audio = e.audio.size();
  }
  e.prompt.reserve(e.prompt.size() + body.size());
  for (size_t i = 0; i < body.size();) {
    const size_t next = std::min(body.find("<image>", i), body.find("<audio>", i));
    const size_t end = next == std::string::npos ? body.size() : next;
    if (end > i) {
      const std::vector<int64_t> ids = v.encode(std::string_view(body).substr(i, end - i));
      e.prompt.insert(e.prompt.end(), ids.begin(), ids.end());
    }
    if (end == body.size()) break;
    if (body.compare(end, 7, "<image>") == 0) {
      if (next_image++ >= e.images.size()) throw data_error("more <image> markers than images");
      e.prompt.push_back(v.image);
    } else {
      if (next_audio++ >= e.audio.size()) throw data_error("more <audio> markers than audio clips");
      e.prompt.push_back(v.audio);
    }
    i = end + 7;
  }
  if (next_image != e.images.size()) throw data_error("fewer <image> markers than images");
  if (next_audio != e.audio.size()) throw data_error("fewer <audio> markers than audio clips");
  e.answer = v.encode(answer);
  return e;
}

// One manifest line (text) -> its entry; "malformed JSON: ..." when it is not JSON.
inline manifest_entry parse_manifest_line(std::string_view line, const std::filesystem::path& dir, const media_spec& m,
                                          const vocabulary& v = byte_vocabulary()) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    throw data_error(std::string("malformed JSON: ") + e.what(), bad_sample::malformed_json);
  }
  return parse_manifest_entry(j, dir, m, v);
}

// A sample's tokens and targets once its media are measured: image_n / audio_n
// tokens of each image / clip (in slot order), n_codes image codes to generate.
struct sample_layout {
  std::vector<int64_t> tokens, targets;  // targets[p]: the token after p where the loss is on it, else -100
  size_t codes_from = 0;                 // tokens[codes_from ..] are the n_codes generation placeholders
};

inline sample_layout lay_out(const manifest_entry& e, const std::vector<int64_t>& image_n, const std::vector<int64_t>& audio_n,
                             size_t n_codes, const vocabulary& v = byte_vocabulary()) {
  if (image_n.size() != e.images.size() || audio_n.size() != e.audio.size())
    throw std::invalid_argument("lay_out: one token count per image and per clip");
  for (int64_t n : image_n)
    if (n < 0) throw std::invalid_argument("lay_out: negative token count");
  for (int64_t n : audio_n)
    if (n < 0) throw std::invalid_argument("lay_out: negative token count");
  const bool labelled = !e.labels.empty();  // a conversation or pre-tokenized ids: targets from the labels
  if (labelled && e.labels.size() != e.prompt.size()) throw std::invalid_argument("lay_out: one label per id");
  sample_layout s;
  std::vector<int64_t>& tokens = s.tokens;
  std::vector<int64_t> labels;  // labelled samples: per token, its label
  if (v.bos >= 0 && !labelled) tokens.push_back(v.bos);  // a template writes its own; pre-tokenized ids are as given
  size_t next_image = 0, next_audio = 0;
  for (size_t i = 0; i < e.prompt.size(); ++i) {
    const int64_t t = e.prompt[i];
    const size_t before = tokens.size();
    if (t == v.image) tokens.insert(tokens.end(), static_cast<size_t>(image_n[next_image++]), v.image);
    else if (t == v.audio) tokens.insert(tokens.end(), static_cast<size_t>(audio_n[next_audio++]), v.audio);
    else tokens.push_back(t);
    if (labelled) labels.insert(labels.end(), tokens.size() - before, t == v.image || t == v.audio ? -100 : e.labels[i]);
  }
  const bool lm_loss = e.text || !e.answer.empty();
  const size_t loss_from = e.text ? (v.bos >= 0 ? 1 : 0) : tokens.size();  // the first token with a loss on it
  if (lm_loss) {
    tokens.insert(tokens.end(), e.answer.begin(), e.answer.end());
    tokens.push_back(v.eos);
  }
  s.codes_from = tokens.size();
  tokens.insert(tokens.end(), n_codes, v.gen);
  s.targets.assign(tokens.size(), -100);
  auto target = [&](size_t p) {
    const int64_t next = tokens[p + 1];
    if (next != v.image && next != v.audio) s.targets[p] = next;
  };
  if (labelled) {
    for (size_t p = 0; p + 1 < s.codes_from; ++p)
      if (labels[p + 1] != -100 && tokens[p + 1] != v.image && tokens[p + 1] != v.audio) s.targets[p] = labels[p + 1];
  } else if (lm_loss) {
    for (size_t p = loss_from == 0 ? 0 : loss_from - 1; p + 1 < s.codes_from; ++p) target(p);
  }
  return s;
}

}  // namespace veomni::train
