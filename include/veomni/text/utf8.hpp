#pragma once
// veomni::text::utf8 — the few UTF-8 helpers that the tokenizer
// (veomni/text/tokenizer.hpp) and the chat-template engine
// (veomni/text/jinja.hpp) share. Torch-free; the standard library only.
//
// Decoding walks a byte string one character at a time, as the WHATWG UTF-8
// decoder does (JavaScript's TextDecoder, Rust's String::from_utf8_lossy): a
// valid character is its code point and its length; an ill-formed sequence
// is U+FFFD covering its maximal subpart, so every byte belongs to exactly
// one step and the walk always advances. Worked example, "a\xE2\x82\xAC\xE2\x82!"
// ("a", "€", a truncated "€", "!"):
//
//   std::string_view s = "a\xE2\x82\xAC\xE2\x82!";
//   for (std::size_t i = 0; i < s.size();) {
//     const auto c = veomni::text::utf8::next(s, i);
//     // i = 0: {U+0061, 1, valid}   i = 1: {U+20AC, 3, valid}
//     // i = 4: {U+FFFD, 2, invalid} i = 6: {U+0021, 1, valid}
//     i += c.len;
//   }
//   std::string out;
//   veomni::text::utf8::append(out, 0x20AC);   // out == "\xE2\x82\xAC"
//   veomni::text::utf8::is_js_space(0x3000);   // true (ideographic space)
//
// Other ill-formed cases: "\xC0\xAF" (an overlong '/') is two steps of one
// byte each, "\xED\xA0\x80" (a surrogate) is three, a lone "\x80" is one.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace veomni::text::utf8 {

// One decoding step: the character at a position, or the ill-formed bytes there.
struct decoded {
  char32_t cp;        // U+FFFD when !valid
  std::uint32_t len;  // bytes consumed: the character, or the maximal invalid subsequence (>= 1)
  bool valid;
};

// One step of the WHATWG UTF-8 decoder at s[i] (i < n): a valid character, or
// the maximal subpart of an ill-formed sequence ("\xE2\x82" -> 2 bytes, one
// U+FFFD; "\xC0\xAF" -> 1 byte, then 1 byte).
inline decoded next(const unsigned char* s, std::size_t n, std::size_t i) noexcept {
  const unsigned b = s[i];
  if (b < 0x80) return {b, 1, true};
  std::uint32_t need;
  char32_t cp;
  unsigned lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1, cp = b & 0x1F;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 2, cp = b & 0x0F;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 3, cp = b & 0x07;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return {0xFFFD, 1, false};
  }
  std::uint32_t k = 1;
  for (; k <= need; ++k) {
    if (i + k >= n) return {0xFFFD, k, false};
    const unsigned c = s[i + k];
    if (c < lo || c > hi) return {0xFFFD, k, false};
    lo = 0x80, hi = 0xBF;
    cp = (cp << 6) | (c & 0x3F);
  }
  return {cp, need + 1, true};
}

inline decoded next(std::string_view s, std::size_t i) noexcept {
  return next(reinterpret_cast<const unsigned char*>(s.data()), s.size(), i);
}

// Appends the UTF-8 encoding of cp (<= U+10FFFF) to out: 1 to 4 bytes.
inline void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// JavaScript's whitespace (String.prototype.trim, /\s/): the ASCII controls
// \t..\r, space, and U+00A0 U+1680 U+2000-200A U+2028 U+2029 U+202F U+205F
// U+3000 U+FEFF. What the tokenizer's lstrip/rstrip and the templates' trim remove.
inline bool is_js_space(char32_t c) noexcept {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  return c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

}  // namespace veomni::text::utf8
