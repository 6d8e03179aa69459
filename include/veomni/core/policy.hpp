#pragma once
// Policies: what a parallel recipe does to one node of the model.
//
// A policy is a type with
//   name        how describe prints it ("Shard<FSDP>")
//   touches     the layer kinds it acts on (empty: every layer)
//   placements<Ctx>()  what it shards or replicates, over which axes
//   ops<Ctx>()         the collectives it adds, each tied to an axis set, a
//                      tensor role, a phase, and a unit (block/root) or layer
// `Ctx` is a node_context: the node's name and component, and what the other
// policies on the node do. Any type that provides these models `Policy`,
// also a user's own (see examples/custom_policy.cpp); the category templates
// Shard<Impl>, Split<Impl> and Experts<Impl> wrap an implementation and
// check that it places only what its category may place.
#include <array>
#include <concepts>
#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <string_view>

#include "axis.hpp"
#include "collective.hpp"
#include "component.hpp"
#include "layer.hpp"
#include "static_vector.hpp"

namespace veomni {

// Where an op acts: a whole unit (all layers of a scope: one block, or the
// component's root), or one layer (repeated per block if it is a block layer).
struct op_target {
  bool is_unit = true;
  scope unit = scope::block;  // when is_unit
  std::size_t layer = 0;      // when !is_unit: index into Component::layers
  // An op repeated per block runs for every block but the last, on the node
  // whose blocks forward runs last (FSDP's backward re-gather: backward
  // starts with that block, which keeps its gathered parameters). No effect
  // on an op that runs once, nor on other nodes.
  bool skip_last_block = false;
  friend constexpr bool operator==(const op_target&, const op_target&) = default;
};

// A set of layer kinds as bits (one per layer_kind), for compile-time settings:
//   layer_kinds({layer_kind::attention, layer_kind::mlp})
constexpr unsigned layer_kinds(std::initializer_list<layer_kind> ks) {
  unsigned m = 0;
  for (layer_kind k : ks) m |= 1u << static_cast<unsigned>(k);
  return m;
}
constexpr bool has_kind(unsigned kinds, layer_kind k) { return (kinds >> static_cast<unsigned>(k)) & 1u; }

// What an op on adapters moves: rank-`rank` factors on every linear map of
// the unit's layers whose kind is in `kinds` (layer_kinds bits); its size is
// rank x the sum of those layers' geometry::adapter_width.
struct adapter_shape {
  long rank = 0;
  unsigned kinds = 0;
  friend constexpr bool operator==(const adapter_shape&, const adapter_shape&) = default;
};

// An Adapt policy's settings at run time (the trainer's train.lora): the
// rank, and the layer kinds, a subset of the policy's; 0: the policy's.
struct adapter_settings {
  long rank = 0;
  unsigned targets = 0;
  constexpr adapter_shape applied_to(const adapter_shape& a) const {
    return {rank > 0 ? rank : a.rank, targets != 0 ? (a.kinds & targets) : a.kinds};
  }
};

struct op_spec {
  op_target target;
  phase ph = phase::forward;
  collective coll = collective::all_gather;
  axis_set over;
  tensor_role tensor = tensor_role::params;
  // The tensor arrives already sharded over these axes (HSDP's all-reduce of
  // gradient shards): its size is divided by their group size.
  axis_set pre_sharded{};
  dtype dt = dtype::unspecified;  // element type moved (a policy setting)
  adapter_shape adapter{};        // tensor_role::adapter_grads: whose adapters
};

constexpr op_spec unit_op(scope s, phase p, collective c, axis_set over, tensor_role t, axis_set pre = {},
                          dtype dt = dtype::unspecified) {
  return {{true, s, 0}, p, c, over, t, pre, dt};
}
constexpr op_spec layer_op(std::size_t layer, phase p, collective c, axis_set over, tensor_role t,
                           dtype dt = dtype::unspecified) {
  return {{false, scope::block, layer}, p, c, over, t, {}, dt};
}
// The backward all_reduce of a unit's adapter gradients over `over` (adapters stay fp32).
constexpr op_spec adapter_op(scope s, axis_set over, adapter_shape a) {
  op_spec o = unit_op(s, phase::backward, collective::all_reduce, over, tensor_role::adapter_grads, {}, dtype::f32);
  o.adapter = a;
  return o;
}
// The backward all_reduce of the adapters of a unit's local experts (kinds:
// moe), split over ep with the experts, summed over the ranks holding the
// same experts (`over`).
constexpr op_spec expert_adapter_op(scope s, axis_set over, long rank) {
  op_spec o = adapter_op(s, over, {rank, layer_kinds({layer_kind::moe})});
  o.tensor = tensor_role::expert_adapter_grads;
  return o;
}
// The same op for every block but the last.
constexpr op_spec skip_last_block(op_spec o) {
  o.target.skip_last_block = true;
  return o;
}

inline constexpr std::size_t max_ops_per_policy = 256;
inline constexpr std::size_t max_placements_per_policy = 16;
using op_list = static_vector<op_spec, max_ops_per_policy>;
using placement_list = static_vector<placement_decl, max_placements_per_policy>;

// What a policy sees of the node it is applied to.
template <Component C, bool ExpertsSplit = false, bool Frozen = false>
struct node_context {
  using component = C;
  // Another policy on this node shards the experts (Experts<EP>): parameter
  // sharding then treats expert weights separately, over ep_dp.
  static constexpr bool experts_split = ExpertsSplit;
  // A policy on this node places adapters (Adapt<LoRA>): its parameters are
  // frozen (no gradient, no optimizer state), so a Shard policy gathers them
  // as before but reduces no gradient of theirs.
  static constexpr bool frozen = Frozen;
};

namespace detail {
// A component with one layer of every kind, to probe a policy's interface.
struct probe_component {
  static constexpr modality mod = modality::text;
  using inputs = ports<>;
  using outputs = ports<>;
  struct dims {};
  static constexpr std::array layers{
      layer{"embed", layer_kind::embedding, scope::model}, layer{"attn", layer_kind::attention},
      layer{"mlp", layer_kind::mlp}, layer{"moe", layer_kind::moe}, layer{"head", layer_kind::head, scope::model}};
  static constexpr long blocks(const dims&) { return 1; }
  static constexpr geometry shape(std::size_t, const dims&) { return {}; }
};

template <class T, std::size_t N>
constexpr bool is_kind_array(const std::array<T, N>*) { return std::is_same_v<T, layer_kind>; }
constexpr bool is_kind_array(...) { return false; }

// Compile-time string concatenation for policy names: "Shard<" + "FSDP" + ">".
template <const std::string_view&... S>
struct concat {
  static constexpr auto storage = [] {
    std::array<char, (S.size() + ... + 0) + 1> a{};
    std::size_t i = 0;
    ((std::copy(S.begin(), S.end(), a.begin() + i), i += S.size()), ...);
    return a;
  }();
  static constexpr std::string_view value{storage.data(), storage.size() - 1};
};
inline constexpr std::string_view lt = "<";
inline constexpr std::string_view gt = ">";
}  // namespace detail

template <class P>
concept Policy = requires {
  { P::name } -> std::convertible_to<std::string_view>;
  requires detail::is_kind_array(&P::touches);
  { P::template placements<node_context<detail::probe_component>>() } -> std::same_as<placement_list>;
  { P::template ops<node_context<detail::probe_component>>() } -> std::same_as<op_list>;
};

namespace detail {
template <class P>
constexpr bool wants_every_kind() {
  if constexpr (requires { P::touches_all; })
    return P::touches_all;
  else
    return false;
}
}  // namespace detail

// Does component C have every layer kind policy P touches? Asked only of a
// policy that declares `static constexpr bool touches_all = true` (LoRA: each
// target must exist); true for the others.
template <class P, Component C>
constexpr bool has_every_touched_kind() {
  if constexpr (detail::wants_every_kind<P>()) {
    for (layer_kind k : P::touches)
      if (!has_layer_kind<C>(k)) return false;
  }
  return true;
}

// Does policy P act on at least one layer of component C?
template <class P, Component C>
constexpr bool touches_component() {
  if constexpr (P::touches.size() == 0) {
    return C::layers.size() > 0;
  } else {
    for (const auto& l : C::layers)
      for (layer_kind k : P::touches)
        if (l.kind == k) return true;
    return false;
  }
}

// ---- categories -----------------------------------------------------------

namespace detail {
// A policy's own checks (its options, say), when it has any: P::checks_ok.
// Context: the node the recipe applies it to (a diag::node_name), which only
// makes the compiler's "required from" name it.
template <class P, class... Context>
constexpr bool self_checks_ok() {
  if constexpr (requires { P::checks_ok; })
    return P::checks_ok;
  else
    return true;
}

enum class policy_category { shard, split, experts, adapt };

// The checks of a category around its implementation, one error each (see
// diagnostics.hpp); Places is whether Impl places only what the category may.
template <policy_category K, bool IsPolicy, bool Places, class Impl>
constexpr bool report_category() {
  static_assert(IsPolicy,
                "veomni: the implementation inside Shard<>/Split<>/Experts<>/Adapt<> must model veomni::Policy "
                "(name, touches, placements<Ctx>(), ops<Ctx>())");
  static_assert(!IsPolicy || K != policy_category::shard || Places,
                "veomni::Shard<Impl>: a Shard policy may place only params, expert_params, grads and "
                "optimizer_state");
  static_assert(!IsPolicy || K != policy_category::split || Places,
                "veomni::Split<Impl>: a Split policy may place only activations");
  static_assert(!IsPolicy || K != policy_category::experts || Places,
                "veomni::Experts<Impl>: an Experts policy may place only expert_params");
  static_assert(!IsPolicy || K != policy_category::adapt || Places,
                "veomni::Adapt<Impl>: an Adapt policy may place only adapters and expert_adapters");
  return IsPolicy && Places;
}

template <policy_category K>
constexpr bool category_places(placed_tensor t) {
  switch (K) {
    case policy_category::shard:
      return t == placed_tensor::params || t == placed_tensor::expert_params || t == placed_tensor::grads ||
             t == placed_tensor::optimizer_state;
    case policy_category::split: return t == placed_tensor::activations;
    case policy_category::experts: return t == placed_tensor::expert_params;
    case policy_category::adapt: return t == placed_tensor::adapters || t == placed_tensor::expert_adapters;
  }
  return false;
}

template <class Impl, policy_category K>
constexpr bool places_only_what_category_may() {
  for (const auto& d : Impl::template placements<node_context<probe_component, true>>())
    if (!category_places<K>(d.tensor)) return false;
  return true;
}

template <class Impl, const std::string_view& Category>
constexpr std::string_view category_name() {
  if constexpr (Policy<Impl>)
    return concat<Category, lt, Impl::name, gt>::value;
  else
    return Category;
}
template <class Impl>
constexpr auto touches_of() {
  if constexpr (Policy<Impl>)
    return Impl::touches;
  else
    return std::array<layer_kind, 0>{};
}

// What Shard<>, Split<>, Experts<> and Adapt<> share. Their checks run when a
// recipe reads checks_ok (apply<> does), not when the type is named.
template <class Impl, const std::string_view& Category, policy_category K>
struct category_base {
  static constexpr std::string_view name = category_name<Impl, Category>();
  static constexpr auto touches = touches_of<Impl>();
  template <class Ctx>
  static constexpr placement_list placements() { return Impl::template placements<Ctx>(); }
  template <class Ctx>
  static constexpr op_list ops() { return Impl::template ops<Ctx>(); }
  using implementation = Impl;
  static constexpr bool checks_ok = [] {
    if constexpr (!Policy<Impl>)
      return report_category<K, false, false, Impl>();
    else if constexpr (!self_checks_ok<Impl>())
      return false;  // Impl's own check has reported
    else
      return report_category<K, true, places_only_what_category_may<Impl, K>(), Impl>();
  }();
};
inline constexpr std::string_view shard_name = "Shard";
inline constexpr std::string_view split_name = "Split";
inline constexpr std::string_view experts_name = "Experts";
inline constexpr std::string_view adapt_name = "Adapt";
}  // namespace detail

// Shard<Impl>: shards or replicates parameters (FSDP, HSDP, DDP); it may place
// params, expert_params, grads and optimizer_state.
template <class Impl>
struct Shard : detail::category_base<Impl, detail::shard_name, detail::policy_category::shard> {};

// Split<Impl>: splits activations along the sequence (Ulysses, Ring); it may
// place only activations.
template <class Impl>
struct Split : detail::category_base<Impl, detail::split_name, detail::policy_category::split> {};

// Experts<Impl>: distributes the experts of MoE layers (EP); it may place only
// expert_params.
template <class Impl>
struct Experts : detail::category_base<Impl, detail::experts_name, detail::policy_category::experts> {};

// Adapt<Impl>: trains adapters beside the node's frozen parameters (LoRA); it
// may place only adapters and expert_adapters.
template <class Impl>
struct Adapt : detail::category_base<Impl, detail::adapt_name, detail::policy_category::adapt> {
  static constexpr bool touches_all = detail::wants_every_kind<Impl>();
};

// Helpers for policy authors: visit layers of a kind / scopes present.
template <Component C, class F>
constexpr void for_each_layer_of(layer_kind k, F&& f) {
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].kind == k) f(i);
}

template <Component C, class F>
constexpr void for_each_unit(F&& f) {
  if (has_scope<C>(scope::model)) f(scope::model);
  if (has_scope<C>(scope::block)) f(scope::block);
}

template <Component C>
constexpr bool scope_has_kind(scope s, layer_kind k) {
  for (const auto& l : C::layers)
    if (l.where == s && l.kind == k) return true;
  return false;
}

}  // namespace veomni
