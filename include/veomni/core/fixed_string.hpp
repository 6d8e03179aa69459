#pragma once
// fixed_string: a string literal usable as a template argument, so that names
// (nodes, ports, edges) live in types and are checked by the compiler.
//   node<"vision", vision_encoder>   edge<"vision.embeds", "proj.in">
#include <algorithm>
#include <cstddef>
#include <string_view>

namespace veomni {

template <std::size_t N>
struct fixed_string {
  char value[N]{};
  constexpr fixed_string(const char (&s)[N]) { std::copy_n(s, N, value); }
  constexpr std::string_view view() const { return {value, N - 1}; }
  constexpr operator std::string_view() const { return view(); }
  static constexpr std::size_t size() { return N - 1; }
};

}  // namespace veomni
