#pragma once
// veomni::text::tokenizer — a Hugging Face tokenizer.json (byte-level BPE) in
// C++: the tokenizers of Qwen2/Qwen3, Llama 3, GPT-2 and their kin. Torch-free.
//
//   auto tok = veomni::text::tokenizer::from_file("models/qwen3");  // the dir or its tokenizer.json
//   tok.encode("Hello world<|im_end|>")   // {9707, 1879, 151645}
//   tok.decode({9707, 1879})              // "Hello world"
//
// What encode does, in Hugging Face's order (their JavaScript implementation,
// @huggingface/tokenizers, is the reference the tests compare against):
//   1. invalid UTF-8: each maximal invalid subsequence becomes U+FFFD, as the
//      WHATWG decoder (JS TextDecoder, Rust's from_utf8_lossy) does; offsets
//      still refer to the input's bytes (a U+FFFD covers the bytes it replaced);
//   2. added tokens (`added_tokens`, not `normalized`) are cut out of the text,
//      longest match first at the earliest position: "a<|im_end|>b" -> "a",
//      <|im_end|>, "b"; lstrip/rstrip swallow the whitespace beside them;
//   3. the normalizer (NFC, utf8proc) on each remaining section, then the
//      `normalized` added tokens are cut out of the normalized text;
//   4. the pre-tokenizer: each Split regex (PCRE2 JIT, UTF + UCP) cuts the
//      section into pieces ("Hello world" -> "Hello", " world"), then ByteLevel
//      (optional prefix space, optional GPT-2 regex);
//   5. byte-level BPE on each piece's bytes: starting from one symbol per byte,
//      merge the adjacent pair of lowest merge rank (the leftmost on ties)
//      until no pair has a merge; " world" -> Ġ w o r l d -> ... -> Ġworld.
// The post-processor's tokens (a BOS, say) are never added: encode returns the
// text's tokens only. decode is the ByteLevel decoder: each token's bytes,
// concatenated; added tokens verbatim; invalid UTF-8 -> U+FFFD (decode_bytes
// returns the raw bytes instead, for streaming output that ends mid-character).
// No `clean_up_tokenization_spaces` (a tokenizer_config.json option): decode(
// encode(s)) == s for valid, NFC-stable s.
//
// Offsets (encode_with_offsets): [begin, end) byte offsets into the input per
// id. A byte-level token that holds part of a character (a CJK character is
// often two tokens) covers exactly its bytes; a token made from normalized text
// ("e" + U+0301 -> "é") covers the input characters that were normalized together.
//
// Supported tokenizer.json (anything else is a tokenizer_error that names the
// file, the JSON path and the value): model BPE (merges as "a b" or [a, b],
// ignore_merges, no dropout/unk_token/byte_fallback/suffixes); normalizer
// null, NFC or a Sequence of them; pre_tokenizer Split (Regex or String,
// behavior Isolated, invert false) any number of times followed by one
// ByteLevel, alone or in Sequences; decoder ByteLevel (or a Sequence of it);
// post_processor null, ByteLevel, TemplateProcessing, Sequence (none adds
// anything to encode); added tokens with lstrip, rstrip, normalized
// (single_word = true is refused); truncation and padding null.
//
// The Split regexes are Oniguruma syntax; they are translated as the JS
// reference translates them: `(?i:...)` folds ASCII letters only ('S, 'LL),
// \s is Unicode White_Space (in ByteLevel's GPT-2 regex too, as in the Rust
// tokenizers; the JS one uses JavaScript's \s there, which differs on U+0085
// and U+FEFF). encode is const and thread-safe: the compiled
// data is immutable and every per-call buffer is thread_local.

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "utf8.hpp"

namespace veomni::text {

// A tokenizer.json that cannot be read or is not supported; the message names
// the file and the JSON path ("tokenizer.json: model.merges[3] ...").
struct tokenizer_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// encode_with_offsets: ids and, per id, [begin, end) byte offsets into the input.
struct encoding {
  std::vector<int64_t> ids;
  std::vector<std::pair<std::size_t, std::size_t>> offsets;
};

namespace detail {

// ---------------------------------------------------------------- UTF-8

inline bool utf8_valid(std::string_view text) noexcept {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      std::uint64_t w;
      std::memcpy(&w, s + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const auto c = utf8::next(s, n, i);
    if (!c.valid) return false;
    i += c.len;
  }
  return true;
}

// Appends `bytes` to out with each maximal invalid subsequence replaced by
// U+FFFD; with map, records per output byte the input range it came from.
inline void utf8_replace_invalid(std::string_view bytes, std::string& out,
                                 std::vector<std::pair<std::size_t, std::size_t>>* map = nullptr) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  for (std::size_t i = 0; i < bytes.size();) {
    const auto c = utf8::next(s, bytes.size(), i);
    if (c.valid) {
      out.append(bytes.data() + i, c.len);
      if (map)
        for (std::size_t k = 0; k < c.len; ++k) map->emplace_back(i + k, i + k + 1);
    } else {
      out += "\xEF\xBF\xBD";
      if (map)
        for (int k = 0; k < 3; ++k) map->emplace_back(i, i + c.len);
    }
    i += c.len;
  }
}

// ---------------------------------------------------------------- byte level

// GPT-2's byte <-> character table: printable bytes stand for themselves,
// the others are shifted to U+0100.. (' ' -> 'Ġ' U+0120, '\n' -> 'Ċ' U+010A).
inline const std::array<char32_t, 256>& byte_to_unicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
    }
    return t;
  }();
  return table;
}

// Inverse of byte_to_unicode (-1: not a byte-level character).
inline int unicode_to_byte(char32_t cp) {
  static const std::array<std::int16_t, 512> table = [] {
    std::array<std::int16_t, 512> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byte_to_unicode()[b]] = static_cast<std::int16_t>(b);
    return t;
  }();
  return cp < 512 ? table[cp] : -1;
}

// A token's byte-level string back to bytes; nullopt if a character is not
// in the table.
inline std::optional<std::string> byte_level_to_bytes(std::string_view token) {
  std::string out;
  const auto* s = reinterpret_cast<const unsigned char*>(token.data());
  for (std::size_t i = 0; i < token.size();) {
    const auto c = utf8::next(s, token.size(), i);
    const int b = c.valid ? unicode_to_byte(c.cp) : -1;
    if (b < 0) return std::nullopt;
    out += static_cast<char>(b);
    i += c.len;
  }
  return out;
}

inline std::string bytes_to_byte_level(std::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) utf8::append(out, byte_to_unicode()[b]);
  return out;
}

// ---------------------------------------------------------------- NFC

// Characters that NFC leaves alone whatever surrounds them: canonical combining
// class 0, NFC(c) == c, and never the second character of a composition (as
// the U+0301 of e + U+0301 or a Hangul vowel jamo are). A string of such
// characters is in NFC; around the others, NFC runs on the smallest region.
inline const std::vector<std::uint64_t>& nfc_unstable_bits() {
  static const std::vector<std::uint64_t> bits = [] {
    std::vector<std::uint64_t> b(0x110000 / 64, 0);
    auto mark = [&](std::int32_t cp) { b[static_cast<std::size_t>(cp) >> 6] |= 1ull << (cp & 63); };
    for (std::int32_t cp = 0x80; cp < 0x110000; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      const auto* p = utf8proc_get_property(cp);
      if (p->combining_class != 0) mark(cp);
      if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) {  // canonical decomposition
        utf8proc_int32_t d[8];
        int boundclass = 0;
        const auto k = utf8proc_decompose_char(cp, d, 8, UTF8PROC_DECOMPOSE, &boundclass);
        for (utf8proc_ssize_t j = 1; j < k && j < 8; ++j) mark(d[j]);
        std::string one;
        utf8::append(one, static_cast<char32_t>(cp));
        utf8proc_uint8_t* nfc = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(one.c_str()));
        if (nfc && one != reinterpret_cast<const char*>(nfc)) mark(cp);
        std::free(nfc);
      }
    }
    for (std::int32_t cp = 0x1161; cp <= 0x1175; ++cp) mark(cp);  // Hangul V
    for (std::int32_t cp = 0x11A8; cp <= 0x11C2; ++cp) mark(cp);  // Hangul T
    return b;
  }();
  return bits;
}

// The regions [begin, end) of text NFC may change (empty: text is in NFC).
inline void nfc_regions(std::string_view text, std::vector<std::pair<std::size_t, std::size_t>>& regions) {
  regions.clear();
  const auto& bits = nfc_unstable_bits();
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t prev = n;  // start of the previous character (n: none)
  bool open = false;
  for (std::size_t i = 0; i < n;) {
    if (s[i] < 0x80) {
      if (open) regions.back().second = i, open = false;
      prev = i++;
      continue;
    }
    const auto c = utf8::next(s, n, i);
    const bool unstable = (bits[c.cp >> 6] >> (c.cp & 63)) & 1;
    if (unstable && !open) regions.emplace_back(prev == n ? i : prev, n), open = true;
    if (!unstable && open) regions.back().second = i, open = false;
    prev = i;
    i += c.len;
  }
}

// NFC of text into out; with map, per output byte the text range it came from.
inline void nfc_apply(std::string_view text, const std::vector<std::pair<std::size_t, std::size_t>>& regions,
                      std::string& out, std::vector<std::pair<std::size_t, std::size_t>>* map) {
  std::size_t at = 0;
  auto copy = [&](std::size_t b, std::size_t e) {
    out.append(text.data() + b, e - b);
    if (map)
      for (std::size_t k = b; k < e; ++k) map->emplace_back(k, k + 1);
  };
  for (auto [b, e] : regions) {
    copy(at, b);
    utf8proc_uint8_t* dst = nullptr;
    const auto len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data() + b),
                                  static_cast<utf8proc_ssize_t>(e - b), &dst,
                                  static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (len < 0) {
      std::free(dst);
      throw tokenizer_error(std::string("NFC: utf8proc failed: ") + utf8proc_errmsg(len));
    }
    const std::string_view nfc(reinterpret_cast<const char*>(dst), static_cast<std::size_t>(len));
    if (nfc == text.substr(b, e - b)) {  // already NFC (a virama, say): exact offsets
      copy(b, e);
    } else {
      out.append(nfc);
      if (map)
        for (utf8proc_ssize_t k = 0; k < len; ++k) map->emplace_back(b, e);
    }
    std::free(dst);
    at = e;
  }
  copy(at, text.size());
}

// ---------------------------------------------------------------- regex

// Oniguruma (tokenizers' Rust) regex -> PCRE2, as the JS reference rewrites it:
// `(?i:...)` folds ASCII letters only ('s -> '[sS]); \s and \S are Unicode
// White_Space; \h is a hex digit; \uHHHH -> \x{HHHH}. A class inside (?i:)
// keeps PCRE2's (Unicode) fold. \w, \b and the rest are PCRE2's (with UCP).
inline std::string onig_to_pcre2(std::string_view re) {
  std::string out;
  std::vector<bool> fold_stack;
  bool fold = false;
  for (std::size_t i = 0; i < re.size();) {
    const char c = re[i];
    if (c == '\\' && i + 1 < re.size()) {
      const char e = re[i + 1];
      if (e == 's') {
        out += "\\p{White_Space}", i += 2;
      } else if (e == 'S') {
        out += "\\P{White_Space}", i += 2;
      } else if (e == 'h' || e == 'H') {  // Oniguruma's hex digit (PCRE2's \h is a blank)
        out += e == 'h' ? "[0-9A-Fa-f]" : "[^0-9A-Fa-f]", i += 2;
      } else if (e == 'u' && i + 6 <= re.size()) {
        out += "\\x{" + std::string(re.substr(i + 2, 4)) + "}", i += 6;
      } else if ((e == 'p' || e == 'P' || e == 'x') && i + 2 < re.size() && re[i + 2] == '{') {
        const auto close = re.find('}', i);
        const auto end = close == std::string_view::npos ? re.size() : close + 1;
        out.append(re.substr(i, end - i)), i = end;
      } else {
        out += c, out += e, i += 2;
      }
    } else if (c == '[') {  // a character class, copied with \s rewritten
      std::string cls = "[";
      std::size_t j = i + 1;
      int depth = 1;
      if (j < re.size() && re[j] == '^') cls += '^', ++j;
      if (j < re.size() && re[j] == ']') cls += "\\]", ++j;
      while (j < re.size() && depth > 0) {
        const char d = re[j];
        if (d == '\\' && j + 1 < re.size()) {
          const char e = re[j + 1];
          if (e == 's') cls += "\\p{White_Space}";
          else if (e == 'S') cls += "\\P{White_Space}";
          else cls += d, cls += e;
          j += 2;
          continue;
        }
        if (d == '[') ++depth;
        if (d == ']') --depth;
        cls += d, ++j;
      }
      out += fold ? "(?i:" + cls + ")" : cls;
      i = j;
    } else if (re.substr(i, 4) == "(?i:") {
      fold_stack.push_back(fold), fold = true, out += "(?:", i += 4;
    } else if (c == '(') {
      fold_stack.push_back(fold), out += c, ++i;
    } else if (c == ')') {
      if (!fold_stack.empty()) fold = fold_stack.back(), fold_stack.pop_back();
      out += c, ++i;
    } else if (fold && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
      const char lo = static_cast<char>(c | 0x20), up = static_cast<char>(lo & ~0x20);
      out += '[', out += lo, out += up, out += ']', ++i;
    } else {
      out += c, ++i;
    }
  }
  return out;
}

// A compiled PCRE2 pattern (UTF, UCP, JIT when available); shared, immutable.
class regex {
 public:
  regex(const std::string& pattern, bool literal, const std::string& what) {
    int err = 0;
    PCRE2_SIZE at = 0;
    const std::uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err, &at, nullptr);
    if (!c) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw tokenizer_error(what + " does not compile (PCRE2: " + reinterpret_cast<const char*>(msg) + " at offset " +
                            std::to_string(at) + " of '" + pattern + "')");
    }
    code_.reset(c, pcre2_code_free);
    jit_ = pcre2_jit_compile(c, PCRE2_JIT_COMPLETE) == 0;
  }

  // The first match at or after `start` in s[0, n): its [begin, end).
  bool find(const char* s, std::size_t n, std::size_t start, std::size_t& mb, std::size_t& me) const {
    struct md_free {
      void operator()(pcre2_match_data* m) const noexcept { pcre2_match_data_free(m); }
    };
    thread_local std::unique_ptr<pcre2_match_data, md_free> md(pcre2_match_data_create(1, nullptr));
    const auto subject = reinterpret_cast<PCRE2_SPTR>(s);
    const int rc = jit_ ? pcre2_jit_match(code_.get(), subject, n, start, PCRE2_NO_UTF_CHECK, md.get(), nullptr)
                        : pcre2_match(code_.get(), subject, n, start, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw tokenizer_error(std::string("tokenizer: regex match failed: ") + reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    mb = ov[0], me = ov[1];
    return true;
  }

 private:
  std::shared_ptr<pcre2_code> code_;
  bool jit_ = false;
};

// ---------------------------------------------------------------- merges

// (left piece, right piece) -> (rank, merged piece): open addressing, linear probing.
class merge_table {
 public:
  struct slot {
    std::uint64_t key = kEmpty;
    std::int32_t rank = 0;
    std::int32_t merged = 0;
  };
  static constexpr std::uint64_t kEmpty = ~0ull;

  void reserve(std::size_t n) {
    std::size_t cap = 16;
    while (cap < n + n / 2 + 1) cap <<= 1;
    slots_.assign(cap, slot{});
    mask_ = cap - 1;
    shift_ = 64 - static_cast<int>(__builtin_ctzll(cap));
  }
  void insert(std::int32_t a, std::int32_t b, std::int32_t rank, std::int32_t merged) {  // later wins
    const std::uint64_t k = key(a, b);
    for (std::size_t i = hash(k);; i = (i + 1) & mask_) {
      if (slots_[i].key == kEmpty || slots_[i].key == k) {
        slots_[i] = {k, rank, merged};
        return;
      }
    }
  }
  const slot* find(std::int32_t a, std::int32_t b) const noexcept {
    if ((a | b) < 0) return nullptr;
    const std::uint64_t k = key(a, b);
    for (std::size_t i = hash(k);; i = (i + 1) & mask_) {
      if (slots_[i].key == k) return &slots_[i];
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static std::uint64_t key(std::int32_t a, std::int32_t b) noexcept {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }
  std::size_t hash(std::uint64_t k) const noexcept {
    return static_cast<std::size_t>((k * 0x9E3779B97F4A7C15ull) >> shift_) & mask_;
  }
  std::vector<slot> slots_;
  std::size_t mask_ = 0;
  int shift_ = 64;
};

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using string_map = std::unordered_map<std::string, std::int32_t, string_hash, std::equal_to<>>;

// Added tokens: a byte trie, longest match at a position.
class token_trie {
 public:
  void insert(std::string_view s, std::int32_t value) {
    if (s.empty()) return;
    std::int32_t at = 0;
    for (unsigned char ch : s) {
      std::int32_t next = -1;
      for (auto [c, to] : nodes_[at].next)
        if (c == ch) next = to;
      if (next < 0) {
        next = static_cast<std::int32_t>(nodes_.size());
        nodes_[at].next.emplace_back(ch, next);
        nodes_.emplace_back();
      }
      at = next;
    }
    nodes_[at].value = value;
    first_[static_cast<unsigned char>(s[0])] = true;
  }
  bool empty() const noexcept { return nodes_.size() == 1; }
  bool may_start(unsigned char c) const noexcept { return first_[c]; }
  // The longest token at s[i, n): its value and length.
  bool match(const char* s, std::size_t n, std::size_t i, std::int32_t& value, std::size_t& len) const {
    std::int32_t at = 0;
    bool found = false;
    for (std::size_t j = i; j < n; ++j) {
      std::int32_t next = -1;
      for (auto [c, to] : nodes_[at].next)
        if (c == static_cast<unsigned char>(s[j])) next = to;
      if (next < 0) break;
      at = next;
      if (nodes_[at].value >= 0) value = nodes_[at].value, len = j + 1 - i, found = true;
    }
    return found;
  }

 private:
  struct node {
    std::vector<std::pair<unsigned char, std::int32_t>> next;
    std::int32_t value = -1;
  };
  std::vector<node> nodes_{1};
  std::array<bool, 256> first_{};
};

using range_map = std::vector<std::pair<std::size_t, std::size_t>>;

// [a, b) through a per-byte map into the previous text (of size prev_size).
inline std::pair<std::size_t, std::size_t> map_range(const range_map& m, std::size_t a, std::size_t b,
                                                     std::size_t prev_size) {
  if (a < b) return {m[a].first, m[b - 1].second};
  const std::size_t p = a < m.size() ? m[a].first : prev_size;
  return {p, p};
}

}  // namespace detail

class tokenizer {
 public:
  // tokenizer.json, or a directory holding it.
  static tokenizer from_file(const std::filesystem::path& file_or_dir) {
    std::filesystem::path file = file_or_dir;
    std::error_code ec;
    if (std::filesystem::is_directory(file, ec)) file /= "tokenizer.json";
    std::ifstream in(file, std::ios::binary);
    if (!in) throw tokenizer_error(file.string() + ": cannot open the tokenizer file");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw tokenizer_error(file.string() + ": not valid JSON (" + e.what() + ")");
    }
    return from_json(j, file.string());
  }

  static tokenizer from_json(const nlohmann::json& j, std::string name = "tokenizer.json") {
    tokenizer t;
    auto d = std::make_shared<data>();
    d->name = std::move(name);
    d->load(j);
    t.d_ = std::move(d);
    return t;
  }

  // The ids of text: added tokens in the text are matched; no post-processor tokens.
  std::vector<int64_t> encode(std::string_view text) const {
    std::vector<int64_t> ids;
    ids.reserve(text.size() / 3 + 4);
    d_->encode<false>(text, ids, nullptr);
    return ids;
  }

  encoding encode_with_offsets(std::string_view text) const {
    encoding e;
    d_->encode<true>(text, e.ids, &e.offsets);
    return e;
  }

  // Like Hugging Face: each maximal invalid UTF-8 subsequence -> U+FFFD.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const {
    std::string out, run;
    for (auto id : ids) {
      const auto& e = d_->entry(id, "decode");
      if (skip_special_tokens && e.kind == kind_special) continue;
      if (e.kind == kind_vocab) {
        run += e.bytes;
      } else {  // added tokens verbatim; the bytes before them are decoded on their own
        detail::utf8_replace_invalid(run, out), run.clear();
        out += e.bytes;
      }
    }
    detail::utf8_replace_invalid(run, out);
    return out;
  }

  // The raw bytes (for streaming output that may end mid-character).
  std::string decode_bytes(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const {
    std::string out;
    for (auto id : ids) {
      const auto& e = d_->entry(id, "decode_bytes");
      if (!(skip_special_tokens && e.kind == kind_special)) out += e.bytes;
    }
    return out;
  }

  // A vocab or added token (its tokenizer.json spelling: "Ġworld", "<|im_end|>").
  std::optional<int64_t> token_to_id(std::string_view token) const {
    auto it = d_->string_to_id.find(token);
    if (it == d_->string_to_id.end()) return std::nullopt;
    return it->second;
  }

  std::string id_to_token(int64_t id) const { return d_->entry(id, "id_to_token").token; }

  // max id + 1 over the vocab and the added tokens.
  int64_t vocab_size() const { return static_cast<int64_t>(d_->ids.size()); }

  bool is_special(int64_t id) const {
    return id >= 0 && id < vocab_size() && d_->ids[static_cast<std::size_t>(id)].kind == kind_special;
  }

 private:
  enum token_kind : std::uint8_t { kind_none, kind_vocab, kind_added, kind_special };
  struct id_entry {
    std::string token;  // tokenizer.json spelling
    std::string bytes;  // what decode writes
    token_kind kind = kind_none;
  };
  struct added_token {
    std::string content;
    std::int32_t id;
    bool lstrip, rstrip;
  };
  // A piece of a normalized section handed from pre-tokenizer to pre-tokenizer:
  // bytes, and where byte i lies in the section: origin + i, or with a prefix
  // space added by ByteLevel, byte 0 at origin (empty) and byte i at origin + i - 1.
  struct piece {
    const char* data;
    std::size_t len;
    std::size_t origin;
    bool prefixed;
    std::size_t pos(std::size_t i) const noexcept { return origin + (prefixed ? (i > 0 ? i - 1 : 0) : i); }
  };

  struct data {
    std::string name;
    std::vector<id_entry> ids;
    detail::string_map string_to_id;  // vocab, overridden by added tokens (as the JS does)
    // BPE on internal pieces: vocab ids, then strings that only merges name.
    detail::merge_table merges;
    std::array<std::int32_t, 256> byte_piece{};
    std::vector<std::int32_t> piece_out;  // piece -> id emitted (-1: not in the vocab, dropped)
    bool ignore_merges = false;
    detail::string_map whole;  // ignore_merges: raw bytes -> id
    bool nfc = false;
    std::vector<added_token> added;
    detail::token_trie raw_trie, normalized_trie;
    std::vector<detail::regex> splits;
    bool prefix_space = false;
    std::optional<detail::regex> byte_level_regex;
    std::int64_t id_limit = 0;  // ids must be below it (set by load: 2 * tokens + 1024)

    [[noreturn]] void fail(const std::string& path, const std::string& what) const {
      throw tokenizer_error(name + ": " + path + " " + what);
    }
    static std::string show(const nlohmann::json& v) {
      if (!v.is_string()) return v.dump();
      std::string out(1, '\'');
      out += v.get_ref<const std::string&>();
      out += '\'';
      return out;
    }
    const id_entry& entry(int64_t id, const char* fn) const {
      if (id < 0 || id >= static_cast<int64_t>(ids.size()) || ids[static_cast<std::size_t>(id)].kind == kind_none)
        throw tokenizer_error(std::string(fn) + ": id " + std::to_string(id) + " is not a token of " + name +
                              " (vocab_size " + std::to_string(ids.size()) + ")");
      return ids[static_cast<std::size_t>(id)];
    }
    // j[key] when present and not null.
    static const nlohmann::json* field(const nlohmann::json& j, const char* key) {
      auto it = j.find(key);
      return it == j.end() || it->is_null() ? nullptr : &*it;
    }
    bool flag(const nlohmann::json& j, const std::string& path, const char* key, bool dflt) const {
      const auto* v = field(j, key);
      if (!v) return dflt;
      if (!v->is_boolean()) fail(path + "." + key, show(*v) + " is not a boolean");
      return v->get<bool>();
    }
    std::string type_of(const nlohmann::json& j, const std::string& path) const {
      if (!j.is_object()) fail(path, show(j) + " is not an object");
      const auto* t = field(j, "type");
      if (!t || !t->is_string()) fail(path + ".type", "is missing or not a string");
      return t->get<std::string>();
    }
    std::string too_sparse(const nlohmann::json& id) const {
      return show(id) + " is too large: ids must be below " + std::to_string(id_limit) +
             " (twice the vocab and added tokens, plus 1024), or the id table would be mostly empty";
    }
    void unsupported(const std::string& path, const std::string& value, const char* supported) const {
      fail(path, "'" + value + "' is not supported (supported: " + supported + ")");
    }

    void load(const nlohmann::json& j) {
      if (!j.is_object()) fail("(top level)", "is not a JSON object");
      for (const char* k : {"truncation", "padding"})
        if (const auto* v = field(j, k)) fail(k, v->dump() + " is not supported (must be null)");
      const auto* model = field(j, "model");
      if (!model) fail("model", "is missing");
      // The id table is dense (vector indexed by id), so ids must be about as many as the
      // tokens: {"x": 1000000000} would otherwise ask for tens of gigabytes.
      std::size_t tokens = 0;
      if (const auto* v = model->is_object() ? field(*model, "vocab") : nullptr; v && v->is_object()) tokens += v->size();
      if (const auto* a = field(j, "added_tokens"); a && a->is_array()) tokens += a->size();
      id_limit = static_cast<std::int64_t>(std::min<std::size_t>(2 * tokens + 1024, INT32_MAX / 2));
      load_model(*model);
      if (const auto* n = field(j, "normalizer")) load_normalizer(*n, "normalizer");
      const auto* pre = field(j, "pre_tokenizer");
      if (!pre) fail("pre_tokenizer", "is null: byte-level BPE needs a ByteLevel pre-tokenizer");
      bool byte_level = false;
      load_pre_tokenizer(*pre, "pre_tokenizer", byte_level);
      if (!byte_level) fail("pre_tokenizer", "has no ByteLevel: byte-level BPE needs one (last)");
      const auto* dec = field(j, "decoder");
      if (!dec) fail("decoder", "is null (supported: ByteLevel, Sequence of ByteLevel)");
      load_decoder(*dec, "decoder");
      if (const auto* p = field(j, "post_processor")) load_post_processor(*p, "post_processor");
      if (const auto* a = field(j, "added_tokens")) load_added(*a);
      finish();
    }

    void load_model(const nlohmann::json& m) {
      const auto t = type_of(m, "model");
      if (t != "BPE") unsupported("model.type", t, "BPE");
      if (const auto* v = field(m, "dropout")) fail("model.dropout", v->dump() + " is not supported (must be null)");
      if (const auto* v = field(m, "unk_token")) fail("model.unk_token", show(*v) + " is not supported (must be null)");
      for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (const auto* v = field(m, k); v && !(v->is_string() && v->get<std::string>().empty()))
          fail(std::string("model.") + k, show(*v) + " is not supported (must be null or '')");
      if (flag(m, "model", "byte_fallback", false)) fail("model.byte_fallback", "true is not supported (must be false)");
      ignore_merges = flag(m, "model", "ignore_merges", false);
      const auto* vocab = field(m, "vocab");
      if (!vocab || !vocab->is_object()) fail("model.vocab", "is missing or not an object");
      const auto* mj = field(m, "merges");
      if (!mj || !mj->is_array()) fail("model.merges", "is missing or not an array");

      std::int64_t max_id = -1;
      for (auto it = vocab->begin(); it != vocab->end(); ++it) {
        if (!it->is_number_integer() || it->get<std::int64_t>() < 0)
          fail("model.vocab['" + it.key() + "']", show(*it) + " is not an id (a non-negative integer)");
        if (it->get<std::int64_t>() >= id_limit) fail("model.vocab['" + it.key() + "']", too_sparse(*it));
        max_id = std::max(max_id, it->get<std::int64_t>());
      }
      ids.resize(static_cast<std::size_t>(max_id + 1));
      std::vector<std::string> piece_str(ids.size());
      detail::string_map piece_of;
      piece_of.reserve(vocab->size() * 2);
      for (auto it = vocab->begin(); it != vocab->end(); ++it) {
        const auto id = it->get<std::int32_t>();
        auto& e = ids[static_cast<std::size_t>(id)];
        e.token = it.key();
        auto b = detail::byte_level_to_bytes(e.token);
        e.bytes = b ? std::move(*b) : e.token;  // as tokenizers' Rust ByteLevel decoder
        e.kind = kind_vocab;
        piece_str[static_cast<std::size_t>(id)] = e.token;
        piece_of[e.token] = id;
        string_to_id[e.token] = id;
      }
      auto piece = [&](std::string s) {
        auto it = piece_of.find(s);
        if (it != piece_of.end()) return it->second;
        const auto p = static_cast<std::int32_t>(piece_str.size());
        piece_of.emplace(s, p);
        piece_str.push_back(std::move(s));
        return p;
      };
      merges.reserve(mj->size());
      for (std::size_t r = 0; r < mj->size(); ++r) {
        const auto& x = (*mj)[r];
        std::string a, b;
        if (x.is_string()) {
          const auto& s = x.get_ref<const std::string&>();
          const auto sp = s.find(' ');
          if (sp == std::string::npos || sp == 0 || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string::npos)
            fail("model.merges[" + std::to_string(r) + "]", show(x) + " is not two tokens separated by one space");
          a = s.substr(0, sp), b = s.substr(sp + 1);
        } else if (x.is_array() && x.size() == 2 && x[0].is_string() && x[1].is_string()) {
          a = x[0].get<std::string>(), b = x[1].get<std::string>();
        } else {
          fail("model.merges[" + std::to_string(r) + "]", show(x) + " is not \"a b\" or [\"a\", \"b\"]");
        }
        const auto pa = piece(a), pb = piece(b), pm = piece(a + b);
        merges.insert(pa, pb, static_cast<std::int32_t>(r), pm);
      }
      for (int byte = 0; byte < 256; ++byte) {
        std::string s;
        utf8::append(s, detail::byte_to_unicode()[byte]);
        auto it = piece_of.find(s);
        byte_piece[byte] = it == piece_of.end() ? -1 : it->second;
      }
      piece_out.assign(piece_str.size(), -1);
      for (std::size_t p = 0; p < piece_str.size(); ++p) {
        if (p < ids.size() && ids[p].kind == kind_vocab) piece_out[p] = static_cast<std::int32_t>(p);
      }
      extra_pieces = std::move(piece_str);  // piece_out of added-token spellings is fixed in load_added
    }
    std::vector<std::string> extra_pieces;

    void load_normalizer(const nlohmann::json& n, const std::string& path) {
      const auto t = type_of(n, path);
      if (t == "NFC") {
        nfc = true;
      } else if (t == "Sequence") {
        const auto* list = field(n, "normalizers");
        if (!list || !list->is_array()) fail(path + ".normalizers", "is missing or not an array");
        for (std::size_t i = 0; i < list->size(); ++i)
          load_normalizer((*list)[i], path + ".normalizers[" + std::to_string(i) + "]");
      } else {
        unsupported(path + ".type", t, "NFC, Sequence");
      }
    }

    void load_pre_tokenizer(const nlohmann::json& p, const std::string& path, bool& byte_level) {
      const auto t = type_of(p, path);
      if (t == "Sequence") {
        const auto* list = field(p, "pretokenizers");
        if (!list || !list->is_array()) fail(path + ".pretokenizers", "is missing or not an array");
        for (std::size_t i = 0; i < list->size(); ++i)
          load_pre_tokenizer((*list)[i], path + ".pretokenizers[" + std::to_string(i) + "]", byte_level);
        return;
      }
      if (byte_level) fail(path, "('" + t + "') follows the ByteLevel pre-tokenizer, which must come last");
      if (t == "Split") {
        const auto* pat = field(p, "pattern");
        if (!pat || !pat->is_object()) fail(path + ".pattern", "is missing or not an object");
        const auto b = field(p, "behavior");
        const std::string behavior = b && b->is_string() ? b->get<std::string>() : (b ? b->dump() : "null");
        if (behavior != "Isolated")
          fail(path + ".behavior", "'" + behavior + "' is not supported (supported: Isolated)");
        if (flag(p, path, "invert", false)) fail(path + ".invert", "true is not supported (must be false)");
        if (const auto* r = field(*pat, "Regex"); r && r->is_string()) {
          splits.emplace_back(detail::onig_to_pcre2(r->get<std::string>()), false, name + ": " + path + ".pattern.Regex");
        } else if (const auto* s = field(*pat, "String"); s && s->is_string()) {
          splits.emplace_back(s->get<std::string>(), true, name + ": " + path + ".pattern.String");
        } else {
          fail(path + ".pattern", pat->dump() + " is not {\"Regex\": string} or {\"String\": string}");
        }
      } else if (t == "ByteLevel") {
        byte_level = true;
        prefix_space = flag(p, path, "add_prefix_space", false);
        if (flag(p, path, "use_regex", true))
          byte_level_regex.emplace(
              detail::onig_to_pcre2("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"),
              false, name + ": " + path + " (the GPT-2 regex)");
      } else {
        unsupported(path + ".type", t, "Split, ByteLevel, Sequence");
      }
    }

    void load_decoder(const nlohmann::json& d, const std::string& path) {
      const auto t = type_of(d, path);
      if (t == "ByteLevel") return;
      if (t != "Sequence") unsupported(path + ".type", t, "ByteLevel, Sequence of ByteLevel");
      const auto* list = field(d, "decoders");
      if (!list || !list->is_array()) fail(path + ".decoders", "is missing or not an array");
      for (std::size_t i = 0; i < list->size(); ++i) load_decoder((*list)[i], path + ".decoders[" + std::to_string(i) + "]");
    }

    void load_post_processor(const nlohmann::json& p, const std::string& path) {
      const auto t = type_of(p, path);
      if (t == "ByteLevel" || t == "TemplateProcessing") return;
      if (t != "Sequence") unsupported(path + ".type", t, "ByteLevel, TemplateProcessing, Sequence (encode adds nothing)");
      const auto* list = field(p, "processors");
      if (!list || !list->is_array()) fail(path + ".processors", "is missing or not an array");
      for (std::size_t i = 0; i < list->size(); ++i)
        load_post_processor((*list)[i], path + ".processors[" + std::to_string(i) + "]");
    }

    void load_added(const nlohmann::json& a) {
      if (!a.is_array()) fail("added_tokens", "is not an array");
      for (std::size_t i = 0; i < a.size(); ++i) {
        const auto& x = a[i];
        std::string path = "added_tokens[" + std::to_string(i) + "]";
        if (!x.is_object()) fail(path, "is not an object");
        const auto* c = field(x, "content");
        const auto* idj = field(x, "id");
        if (!c || !c->is_string() || c->get<std::string>().empty()) fail(path + ".content", "is missing or empty");
        path += " ('" + c->get<std::string>() + "')";
        if (!idj || !idj->is_number_integer() || idj->get<std::int64_t>() < 0)
          fail(path + ".id", idj ? show(*idj) + " is not a non-negative integer" : "is missing or not a non-negative integer");
        if (idj->get<std::int64_t>() >= id_limit) fail(path + ".id", too_sparse(*idj));
        added_token t{c->get<std::string>(), idj->get<std::int32_t>(), flag(x, path, "lstrip", false),
                      flag(x, path, "rstrip", false)};
        const bool special = flag(x, path, "special", false);
        const bool normalized = flag(x, path, "normalized", !special);
        if (flag(x, path, "single_word", false)) fail(path + ".single_word", "true is not supported (must be false)");
        if (!detail::utf8_valid(t.content)) fail(path + ".content", "is not valid UTF-8");
        const auto id = static_cast<std::size_t>(t.id);
        if (id >= ids.size()) ids.resize(id + 1);
        ids[id] = {t.content, t.content, special ? kind_special : kind_added};
        string_to_id[t.content] = t.id;
        const auto index = static_cast<std::int32_t>(added.size());
        if (normalized && nfc) {
          std::vector<std::pair<std::size_t, std::size_t>> regions;
          std::string n;
          detail::nfc_regions(t.content, regions);
          detail::nfc_apply(t.content, regions, n, nullptr);
          normalized_trie.insert(n, index);
        } else {
          raw_trie.insert(t.content, index);
        }
        added.push_back(std::move(t));
      }
    }

    void finish() {
      // The JS reference maps a token's spelling to an id through the vocab overridden by
      // the added tokens: the BPE's output and ignore_merges' whole words follow it.
      for (std::size_t p = 0; p < extra_pieces.size(); ++p) {
        auto it = string_to_id.find(extra_pieces[p]);
        piece_out[p] = it == string_to_id.end() ? -1 : it->second;
      }
      if (ignore_merges)
        for (const auto& [s, id] : string_to_id)
          if (auto b = detail::byte_level_to_bytes(s)) whole[*b] = id;
      extra_pieces.clear();
      extra_pieces.shrink_to_fit();
    }

    // ------------------------------------------------------------ encode

    template <bool Offsets>
    void encode(std::string_view text, std::vector<int64_t>& out, std::vector<std::pair<std::size_t, std::size_t>>* offs) const {
      std::string wbuf;
      detail::range_map wmap;
      std::string_view w = text;
      if (!detail::utf8_valid(text)) {
        detail::utf8_replace_invalid(text, wbuf, Offsets ? &wmap : nullptr);
        w = wbuf;
      }
      auto to_input = [&](std::size_t a, std::size_t b) {
        return wmap.empty() ? std::pair{a, b} : detail::map_range(wmap, a, b, text.size());
      };
      split_added(
          w, raw_trie,
          [&](std::size_t a, std::size_t b) { section<Offsets>(w.substr(a, b - a), a, out, offs, to_input); },
          [&](std::int32_t tok, std::size_t a, std::size_t b) {
            out.push_back(added[static_cast<std::size_t>(tok)].id);
            if constexpr (Offsets) offs->push_back(to_input(a, b));
          });
    }

    // Calls on_text(a, b) for the text between added tokens and on_token(index, a, b).
    template <class Text, class Token>
    void split_added(std::string_view s, const detail::token_trie& trie, Text&& on_text, Token&& on_token) const {
      const std::size_t n = s.size();
      if (trie.empty()) {
        if (n) on_text(0, n);
        return;
      }
      const auto* u = reinterpret_cast<const unsigned char*>(s.data());
      std::size_t start = 0, i = 0;
      while (i < n) {
        std::int32_t tok = -1;
        std::size_t len = 0;
        if (!trie.may_start(u[i]) || !trie.match(s.data(), n, i, tok, len)) {
          ++i;
          continue;
        }
        const auto& t = added[static_cast<std::size_t>(tok)];
        std::size_t end = i;
        if (t.lstrip)
          while (end > start) {
            std::size_t k = end - 1;
            while (k > start && (u[k] & 0xC0) == 0x80) --k;
            if (!utf8::is_js_space(utf8::next(u, n, k).cp)) break;
            end = k;
          }
        if (end > start) on_text(start, end);
        on_token(tok, i, i + len);
        i += len;
        if (t.rstrip)
          while (i < n) {
            const auto c = utf8::next(u, n, i);
            if (!utf8::is_js_space(c.cp)) break;
            i += c.len;
          }
        start = i;
      }
      if (start < n) on_text(start, n);
    }

    template <bool Offsets, class ToInput>
    void section(std::string_view s, std::size_t base, std::vector<int64_t>& out,
                 std::vector<std::pair<std::size_t, std::size_t>>* offs, const ToInput& to_input) const {
      std::string nbuf;
      detail::range_map nmap;
      std::string_view n = s;
      if (nfc) {
        thread_local std::vector<std::pair<std::size_t, std::size_t>> regions;
        detail::nfc_regions(s, regions);
        if (!regions.empty()) {
          detail::nfc_apply(s, regions, nbuf, Offsets ? &nmap : nullptr);
          n = nbuf;
        }
      }
      auto emit = [&](std::int32_t id, std::size_t a, std::size_t b) {
        out.push_back(id);
        if constexpr (Offsets) {
          auto [x, y] = nmap.empty() ? std::pair{a, b} : detail::map_range(nmap, a, b, s.size());
          offs->push_back(to_input(base + x, base + y));
        }
      };
      split_added(
          n, normalized_trie,
          [&](std::size_t a, std::size_t b) { pre_tokenize(0, piece{n.data() + a, b - a, a, false}, emit); },
          [&](std::int32_t tok, std::size_t a, std::size_t b) { emit(added[static_cast<std::size_t>(tok)].id, a, b); });
    }

    // Split k (Isolated: the matches and the text between them), then ByteLevel, then BPE.
    template <class Emit>
    void pre_tokenize(std::size_t k, const piece& p, Emit& emit) const {
      if (k == splits.size()) return byte_level(p, emit);
      const auto& re = splits[k];
      std::size_t prev = 0, at = 0, mb, me;
      auto sub = [&](std::size_t a, std::size_t b) {
        const bool pre = p.prefixed && a == 0;
        pre_tokenize(k + 1, piece{p.data + a, b - a, pre ? p.origin : p.pos(a), pre}, emit);
      };
      while (at <= p.len && re.find(p.data, p.len, at, mb, me)) {
        if (mb > prev) sub(prev, mb);
        if (me > mb) {
          sub(mb, me);
          prev = at = me;
        } else {  // an empty match: step one character, as JS matchAll does
          prev = mb;
          if (mb >= p.len) break;
          at = mb + utf8::next(reinterpret_cast<const unsigned char*>(p.data), p.len, mb).len;
        }
      }
      if (prev < p.len) sub(prev, p.len);
    }

    template <class Emit>
    void byte_level(const piece& in, Emit& emit) const {
      std::string buf;
      piece p = in;
      if (prefix_space && (p.len == 0 || p.data[0] != ' ')) {
        buf.reserve(p.len + 1);
        buf += ' ';
        buf.append(p.data, p.len);
        p = piece{buf.data(), buf.size(), in.pos(0), true};
      }
      if (!byte_level_regex) return bpe(p, emit);
      std::size_t at = 0, mb, me;  // only the matches (the JS: text.match(pattern))
      while (at < p.len && byte_level_regex->find(p.data, p.len, at, mb, me)) {
        if (me > mb) {
          const bool pre = p.prefixed && mb == 0;
          bpe(piece{p.data + mb, me - mb, pre ? p.origin : p.pos(mb), pre}, emit);
          at = me;
        } else {
          if (mb >= p.len) break;
          at = mb + utf8::next(reinterpret_cast<const unsigned char*>(p.data), p.len, mb).len;
        }
      }
    }

    // Byte-level BPE on one piece: one symbol per byte; merge the adjacent pair of
    // lowest rank, leftmost first, until none merges.
    template <class Emit>
    void bpe(const piece& p, Emit& emit) const {
      const std::size_t n = p.len;
      if (n == 0) return;
      const auto* s = reinterpret_cast<const unsigned char*>(p.data);
      if (ignore_merges) {
        auto it = whole.find(std::string_view(p.data, n));
        if (it != whole.end()) return emit(it->second, p.pos(0), p.pos(n));
      }
      auto out = [&](std::int32_t sym, std::size_t b, std::size_t e) {
        const std::int32_t id = sym >= 0 ? piece_out[static_cast<std::size_t>(sym)] : -1;
        if (id >= 0) emit(id, p.pos(b), p.pos(e));
      };
      if (n == 1) return out(byte_piece[s[0]], 0, 1);
      if (n <= 64) return bpe_scan(s, n, out);
      bpe_heap(s, n, out);
    }

    // Short words: a linear scan for the best pair.
    template <class Out>
    void bpe_scan(const unsigned char* s, std::size_t n, Out& out) const {
      std::int32_t sym[64], rank[64], merged[64];
      std::uint8_t beg[65];
      auto look = [&](std::size_t i) {
        const auto* m = merges.find(sym[i], sym[i + 1]);
        rank[i] = m ? m->rank : INT32_MAX;
        merged[i] = m ? m->merged : -1;
      };
      std::size_t m = n;
      for (std::size_t i = 0; i < n; ++i) sym[i] = byte_piece[s[i]], beg[i] = static_cast<std::uint8_t>(i);
      beg[n] = static_cast<std::uint8_t>(n);
      for (std::size_t i = 0; i + 1 < m; ++i) look(i);
      while (m > 1) {
        std::size_t best = 0;
        for (std::size_t i = 1; i + 1 < m; ++i)
          if (rank[i] < rank[best]) best = i;
        if (rank[best] == INT32_MAX) break;
        sym[best] = merged[best];
        const std::size_t tail = m - best - 2;  // symbols after best + 1
        std::memmove(sym + best + 1, sym + best + 2, tail * sizeof(std::int32_t));
        std::memmove(beg + best + 1, beg + best + 2, tail + 1);
        if (tail > 0) {
          std::memmove(rank + best + 1, rank + best + 2, (tail - 1) * sizeof(std::int32_t));
          std::memmove(merged + best + 1, merged + best + 2, (tail - 1) * sizeof(std::int32_t));
        }
        --m;
        if (best + 1 < m) look(best);
        if (best > 0) look(best - 1);
      }
      for (std::size_t i = 0; i < m; ++i) out(sym[i], beg[i], beg[i + 1]);
    }

    // Long words (a CJK sentence is one \p{L}+ piece): a heap of candidate pairs
    // over a linked list of symbols; stale candidates are skipped when popped.
    template <class Out>
    void bpe_heap(const unsigned char* s, std::size_t n, Out& out) const {
      struct cand {
        std::int32_t rank;
        std::uint32_t pos;
        std::int32_t left, right, merged;
      };
      auto later = [](const cand& a, const cand& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
      thread_local std::vector<std::int32_t> sym;
      thread_local std::vector<std::uint32_t> next, prev;
      thread_local std::vector<cand> heap;
      sym.resize(n), next.resize(n), prev.resize(n), heap.clear();
      const auto none = static_cast<std::uint32_t>(n);
      for (std::size_t i = 0; i < n; ++i) {
        sym[i] = byte_piece[s[i]];
        next[i] = static_cast<std::uint32_t>(i + 1);
        prev[i] = i == 0 ? none : static_cast<std::uint32_t>(i - 1);
      }
      auto push = [&](std::uint32_t i) {
        const std::uint32_t j = next[i];
        if (j == none) return;
        if (const auto* m = merges.find(sym[i], sym[j])) {
          heap.push_back({m->rank, i, sym[i], sym[j], m->merged});
          std::push_heap(heap.begin(), heap.end(), later);
        }
      };
      for (std::uint32_t i = 0; i + 1 < n; ++i) push(i);
      while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), later);
        const cand c = heap.back();
        heap.pop_back();
        const std::uint32_t i = c.pos, j = next[i];
        if (sym[i] != c.left || j == none || sym[j] != c.right) continue;  // stale
        sym[i] = c.merged;
        sym[j] = -2;
        next[i] = next[j];
        if (next[j] != none) prev[next[j]] = i;
        if (prev[i] != none) push(prev[i]);
        push(i);
      }
      for (std::uint32_t i = 0; i != none; i = next[i]) out(sym[i], i, next[i]);
    }
  };

  std::shared_ptr<const data> d_;
};

}  // namespace veomni::text
