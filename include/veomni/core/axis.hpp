#pragma once
// Mesh axes are types; their sizes are runtime values (from the config).
//
//   world = dp_replicate x dp_shard x sp          (e.g. 1 x 2 x 2 = 4 ranks)
//   ep is carved out of dp_shard x sp: ep | dp_shard*sp, and the ranks that
//   hold the same experts form ep_dp = dp_shard*sp / ep.
//
// A size of 1 turns an axis's collectives into no-ops at run time; the plan's
// structure does not change.
#include <array>
#include <concepts>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace veomni {

template <class A>
concept MeshAxis = requires {
  { A::name } -> std::convertible_to<std::string_view>;
};

namespace axis {
struct dp_replicate { static constexpr std::string_view name = "dp_replicate"; };
struct dp_shard     { static constexpr std::string_view name = "dp_shard"; };
struct sp           { static constexpr std::string_view name = "sp"; };
struct ep           { static constexpr std::string_view name = "ep"; };
// Expert-data-parallel: ranks of dp_shard x sp that hold the same experts.
struct ep_dp        { static constexpr std::string_view name = "ep_dp"; };
}  // namespace axis

// A set of axes as a compile-time value that also prints at run time:
// a collective over {dp_shard, sp} runs over the flattened group of both.
struct axis_set {
  static constexpr std::size_t max_axes = 4;
  std::array<std::string_view, max_axes> names{};
  std::size_t count = 0;

  constexpr bool contains(std::string_view a) const {
    for (std::size_t i = 0; i < count; ++i)
      if (names[i] == a) return true;
    return false;
  }
  constexpr bool overlaps(const axis_set& o) const {
    for (std::size_t i = 0; i < count; ++i)
      if (o.contains(names[i])) return true;
    return false;
  }
  constexpr bool empty() const { return count == 0; }
  friend constexpr bool operator==(const axis_set& a, const axis_set& b) {
    if (a.count != b.count) return false;
    for (std::size_t i = 0; i < a.count; ++i)
      if (a.names[i] != b.names[i]) return false;
    return true;
  }
};

template <MeshAxis... A>
  requires(sizeof...(A) <= axis_set::max_axes)
inline constexpr axis_set axes{{A::name...}, sizeof...(A)};

namespace detail {
// Called when a mesh_shape has no room for another axis. Not constexpr: in a
// constant expression the compiler's error names this function; at run time
// it throws. (An axis is never dropped.)
[[noreturn]] inline void mesh_shape_holds_at_most_8_extra_axes(std::string_view name) {
  throw std::length_error("veomni::mesh_shape::with(\"" + std::string(name) + "\"): a mesh holds at most 8 axes besides the built-in ones");
}
}  // namespace detail

// Runtime sizes of the mesh. Unknown axes have size 1.
struct mesh_shape {
  long dp_replicate = 1;
  long dp_shard = 1;
  long sp = 1;
  long ep = 1;
  // Axes declared by user policies (e.g. a context-parallel axis); each is a
  // factor of the world size.
  struct named_size { std::string_view name; long size = 1; };
  static constexpr std::size_t max_extra = 8;
  std::array<named_size, max_extra> extra{};  // filled from the front

  constexpr mesh_shape& with(std::string_view name, long size) {
    for (auto& e : extra)
      if (e.name.empty() || e.name == name) { e = {name, size}; return *this; }
    detail::mesh_shape_holds_at_most_8_extra_axes(name);
  }
  constexpr long extra_product() const {
    long n = 1;
    for (const auto& e : extra)
      if (!e.name.empty()) n *= e.size;
    return n;
  }
  constexpr long world() const { return dp_replicate * dp_shard * sp * extra_product(); }
  // Size of one axis by name; ep_dp is derived (ep must divide dp_shard*sp).
  constexpr long operator[](std::string_view a) const {
    if (a == axis::dp_replicate::name) return dp_replicate;
    if (a == axis::dp_shard::name) return dp_shard;
    if (a == axis::sp::name) return sp;
    if (a == axis::ep::name) return ep;
    if (a == axis::ep_dp::name) return ep > 0 ? dp_shard * sp / ep : 0;
    for (const auto& e : extra)
      if (!e.name.empty() && e.name == a) return e.size;
    return 1;
  }
  // Size of the flattened group over a set of axes.
  constexpr long size(const axis_set& s) const {
    long n = 1;
    for (std::size_t i = 0; i < s.count; ++i) n *= (*this)[s.names[i]];
    return n;
  }
};

}  // namespace veomni
