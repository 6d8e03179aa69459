#pragma once
// <veomni/train/vocabulary.hpp>: the trainer's vocabulary (manifest.hpp) made
// of a Hugging Face tokenizer (data.tokenizer: a folder with tokenizer.json
// and tokenizer_config.json, or the tokenizer.json). Torch-free.
//
//   load_vocabulary("models/qwen3")
//     -> encode: tokenizer.json's byte-level BPE (text/tokenizer.hpp)
//        bos: bos_token of tokenizer_config.json (Qwen3: none -> -1), eos: eos_token (<|im_end|> = 151645)
//        image, audio, gen: the three ids past the tokenizer's (151669, 151670, 151671); pad: pad_token or the next
//        size: 151673 (model.lm.vocab must hold them)
//        chat: messages -> the chat template's text (text/chat.hpp) -> ids, loss on the assistant turns
//
// The placeholders are ours: no checkpoint's embedding rows are trained for
// them, and a model fine-tuned from a Hugging Face checkpoint learns them.
//
// A chat template that cannot be used (none, another family, a syntax error)
// does not stop text and prompt/answer data: the error is raised by the
// first "messages" line. A message whose text holds one of the tokenizer's
// special tokens ("<|im_start|>assistant\n" quoted in a user turn) is refused:
// it would open or close turns, and the loss would land on the user's words.
// Templates that ask for today's date (Llama 3.2's strftime_now) get a fixed
// one, date_string = "26 Jul 2024", so the same data renders the same text
// on any day a run resumes.
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../text/chat.hpp"
#include "../text/tokenizer.hpp"
#include "manifest.hpp"

namespace veomni::train {

// "<image>" / "<audio>" in a rendered conversation become one placeholder id
// each; the text between them is tokenized with byte offsets into `text`.
inline text::encoding encode_with_markers(const text::tokenizer& tok, std::string_view text, int64_t image, int64_t audio) {
  text::encoding out;
  for (size_t i = 0; i < text.size();) {
    const size_t next = std::min(text.find("<image>", i), text.find("<audio>", i));
    const size_t end = next == std::string_view::npos ? text.size() : next;
    if (end > i) {
      text::encoding piece = tok.encode_with_offsets(text.substr(i, end - i));
      for (size_t k = 0; k < piece.ids.size(); ++k) {
        out.ids.push_back(piece.ids[k]);
        out.offsets.emplace_back(piece.offsets[k].first + i, piece.offsets[k].second + i);
      }
    }
    if (end == text.size()) break;
    out.ids.push_back(text.compare(end, 7, "<image>") == 0 ? image : audio);
    out.offsets.emplace_back(end, end + 7);
    i = end + 7;
  }
  return out;
}

// The first special token of `specials` that `s` holds, or "".
inline std::string holds_special(std::string_view s, const std::vector<std::string>& specials) {
  for (const std::string& t : specials)
    if (s.find(t) != std::string_view::npos) return t;
  return {};
}

// A tokenizer with what the trainer and veomni-generate need of it.
struct text_vocabulary {
  vocabulary vocab;
  std::shared_ptr<const text::tokenizer> tokenizer;
  std::shared_ptr<const text::chat_template> chat;  // null: no usable template (chat_problem says why)
  std::string chat_problem;
};

inline text_vocabulary load_text(const std::string& path) {
  namespace fs = std::filesystem;
  const text::tokenizer_files files = text::find_tokenizer(path);
  text_vocabulary tv;
  tv.tokenizer = std::make_shared<const text::tokenizer>(text::tokenizer::from_file(files.tokenizer));
  const text::tokenizer& tok = *tv.tokenizer;
  vocabulary& v = tv.vocab;
  v.name = files.tokenizer.string();
  v.files.push_back(files.tokenizer.string());
  const std::string config_name = files.config.empty() ? std::string("(no tokenizer_config.json)") : files.config.string();
  nlohmann::json config = nlohmann::json::object();
  if (!files.config.empty()) {
    v.files.push_back(files.config.string());
    config = text::read_json_file<text::chat_error>(files.config);
    if (!config.is_object()) throw text::chat_error(config_name + ": expected a JSON object");
    std::error_code ec;
    const fs::path jinja = files.config.parent_path() / "chat_template.jinja";
    const bool inline_template = config.contains("chat_template") && !config["chat_template"].is_null();
    if (!inline_template && fs::is_regular_file(jinja, ec)) v.files.push_back(jinja.string());
    try {
      tv.chat = std::make_shared<const text::chat_template>(text::chat_template::from_json(config, files.config));
    } catch (const text::chat_error& e) {  // raised by the first conversation, not by text data
      tv.chat_problem = e.what();
    }
  } else {
    tv.chat_problem = v.name + ": no tokenizer_config.json beside it, so no chat template";
  }
  auto id_of = [&](const char* key) -> int64_t {
    const auto token = text::detail::config_token(config, key, config_name);
    if (!token) return -1;
    const auto id = tok.token_to_id(*token);
    if (!id) throw text::chat_error(config_name + ": " + key + " '" + *token + "' is not a token of " + v.name);
    return *id;
  };
  v.bos = id_of("bos_token");
  v.eos = id_of("eos_token");
  if (v.eos < 0)
    for (const char* t : {"<|endoftext|>", "<|end_of_text|>", "</s>"})
      if (const auto id = tok.token_to_id(t); id && v.eos < 0) v.eos = *id;
  if (v.eos < 0)
    throw text::chat_error(config_name + ": no eos_token, and " + v.name +
                           " has none of <|endoftext|>, <|end_of_text|>, </s>: samples need an end-of-sequence id");
  const int64_t n = tok.vocab_size();
  v.image = n, v.audio = n + 1, v.gen = n + 2;
  const int64_t pad = id_of("pad_token");
  v.pad = pad >= 0 ? pad : n + 3;
  v.size = n + 4;
  auto shared = tv.tokenizer;
  v.encode = [shared](std::string_view s) {
    try {
      return shared->encode(s);
    } catch (const std::runtime_error& e) {  // a tokenizer_error: the line is bad, not the run
      throw data_error(std::string("tokenizer: ") + e.what());
    }
  };
  if (!tv.chat) {
    v.chat = [why = tv.chat_problem](const nlohmann::json&) -> chat_tokens {
      throw data_error("'messages' needs a chat template: " + why);
    };
    return tv;
  }
  std::vector<std::string> specials;
  for (int64_t id = 0; id < n; ++id)
    if (tok.is_special(id)) specials.push_back(tok.id_to_token(id));
  const int64_t image = v.image, audio = v.audio;
  v.chat = [shared, chat = tv.chat, specials, image, audio, name = v.name](const nlohmann::json& messages) {
    for (size_t i = 0; i < messages.size(); ++i)
      for (const char* field : {"content", "reasoning_content"})
        if (const auto it = messages[i].find(field); it != messages[i].end() && it->is_string())
          if (const std::string t = holds_special(it->get_ref<const std::string&>(), specials); !t.empty())
            throw data_error("messages[" + std::to_string(i) + "]: " + field + " holds '" + t + "', a special token of " + name +
                             ": it would open or close a turn");
    try {
      const nlohmann::ordered_json fixed_date = {{"date_string", "26 Jul 2024"}};
      const std::string text = chat->render(nlohmann::ordered_json(messages), false, fixed_date);
      const text::encoding enc = encode_with_markers(*shared, text, image, audio);
      return chat_tokens{enc.ids, text::token_mask(enc.offsets, chat->assistant_spans(text))};
    } catch (const std::runtime_error& e) {  // chat_error (the template), tokenizer_error
      throw data_error(std::string("chat template: ") + e.what());
    }
  };
  return tv;
}

inline vocabulary load_vocabulary(const std::string& path) { return load_text(path).vocab; }

}  // namespace veomni::train
