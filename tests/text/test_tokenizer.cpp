// veomni::text::tokenizer: BPE, pre-tokenizers, added tokens, NFC, decode and
// errors on tiny tokenizer.json files written here; then the ids of ~2,300
// strings per tokenizer equal to Hugging Face's JavaScript implementation on
// the real Qwen3 and Llama 3 files (tokenizer_reference.mjs writes them);
// then veomni-tokenize.
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <sys/wait.h>
#include <thread>
#include <veomni/text/tokenizer.hpp>

using veomni::text::tokenizer;
using veomni::text::tokenizer_error;
using json = nlohmann::json;

namespace {

std::string bl(std::string_view bytes) { return veomni::text::detail::bytes_to_byte_level(bytes); }

const char* kQwenRegex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

// A tokenizer.json: one token per byte (id = the byte), then one per merge
// result, in merge order; ByteLevel pre-tokenizer without regex.
json tiny(const std::vector<std::pair<std::string, std::string>>& merges = {}) {
  json vocab = json::object(), m = json::array();
  for (int b = 0; b < 256; ++b) vocab[bl(std::string(1, static_cast<char>(b)))] = b;
  int next = 256;
  for (auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    m.push_back(json::array({a, b}));
  }
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"}, {"vocab", vocab}, {"merges", m}, {"dropout", nullptr}, {"unk_token", nullptr},
            {"continuing_subword_prefix", ""}, {"end_of_word_suffix", ""}, {"byte_fallback", false},
            {"ignore_merges", false}}}};
}

json added(std::string content, int id, bool special = true) {
  return {{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

std::vector<std::string> tokens(const tokenizer& t, const std::vector<int64_t>& ids) {
  std::vector<std::string> out;
  for (auto id : ids) out.push_back(t.id_to_token(id));
  return out;
}
using strings = std::vector<std::string>;

std::string error_of(const json& j) {
  try {
    tokenizer::from_json(j);
  } catch (const tokenizer_error& e) {
    return e.what();
  }
  return "(no error)";
}
#define CHECK_ERROR(j, ...)                                          \
  do {                                                               \
    const std::string msg_ = error_of(j);                            \
    for (const char* part_ : {__VA_ARGS__})                          \
      CHECK_MESSAGE(msg_.find(part_) != std::string::npos, msg_, " lacks '", std::string(part_), "'"); \
  } while (0)

std::string from_hex(const std::string& h) {
  std::string s;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2) s += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return s;
}

std::string nfc(std::string_view s) {
  utf8proc_uint8_t* dst = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                              &dst, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::string out = n >= 0 ? std::string(reinterpret_cast<const char*>(dst), static_cast<std::size_t>(n)) : "";
  std::free(dst);
  return out;
}

std::string to_hex(std::string_view s) {
  static const char* digits = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) h += digits[c >> 4], h += digits[c & 15];
  return h;
}

std::string ids_str(const std::vector<int64_t>& ids) { return json(ids).dump(); }

}  // namespace

TEST_CASE("BPE: the lower-ranked merge wins, whatever its position") {
  auto t = tokenizer::from_json(tiny({{"a", "b"}, {"b", "c"}}));
  CHECK(tokens(t, t.encode("abc")) == strings{"ab", "c"});
  auto r = tokenizer::from_json(tiny({{"b", "c"}, {"a", "b"}}));
  CHECK(tokens(r, r.encode("abc")) == strings{"a", "bc"});
  // equal ranks: the leftmost pair first ("aaa" -> aa a), and merges chain (rank 1 uses rank 0's result)
  auto a = tokenizer::from_json(tiny({{"a", "a"}, {"aa", "a"}}));
  CHECK(tokens(a, a.encode("aaaa")) == strings{"aa", "aa"});
  CHECK(tokens(a, a.encode("aaaaa")) == strings{"aa", "aaa"});  // aa a a a -> aa aa a -> aa aaa
  auto b = tokenizer::from_json(tiny({{"a", "a"}, {"a", "aa"}}));
  CHECK(tokens(b, b.encode("aaa")) == strings{"aa", "a"});
  // merges given as "a b" strings are the same merges
  auto j = tiny({{"a", "b"}, {"b", "c"}});
  j["model"]["merges"] = {"b c", "a b"};
  auto s = tokenizer::from_json(j);
  CHECK(tokens(s, s.encode("abc")) == strings{"a", "bc"});
  // a long word (the heap path) agrees with short ones cut the same way
  std::string longw;
  for (int i = 0; i < 40; ++i) longw += "abc";
  auto ids = t.encode(longw);
  CHECK(ids.size() == 80);
  CHECK(t.decode(ids) == longw);
}

TEST_CASE("BPE: ignore_merges emits a word that is in the vocab as one token") {
  auto j = tiny({{"a", "b"}, {"b", "c"}});
  j["model"]["vocab"]["abc"] = 1000;
  CHECK(tokens(tokenizer::from_json(j), tokenizer::from_json(j).encode("abc")) == strings{"ab", "c"});
  j["model"]["ignore_merges"] = true;
  auto t = tokenizer::from_json(j);
  CHECK(t.encode("abc") == std::vector<int64_t>{1000});
  CHECK(tokens(t, t.encode("abcb")) == strings{"ab", "c", "b"});  // not in the vocab: merged as usual
}

TEST_CASE("pre-tokenizer: the Split regex cuts words, ASCII-only case folding, prefix space and the GPT-2 regex") {
  auto j = tiny({{bl(" "), "w"}, {"'", "s"}, {"'", "S"}, {bl("\xBF"), "x"}});
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"Regex", kQwenRegex}}}, {"behavior", "Isolated"}, {"invert", false}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  auto t = tokenizer::from_json(j);
  CHECK(tokens(t, t.encode("x w's")) == strings{"x", bl(" ") + "w", "'s"});
  CHECK(tokens(t, t.encode("x w'S")) == strings{"x", bl(" ") + "w", "'S"});
  // (?i:'s) folds ASCII only, as the JS reference: "'ſ" (long s, C5 BF) is no contraction,
  // "'ſx" is one piece (' C5 BFx), not "'ſ" "x" (' C5 BF x)
  CHECK(tokens(t, t.encode("w'\u017Fx")) == strings{"w", "'", bl("\xC5"), bl("\xBF") + "x"});

  // a String pattern splits at each occurrence, keeping it
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"String", "-"}};
  auto s = tokenizer::from_json(j);
  CHECK(tokens(s, s.encode("a-b")) == strings{"a", "-", "b"});

  // ByteLevel alone: add_prefix_space and the GPT-2 regex
  auto g = tiny({{bl(" "), "a"}, {bl(" a"), "b"}});
  g["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  auto b = tokenizer::from_json(g);
  CHECK(tokens(b, b.encode("ab ab")) == strings{bl(" ab"), bl(" ab")});
  auto e = b.encode_with_offsets("ab ab");
  CHECK(e.offsets == std::vector<std::pair<std::size_t, std::size_t>>{{0, 2}, {2, 5}});
}

TEST_CASE("added tokens: matched in the text, longest first, lstrip and rstrip, skipped by decode") {
  auto j = tiny({{"a", "b"}});
  j["added_tokens"] = {added("<s>", 300), added("<sp>", 301), added("<x>", 302, false)};
  auto t = tokenizer::from_json(j);
  CHECK(t.encode("ab<sp>ab<s><x>") == std::vector<int64_t>{256, 301, 256, 300, 302});
  CHECK(t.encode("<s") == std::vector<int64_t>{'<', 's'});
  CHECK(t.token_to_id("<sp>") == 301);
  CHECK(t.token_to_id("ab") == 256);
  CHECK(!t.token_to_id("zz"));
  CHECK(t.vocab_size() == 303);
  CHECK(t.is_special(300));
  CHECK(!t.is_special(302));
  CHECK(!t.is_special(256));
  CHECK(t.decode(t.encode("ab<sp>ab<x>")) == "ab<sp>ab<x>");
  CHECK(t.decode(t.encode("ab<sp>ab<x>"), true) == "abab<x>");
  auto e = t.encode_with_offsets("ab<sp>c");
  CHECK(e.offsets == std::vector<std::pair<std::size_t, std::size_t>>{{0, 2}, {2, 6}, {6, 7}});

  j["added_tokens"][0]["lstrip"] = true;
  j["added_tokens"][0]["rstrip"] = true;
  auto s = tokenizer::from_json(j);
  CHECK(s.encode("a  <s> \n b") == std::vector<int64_t>{'a', 300, 'b'});
  CHECK(s.encode("   <s>") == std::vector<int64_t>{300});
}

TEST_CASE("decode: byte-level round trip of all 256 bytes, U+FFFD for invalid UTF-8, raw bytes with decode_bytes") {
  auto t = tokenizer::from_json(tiny());
  std::string all;
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, static_cast<char>(b));
    CHECK(t.decode_bytes({b}) == one);
    CHECK(t.token_to_id(bl(one)) == b);
    all += one;
  }
  std::string ascii = all.substr(0, 128);
  CHECK(t.decode(t.encode(ascii)) == ascii);
  const std::string text = "na\xC3\xAFve \xE4\xB8\xAD \xF0\x9F\x98\x80";
  CHECK(t.decode(t.encode(text)) == text);
  CHECK(t.decode_bytes(t.encode(text)) == text);
  // a character cut in two: decode_bytes keeps the bytes, decode replaces them
  CHECK(t.decode_bytes({0xE4, 0xB8}) == "\xE4\xB8");
  CHECK(t.decode({0xE4, 0xB8}) == "\xEF\xBF\xBD");
  CHECK(t.decode({0xC0, 0xAF, 'x'}) == "\xEF\xBF\xBD\xEF\xBF\xBDx");
  CHECK_THROWS_WITH_AS(t.decode({7, 999}), "decode: id 999 is not a token of tokenizer.json (vocab_size 256)",
                       tokenizer_error);
  CHECK_THROWS_WITH_AS(t.id_to_token(-1), "id_to_token: id -1 is not a token of tokenizer.json (vocab_size 256)",
                       tokenizer_error);
}

TEST_CASE("invalid UTF-8 input: each maximal invalid subsequence is one U+FFFD, offsets name the input bytes") {
  auto t = tokenizer::from_json(tiny());
  // "\xE2\x82" (a cut 3-byte character) is one U+FFFD; "\xC0" and "\xAF" one each (WHATWG)
  const std::string bad = "a\xE2\x82z\xC0\xAF";
  const std::string fixed = "a\xEF\xBF\xBDz\xEF\xBF\xBD\xEF\xBF\xBD";
  CHECK(t.encode(bad) == t.encode(fixed));
  auto e = t.encode_with_offsets(bad);
  REQUIRE(e.ids.size() == 11);
  CHECK(e.offsets[0] == std::pair<std::size_t, std::size_t>{0, 1});
  CHECK(e.offsets[1] == std::pair<std::size_t, std::size_t>{1, 3});  // the U+FFFD's 3 bytes: input [1, 3)
  CHECK(e.offsets[3] == std::pair<std::size_t, std::size_t>{1, 3});
  CHECK(e.offsets[4] == std::pair<std::size_t, std::size_t>{3, 4});
  CHECK(e.offsets[5] == std::pair<std::size_t, std::size_t>{4, 5});
  CHECK(e.offsets[10] == std::pair<std::size_t, std::size_t>{5, 6});
}

TEST_CASE("normalizer NFC: e + U+0301 encodes as the precomposed character, offsets cover both") {
  auto j = tiny();  // 'é' is C3 A9; as byte-level characters: "Ã" "©"
  j["model"]["merges"] = json::array({json::array({bl("\xC3"), bl("\xA9")})});
  j["model"]["vocab"][bl("\xC3\xA9")] = 256;
  auto plain = tokenizer::from_json(j);
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}};
  auto t = tokenizer::from_json(j);
  CHECK(t.encode("caf\xC3\xA9") == std::vector<int64_t>{'c', 'a', 'f', 256});
  CHECK(t.encode("cafe\xCC\x81") == std::vector<int64_t>{'c', 'a', 'f', 256});
  CHECK(plain.encode("cafe\xCC\x81").size() == 6);
  auto e = t.encode_with_offsets("xe\xCC\x81y");
  CHECK(e.ids == std::vector<int64_t>{'x', 256, 'y'});
  CHECK(e.offsets == std::vector<std::pair<std::size_t, std::size_t>>{{0, 1}, {1, 4}, {4, 5}});
  // singletons and reordering: U+212B ANGSTROM SIGN -> U+00C5; a + U+0301 U+0327 -> U+00E1 U+0327? no: reordered
  CHECK(t.decode(t.encode("\xE2\x84\xAB")) == "\xC3\x85");
  CHECK(t.decode(t.encode("a\xCC\x81\xCC\xA7")) == nfc("a\xCC\x81\xCC\xA7"));
}

TEST_CASE("ids that would make the id table mostly empty are refused, naming the path and the id") {
  // tiny(): 256 vocab entries (one per byte), no added tokens; with 'big' 257 entries, so ids
  // must be below 2 * 257 + 1024 = 1538.
  auto j = tiny();
  j["model"]["vocab"]["big"] = 1000000000;  // a resize to 10^9 entries: tens of gigabytes
  CHECK_ERROR(j, "tokenizer.json: model.vocab['big'] 1000000000 is too large: ids must be below 1538");
  j["model"]["vocab"]["big"] = 1537;
  CHECK(error_of(j) == "(no error)");
  j["model"]["vocab"]["big"] = 1538;
  CHECK_ERROR(j, "model.vocab['big'] 1538 is too large");

  j = tiny(), j["added_tokens"] = {added("<a>", 300), added("<b>", 2000000000)};
  CHECK_ERROR(j, "tokenizer.json: added_tokens[1] ('<b>').id 2000000000 is too large: ids must be below 1540");
  j["added_tokens"][1]["id"] = 1539;
  CHECK(error_of(j) == "(no error)");
  j["added_tokens"][1]["id"] = -1;
  CHECK_ERROR(j, "added_tokens[1] ('<b>').id -1 is not a non-negative integer");
}

TEST_CASE("errors name the file, the JSON path and the value") {
  auto base = tiny();
  auto j = base;
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "ByteLevel"}}, {{"type", "Metaspace"}}}}};
  CHECK_ERROR(j, "tokenizer.json: pre_tokenizer.pretokenizers[1]", "'Metaspace'");
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Whitespace"}}, {{"type", "ByteLevel"}}}}};
  CHECK_ERROR(j, "tokenizer.json: pre_tokenizer.pretokenizers[0].type 'Whitespace' is not supported (supported: Split, ByteLevel, Sequence)");
  j["pre_tokenizer"] = nullptr;
  CHECK_ERROR(j, "tokenizer.json: pre_tokenizer is null");
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Isolated"}, {"invert", false}};
  CHECK_ERROR(j, "tokenizer.json: pre_tokenizer has no ByteLevel");
  json split = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "MergedWithPrevious"}, {"invert", false}};
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {split, {{"type", "ByteLevel"}}}}};
  CHECK_ERROR(j, "pre_tokenizer.pretokenizers[0].behavior 'MergedWithPrevious' is not supported (supported: Isolated)");
  split["behavior"] = "Isolated", split["invert"] = true;
  j["pre_tokenizer"]["pretokenizers"][0] = split;
  CHECK_ERROR(j, "pre_tokenizer.pretokenizers[0].invert true is not supported");
  split["invert"] = false, split["pattern"] = {{"Regex", "(a"}};
  j["pre_tokenizer"]["pretokenizers"][0] = split;
  CHECK_ERROR(j, "pre_tokenizer.pretokenizers[0].pattern.Regex does not compile", "'(a'");
  split["pattern"] = {{"Glob", "a"}};
  j["pre_tokenizer"]["pretokenizers"][0] = split;
  CHECK_ERROR(j, "pre_tokenizer.pretokenizers[0].pattern {\"Glob\":\"a\"} is not");
  split["pattern"] = {{"Regex", "a"}};
  j["pre_tokenizer"]["pretokenizers"] = {{{"type", "ByteLevel"}}, split};
  CHECK_ERROR(j, "pre_tokenizer.pretokenizers[1] ('Split') follows the ByteLevel pre-tokenizer");

  j = base, j["normalizer"] = {{"type", "Lowercase"}};
  CHECK_ERROR(j, "tokenizer.json: normalizer.type 'Lowercase' is not supported (supported: NFC, Sequence)");
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "NFKC"}}}}};
  CHECK_ERROR(j, "normalizer.normalizers[1].type 'NFKC' is not supported");

  j = base, j["model"]["type"] = "WordPiece";
  CHECK_ERROR(j, "tokenizer.json: model.type 'WordPiece' is not supported (supported: BPE)");
  j = base, j["model"]["unk_token"] = "<unk>";
  CHECK_ERROR(j, "model.unk_token '<unk>' is not supported (must be null)");
  j = base, j["model"]["dropout"] = 0.1;
  CHECK_ERROR(j, "model.dropout 0.1 is not supported");
  j = base, j["model"]["byte_fallback"] = true;
  CHECK_ERROR(j, "model.byte_fallback true is not supported");
  j = base, j["model"]["continuing_subword_prefix"] = "##";
  CHECK_ERROR(j, "model.continuing_subword_prefix '##' is not supported");
  j = base, j["model"]["end_of_word_suffix"] = "</w>";
  CHECK_ERROR(j, "model.end_of_word_suffix '</w>' is not supported");
  j = base, j["model"]["merges"] = json::array({"a b", "abc"});
  CHECK_ERROR(j, "model.merges[1] 'abc' is not two tokens separated by one space");
  j = base, j["model"]["merges"] = json::array({json::array({"a", 1})});
  CHECK_ERROR(j, "model.merges[0] [\"a\",1] is not");
  j = base, j["model"]["vocab"]["zz"] = -3;
  CHECK_ERROR(j, "model.vocab['zz'] -3 is not an id");
  j = base, j.erase("model");
  CHECK_ERROR(j, "tokenizer.json: model is missing");

  j = base, j["decoder"] = {{"type", "WordPiece"}};
  CHECK_ERROR(j, "tokenizer.json: decoder.type 'WordPiece' is not supported (supported: ByteLevel, Sequence of ByteLevel)");
  j["decoder"] = nullptr;
  CHECK_ERROR(j, "tokenizer.json: decoder is null");
  j = base, j["post_processor"] = {{"type", "BertProcessing"}};
  CHECK_ERROR(j, "tokenizer.json: post_processor.type 'BertProcessing' is not supported");
  j = base, j["post_processor"] = {{"type", "TemplateProcessing"}};
  CHECK(error_of(j) == "(no error)");
  j = base, j["truncation"] = {{"max_length", 512}};
  CHECK_ERROR(j, "tokenizer.json: truncation {\"max_length\":512} is not supported (must be null)");

  j = base, j["added_tokens"] = {added("<a>", 300), added("<b>", 301)};
  j["added_tokens"][1]["single_word"] = true;
  CHECK_ERROR(j, "tokenizer.json: added_tokens[1] ('<b>').single_word true is not supported");
  j["added_tokens"][1] = {{"content", "<c>"}};
  CHECK_ERROR(j, "added_tokens[1] ('<c>').id is missing");

  // files
  const std::string tmp = VEOMNI_TEST_TMP;
  CHECK_THROWS_WITH_AS(tokenizer::from_file(tmp + "/no_such_tokenizer.json"),
                       (tmp + "/no_such_tokenizer.json: cannot open the tokenizer file").c_str(), tokenizer_error);
  std::filesystem::create_directories(tmp + "/empty_tokenizer_dir");
  CHECK_THROWS_WITH_AS(tokenizer::from_file(tmp + "/empty_tokenizer_dir"),
                       (tmp + "/empty_tokenizer_dir/tokenizer.json: cannot open the tokenizer file").c_str(),
                       tokenizer_error);
  std::ofstream(tmp + "/broken_tokenizer.json") << "{\"model\": [1, 2";
  try {
    tokenizer::from_file(tmp + "/broken_tokenizer.json");
    FAIL("no error");
  } catch (const tokenizer_error& e) {
    CHECK(std::string(e.what()).find(tmp + "/broken_tokenizer.json: not valid JSON") == 0);
  }
  std::ofstream(tmp + "/bad_model_tokenizer.json") << [&] { auto b = base; b["model"]["type"] = "Unigram"; return b.dump(); }();
  CHECK_THROWS_WITH_AS(tokenizer::from_file(tmp + "/bad_model_tokenizer.json"),
                       (tmp + "/bad_model_tokenizer.json: model.type 'Unigram' is not supported (supported: BPE)").c_str(),
                       tokenizer_error);
}

namespace {

struct reference_line {
  std::string text;
  std::vector<int64_t> ids;
  std::string decoded;
};

std::vector<reference_line> read_reference(const std::string& name) {
  const std::string file = std::string(VEOMNI_TEST_REF_DIR) + "/tokenizer_" + name + ".jsonl";
  std::ifstream in(file);
  if (!in) FAIL("cannot open ", file, ": the fixture tokenizer.reference_tokenizer (node tokenizer_reference.mjs) did not run");
  std::vector<reference_line> out;
  std::string line;
  while (std::getline(in, line)) {
    auto j = json::parse(line);
    out.push_back({from_hex(j.at("hex").get<std::string>()), j.at("ids").get<std::vector<int64_t>>(),
                   j.at("decoded").get<std::string>()});
  }
  return out;
}

void compare_with_reference(const std::string& name, const std::string& dir, bool has_nfc) {
  const auto t = tokenizer::from_file(dir);
  const auto ref = read_reference(name);
  CHECK(ref.size() >= 2000);
  std::size_t mismatches = 0, round_trips = 0, decoded_ok = 0, offsets_ok = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const auto& r = ref[i];
    const auto e = t.encode_with_offsets(r.text);
    if (e.ids != r.ids) {
      if (++mismatches <= 5)
        MESSAGE(name, " line ", i + 1, ": ", json(r.decoded).dump(), " (bytes ", to_hex(r.text), ")\n  veomni: ",
                ids_str(e.ids), "\n  js:     ", ids_str(r.ids));
      continue;
    }
    CHECK(t.encode(r.text) == e.ids);
    const auto decoded = t.decode(e.ids);
    if (decoded == r.decoded) ++decoded_ok;
    else if (decoded_ok + 5 > i) MESSAGE(name, " line ", i + 1, ": decode ", json(decoded).dump(), " != js ", json(r.decoded).dump());
    const bool valid = veomni::text::detail::utf8_valid(r.text);
    if (valid && (!has_nfc || nfc(r.text) == r.text)) {
      ++round_trips;
      CHECK_MESSAGE(decoded == r.text, name, " line ", i + 1);
      // offsets: contiguous byte ranges that tile the input
      std::size_t at = 0;
      bool ok = e.offsets.size() == e.ids.size();
      for (auto [b, en] : e.offsets) ok = ok && b == at && en >= b, at = en;
      ok = ok && at == r.text.size();
      offsets_ok += ok;
      CHECK_MESSAGE(ok, name, " line ", i + 1, ": offsets do not tile the input");
    } else {
      bool ok = e.offsets.size() == e.ids.size();
      for (auto [b, en] : e.offsets) ok = ok && b <= en && en <= r.text.size();
      CHECK_MESSAGE(ok, name, " line ", i + 1, ": offsets out of range");
    }
  }
  MESSAGE(name, ": ", ref.size(), " strings, ", ref.size() - mismatches, " with the reference's ids, ", decoded_ok,
          " decoded as the reference, ", round_trips, " round trips (valid, NFC-stable), ", offsets_ok, " tiling offsets");
  CHECK(mismatches == 0);
  CHECK(decoded_ok == ref.size());
  CHECK(round_trips > ref.size() / 2);
}

}  // namespace

TEST_CASE("reference: Qwen3's ids equal Hugging Face's JavaScript tokenizer's" * doctest::timeout(200)) {
  compare_with_reference("qwen3", VEOMNI_TEST_QWEN3, true);
}

TEST_CASE("reference: Llama 3's ids equal Hugging Face's JavaScript tokenizer's" * doctest::timeout(200)) {
  compare_with_reference("llama3", VEOMNI_TEST_LLAMA3, false);
}

TEST_CASE("encode is thread-safe: four threads agree with one" * doctest::timeout(200)) {
  const auto t = tokenizer::from_file(VEOMNI_TEST_QWEN3);
  const auto ref = read_reference("qwen3");
  std::vector<std::vector<int64_t>> want;
  for (const auto& r : ref) want.push_back(t.encode(r.text));
  std::vector<std::size_t> bad(4, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      for (std::size_t i = 0; i < ref.size(); ++i) bad[k] += t.encode(ref[(i + 577 * k) % ref.size()].text) != want[(i + 577 * k) % ref.size()];
    });
  for (auto& th : threads) th.join();
  CHECK(bad == std::vector<std::size_t>(4, 0));
}

#ifdef VEOMNI_TEST_TOKENIZE
namespace {
struct run_result {
  int rc;
  std::string out, err;
};
run_result run_tool(const std::string& args, const std::string& input) {
  const std::string tmp = VEOMNI_TEST_TMP;
  std::ofstream(tmp + "/tokenize_in.txt", std::ios::binary) << input;
  const std::string cmd = std::string("'") + VEOMNI_TEST_TOKENIZE + "' " + args + " < '" + tmp + "/tokenize_in.txt' > '" +
                          tmp + "/tokenize_out.txt' 2> '" + tmp + "/tokenize_err.txt'";
  const int st = std::system(cmd.c_str());
  auto slurp = [](const std::string& f) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, slurp(tmp + "/tokenize_out.txt"), slurp(tmp + "/tokenize_err.txt")};
}
}  // namespace

TEST_CASE("veomni-tokenize: JSON strings to ids and back, a bad line is exit 2 naming it" * doctest::timeout(120)) {
  const std::string q = std::string("'") + VEOMNI_TEST_QWEN3 + "'";
  auto r = run_tool(q, "\"Hello world<|im_end|>\"\n\"\"\n\"a\\nb\"\n");
  CHECK(r.rc == 0);
  CHECK(r.out == "[9707,1879,151645]\n[]\n[64,198,65]\n");
  r = run_tool(q + " --decode", "[9707,1879,151645]\n[]\n");
  CHECK(r.rc == 0);
  CHECK(r.out == "\"Hello world<|im_end|>\"\n\"\"\n");
  r = run_tool(q + " --decode --skip-special", "[9707,1879,151645]\n");
  CHECK(r.out == "\"Hello world\"\n");
  r = run_tool(q, "\"ok\"\n\"fine\"\nnot json\n\"never\"\n");
  CHECK(r.rc == 2);
  CHECK(r.out == "[562]\n[62057]\n");
  CHECK_MESSAGE(r.err.rfind("stdin:3: not valid JSON", 0) == 0, r.err);
  r = run_tool(q + " --decode", "[1]\n[1, \"x\"]\n");
  CHECK(r.rc == 2);
  CHECK_MESSAGE(r.err.rfind("stdin:2: element 1 (\"x\") is not an integer id", 0) == 0, r.err);
  r = run_tool(q + " --decode", "[99999999]\n");
  CHECK(r.rc == 2);
  CHECK_MESSAGE(r.err.find("stdin:1: decode: id 99999999 is not a token") == 0, r.err);
  const std::string missing = std::string("'") + VEOMNI_TEST_TMP + "/no_such_dir'";
  r = run_tool(missing, "\"x\"\n");
  CHECK(r.rc == 2);
  CHECK_MESSAGE(r.err.find("no_such_dir: cannot open the tokenizer file") != std::string::npos, r.err);
}
#endif
