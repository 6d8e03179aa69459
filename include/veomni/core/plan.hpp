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
  adapter_shape adapter{};        // adapter_grads: the adapters' rank and layer kinds
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
  template <class Q>
  static constexpr bool adapts() {
    for (const auto& d : Q::template placements<node_context<C, false>>())
      if (d.tensor == placed_tensor::adapters || d.tensor == placed_tensor::expert_adapters) return true;
    return false;
  }
  static constexpr bool value = (splits<P>() || ... || false);
  static constexpr bool frozen = (adapts<P>() || ... || false);
  using context = node_context<C, value, frozen>;
};

template <Model G, Recipe R, std::size_t I>
struct node_ctx {
  using C = typename G::template component_at<I>;
  using policies = typename node_policies<G, R, I>::type;
  using type = typename experts_split_by<C, policies>::context;
};

// Whether every forward collective of policy P has its backward dual: the
// reduce_scatter of its gradient for an all_gather, the inverse all_to_all
// for an all_to_all (same target and axes). Frozen parameters (an adapted
// node's) have no gradient: their all_gather needs no dual.
template <class P, class Ctx>
constexpr bool has_backward_duals() {
  const auto ops = P::template ops<Ctx>();
  for (const auto& f : ops) {
    if (f.ph != phase::forward) continue;
    if (Ctx::frozen && f.target.is_unit && (f.tensor == tensor_role::params || f.tensor == tensor_role::expert_params))
      continue;
    bool found = false;
    for (const auto& b : ops)
      found = found || (b.ph == phase::backward && b.coll == dual(f.coll) && b.tensor == grad_of(f.tensor) &&
                        b.target == f.target && b.over == f.over);
    if (!found) return false;
  }
  return true;
}

// Whether no two of the policies place the same tensor over the same axis.
template <class Ctx, class... P>
constexpr bool placements_conflict_free() {
  constexpr std::size_t n = sizeof...(P);
  std::array<placement_list, n> lists{P::template placements<Ctx>()...};
  for (std::size_t a = 0; a < n; ++a)
    for (std::size_t b = a + 1; b < n; ++b)
      for (const auto& x : lists[a])
        for (const auto& y : lists[b])
          if (x.tensor == y.tensor && x.over.overlaps(y.over)) return false;
  return true;
}

// The recipe's checks, reported with the node's name spelled out and the
// policy (see diagnostics.hpp): one error each, and no check after a failed one.
template <bool Touches, bool EveryKind, bool HasDuals, class Node, class Policy>
constexpr bool report_policy_on_node() {
  static_assert(Touches,
                "veomni::recipe: the policy touches no layer of its node "
                "(for example Experts<EP> on a node that has no moe layer, or Adapt<LoRA> on a node with no "
                "attention or MLP layer to adapt)");
  static_assert(!Touches || EveryKind,
                "veomni::recipe: the policy targets a layer kind that its node does not have "
                "(for example Adapt<LoRA> targeting mlp on a node whose component has no mlp layer)");
  static_assert(!Touches || !EveryKind || HasDuals,
                "veomni::recipe: a forward collective of the policy has no backward dual "
                "(all_gather needs reduce_scatter of its gradient, all_to_all its inverse all_to_all)");
  return Touches && EveryKind && HasDuals;
}
template <class Node, class... Policies>
constexpr bool report_placement_conflict() {
  static_assert(sizeof(Node) == 0,
                "veomni::recipe: two policies on one node place the same tensor over the same mesh axis "
                "(for example both shard dim 0 of params over dp_shard)");
  return false;
}
template <bool Known, bool Unique, class Node>
constexpr bool report_apply() {
  static_assert(Known, "veomni::recipe: the recipe names a node that the model does not have");
  static_assert(!Known || Unique,
                "veomni::recipe: a node is named by more than one apply<>; list all its policies in one");
  return Known && Unique;
}

// Checks of one policy on one node; instantiated with the apply<> and the
// policy so that the compiler's context names both.
template <class A, class P, class C, class Ctx>
struct check_policy_on_node {
  static constexpr bool touches = touches_component<P, C>();
  static constexpr bool every_kind = [] {
    if constexpr (touches) return has_every_touched_kind<P, C>();
    else return true;
  }();
  static constexpr bool has_duals = [] {
    if constexpr (touches && every_kind) return has_backward_duals<P, Ctx>();
    else return true;
  }();
  static constexpr bool ok = report_policy_on_node<touches, every_kind, has_duals, diag::node_named<A::node>, P>();
};

template <class A, class C, class Ctx, class Tuple>
struct check_placements;
template <class A, class C, class Ctx, class... P>
struct check_placements<A, C, Ctx, std::tuple<P...>> {
  static constexpr bool ok = [] {
    if constexpr (placements_conflict_free<Ctx, P...>()) return true;
    else return report_placement_conflict<diag::node_named<A::node>, P...>();
  }();
};

// The checks of one apply<> of recipe R, with their errors. plan_tables finds
// a fault without them and instantiates them only for the apply<> at fault,
// so that the error names it (and its policy).
template <Model G, Recipe R, class A>
struct check_apply {
  static constexpr std::size_t ni = G::index_of(A::node);
  static constexpr bool unique = [] {
    std::size_t n = 0;
    for (auto x : R::nodes) n += x == A::node;
    return n == 1;
  }();
  static constexpr bool names_ok = report_apply<(ni < G::size), unique, diag::node_named<A::node>>();

  template <class Tuple>
  struct each;
  template <class... P>
  struct each<std::tuple<P...>> {
    using C = typename G::template component_at<ni>;
    using Ctx = typename node_ctx<G, R, ni>::type;
    // the policies' checks in order (diag::in_order), then the placements
    template <class Q>
    using policy_check = check_policy_on_node<A, Q, C, Ctx>;
    static constexpr bool value = [] {
      if constexpr (diag::in_order<policy_check, P...>()) return check_placements<A, C, Ctx, std::tuple<P...>>::ok;
      else return false;
    }();
  };
  // Later checks run only when the earlier ones pass: one error, not a cascade.
  static constexpr bool ok = [] {
    if constexpr (names_ok && A::policies_ok)
      return each<typename A::policies>::value;
    else
      return false;
  }();
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

// Collectives every step needs once data is split over ranks, whatever the
// policies: the global loss and target counts (forward), the MoE routers'
// statistics so the load-balancing loss is the single-process one (forward,
// and its dual in backward), and the squared norm of the gradient shards for
// clipping (optimizer). They act on the step (node index G::size) or on a
// node's MoE layers, under the name "Step".
inline constexpr std::string_view step_policy = "Step";
inline constexpr axis_set data_axes = axes<axis::dp_replicate, axis::dp_shard, axis::sp>;
inline constexpr axis_set shard_axes = axes<axis::dp_shard, axis::sp>;

// ---- the plan's tables ------------------------------------------------------
// What a node contributes depends only on its component and its policies, so
// it is computed per node kind (node_kind<C, tuple<P...>>), never per (graph,
// recipe, node index): the 128 nodes of a chain of one component under one
// policy are one kind, and the templates that the compiler instantiates do
// not carry the graph's and recipe's names in their own. The graph-wide part
// is then one constant evaluation over an array of kind_view values
// (build_plan).

// One op of a node kind, with what the plan needs of its layer.
struct kind_op {
  op_spec spec;
  std::string_view policy;
  std::string_view where;       // "block", "root", or the layer's name
  scope repeat = scope::model;  // scope::block: runs once per block
  long position = 0;            // op_position, for ordering inside the node
};

// A node kind's tables, as values (pointers to its static members).
struct kind_view {
  const kind_op* ops = nullptr;
  std::size_t op_count = 0;
  const placement_list* placements = nullptr;
  const layer* layers = nullptr;
  std::size_t layer_count = 0;
  bool experts_split = false;
  bool ok = true;  // the policies pass the recipe's checks on this component
};

template <Component C, class Tuple>
struct node_kind;
template <Component C, class... P>
struct node_kind<C, std::tuple<P...>> {
  using Ctx = typename experts_split_by<C, std::tuple<P...>>::context;
  // check_policy_on_node and check_placements without their errors (which
  // plan_tables raises, through check_apply, for the node at fault)
  static constexpr bool ok =
      ((touches_component<P, C>() && has_every_touched_kind<P, C>() && has_backward_duals<P, Ctx>()) && ... &&
       true) &&
      placements_conflict_free<Ctx, P...>();
  static constexpr std::size_t op_count = ok ? (P::template ops<Ctx>().size() + ... + 0) : 0;
  static constexpr std::array<kind_op, op_count> ops = [] {
    std::array<kind_op, op_count> out{};
    std::size_t n = 0;
    if constexpr (ok)
      (
          [&] {
            for (const auto& o : P::template ops<Ctx>()) {
              kind_op& k = out[n++];
              k.spec = o;
              k.policy = P::name;
              if (o.target.is_unit) {
                k.where = o.target.unit == scope::block ? std::string_view{"block"} : std::string_view{"root"};
                k.repeat = o.target.unit;
              } else {
                k.where = C::layers[o.target.layer].name;
                k.repeat = C::layers[o.target.layer].where;
              }
              k.position = op_position<C>(o);
            }
          }(),
          ...);
    return out;
  }();
  static constexpr placement_list placements = [] {
    placement_list out;
    if constexpr (ok)
      (
          [&] {
            for (const auto& d : P::template placements<Ctx>()) out.push_back(d);
          }(),
          ...);
    return out;
  }();
  static constexpr kind_view view{ops.data(), op_count, &placements, C::layers.data(), C::layers.size(),
                                  Ctx::experts_split, ok};
};

// What build_plan needs of a model and recipe: per node, its name and kind,
// and the topological order.
template <std::size_t NodeCount>
struct plan_input {
  std::array<std::string_view, NodeCount> names{};
  std::array<kind_view, NodeCount> kinds{};
  std::array<std::size_t, NodeCount> order{};
};

// The plan's Size ops, in order (see the top of this file): the nodes' ops and
// the step's, then a stable sort by phase, node rank and position.
template <std::size_t Size, std::size_t NodeCount>
constexpr std::array<plan_op, Size> build_plan(const plan_input<NodeCount>& in) {
  std::array<plan_op, Size> raw{};
  std::array<long, Size> pos{};
  std::size_t n = 0;
  // last_block_node(): only its ops honour op_target::skip_last_block
  std::size_t last_block = NodeCount;
  for (std::size_t node : in.order)
    for (std::size_t l = 0; l < in.kinds[node].layer_count; ++l)
      if (in.kinds[node].layers[l].where == scope::block) last_block = node;
  for (std::size_t i = 0; i < NodeCount; ++i) {
    const kind_view& k = in.kinds[i];
    for (std::size_t j = 0; j < k.op_count; ++j) {
      const kind_op& o = k.ops[j];
      plan_op p;
      p.node = in.names[i];
      p.node_index = i;
      p.policy = o.policy;
      p.target = o.spec.target;
      p.target.skip_last_block = o.spec.target.skip_last_block && i == last_block;
      p.where = o.where;
      p.repeat = o.repeat;
      p.ph = o.spec.ph;
      p.coll = o.spec.coll;
      p.over = o.spec.over;
      p.tensor = o.spec.tensor;
      p.pre_sharded = o.spec.pre_sharded;
      p.dt = o.spec.dt;
      p.adapter = o.spec.adapter;
      p.experts_separate = k.experts_split;
      pos[n] = o.position;
      raw[n++] = p;
    }
  }

  // the step's ops (step_policy above)
  auto step = [&](phase ph, tensor_role t, axis_set over) {
    plan_op o;
    o.node = "step";
    o.node_index = NodeCount;
    o.policy = step_policy;
    o.where = "step";
    o.repeat = scope::model;
    o.ph = ph;
    o.coll = collective::all_reduce;
    o.over = over;
    o.tensor = t;
    pos[n] = 0;
    raw[n++] = o;
  };
  step(phase::forward, tensor_role::loss_stats, data_axes);
  step(phase::optimizer, tensor_role::grad_norm, shard_axes);
  for (std::size_t i = 0; i < NodeCount; ++i) {
    const kind_view& k = in.kinds[i];
    for (std::size_t li = 0; li < k.layer_count; ++li) {
      if (k.layers[li].kind != layer_kind::moe) continue;
      for (phase ph : {phase::forward, phase::backward}) {
        plan_op o;
        o.node = in.names[i];
        o.node_index = i;
        o.policy = step_policy;
        o.target = {false, scope::block, li};
        o.where = k.layers[li].name;
        o.repeat = k.layers[li].where;
        o.ph = ph;
        o.coll = collective::all_reduce;
        o.over = data_axes;
        o.tensor = tensor_role::router_stats;
        // forward: before the layer's own collectives (dispatch); backward: after them
        pos[n] = 4 * static_cast<long>(li) + (ph == phase::forward ? 0 : 1);
        raw[n++] = o;
      }
    }
  }

  std::array<std::size_t, NodeCount + 1> rank{};  // topological rank of each node; the step comes last
  for (std::size_t r = 0; r < NodeCount; ++r) rank[in.order[r]] = r;
  rank[NodeCount] = NodeCount;
  auto key_less = [&](std::size_t a, std::size_t b) {
    const plan_op &x = raw[a], &y = raw[b];
    if (x.ph != y.ph) return x.ph < y.ph;
    long rx = static_cast<long>(rank[x.node_index]), ry = static_cast<long>(rank[y.node_index]);
    // the optimizer phase starts with the step's ops (the gradient norm,
    // which the update needs); the nodes' ops follow the update
    if (x.ph == phase::optimizer) {
      if (x.node_index == NodeCount) rx = -1;
      if (y.node_index == NodeCount) ry = -1;
    }
    if (x.ph == phase::backward) {
      if (rx != ry) return rx > ry;
      return pos[a] > pos[b];
    }
    if (rx != ry) return rx < ry;
    return pos[a] < pos[b];
  };
  // stable bottom-up merge sort of indices
  std::array<std::size_t, Size> idx{}, tmp{};
  for (std::size_t i = 0; i < Size; ++i) idx[i] = i;
  for (std::size_t w = 1; w < Size; w *= 2)
    for (std::size_t lo = 0; lo < Size; lo += 2 * w) {
      const std::size_t mid = lo + w < Size ? lo + w : Size, hi = lo + 2 * w < Size ? lo + 2 * w : Size;
      std::size_t a = lo, b = mid, t = lo;
      while (a < mid && b < hi) tmp[t++] = key_less(idx[b], idx[a]) ? idx[b++] : idx[a++];
      while (a < mid) tmp[t++] = idx[a++];
      while (b < hi) tmp[t++] = idx[b++];
      for (std::size_t i = lo; i < hi; ++i) idx[i] = tmp[i];
    }
  std::array<plan_op, Size> out{};
  for (std::size_t i = 0; i < Size; ++i) out[i] = raw[idx[i]];
  return out;
}

// A (model, recipe) pair's checks and build_plan's input. The recipe is
// matched to the nodes in one pass; the checks that raise errors
// (check_apply) are instantiated only for the first apply<> at fault, so a
// mistake is still one error that names its apply<> and policy.
// Which apply<> names each node and which node each apply<> names.
template <std::size_t NodeCount, std::size_t ApplyCount>
struct apply_match {
  std::array<std::size_t, NodeCount> apply_of{};    // the apply<> naming each node (ApplyCount: none)
  std::array<std::size_t, ApplyCount> node_of{};    // the node each apply<> names (NodeCount: none)
  std::size_t first_bad = ApplyCount;               // the first apply<> naming no node, or a node named twice
};
template <Model G, std::size_t ApplyCount>
constexpr apply_match<G::size, ApplyCount> match_applies(const std::array<std::string_view, ApplyCount>& nodes) {
  apply_match<G::size, ApplyCount> r;
  std::array<std::size_t, G::size + 1> times{};
  for (std::size_t i = 0; i < G::size; ++i) r.apply_of[i] = ApplyCount;
  for (std::size_t a = 0; a < ApplyCount; ++a) {
    const std::size_t i = G::index_of(nodes[a]);
    r.node_of[a] = i;
    ++times[i];
    if (i < G::size && r.apply_of[i] == ApplyCount) r.apply_of[i] = a;
  }
  for (std::size_t a = 0; a < ApplyCount && r.first_bad == ApplyCount; ++a)
    if (r.node_of[a] == G::size || times[r.node_of[a]] != 1) r.first_bad = a;
  return r;
}

// The first node whose kind fails the recipe's checks, or NodeCount.
template <std::size_t NodeCount>
constexpr std::size_t first_bad_kind(const plan_input<NodeCount>& in) {
  for (std::size_t i = 0; i < NodeCount; ++i)
    if (!in.kinds[i].ok) return i;
  return NodeCount;
}
// The nodes' ops and the step's: loss statistics, gradient norm, and the
// router statistics of each MoE layer in both directions.
template <std::size_t NodeCount>
constexpr std::size_t plan_size(const plan_input<NodeCount>& in) {
  std::size_t n = 2;
  for (const auto& k : in.kinds) {
    n += k.op_count;
    for (std::size_t l = 0; l < k.layer_count; ++l) n += 2 * (k.layers[l].kind == layer_kind::moe);
  }
  return n;
}

// A (model, recipe) pair's checks and build_plan's input. The recipe is
// matched to the nodes in one pass; the checks that raise errors
// (check_apply) are instantiated only for the first apply<> at fault, so a
// mistake is still one error that names its apply<> and policy. Few static
// members: each is a symbol whose name spells the whole graph and recipe.
template <Model G, Recipe R>
struct plan_tables;
template <class... N, class E, class... A>
struct plan_tables<graph<nodes<N...>, E>, recipe<A...>> {
  using G = graph<nodes<N...>, E>;
  using R = recipe<A...>;
  static constexpr std::size_t apply_count = sizeof...(A);

  static constexpr apply_match<G::size, apply_count> m = match_applies<G>(R::nodes);
  template <std::size_t I>
  using apply_at = std::tuple_element_t<I, std::tuple<A...>>;

  // The policies of node I (an empty tuple when no apply<> names it).
  using policy_list = indexed_list<std::make_index_sequence<apply_count + 1>, typename A::policies..., std::tuple<>>;
  template <std::size_t I>
  using policies_at = pick_t<m.apply_of[I], policy_list>;

  template <class Seq>
  struct nodes_of;
  template <std::size_t... I>
  struct nodes_of<std::index_sequence<I...>> {
    static constexpr plan_input<G::size> input{
        {N::name...}, {node_kind<typename N::component, policies_at<I>>::view...}, G::order};
  };
  using per_node = nodes_of<std::make_index_sequence<G::size>>;

  // The checks in order, a later one only when the earlier pass: the apply<>
  // names, each apply<>'s policies, then each node's kind. A failed check
  // has stopped compilation with one error; the plan is then empty.
  struct verdict {
    bool ok = false;
    std::size_t size = 0;
  };
  static constexpr verdict checked = [] {
    if constexpr (m.first_bad < apply_count) {
      return verdict{check_apply<G, R, apply_at<m.first_bad>>::ok, 0};  // false, with its error
    } else if constexpr (!(A::policies_ok && ... && true)) {
      return verdict{};
    } else {
      constexpr std::size_t bad = first_bad_kind(per_node::input);
      if constexpr (bad < G::size && m.apply_of[bad] < apply_count) {
        constexpr bool passed = check_apply<G, R, apply_at<m.apply_of[bad]>>::ok;  // false, with its error
        return verdict{passed, passed ? plan_size(per_node::input) : 0};
      } else if constexpr (bad < G::size)
        return verdict{};
      else
        return verdict{true, plan_size(per_node::input)};
    }
  }();
};

}  // namespace detail

template <Model G, Recipe R>
struct plan {
  using model = G;
  using recipe_type = R;
  // A failed check has already stopped compilation with its own message; an
  // invalid (model, recipe) then gets an empty plan instead of more errors.
  static constexpr bool valid = detail::plan_tables<G, R>::checked.ok;
  static constexpr std::size_t size = detail::plan_tables<G, R>::checked.size;
  static constexpr std::array<plan_op, size> ops = [] {
    if constexpr (valid) return detail::build_plan<size>(detail::plan_tables<G, R>::per_node::input);
    else return std::array<plan_op, 0>{};
  }();

  // What the recipe's policies place on each node (indexed like G::names).
  static constexpr std::array<placement_list, G::size> placements = [] {
    std::array<placement_list, G::size> out{};
    if constexpr (valid)
      for (std::size_t i = 0; i < G::size; ++i)
        out[i] = *detail::plan_tables<G, R>::per_node::input.kinds[i].placements;
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
