#pragma once
// A small Hugging Face tokenizer written by the tests (tokenizer.json +
// tokenizer_config.json with a ChatML template, the Qwen family's layout) and
// a chat manifest, so the trainer's chat path runs without any download:
// byte-level BPE over the 256 bytes plus a few merges, and three special
// tokens (<|endoftext|>, <|im_start|>, <|im_end|>). Its ids: 0..255 the bytes
// (GPT-2's byte-to-unicode order), then the merges, then the specials.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace veomni::testing {

// GPT-2's printable stand-in for each byte (as the tokenizer.json vocab spells it), UTF-8.
inline std::string byte_symbol(unsigned b) {
  auto printable = [](unsigned x) { return (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255); };
  unsigned cp = b;
  if (!printable(b)) {
    unsigned n = 0;
    for (unsigned x = 0; x < b; ++x) n += !printable(x);
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

struct chat_fixture {
  std::string dir;      // holds tokenizer.json and tokenizer_config.json
  int64_t vocab = 0;    // the tokenizer's ids (the trainer adds 4 placeholders past them)
};

inline chat_fixture write_chat_tokenizer(const std::string& dir) {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  int64_t id = 0;
  for (unsigned b = 0; b < 256; ++b) vocab[byte_symbol(b)] = id++;
  // merges: a few pairs of the conversations' words ("Ġ" is the space's symbol)
  const std::vector<std::pair<std::string, std::string>> merges{
      {"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"i", "s"}, {"Ġ", "is"}, {"o", "u"}, {"ou", "r"},
      {"o", "l"}, {"Ġ", "c"}, {"Ġc", "ol"}, {"Ġcol", "our"}};
  nlohmann::json merge_list = nlohmann::json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = id++;
    merge_list.push_back({a, b});
  }
  nlohmann::json added = nlohmann::json::array();
  for (const char* t : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"})
    added.push_back({{"id", id++}, {"content", t}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  const nlohmann::json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  const nlohmann::json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                                  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          byte_level}}}},
      {"post_processor", byte_level},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
        {"vocab", vocab}, {"merges", merge_list}}}};
  const std::string tmpl =
      "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
      "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
  const nlohmann::json config = {{"bos_token", nullptr}, {"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"},
                                 {"chat_template", tmpl}, {"tokenizer_class", "Qwen2Tokenizer"}};
  std::ofstream(dir + "/tokenizer.json") << tok.dump(1);
  std::ofstream(dir + "/tokenizer_config.json") << config.dump(1);
  return {dir, id};
}

// Conversations whose answers follow from their questions: "what is the colour of the sky?" -> "the colour is blue."
inline void write_chat_manifest(const std::string& path, int n, int first = 0) {
  const char* things[] = {"sky", "grass", "sun", "snow", "coal", "rose", "sea", "lime"};
  const char* colours[] = {"blue", "green", "yellow", "white", "black", "red", "teal", "lime"};
  std::ofstream out(path);
  for (int i = first; i < first + n; ++i) {
    const int k = i % 8;
    nlohmann::json messages = nlohmann::json::array();
    if (i % 3 == 0) messages.push_back({{"role", "system"}, {"content", "You answer in one sentence."}});
    messages.push_back({{"role", "user"}, {"content", std::string("what is the colour of the ") + things[k] + "?"}});
    messages.push_back({{"role", "assistant"}, {"content", std::string("the colour is ") + colours[k] + "."}});
    if (i % 2 == 1) {
      messages.push_back({{"role", "user"}, {"content", "and again?"}});
      messages.push_back({{"role", "assistant"}, {"content", std::string("it is ") + colours[k] + "."}});
    }
    out << nlohmann::json{{"messages", messages}}.dump() << "\n";
  }
}

}  // namespace veomni::testing
