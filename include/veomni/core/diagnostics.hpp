#pragma once
// How the compile-time checks report a mistake: one error, naming what is
// wrong, on GCC and on clang.
//
// Names. GCC prints a fixed_string template argument as "lm" (one of up to
// 15 characters; a longer one is packed and prints as numbers, see
// fixed_string.hpp); clang 14 prints its bytes, {{108, 109, 0}}, unless the
// type is spelled as written. A pack of chars prints as characters on
// both, so an error's context carries the names it is about as
//   veomni::diag::node_name<'l', 'm'>
//   veomni::diag::port_name<'l', 'm', '.', 't', 'o', 'k', 'e', 'n', 's'>
// (spelled only on the error path: a valid model never instantiates them).
//
// One error. A static_assert in a class template's body makes clang mark the
// class invalid, and every constant that reads it then fails too: one mistake
// became 8 to 20 errors. So each check is a constexpr function template
// taking the verdict and the names as template arguments: its static_assert
// fails once, and the call still yields a value. Checks that depend on an
// earlier one are reached through `if constexpr`, so a failed check is not
// followed by the errors of the checks after it. A plan whose recipe failed a
// check is valid == false and empty; test P::valid (not P::size) in your own
// static_asserts.
#include <cstddef>
#include <string_view>
#include <utility>

#include "fixed_string.hpp"

namespace veomni::diag {

template <char... C>
struct node_name {};
template <char... C>
struct port_name {};

namespace detail {
template <template <char...> class Name, const std::string_view& S, class I = std::make_index_sequence<S.size()>>
struct spell;
template <template <char...> class Name, const std::string_view& S, std::size_t... I>
struct spell<Name, S, std::index_sequence<I...>> {
  using type = Name<S[I]...>;
};
}  // namespace detail

// Check<T>::ok for each T in order, the next only when the ones before it
// passed: a failed check has raised its one error, and the checks after it
// are not instantiated, so they add none. (A fold over Check<T>::ok would
// instantiate them all.)
template <template <class> class Check, class... T>
constexpr bool in_order();
namespace detail {
template <template <class> class Check, class First, class... Rest>
constexpr bool first_then_rest() {
  if constexpr (!Check<First>::ok)
    return false;
  else
    return in_order<Check, Rest...>();
}
}  // namespace detail
template <template <class> class Check, class... T>
constexpr bool in_order() {
  if constexpr (sizeof...(T) == 0)
    return true;
  else
    return detail::first_then_rest<Check, T...>();
}

// The name S (a static constexpr std::string_view) as a type that prints it.
template <const std::string_view& S>
using node_named = typename detail::spell<node_name, S>::type;
template <const std::string_view& S>
using port_named = typename detail::spell<port_name, S>::type;

}  // namespace veomni::diag
