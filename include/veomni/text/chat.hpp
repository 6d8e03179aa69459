#pragma once
// <veomni/text/chat.hpp>: a conversation -> the text its model was trained on
// (the chat template of tokenizer_config.json) -> tokens whose loss covers the
// assistant's turns only. Torch-free.
//
//   tokenizer_files f = find_tokenizer("models/qwen3");       // tokenizer.json + tokenizer_config.json
//   chat_template t = chat_template::from_file(f.config);
//   t.render([{"role":"user","content":"2+2?"}, {"role":"assistant","content":"4"}], false)
//     -> "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n"
//   t.assistant_spans(text)
//     -> one [begin, end) byte range per assistant turn: from after "<|im_start|>assistant\n" to the
//        end of its "<|im_end|>" (the content, and the end-of-turn token the model must learn to emit)
//
// The turn markers come from the template's family: ChatML (Qwen2, 2.5, 3:
// "<|im_start|>assistant\n" ... "<|im_end|>") and Llama 3 ("<|start_header_id|>
// assistant<|end_header_id|>\n\n" ... "<|eot_id|>"). A template of another
// family is an error naming the file: its turns cannot be told apart safely.
// Tokens get the loss by where they start (token_mask): a token is in the loss
// iff its first byte lies in an assistant span. tests/text checks the rendered
// text against Hugging Face's own Jinja engine and the mask against a rule on
// the token ids computed in JavaScript.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "jinja.hpp"
#include "json_file.hpp"
#include "tokenizer.hpp"

namespace veomni::text {

struct chat_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Where a model's tokenizer lives: data.tokenizer names the folder (with
// tokenizer.json, and tokenizer_config.json for the chat template and the
// bos/eos tokens) or the tokenizer.json itself (its folder's config is used).
struct tokenizer_files {
  std::filesystem::path tokenizer;  // tokenizer.json
  std::filesystem::path config;     // tokenizer_config.json; empty: none
};

inline tokenizer_files find_tokenizer(const std::filesystem::path& file_or_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  tokenizer_files f;
  if (fs::is_directory(file_or_dir, ec)) {
    f.tokenizer = file_or_dir / "tokenizer.json";
    if (!fs::is_regular_file(f.tokenizer, ec))
      throw chat_error(file_or_dir.string() + ": no tokenizer.json in this folder");
  } else if (fs::is_regular_file(file_or_dir, ec)) {
    f.tokenizer = file_or_dir;
  } else {
    throw chat_error(file_or_dir.string() + ": not found (give a tokenizer.json or the folder holding it)");
  }
  const fs::path config = f.tokenizer.parent_path() / "tokenizer_config.json";
  if (fs::is_regular_file(config, ec)) f.config = config;
  return f;
}

namespace detail {
// A special token in tokenizer_config.json: "<|im_end|>", or {"content": "<|im_end|>", ...} (older files), or null.
inline std::optional<std::string> config_token(const nlohmann::json& c, const char* key, const std::string& file) {
  const auto it = c.find(key);
  if (it == c.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  throw chat_error(file + ": " + key + " must be a string, {\"content\": string} or null");
}
}  // namespace detail

// The turn markers of a chat-template family.
struct chat_format {
  std::string name;              // "chatml", "llama3"
  std::string assistant_header;  // what opens an assistant turn (not in the loss)
  std::string end_of_turn;       // what closes every turn (in the loss after an assistant's content)

  static std::optional<chat_format> detect(std::string_view tmpl) {
    if (tmpl.find("<|im_start|>") != std::string_view::npos && tmpl.find("<|im_end|>") != std::string_view::npos)
      return chat_format{"chatml", "<|im_start|>assistant\n", "<|im_end|>"};
    if (tmpl.find("<|start_header_id|>") != std::string_view::npos && tmpl.find("<|eot_id|>") != std::string_view::npos)
      return chat_format{"llama3", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"};
    return std::nullopt;
  }
};

class chat_template {
 public:
  // tokenizer_config.json's "chat_template" (a string, or a list of {name, template}: "default" or the
  // first), or chat_template.jinja beside it (newer Hugging Face checkpoints).
  static chat_template from_file(const std::filesystem::path& config) { return from_json(read_json_file<chat_error>(config), config); }
  // The same, of tokenizer_config.json's parsed contents `c` (read from `config`).
  static chat_template from_json(const nlohmann::json& c, const std::filesystem::path& config) {
    const std::string file = config.string();
    if (!c.is_object()) throw chat_error(file + ": expected a JSON object");
    std::string source;
    const std::filesystem::path jinja_file = config.parent_path() / "chat_template.jinja";
    std::error_code ec;
    if (const auto it = c.find("chat_template"); it != c.end() && !it->is_null()) {
      if (it->is_string()) {
        source = it->get<std::string>();
      } else if (it->is_array() && !it->empty()) {
        const nlohmann::json* pick = &(*it)[0];
        for (const auto& t : *it)
          if (t.is_object() && t.contains("name") && t["name"] == "default") pick = &t;
        if (!pick->is_object() || !pick->contains("template") || !(*pick)["template"].is_string())
          throw chat_error(file + ": chat_template: a list entry must be {\"name\": ..., \"template\": string}");
        source = (*pick)["template"].get<std::string>();
      } else {
        throw chat_error(file + ": chat_template must be a string or a list of named templates");
      }
    } else if (std::filesystem::is_regular_file(jinja_file, ec)) {
      std::ifstream in(jinja_file, std::ios::binary);
      if (!in) throw chat_error(jinja_file.string() + ": cannot open");
      std::stringstream ss;
      ss << in.rdbuf();
      source = ss.str();
    } else {
      throw chat_error(file + ": no chat_template (and no chat_template.jinja beside it): chat data needs one");
    }
    chat_template t(source, file);
    t.bos_token = detail::config_token(c, "bos_token", file);
    t.eos_token = detail::config_token(c, "eos_token", file);
    t.pad_token = detail::config_token(c, "pad_token", file);
    t.unk_token = detail::config_token(c, "unk_token", file);
    return t;
  }

  chat_template(std::string_view source, std::string name)
      : name_(std::move(name)), program_(source, name_ + ": chat_template") {
    const auto f = chat_format::detect(source);
    if (!f)
      throw chat_error(name_ + ": chat_template is neither ChatML (<|im_start|> ... <|im_end|>) nor Llama 3 "
                               "(<|start_header_id|> ... <|eot_id|>): its assistant turns cannot be told apart for the loss");
    format_ = *f;
  }

  const chat_format& format() const { return format_; }

  // The text of a conversation, as Hugging Face's apply_chat_template renders it
  // with its JavaScript engine, @huggingface/jinja (the tests' judge; it differs
  // from Python's Jinja2 on purpose in places, text/jinja.hpp lists them);
  // special tokens are given to the template as bos_token, eos_token, ...
  // `extra`: more variables (enable_thinking, tools, ...).
  // Ordered JSON: `tools | tojson` prints keys in the order they were given, as Hugging Face does.
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const {
    nlohmann::ordered_json ctx = extra.is_object() ? extra : nlohmann::ordered_json::object();
    ctx["messages"] = messages;
    ctx["add_generation_prompt"] = add_generation_prompt;
    auto put = [&](const char* k, const std::optional<std::string>& v) {
      if (v && !ctx.contains(k)) ctx[k] = *v;
    };
    put("bos_token", bos_token);
    put("eos_token", eos_token);
    put("pad_token", pad_token);
    put("unk_token", unk_token);
    try {
      return program_.render(ctx);
    } catch (const jinja::error& e) {
      throw chat_error(e.what());
    }
  }

  // The assistant turns of a rendered conversation: [begin, end) bytes from
  // just after each assistant header to the end of the next end-of-turn marker
  // (or of the text, when a turn is left open).
  std::vector<std::pair<std::size_t, std::size_t>> assistant_spans(std::string_view text) const {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    std::size_t at = 0;
    while ((at = text.find(format_.assistant_header, at)) != std::string_view::npos) {
      const std::size_t begin = at + format_.assistant_header.size();
      const std::size_t close = text.find(format_.end_of_turn, begin);
      const std::size_t end = close == std::string_view::npos ? text.size() : close + format_.end_of_turn.size();
      if (end > begin) out.emplace_back(begin, end);
      at = end;
    }
    return out;
  }

  std::optional<std::string> bos_token, eos_token, pad_token, unk_token;

 private:
  std::string name_;
  jinja::template_ program_;
  chat_format format_;
};

// One flag per token: 1 where the token's first byte lies in one of `spans` (sorted, disjoint).
inline std::vector<uint8_t> token_mask(const std::vector<std::pair<std::size_t, std::size_t>>& offsets,
                                       const std::vector<std::pair<std::size_t, std::size_t>>& spans) {
  std::vector<uint8_t> mask(offsets.size(), 0);
  std::size_t s = 0;
  for (std::size_t i = 0; i < offsets.size(); ++i) {
    const std::size_t b = offsets[i].first;
    while (s < spans.size() && spans[s].second <= b) ++s;
    mask[i] = s < spans.size() && spans[s].first <= b;
  }
  return mask;
}

}  // namespace veomni::text
