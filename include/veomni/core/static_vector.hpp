#pragma once
// A fixed-capacity vector usable in constant evaluation, for building lists
// (plan ops, placements) whose length depends on a component.
#include <array>
#include <cstddef>

namespace veomni {

template <class T, std::size_t Cap>
struct static_vector {
  std::array<T, Cap> items{};
  std::size_t count = 0;

  constexpr void push_back(const T& t) {
    if (count == Cap) throw "veomni::static_vector::push_back: capacity exceeded";
    items[count++] = t;
  }
  constexpr std::size_t size() const { return count; }
  constexpr const T& operator[](std::size_t i) const { return items[i]; }
  constexpr T& operator[](std::size_t i) { return items[i]; }
  constexpr const T* begin() const { return items.data(); }
  constexpr const T* end() const { return items.data() + count; }
};

}  // namespace veomni
