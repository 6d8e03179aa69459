#pragma once
// fixed_string: a string literal usable as a template argument, so that names
// (nodes, ports, edges) live in types and are checked by the compiler.
//   node<"vision", vision_encoder>   edge<"vision.embeds", "proj.in">
// The text of a fixed_string template argument S is veomni::text_of<S>, a
// std::string_view with static storage.
//
// Names longer than 15 characters are packed eight to a 64-bit word. A
// class-type template argument enters every symbol whose type carries it,
// and GCC's mangler looks each of its elements up in the symbol's
// substitution table: with one char per element, the symbols of a 128-node
// graph of 32-character names (each name spelled once per node, edge end and
// apply<>) cost GCC 0.3 s of a 1.6 s compile. Packed, they take an eighth of
// the lookups (benchmarks/RESULTS.md, "Compile time of plan generation").
// Shorter names stay one char per element, which GCC prints as text in its
// diagnostics ({"lm"}); a packed one it prints as numbers, and the library's
// own checks spell names out (diagnostics.hpp).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace veomni {

template <std::size_t N>
struct fixed_string {
  static constexpr bool packed = N > 16;
  // packed: character i in bits 8 (i % 8) of word i / 8
  std::conditional_t<packed, std::uint64_t[(N + 7) / 8], char[N]> data{};
  constexpr fixed_string(const char (&s)[N]) {
    for (std::size_t i = 0; i < N; ++i) {
      if constexpr (packed)
        data[i / 8] |= static_cast<std::uint64_t>(static_cast<unsigned char>(s[i])) << (8 * (i % 8));
      else
        data[i] = s[i];
    }
  }
  constexpr char operator[](std::size_t i) const {
    if constexpr (packed)
      return static_cast<char>((data[i / 8] >> (8 * (i % 8))) & 0xff);
    else
      return data[i];
  }
  static constexpr std::size_t size() { return N - 1; }
};

namespace detail {
template <std::size_t N>
struct chars {
  char c[N];
};
// One loop over plain arrays: in constant evaluation a call per character
// (operator[], std::array's) costs the compiler more than the unpacking.
template <std::size_t N>
constexpr chars<N> unpack(const fixed_string<N>& s) {
  chars<N> r{};
  for (std::size_t i = 0; i + 1 < N; ++i) {
    if constexpr (fixed_string<N>::packed)
      r.c[i] = static_cast<char>((s.data[i / 8] >> (8 * (i % 8))) & 0xff);
    else
      r.c[i] = s.data[i];
  }
  return r;
}
template <fixed_string S>
inline constexpr chars<S.size() + 1> spelled = unpack(S);
}  // namespace detail

// The text of S: text_of<"lm"> == "lm".
template <fixed_string S>
inline constexpr std::string_view text_of{detail::spelled<S>.c, S.size()};

}  // namespace veomni
