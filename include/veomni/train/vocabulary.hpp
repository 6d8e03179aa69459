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

// `chat_args`: more variables for the chat template (data.chat_template_args, e.g. {"enable_thinking": false}).
inline vocabulary load_vocabulary(const std::string& path, const nlohmann::ordered_json& chat_args = nlohmann::ordered_json::object()) {
  const text::tokenizer_files files = text::find_tokenizer(path);
  auto tok = std::make_shared<const text::tokenizer>(text::tokenizer::from_file(files.tokenizer));
  std::shared_ptr<const text::chat_template> chat;
  if (!files.config.empty()) {
    const nlohmann::json c = text::detail::read_json_file(files.config);
    if (c.is_object() && (c.contains("chat_template") || std::filesystem::exists(files.config.parent_path() / "chat_template.jinja")))
      chat = std::make_shared<const text::chat_template>(text::chat_template::from_file(files.config));
  }
  vocabulary v;
  v.name = files.tokenizer.string();
  v.files.push_back(files.tokenizer.string());
  if (!files.config.empty()) v.files.push_back(files.config.string());
  const std::string config_name = files.config.empty() ? std::string("(no tokenizer_config.json)") : files.config.string();
  auto id_of = [&](const std::optional<std::string>& token, const char* key) -> int64_t {
    if (!token) return -1;
    const auto id = tok->token_to_id(*token);
    if (!id) throw text::chat_error(config_name + ": " + key + " '" + *token + "' is not a token of " + v.name);
    return *id;
  };
  std::optional<std::string> bos, eos, pad;
  if (chat) {
    bos = chat->bos_token, eos = chat->eos_token, pad = chat->pad_token;
  } else if (!files.config.empty()) {
    const nlohmann::json c = text::detail::read_json_file(files.config);
    bos = text::detail::config_token(c, "bos_token", config_name);
    eos = text::detail::config_token(c, "eos_token", config_name);
    pad = text::detail::config_token(c, "pad_token", config_name);
  }
  v.bos = id_of(bos, "bos_token");
  v.eos = id_of(eos, "eos_token");
  if (v.eos < 0)
    for (const char* t : {"<|endoftext|>", "<|end_of_text|>", "</s>"})
      if (const auto id = tok->token_to_id(t); id && v.eos < 0) v.eos = *id;
  if (v.eos < 0)
    throw text::chat_error(config_name + ": no eos_token, and " + v.name +
                           " has none of <|endoftext|>, <|end_of_text|>, </s>: samples need an end-of-sequence id");
  const int64_t n = tok->vocab_size();
  v.image = n, v.audio = n + 1, v.gen = n + 2;
  v.pad = pad ? id_of(pad, "pad_token") : n + 3;
  v.size = n + 4;
  v.encode = [tok](std::string_view s) { return tok->encode(s); };
  if (chat) {
    const int64_t image = v.image, audio = v.audio;
    v.chat = [tok, chat, chat_args, image, audio](const nlohmann::json& messages) {
      try {
        const std::string text = chat->render(nlohmann::ordered_json(messages), false, chat_args);
        const text::encoding enc = encode_with_markers(*tok, text, image, audio);
        return chat_tokens{enc.ids, text::token_mask(enc.offsets, chat->assistant_spans(text))};
      } catch (const text::chat_error& e) {
        throw data_error(std::string("chat template: ") + e.what());
      }
    };
  }
  return v;
}

}  // namespace veomni::train
