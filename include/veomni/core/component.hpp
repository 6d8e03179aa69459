#pragma once
// Components: modality building blocks with typed ports and a compile-time
// list of layers. A component is a plain type; a model graph names it.
//
//   struct projector {
//     static constexpr modality mod = modality::image;
//     using inputs  = ports<port<"in", tensor::embeds>>;
//     using outputs = ports<port<"out", tensor::embeds>>;
//     struct dims { long in = 0, out = 0; };
//     static constexpr std::array layers{layer{"proj", layer_kind::projector, scope::model}};
//     static constexpr long blocks(const dims&) { return 0; }
//     static constexpr geometry shape(std::size_t, const dims& d) { ... }
//   };
#include <array>
#include <concepts>
#include <cstddef>
#include <string_view>
#include <type_traits>

#include "fixed_string.hpp"
#include "layer.hpp"

namespace veomni {

// What a component's tokens are: text, image, audio, or a user's own
// modality, declared as a constant of this type and compared by name (as
// tensor kinds are):
//   inline constexpr modality depth{"depth"};
//   struct depth_encoder { static constexpr modality mod = depth; ... };
// The library reads it in two places: a text component's attention is causal
// (core/flops.hpp, and the decoder's Ulysses split), and the trainer's text
// head is the text component's. Anything else is the component's own.
struct modality {
  std::string_view name;
  static const modality text, image, audio;
  friend constexpr bool operator==(const modality& a, const modality& b) { return a.name == b.name; }
};
inline constexpr modality modality::text{"text"};
inline constexpr modality modality::image{"image"};
inline constexpr modality modality::audio{"audio"};

constexpr std::string_view to_string(modality m) { return m.name; }

// Tensor kinds that flow along edges. Two ports connect only when their kinds
// match, by name: a user's kind is a struct with a `name`, and two kinds of
// the same name (declared in two places) are the same kind.
namespace tensor {
struct token_ids   { static constexpr std::string_view name = "token_ids"; };
struct pixels      { static constexpr std::string_view name = "pixels"; };
struct mel_frames  { static constexpr std::string_view name = "mel_frames"; };
struct embeds      { static constexpr std::string_view name = "embeds"; };
struct logits      { static constexpr std::string_view name = "logits"; };
struct image_codes { static constexpr std::string_view name = "image_codes"; };
}  // namespace tensor

template <class T>
concept TensorKind = requires {
  { T::name } -> std::convertible_to<std::string_view>;
};

template <fixed_string Name, TensorKind Kind>
struct port {
  static constexpr std::string_view name = text_of<Name>;
  using kind = Kind;
};

template <class... P>
struct ports {
  static constexpr std::size_t size = sizeof...(P);
  static constexpr std::array<std::string_view, sizeof...(P)> names{P::name...};
  static constexpr std::array<std::string_view, sizeof...(P)> kinds{P::kind::name...};
  // index of a port by name, or size if absent
  static constexpr std::size_t find(std::string_view n) {
    for (std::size_t i = 0; i < size; ++i)
      if (names[i] == n) return i;
    return size;
  }
};

namespace detail {
template <class T>
struct is_ports : std::false_type {};
template <class... P>
struct is_ports<ports<P...>> : std::true_type {};
template <class T, std::size_t N>
constexpr bool is_layer_array(const std::array<T, N>*) { return std::is_same_v<T, layer>; }
constexpr bool is_layer_array(...) { return false; }
}  // namespace detail

template <class C>
concept Component = requires(const typename C::dims& d) {
  { C::mod } -> std::convertible_to<modality>;
  requires detail::is_ports<typename C::inputs>::value;
  requires detail::is_ports<typename C::outputs>::value;
  requires detail::is_layer_array(&C::layers);
  { C::blocks(d) } -> std::convertible_to<long>;
  { C::shape(std::size_t{}, d) } -> std::same_as<geometry>;
};

template <Component C>
constexpr bool has_layer_kind(layer_kind k) {
  for (const auto& l : C::layers)
    if (l.kind == k) return true;
  return false;
}

// Parameter elements of one FSDP unit: one block (scope::block layers) or the
// component's root (scope::model layers). Experts excluded when asked.
template <Component C>
constexpr long unit_params(const typename C::dims& d, scope s, bool with_experts) {
  long n = 0;
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].where == s) {
      const geometry g = C::shape(i, d);
      n += g.params + (with_experts ? g.expert_params : 0);
    }
  return n;
}

template <Component C>
constexpr long unit_expert_params(const typename C::dims& d, scope s) {
  long n = 0;
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].where == s) n += C::shape(i, d).expert_params;
  return n;
}

template <Component C>
constexpr bool has_scope(scope s) {
  for (const auto& l : C::layers)
    if (l.where == s) return true;
  return false;
}

// Total parameter elements of a component.
template <Component C>
constexpr long total_params(const typename C::dims& d) {
  return unit_params<C>(d, scope::model, true) + C::blocks(d) * unit_params<C>(d, scope::block, true);
}

}  // namespace veomni
