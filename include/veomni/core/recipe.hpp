#pragma once
// Recipes attach policies to the nodes of a model:
//
//   using omni_recipe = recipe<
//       apply<"vision", Shard<FSDP>>,
//       apply<"lm", Shard<FSDP>, Split<Ulysses>, Experts<EP>>>;
//
// Checked against a model when its plan is made (see plan.hpp): every named
// node exists and is named once, every policy touches a layer of its node,
// no two policies place the same tensor over the same axis, and every forward
// collective has its backward dual.
#include <cstddef>
#include <string_view>
#include <tuple>
#include <type_traits>

#include "diagnostics.hpp"
#include "fixed_string.hpp"
#include "policy.hpp"

namespace veomni {

namespace detail {
template <bool IsPolicy, class Node, class P>
constexpr bool report_is_policy() {
  static_assert(IsPolicy,
                "veomni::apply<Node, P...>: P does not model veomni::Policy "
                "(it needs name, touches, placements<Ctx>() and ops<Ctx>())");
  return IsPolicy;
}
// A policy of apply<Node, ...> models Policy and passes its own checks
// (self_checks_ok: a category's, an option's); apply<> runs them in order
// (diag::in_order), so the first that fails reports and the rest are not
// looked at.
template <const std::string_view& Node>
struct policy_checks {
  template <class P>
  struct of {
    static constexpr bool ok = report_is_policy<Policy<P>, diag::node_named<Node>, P>() &&
                               self_checks_ok<P, diag::node_named<Node>>();
  };
};
}  // namespace detail

template <fixed_string Node, class... P>
struct apply {
  static constexpr std::string_view node = text_of<Node>;
  static constexpr bool policies_ok = diag::in_order<detail::policy_checks<node>::template of, P...>();
  using policies = std::tuple<P...>;
  static constexpr std::size_t size = sizeof...(P);
};

template <class... A>
struct recipe {
  using applies = std::tuple<A...>;
  static constexpr std::size_t size = sizeof...(A);
  static constexpr std::array<std::string_view, sizeof...(A)> nodes{A::node...};
  static constexpr std::size_t index_of(std::string_view n) {
    for (std::size_t i = 0; i < size; ++i)
      if (nodes[i] == n) return i;
    return size;
  }
};

template <class T>
struct is_recipe : std::false_type {};
template <class... A>
struct is_recipe<recipe<A...>> : std::true_type {};
template <class T>
concept Recipe = is_recipe<T>::value;

}  // namespace veomni
