#pragma once
// What a recipe does to each node, read from its policies at compile time:
// how the node's parameters are held (replicated, FSDP, HSDP, DDP), whether
// its attention is split by Ulysses and its experts by EP.
#include <cstddef>
#include <tuple>
#include <type_traits>

#include <c10/core/ScalarType.h>

#include "../core/plan.hpp"
#include "../core/policies.hpp"
#include "data.hpp"

namespace veomni::parallel {

enum class params_mode { none, fsdp, hsdp, ddp };

struct node_setup {
  params_mode mode = params_mode::none;
  bool reshard_after_forward = true;
  dtype param_dtype = dtype::unspecified;  // gathered and computed in (fp32 when unspecified)
  dtype reduce_dtype = dtype::unspecified;  // gradients reduced in
  bool ulysses = false;
  bool ep = false;
  // user policies with a runtime (see extension.hpp): how many, and whether
  // one of them splits the sequence, and how it lays it out
  int custom = 0;
  bool custom_split = false;
  sequence_layout layout = sequence_layout::contiguous;
  constexpr bool sharded() const { return mode == params_mode::fsdp || mode == params_mode::hsdp; }
};

namespace detail {
template <class P, class = void>
struct implementation_of {
  using type = P;
};
template <class P>
struct implementation_of<P, std::void_t<typename P::implementation>> {
  using type = typename P::implementation;
};

template <class T>
struct fsdp_traits : std::false_type {};
template <fsdp_options O>
struct fsdp_traits<fsdp<O>> : std::true_type {
  static constexpr params_mode mode = params_mode::fsdp;
  static constexpr fsdp_options options = O;
};
template <fsdp_options O>
struct fsdp_traits<hsdp<O>> : std::true_type {
  static constexpr params_mode mode = params_mode::hsdp;
  static constexpr fsdp_options options = O;
};

template <class I>
concept has_runtime = requires { typename I::runtime; };
template <class R>
concept has_layout = requires { R::layout; };
template <class P>
struct is_split : std::false_type {};
template <class I>
struct is_split<Split<I>> : std::true_type {};

template <class P>
constexpr void add_policy(node_setup& s) {
  using I = typename implementation_of<P>::type;
  if constexpr (fsdp_traits<I>::value) {
    s.mode = fsdp_traits<I>::mode;
    s.reshard_after_forward = fsdp_traits<I>::options.reshard_after_forward;
    s.param_dtype = fsdp_traits<I>::options.param_dtype;
    s.reduce_dtype = fsdp_traits<I>::options.reduce_dtype;
  } else if constexpr (std::is_same_v<I, DDP>) {
    s.mode = params_mode::ddp;
  } else if constexpr (std::is_same_v<I, Ulysses>) {
    s.ulysses = true;
  } else if constexpr (std::is_same_v<I, EP>) {
    s.ep = true;
  } else if constexpr (has_runtime<I>) {
    s.custom += 1;
    s.custom_split = s.custom_split || is_split<P>::value;
    if constexpr (has_layout<typename I::runtime>) s.layout = I::runtime::layout;
  } else {
    static_assert(sizeof(P) == 0,
                  "veomni::parallel: the runtime has no executor for this policy: built-ins are FSDP, HSDP, DDP, "
                  "Ulysses and EP; a user policy provides a nested `runtime` type (parallel/extension.hpp)");
  }
}

template <class Tuple>
struct setup_from;
template <class... P>
struct setup_from<std::tuple<P...>> {
  static constexpr node_setup value = [] {
    node_setup s;
    (add_policy<P>(s), ...);
    return s;
  }();
};
}  // namespace detail

inline at::ScalarType scalar_type(dtype t) {
  switch (t) {
    case dtype::bf16: return at::kBFloat16;
    case dtype::f16: return at::kHalf;
    default: return at::kFloat;
  }
}

template <Model G, Recipe R, std::size_t I>
inline constexpr node_setup setup_of = detail::setup_from<typename veomni::detail::node_policies<G, R, I>::type>::value;

}  // namespace veomni::parallel
