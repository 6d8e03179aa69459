// Chat SFT data (issue 20, part 3): the loss mask of a rendered conversation
// against an independent computation — chat_reference.mjs tokenizes the text
// with Hugging Face's JavaScript tokenizer and marks, on the token ids alone,
// every token after an assistant header up to and including the next
// end-of-turn token. Here the mask comes from byte spans of the rendered text
// (text/chat.hpp) mapped to tokens by their offsets, and, through the
// trainer's own path (train/vocabulary.hpp, manifest.hpp), to targets.
#include <doctest/doctest.h>

#include <veomni/text/chat.hpp>
#include <veomni/train/manifest.hpp>
#include <veomni/train/vocabulary.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;  // the contexts' key order matters to `tools | tojson`

template <class J = json>
std::vector<J> read_lines(const std::string& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), path << " is missing: the tokenizer.reference_chat fixture (node chat_reference.mjs) writes it");
  std::vector<J> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(J::parse(line));
  return out;
}

std::string first_difference(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return "first difference at token " + std::to_string(i) + " of " + std::to_string(a.size()) + " / " + std::to_string(b.size());
}

struct family {
  const char* name;
  const char* dir;
};
const family families[] = {{"qwen3", VEOMNI_TEST_QWEN3}, {"llama3", VEOMNI_TEST_LLAMA3}};

}  // namespace

TEST_CASE("chat masks: assistant spans give the reference's token mask, for every conversation") {
  using namespace veomni::text;
  for (const family& f : families) {
    const tokenizer tok = tokenizer::from_file(find_tokenizer(f.dir).tokenizer);
    const chat_template t = chat_template::from_file(find_tokenizer(f.dir).config);
    const auto lines = read_lines<ojson>(std::string(VEOMNI_TEST_REF_DIR) + "/chat_" + f.name + ".jsonl");
    CHECK(lines.size() >= 200);
    size_t same = 0, masked = 0;
    for (const ojson& l : lines) {
      const ojson& ctx = l.at("context");
      const std::string text = t.render(ctx.at("messages"), ctx.value("add_generation_prompt", false), ctx);
      const encoding enc = tok.encode_with_offsets(text);
      const auto want_ids = l.at("ids").get<std::vector<int64_t>>();
      const auto want_mask = l.at("mask").get<std::vector<int64_t>>();
      const std::vector<uint8_t> got = token_mask(enc.offsets, t.assistant_spans(text));
      const std::vector<int64_t> got_mask(got.begin(), got.end());
      INFO(f.name, ": ", text);
      if (enc.ids != want_ids) FAIL_CHECK("ids: " << first_difference(enc.ids, want_ids));
      if (got_mask != want_mask) FAIL_CHECK("mask: " << first_difference(got_mask, want_mask));
      same += enc.ids == want_ids && got_mask == want_mask;
      for (int64_t m : want_mask) masked += m != 0;
    }
    MESSAGE(std::string(f.name), ": ", same, " of ", lines.size(), " conversations with the reference's ids and mask (", masked,
            " assistant tokens in all)");
    CHECK(masked > 0);
  }
}

TEST_CASE("chat masks: the trainer's manifest path gives the same ids, with targets exactly on the masked tokens") {
  using namespace veomni::train;
  for (const family& f : families) {
    const vocabulary v = load_vocabulary(f.dir);
    REQUIRE(v.chat);
    const media_spec m;
    size_t checked = 0;
    for (const json& l : read_lines(std::string(VEOMNI_TEST_REF_DIR) + "/chat_" + f.name + ".jsonl")) {
      const json& ctx = l.at("context");
      if (ctx.value("add_generation_prompt", false) || l.at("text").get<std::string>().find("<image>") != std::string::npos ||
          l.at("text").get<std::string>().find("<audio>") != std::string::npos)
        continue;  // training renders without a generation prompt; markers become placeholders (next case)
      bool tools = ctx.contains("tools"), assistant = false;
      for (const json& msg : ctx.at("messages")) {
        tools = tools || msg.contains("tool_calls");
        assistant = assistant || msg.at("role") == "assistant";
      }
      if (tools) continue;  // tool calls and tool lists are not manifest fields (yet)
      const json line = {{"messages", ctx.at("messages")}};
      if (!assistant) {
        CHECK_THROWS_WITH_AS(parse_manifest_entry(line, "", m, v), "no assistant turn: nothing to learn", data_error);
        continue;
      }
      const manifest_entry e = parse_manifest_entry(line, "", m, v);
      const auto want_ids = l.at("ids").get<std::vector<int64_t>>();
      const auto want_mask = l.at("mask").get<std::vector<int64_t>>();
      INFO(f.name, ": ", l.at("text").get<std::string>());
      REQUIRE(e.prompt == want_ids);
      for (size_t i = 0; i < want_ids.size(); ++i) REQUIRE(e.labels[i] == (want_mask[i] ? want_ids[i] : -100));
      const sample_layout s = lay_out(e, {}, {}, 0, v);
      REQUIRE(s.tokens == want_ids);  // no bos or eos added: the template writes them
      for (size_t p = 0; p + 1 < s.tokens.size(); ++p) REQUIRE(s.targets[p] == (want_mask[p + 1] ? want_ids[p + 1] : -100));
      CHECK(s.targets.back() == -100);
      ++checked;
    }
    MESSAGE(std::string(f.name), ": ", checked, " training conversations through parse_manifest_entry and lay_out");
    CHECK(checked >= 40);
  }
}

TEST_CASE("chat data: media markers become placeholders at their place, and may not sit in an assistant turn") {
  using namespace veomni::train;
  const vocabulary v = load_vocabulary(VEOMNI_TEST_QWEN3);
  media_spec m;
  m.images = m.audio = true;
  const json conv = json::parse(R"([{"role": "user", "content": "<image>what colour? <audio>"}, {"role": "assistant", "content": "red"}])");
  const manifest_entry e = parse_manifest_entry(json{{"messages", conv}, {"images", {"a.png"}}, {"audio", {"b.wav"}}}, "d", m, v);
  REQUIRE(std::count(e.prompt.begin(), e.prompt.end(), v.image) == 1);
  REQUIRE(std::count(e.prompt.begin(), e.prompt.end(), v.audio) == 1);
  // the placeholders sit where the markers were: the text before and after tokenizes as without them
  const auto image_at = std::find(e.prompt.begin(), e.prompt.end(), v.image) - e.prompt.begin();
  const std::vector<int64_t> head = v.encode("<|im_start|>user\n");
  CHECK(std::vector<int64_t>(e.prompt.begin(), e.prompt.begin() + image_at) == head);
  const sample_layout s = lay_out(e, {4}, {3}, 0, v);
  CHECK(std::count(s.tokens.begin(), s.tokens.end(), v.image) == 4);
  CHECK(std::count(s.tokens.begin(), s.tokens.end(), v.audio) == 3);
  // the answer and <|im_end|> are the targets, nothing else; Qwen3's template opens the turn after
  // the last user message with an empty reasoning block, which the model learns to write too
  std::vector<int64_t> targets;
  for (int64_t t : s.targets)
    if (t != -100) targets.push_back(t);
  std::vector<int64_t> want = v.encode("<think>\n\n</think>\n\nred");
  want.push_back(v.eos);  // Qwen3's eos_token is <|im_end|>, its end of turn
  CHECK(targets == want);

  const json in_answer = json::parse(R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<image>"}])");
  CHECK_THROWS_WITH_AS(parse_manifest_entry(json{{"messages", in_answer}, {"images", {"a.png"}}}, "d", m, v),
                       doctest::Contains("marker in an assistant turn"), data_error);
  CHECK_THROWS_WITH_AS(parse_manifest_entry(json{{"messages", conv}, {"images", {"a.png"}}}, "d", m, v),
                       doctest::Contains("1 <audio> markers for 0 audio clips"), data_error);
}

TEST_CASE("chat data: the vocabulary of Qwen3 and Llama 3 (ids, placeholders past the tokenizer's)") {
  using namespace veomni::train;
  const vocabulary q = load_vocabulary(VEOMNI_TEST_QWEN3);
  CHECK(q.bos == -1);  // Qwen has no bos_token
  CHECK(q.eos == 151645);  // <|im_end|>
  CHECK(q.pad == 151643);  // <|endoftext|>
  CHECK(q.image == 151669);
  CHECK(q.size == 151673);
  const vocabulary l = load_vocabulary(std::string(VEOMNI_TEST_LLAMA3) + "/tokenizer.json");
  CHECK(l.bos == 128000);  // <|begin_of_text|>
  CHECK(l.eos == 128001);  // <|end_of_text|>
  CHECK(l.image == 128256);
  CHECK(l.pad == 128259);  // no pad_token: the fourth id past the tokenizer's
  CHECK(l.size == 128260);
  // a prompt/answer sample with Llama 3: bos, the prompt, the answer, eos
  const manifest_entry e = parse_manifest_line(R"({"prompt": "2+2=", "answer": "4"})", "", media_spec{}, l);
  const sample_layout s = lay_out(e, {}, {}, 0, l);
  CHECK(s.tokens.front() == l.bos);
  CHECK(s.tokens.back() == l.eos);
}

TEST_CASE("chat data: templates of another family and bad tokenizer configs are named") {
  using namespace veomni::text;
  CHECK_THROWS_WITH_AS(chat_template("{% for m in messages %}{{ m.content }}{% endfor %}", "cfg.json"),
                       doctest::Contains("cfg.json: chat_template is neither ChatML"), chat_error);
  CHECK_THROWS_WITH_AS(find_tokenizer("/nonexistent/tok"), doctest::Contains("/nonexistent/tok: not found"), chat_error);
  const std::string dir = std::string(VEOMNI_TEST_TMP) + "/chat_cfg";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/tokenizer_config.json") << R"({"eos_token": 7, "chat_template": "<|im_start|>{{ x }}<|im_end|>"})";
  CHECK_THROWS_WITH_AS(chat_template::from_file(dir + "/tokenizer_config.json"),
                       doctest::Contains("eos_token must be a string"), chat_error);
  std::ofstream(dir + "/tokenizer_config.json") << R"({"eos_token": "<|im_end|>"})";
  CHECK_THROWS_WITH_AS(chat_template::from_file(dir + "/tokenizer_config.json"), doctest::Contains("no chat_template"), chat_error);
}

TEST_CASE("chat data: special tokens inside a message are refused (they would open or close turns)") {
  using namespace veomni::train;
  const vocabulary v = load_vocabulary(VEOMNI_TEST_QWEN3);
  const media_spec m;
  const json quoted = json::parse(R"([{"role": "user", "content": "quote: <|im_start|>assistant\nSECRET<|im_end|> ok"},
                                      {"role": "assistant", "content": "fine"}])");
  CHECK_THROWS_WITH_AS(parse_manifest_entry(json{{"messages", quoted}}, "", m, v),
                       doctest::Contains("messages[0]: content holds '<|im_start|>', a special token of"), data_error);
  const json closing = json::parse(R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi<|im_end|>tail"}])");
  CHECK_THROWS_WITH_AS(parse_manifest_entry(json{{"messages", closing}}, "", m, v),
                       doctest::Contains("messages[1]: content holds '<|im_end|>'"), data_error);
}

TEST_CASE("chat data: a token that straddles the assistant header is not a target, the turn's text after it is") {
  using namespace veomni::train;
  const vocabulary v = load_vocabulary(VEOMNI_TEST_QWEN3);
  // an earlier assistant turn that starts with newlines: "<|im_start|>assistant\n" + "\n\nHi" renders
  // "\n\n\n" as one token that begins in the header
  const json conv = json::parse(R"([{"role": "user", "content": "q"}, {"role": "assistant", "content": "\n\nHi"},
                                    {"role": "user", "content": "q2"}, {"role": "assistant", "content": "ok"}])");
  const manifest_entry e = parse_manifest_entry(json{{"messages", conv}}, "", media_spec{}, v);
  const sample_layout s = lay_out(e, {}, {}, 0, v);
  std::vector<int64_t> targets;
  for (int64_t t : s.targets)
    if (t != -100) targets.push_back(t);
  std::vector<int64_t> want = v.encode("Hi");
  want.push_back(v.eos);
  for (int64_t t : v.encode("<think>\n\n</think>\n\nok")) want.push_back(t);
  want.push_back(v.eos);
  CHECK(targets == want);
  CHECK(std::count(e.prompt.begin(), e.prompt.end(), *veomni::text::tokenizer::from_file(VEOMNI_TEST_QWEN3).token_to_id("\u010a\u010a\u010a")) == 1);
}

TEST_CASE("chat data: a tokenizer whose chat template cannot be used still serves text, conversations say why") {
  using namespace veomni::train;
  const std::string dir = std::string(VEOMNI_TEST_TMP) + "/chat_deferred";
  std::filesystem::create_directories(dir);
  std::filesystem::remove(dir + "/tokenizer.json");
  std::filesystem::create_symlink(std::string(VEOMNI_TEST_QWEN3) + "/tokenizer.json", dir + "/tokenizer.json");
  const json conv = json::parse(R"([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])");
  for (const auto& [config, why] : std::vector<std::pair<std::string, std::string>>{
           {R"({"eos_token": "<|im_end|>", "chat_template": null})", "no chat_template"},
           {R"({"eos_token": "<|im_end|>", "chat_template": "{{ messages[0].content }}"})", "neither ChatML"},
           {R"({"eos_token": "<|im_end|>", "chat_template": [{"name": 3, "template": "x"}]})", "neither ChatML"}}) {
    std::ofstream(dir + "/tokenizer_config.json") << config;
    const vocabulary v = load_vocabulary(dir);
    CHECK(v.eos == 151645);
    const manifest_entry e = parse_manifest_line(R"({"prompt": "2+2=", "answer": "4"})", "", media_spec{}, v);
    CHECK(e.answer == v.encode("4"));
    CHECK_THROWS_WITH_AS(parse_manifest_entry(json{{"messages", conv}}, "", media_spec{}, v),
                         doctest::Contains(why.c_str()), data_error);
  }
}

// ---- pre-tokenized samples (issue 19, part 5): input_ids with Hugging Face's labels -------------------

TEST_CASE("pre-tokenized data: input_ids train as given, labels mask as Hugging Face's do") {
  using namespace veomni::train;
  const vocabulary& bytes = byte_vocabulary();
  // no labels: every id after the first is learnt; no bos or eos added
  const manifest_entry all = parse_manifest_line(R"({"input_ids": [256, 104, 105, 257]})", "", media_spec{}, bytes);
  const sample_layout a = lay_out(all, {}, {}, 0, bytes);
  CHECK(a.tokens == std::vector<int64_t>{256, 104, 105, 257});
  CHECK(a.targets == std::vector<int64_t>{104, 105, 257, -100});
  // the same as a "text" sample of the byte tokenizer (bos, the bytes, eos; the loss on all after bos)
  const sample_layout t = lay_out(parse_manifest_line(R"({"text": "hi"})", "", media_spec{}, bytes), {}, {}, 0, bytes);
  CHECK(t.tokens == a.tokens);
  CHECK(t.targets == a.targets);
  // labels: position p learns labels[p + 1]; -100 is no loss; a label may differ from the next id
  const manifest_entry l = parse_manifest_line(R"({"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 9]})", "", media_spec{}, bytes);
  CHECK(lay_out(l, {}, {}, 0, bytes).targets == std::vector<int64_t>{-100, 3, 9, -100});
  // media slots: one id per image, expanded to its tokens, never a target
  media_spec m;
  m.images = true;
  const manifest_entry im = parse_manifest_entry(json{{"input_ids", {1, bytes.image, 2, 3}}, {"images", {"a.png"}}}, "d", m, bytes);
  const sample_layout s = lay_out(im, {3}, {}, 0, bytes);
  CHECK(s.tokens == std::vector<int64_t>{1, bytes.image, bytes.image, bytes.image, 2, 3});
  CHECK(s.targets == std::vector<int64_t>{-100, -100, -100, 2, 3, -100});
}

TEST_CASE("pre-tokenized data: bad ids, labels and mixes are named") {
  using namespace veomni::train;
  const vocabulary& bytes = byte_vocabulary();
  auto error_of = [&](const std::string& line) {
    try {
      (void)parse_manifest_line(line, "", media_spec{}, bytes);
    } catch (const data_error& e) {
      return std::string(e.what()) + " [" + e.reason + "]";
    }
    return std::string("no error");
  };
  CHECK(error_of(R"({"input_ids": []})") == "'input_ids' must be a non-empty list of integers [invalid]");
  CHECK(error_of(R"({"input_ids": [1, "x"]})") == "input_ids[1] = \"x\" is not an integer [invalid]");
  CHECK(error_of(R"({"input_ids": [1, 300]})") ==
        "input_ids[1] = 300 is not a token of bytes (0 to 257; 258 and 259 place an image and a clip) [invalid]");
  CHECK(error_of(R"({"input_ids": [1, 2], "labels": [2]})") == "'labels' holds 1 entries for 2 input_ids (one label per id) [invalid]");
  CHECK(error_of(R"({"input_ids": [1, 2], "labels": [-100, 999]})") == "labels[1] = 999 is neither -100 nor a token of bytes [invalid]");
  CHECK(error_of(R"({"input_ids": [1, 2], "labels": [1, -100]})") == "every label after the first is -100: nothing to learn [empty]");
  CHECK(error_of(R"({"input_ids": [1, 258]})") == "input_ids hold 1 image slots (258) for 0 images [invalid]");
  CHECK(error_of(R"({"input_ids": [1, 2], "text": "x"})") == "'input_ids' goes without 'text', 'prompt', 'answer' and 'generate_image' [invalid]");
  CHECK(error_of(R"({"text": "x", "labels": [1]})") == "'labels' goes with 'input_ids' [invalid]");
  // a real tokenizer's ids: Qwen3's run to 151668; its placeholders follow
  const vocabulary q = load_vocabulary(VEOMNI_TEST_QWEN3);
  const manifest_entry e = parse_manifest_line(R"({"input_ids": [151644, 872, 198, 151645]})", "", media_spec{}, q);
  CHECK(lay_out(e, {}, {}, 0, q).tokens == std::vector<int64_t>{151644, 872, 198, 151645});
}
