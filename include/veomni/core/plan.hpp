#pragma once
// The plan: the ordered compile-time sequence of collectives that a (model,
// recipe) pair implies. It is the single source of truth: the runtime executes
// it, describe() prints it, the cost model prices it.
//
//   using P = plan<tiny_vl, recipe<apply<"lm", Shard<FSDP>>>>;
//   static_assert(P::count(phase::forward, collective::all_gather) == 2);  // lm root + lm block
//
// Order: forward runs nodes in topological order and, inside a node, units
// and layers first to last; backward runs nodes and layers in reverse;
// optimizer ops come last: the step's (gradient norm) before the nodes'
// (which follow the update). core/schedule.hpp expands the plan for runtime
// sizes and places each op instance where the runtime issues it.
#include <array>
#include <cstddef>
#include <string_view>
#include <tuple>
#include <utility>

#include "graph.hpp"
#include "policy.hpp"
#include "recipe.hpp"

namespace veomni {

struct plan_op {
  std::string_view node;
  std::size_t node_index = 0;
  std::string_view policy;
  op_target target;
  std::string_view where;  // "block", "root", or the layer's name
  scope repeat = scope::model;  // scope::block: runs once per block
  phase ph = phase::forward;
  collective coll = collective::all_gather;
  axis_set over;
  tensor_role tensor = tensor_role::params;
  axis_set pre_sharded{};
  dtype dt = dtype::unspecified;
  bool experts_separate = false;  // the node's experts are placed by an Experts<> policy
};

// The node whose blocks forward runs last, so that backward starts with its
// last block: the last node in topological order with block layers (G::size
// if none). Only its ops honour op_target::skip_last_block.
template <Model G>
constexpr std::size_t last_block_node() {
  std::array<bool, G::size + 1> blocks{};
  for_each_node<G>([&](auto I) { blocks[I.value] = has_scope<typename G::template component_at<I.value>>(scope::block); });
  std::size_t last = G::size;
  for (std::size_t node : G::order)
    if (blocks[node]) last = node;
  return last;
}

// How many times an op runs on its node per micro-batch (per step in the
// optimizer phase): once, or once per block (but the last if it skips it).
template <Component C>
constexpr long repeats(const plan_op& o, const typename C::dims& nd) {
  if (o.repeat != scope::block) return 1;
  const long blocks = C::blocks(nd);
  return o.target.skip_last_block && blocks > 0 ? blocks - 1 : blocks;
}

namespace detail {

template <class T>
struct tuple_or_empty {
  using type = T;
};

template <Model G, Recipe R, std::size_t NodeIndex>
struct node_policies {
  static constexpr std::size_t ai = R::index_of(G::names[NodeIndex]);
  using type = typename std::conditional_t<(ai < R::size),
                                           std::tuple_element<(ai < R::size ? ai : 0), typename R::applies>,
                                           std::type_identity<apply<"">>>::type::policies;
};

template <Component C, class Tuple>
struct experts_split_by;
template <Component C, class... P>
struct experts_split_by<C, std::tuple<P...>> {
  template <class Q>
  static constexpr bool splits() {
    for (const auto& d : Q::template placements<node_context<C, false>>())
      if (d.tensor == placed_tensor::expert_params && d.how.kind == placement_kind::shard) return true;
    return false;
  }
  static constexpr bool value = (splits<P>() || ... || false);
};

template <Model G, Recipe R, std::size_t I>
struct node_ctx {
  using C = typename G::template component_at<I>;
  using policies = typename node_policies<G, R, I>::type;
  using type = node_context<C, experts_split_by<C, policies>::value>;
};

// Checks of one policy on one node; instantiated with the apply<> and the
// policy so that the compiler's context names both.
template <class A, class P, class C, class Ctx>
struct check_policy_on_node {
  static_assert(touches_component<P, C>(),
                "veomni::recipe: the policy touches no layer of its node "
                "(for example Experts<EP> on a node that has no moe layer)");
  static constexpr bool has_duals = [] {
    const auto ops = P::template ops<Ctx>();
    for (const auto& f : ops) {
      if (f.ph != phase::forward) continue;
      bool found = false;
      for (const auto& b : ops)
        found = found || (b.ph == phase::backward && b.coll == dual(f.coll) && b.tensor == grad_of(f.tensor) &&
                          b.target == f.target && b.over == f.over);
      if (!found) return false;
    }
    return true;
  }();
  static_assert(has_duals,
                "veomni::recipe: a forward collective of the policy has no backward dual "
                "(all_gather needs reduce_scatter of its gradient, all_to_all its inverse all_to_all)");
  static constexpr bool ok = touches_component<P, C>() && has_duals;
};

template <class A, class C, class Ctx, class Tuple>
struct check_placements;
template <class A, class C, class Ctx, class... P>
struct check_placements<A, C, Ctx, std::tuple<P...>> {
  static constexpr bool conflict_free = [] {
    constexpr std::size_t n = sizeof...(P);
    std::array<placement_list, n> lists{P::template placements<Ctx>()...};
    for (std::size_t a = 0; a < n; ++a)
      for (std::size_t b = a + 1; b < n; ++b)
        for (const auto& x : lists[a])
          for (const auto& y : lists[b])
            if (x.tensor == y.tensor && x.over.overlaps(y.over)) return false;
    return true;
  }();
  static_assert(conflict_free,
                "veomni::recipe: two policies on one node place the same tensor over the same mesh axis "
                "(for example both shard dim 0 of params over dp_shard)");
  static constexpr bool ok = conflict_free;
};

template <Model G, Recipe R, class A>
struct check_apply {
  static constexpr std::size_t ni = G::index_of(A::node);
  static_assert(ni < G::size, "veomni::recipe: the recipe names a node that the model does not have");
  static constexpr bool unique = [] {
    std::size_t n = 0;
    for (auto x : R::nodes) n += x == A::node;
    return n == 1;
  }();
  static_assert(unique, "veomni::recipe: a node is named by more than one apply<>; list all its policies in one");

  template <class Tuple>
  struct each;
  template <class... P>
  struct each<std::tuple<P...>> {
    using C = typename G::template component_at<(ni < G::size ? ni : 0)>;
    using Ctx = typename node_ctx<G, R, (ni < G::size ? ni : 0)>::type;
    static constexpr bool value =
        (check_policy_on_node<A, P, C, Ctx>::ok && ... && true) && check_placements<A, C, Ctx, std::tuple<P...>>::ok;
  };
  // Later checks run only when the earlier ones pass: one error, not a cascade.
  static constexpr bool ok = [] {
    if constexpr (ni < G::size && unique && A::policies_ok)
      return each<typename A::policies>::value;
    else
      return false;
  }();
};

template <Model G, Recipe R>
struct check_recipe;
template <Model G, class... A>
struct check_recipe<G, recipe<A...>> {
  static constexpr bool ok = (check_apply<G, recipe<A...>, A>::ok && ... && true);
};

// Position of an op inside its node, for ordering: a unit's gather comes
// before its layers in forward and first in its backward; its gradient
// reduction comes last in backward.
template <Component C>
constexpr long op_position(const op_spec& o) {
  if (!o.target.is_unit) return 4 * static_cast<long>(o.target.layer) + (o.ph == phase::forward ? 1 : 2);
  long first = -1, last = -1;
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].where == o.target.unit) {
      if (first < 0) first = static_cast<long>(i);
      last = static_cast<long>(i);
    }
  if (o.ph == phase::backward && o.coll == collective::all_gather) return 4 * last + 3;
  return 4 * first;
}

template <Model G, Recipe R, std::size_t I, class Tuple>
struct node_ops;
template <Model G, Recipe R, std::size_t I, class... P>
struct node_ops<G, R, I, std::tuple<P...>> {
  using C = typename G::template component_at<I>;
  using Ctx = typename node_ctx<G, R, I>::type;
  static constexpr std::size_t count = (P::template ops<Ctx>().size() + ... + 0);

  template <class Q>
  static constexpr void add(plan_op* out, std::size_t& n, long* pos) {
    for (const auto& o : Q::template ops<Ctx>()) {
      plan_op p;
      p.node = G::names[I];
      p.node_index = I;
      p.policy = Q::name;
      p.target = o.target;
      p.target.skip_last_block = o.target.skip_last_block && I == last_block_node<G>();
      if (o.target.is_unit) {
        p.where = o.target.unit == scope::block ? std::string_view{"block"} : std::string_view{"root"};
        p.repeat = o.target.unit;
      } else {
        p.where = C::layers[o.target.layer].name;
        p.repeat = C::layers[o.target.layer].where;
      }
      p.ph = o.ph;
      p.coll = o.coll;
      p.over = o.over;
      p.tensor = o.tensor;
      p.pre_sharded = o.pre_sharded;
      p.dt = o.dt;
      p.experts_separate = Ctx::experts_split;
      pos[n] = op_position<C>(o);
      out[n++] = p;
    }
  }
  static constexpr void collect([[maybe_unused]] plan_op* out, [[maybe_unused]] std::size_t& n,
                               [[maybe_unused]] long* pos) {
    (add<P>(out, n, pos), ...);
  }
};

template <Model G, Recipe R, std::size_t I, class... P>
constexpr void collect_placements_impl(placement_list& out, std::tuple<P...>*) {
  using Ctx = typename node_ctx<G, R, I>::type;
  (
      [&] {
        for (const auto& d : P::template placements<Ctx>()) out.push_back(d);
      }(),
      ...);
}
template <Model G, Recipe R, std::size_t I, class Tuple>
constexpr void collect_placements(placement_list& out) {
  collect_placements_impl<G, R, I>(out, static_cast<Tuple*>(nullptr));
}

// Collectives every step needs once data is split over ranks, whatever the
// policies: the global loss and target counts (forward), the MoE routers'
// statistics so the load-balancing loss is the single-process one (forward,
// and its dual in backward), and the squared norm of the gradient shards for
// clipping (optimizer). They act on the step (node index G::size) or on a
// node's MoE layers, under the name "Step".
inline constexpr std::string_view step_policy = "Step";
inline constexpr axis_set data_axes = axes<axis::dp_replicate, axis::dp_shard, axis::sp>;
inline constexpr axis_set shard_axes = axes<axis::dp_shard, axis::sp>;

template <Model G>
constexpr std::size_t moe_layer_count() {
  std::size_t n = 0;
  for_each_node<G>([&](auto I) {
    for (const auto& l : G::template component_at<I.value>::layers) n += l.kind == layer_kind::moe;
  });
  return n;
}

template <Model G>
constexpr std::size_t step_op_count() { return 2 + 2 * moe_layer_count<G>(); }

template <Model G>
constexpr void step_ops(plan_op* out, std::size_t& n, long* pos) {
  auto step = [&](phase p, tensor_role t, axis_set over) {
    plan_op o;
    o.node = "step";
    o.node_index = G::size;
    o.policy = step_policy;
    o.where = "step";
    o.repeat = scope::model;
    o.ph = p;
    o.coll = collective::all_reduce;
    o.over = over;
    o.tensor = t;
    pos[n] = 0;
    out[n++] = o;
  };
  step(phase::forward, tensor_role::loss_stats, data_axes);
  step(phase::optimizer, tensor_role::grad_norm, shard_axes);
  for_each_node<G>([&](auto I) {
    using C = typename G::template component_at<I.value>;
    for (std::size_t i = 0; i < C::layers.size(); ++i) {
      if (C::layers[i].kind != layer_kind::moe) continue;
      for (phase p : {phase::forward, phase::backward}) {
        plan_op o;
        o.node = G::names[I.value];
        o.node_index = I.value;
        o.policy = step_policy;
        o.target = {false, scope::block, i};
        o.where = C::layers[i].name;
        o.repeat = C::layers[i].where;
        o.ph = p;
        o.coll = collective::all_reduce;
        o.over = data_axes;
        o.tensor = tensor_role::router_stats;
        // forward: before the layer's own collectives (dispatch); backward: after them
        pos[n] = 4 * static_cast<long>(i) + (p == phase::forward ? 0 : 1);
        out[n++] = o;
      }
    }
  });
}

template <Model G, Recipe R>
struct plan_builder {
  template <std::size_t... I>
  static constexpr std::size_t count_ops(std::index_sequence<I...>) {
    return (node_ops<G, R, I, typename node_policies<G, R, I>::type>::count + ... + 0);
  }
  static constexpr std::size_t size = count_ops(std::make_index_sequence<G::size>{}) + step_op_count<G>();

  static constexpr std::array<plan_op, size> build() {
    std::array<plan_op, size> raw{};
    std::array<long, size> pos{};
    std::size_t n = 0;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (node_ops<G, R, I, typename node_policies<G, R, I>::type>::collect(raw.data(), n, pos.data()), ...);
    }(std::make_index_sequence<G::size>{});
    step_ops<G>(raw.data(), n, pos.data());

    std::array<std::size_t, G::size + 1> rank{};  // topological rank of each node; the step comes last
    for (std::size_t r = 0; r < G::size; ++r) rank[G::order[r]] = r;
    rank[G::size] = G::size;
    auto key_less = [&](std::size_t a, std::size_t b) {
      const plan_op &x = raw[a], &y = raw[b];
      if (x.ph != y.ph) return x.ph < y.ph;
      long rx = static_cast<long>(rank[x.node_index]), ry = static_cast<long>(rank[y.node_index]);
      // the optimizer phase starts with the step's ops (the gradient norm,
      // which the update needs); the nodes' ops follow the update
      if (x.ph == phase::optimizer) {
        if (x.node_index == G::size) rx = -1;
        if (y.node_index == G::size) ry = -1;
      }
      if (x.ph == phase::backward) {
        if (rx != ry) return rx > ry;
        return pos[a] > pos[b];
      }
      if (rx != ry) return rx < ry;
      return pos[a] < pos[b];
    };
    // stable insertion sort of indices
    std::array<std::size_t, size> idx{};
    for (std::size_t i = 0; i < size; ++i) idx[i] = i;
    for (std::size_t i = 1; i < size; ++i)
      for (std::size_t j = i; j > 0 && key_less(idx[j], idx[j - 1]); --j) std::swap(idx[j], idx[j - 1]);
    std::array<plan_op, size> out{};
    for (std::size_t i = 0; i < size; ++i) out[i] = raw[idx[i]];
    return out;
  }
};

}  // namespace detail

template <Model G, Recipe R>
struct plan {
  using model = G;
  using recipe_type = R;
  // A failed check has already stopped compilation with its own message; an
  // invalid (model, recipe) then gets an empty plan instead of more errors.
  static constexpr bool valid = detail::check_recipe<G, R>::ok;
  static constexpr std::size_t size = [] {
    if constexpr (valid) return detail::plan_builder<G, R>::size;
    else return std::size_t{0};
  }();
  static constexpr std::array<plan_op, size> ops = [] {
    if constexpr (valid) return detail::plan_builder<G, R>::build();
    else return std::array<plan_op, 0>{};
  }();

  // What the recipe's policies place on each node (indexed like G::names).
  static constexpr std::array<placement_list, G::size> placements = [] {
    std::array<placement_list, G::size> out{};
    if constexpr (valid) [&]<std::size_t... I>(std::index_sequence<I...>) {
      (detail::collect_placements<G, R, I, typename detail::node_policies<G, R, I>::type>(out[I]), ...);
    }(std::make_index_sequence<G::size>{});
    return out;
  }();

  static constexpr std::size_t count(phase p, collective c) {
    std::size_t n = 0;
    for (const auto& o : ops) n += o.ph == p && o.coll == c;
    return n;
  }
  // Entries matching a predicate.
  template <class F>
  static constexpr std::size_t count_if(F f) {
    std::size_t n = 0;
    for (const auto& o : ops) n += f(o) ? 1 : 0;
    return n;
  }
};

}  // namespace veomni
