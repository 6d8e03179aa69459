#pragma once
// The cost model: what each plan op costs one rank per training step, for
// runtime dims, mesh sizes and token counts, and what parameters, gradients
// and optimizer state each rank holds. Everything is constexpr.
//
// Two byte counts per op:
//   payload  bytes handed to the communicator per call (what comm/ counters
//            record): all_gather its input shard, reduce_scatter its full
//            padded input, all_reduce and all_to_all their buffer;
//   wire     bytes a rank sends under ring / pairwise algorithms:
//            all_gather, reduce_scatter  ceil(S/n) * (n-1)
//            all_reduce                  2 * S * (n-1) / n
//            all_to_all                  B * (n-1) / n
// On a group of size 1 every collective is a no-op and costs nothing.
//
// Worked example (DDP vs ZeRO-3 for P parameters over n ranks, wire):
//   DDP  all_reduce(grads)                      2 P (n-1)/n
//   FSDP all_gather x2 + reduce_scatter          3 P (n-1)/n   -> 1.5x DDP
#include <array>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "plan.hpp"
#include "static_vector.hpp"

namespace veomni {

struct precision {
  long param_bytes = 4;   // parameters as stored and gathered
  long grad_bytes = 4;    // gradient reduction
  long comm_bytes = 4;    // activations exchanged (Ulysses, EP)
  long optimizer_state_bytes = 8;  // AdamW: two fp32 moments per parameter
  long master_bytes = 0;  // fp32 master copy when params are not fp32 (4), else 0
};

// Tokens each rank processes per micro-step, by node (its modality's tokens:
// text tokens for the language model, patches for a vision encoder, ...).
namespace detail {
// Called when a workload has no room for another node's entry. Not constexpr:
// in a constant expression the compiler's error names this function; at run
// time it throws. (An entry is never dropped.)
[[noreturn]] inline void workload_holds_at_most_32_nodes_with_their_own_tokens(std::string_view node) {
  throw std::length_error("veomni::workload::with(\"" + std::string(node) +
                          "\"): a workload holds at most 32 nodes whose tokens differ from default_tokens");
}
}  // namespace detail

struct workload {
  struct node_tokens { std::string_view node; long tokens = 0; };
  static constexpr std::size_t capacity = 32;
  long default_tokens = 0;
  std::array<node_tokens, capacity> per_node{};  // filled from the front
  long micro_batches = 1;
  // The recipe's adapters (Adapt<LoRA>) as set at run time
  // (parallel::options::adapters): their rank, their layer kinds.
  adapter_settings adapters{};

  constexpr workload& with(std::string_view node, long tokens) {
    for (auto& e : per_node)
      if (e.node.empty() || e.node == node) { e = {node, tokens}; return *this; }
    detail::workload_holds_at_most_32_nodes_with_their_own_tokens(node);
  }
  constexpr long tokens_for(std::string_view node) const {
    for (const auto& e : per_node) {
      if (e.node.empty()) break;
      if (e.node == node) return e.tokens;
    }
    return default_tokens;
  }
};

struct op_cost {
  long group = 1;          // ranks in the op's group
  long calls = 0;          // per step (0 when the group has one rank)
  long elements = 0;       // logical elements of the tensor per call
  long payload_bytes = 0;  // per call
  double wire_bytes = 0;   // per call
  constexpr long step_payload() const { return calls * payload_bytes; }
  constexpr double step_wire() const { return static_cast<double>(calls) * wire_bytes; }
};

constexpr long ceil_div(long a, long b) { return b <= 0 ? 0 : (a + b - 1) / b; }

// Elements of a unit's adapters: the rank x the adapter_width of its layers
// of the adapted kinds, as the run sets them (adapter_settings) or the policy.
template <Component C>
constexpr long adapter_elements(const adapter_shape& a, const typename C::dims& d, scope s,
                                const adapter_settings& run = {}) {
  const adapter_shape e = run.applied_to(a);
  long width = 0;
  for (std::size_t i = 0; i < C::layers.size(); ++i)
    if (C::layers[i].where == s && has_kind(e.kinds, C::layers[i].kind)) width += C::shape(i, d).adapter_width;
  return e.rank * width;
}

namespace detail {
template <Component C>
constexpr long op_elements(const plan_op& o, const typename C::dims& d, const mesh_shape& m, long tokens,
                           const adapter_settings& adapters) {
  if (o.tensor == tensor_role::adapter_grads) return adapter_elements<C>(o.adapter, d, o.target.unit, adapters);
  if (o.tensor == tensor_role::expert_adapter_grads)  // the local experts' share
    return adapter_elements<C>(o.adapter, d, o.target.unit, adapters) / m[axis::ep::name];
  if (o.target.is_unit) {
    const bool experts = o.tensor == tensor_role::expert_params || o.tensor == tensor_role::expert_grads;
    long s = experts ? unit_expert_params<C>(d, o.target.unit) / m[axis::ep::name]
                     : unit_params<C>(d, o.target.unit, !o.experts_separate);
    if (!o.pre_sharded.empty()) s = ceil_div(s, m.size(o.pre_sharded));
    return s;
  }
  const geometry g = C::shape(o.target.layer, d);
  switch (o.tensor) {
    case tensor_role::q:
    case tensor_role::attn_out: return tokens * g.q_width;
    case tensor_role::k:
    case tensor_role::v: return tokens * g.kv_width;
    case tensor_role::kv_block: return tokens * m.size(o.over) * 2 * g.kv_width;  // gathered k and v of all ranks
    case tensor_role::dispatch:
    case tensor_role::combine: return tokens * g.top_k * g.width;
    case tensor_role::scalar: return 1;
    case tensor_role::router_stats: return 2 * g.experts + 1;
    default: return g.params;
  }
}

// Per-node work keyed on the components (G::components), not on the graph:
// the callback is instantiated once per distinct component, not once per
// node, and its symbols do not carry the node names.
template <class Comps>
struct comps_info;
template <class... C>
struct comps_info<comps<C...>> {
  template <class Cx>
  static constexpr long heads() {
    long n = 0;
    for (const auto& l : Cx::layers) n += l.kind == layer_kind::head;
    return n;
  }
  static constexpr long loss_heads = (heads<C>() + ... + 0);
  // f(std::type_identity<C>{}, dims of node i) for node i only
  template <class F>
  static constexpr void one(std::size_t i, const dims_of<C...>& t, F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((I == i ? (f(std::type_identity<C>{}, detail::slot<I>(t)), 0) : 0), ...);
    }(std::index_sequence_for<C...>{});
  }
  // f(std::type_identity<C>{}, i, dims of node i) for every node i
  template <class F>
  static constexpr void all(const dims_of<C...>& t, F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (f(std::type_identity<C>{}, I, detail::slot<I>(t)), ...);
    }(std::index_sequence_for<C...>{});
  }
};

// Loss terms a model produces: one per head layer (text, image codes).
template <Model G>
constexpr long loss_heads() {
  return comps_info<typename G::components>::loss_heads;
}

constexpr long element_bytes(tensor_role t, const precision& p) {
  switch (t) {
    case tensor_role::params:
    case tensor_role::expert_params: return p.param_bytes;
    case tensor_role::grads:
    case tensor_role::expert_grads:
    case tensor_role::adapter_grads:
    case tensor_role::expert_adapter_grads: return p.grad_bytes;
    case tensor_role::scalar:
    case tensor_role::loss_stats:
    case tensor_role::router_stats:
    case tensor_role::grad_norm: return 4;  // statistics stay fp32
    default: return p.comm_bytes;
  }
}
}  // namespace detail

// The element type an op moves in a run of precision `prec`: its own dtype
// when its policy fixed one (fsdp_options), else the run's, by role: a
// 2-byte parameter, gradient or activation is bf16, the statistics stay
// fp32. What `describe` prints, what cost_of prices, and what the runtime
// gathers, reduces and exchanges in (parallel::options::prec).
constexpr dtype run_dtype(const plan_op& o, const precision& prec) {
  if (o.dt != dtype::unspecified) return o.dt;
  return detail::element_bytes(o.tensor, prec) == 2 ? dtype::bf16 : dtype::f32;
}

namespace detail {
// The parts of cost_of: the op's group (and a step-level op's calls and
// elements), a node's op's calls and elements, then the bytes.
constexpr op_cost cost_start(const plan_op& o, const mesh_shape& m, const workload& w, std::size_t node_count,
                             long loss_heads) {
  op_cost c;
  c.group = m.size(o.over);
  if (o.node_index == node_count) {  // step-level: loss statistics, gradient norm
    // optimizer-phase ops run once per step, the others once per micro-batch
    const long per_step = o.ph == phase::optimizer ? 1 : w.micro_batches;
    c.calls = c.group > 1 ? per_step : 0;
    c.elements = o.tensor == tensor_role::loss_stats ? 2 * loss_heads : 1;
  }
  return c;
}
template <Component C>
constexpr void cost_in_node(op_cost& c, const plan_op& o, const typename C::dims& nd, const mesh_shape& m,
                            const workload& w) {
  const long per_step = o.ph == phase::optimizer ? 1 : w.micro_batches;
  c.calls = c.group > 1 ? repeats<C>(o, nd) * per_step : 0;
  c.elements = op_elements<C>(o, nd, m, w.tokens_for(o.node), w.adapters);
}
constexpr void cost_finish(op_cost& c, const plan_op& o, const precision& prec);

// The plan's ops grouped by node, in plan order within a node: node i's are
// op[first[i]] .. op[first[i + 1]] (the step's under i = NodeCount). So that
// a walk over the nodes visits each op once, not every op per node.
template <std::size_t Size, std::size_t NodeCount>
struct ops_by_node {
  std::size_t first[NodeCount + 2]{};
  std::size_t op[Size + 1]{};
};
template <std::size_t NodeCount, std::size_t Size>
constexpr ops_by_node<Size, NodeCount> group_by_node(const std::array<plan_op, Size>& ops) {
  ops_by_node<Size, NodeCount> r{};
  for (std::size_t i = 0; i < Size; ++i) ++r.first[ops[i].node_index + 1];
  for (std::size_t n = 0; n <= NodeCount; ++n) r.first[n + 1] += r.first[n];
  std::size_t fill[NodeCount + 1]{};
  for (std::size_t n = 0; n <= NodeCount; ++n) fill[n] = r.first[n];
  for (std::size_t i = 0; i < Size; ++i) r.op[fill[ops[i].node_index]++] = i;
  return r;
}

// cost_of for every op of a plan, indexed like its ops: one walk over the
// nodes (each node's dims read once), not a walk over the nodes per op.
// Keyed on the components and the op count, not on the plan: the symbols
// the compiler makes of it (and of its callback) do not spell the graph.
template <class... C, std::size_t Size>
constexpr std::array<op_cost, Size> op_costs(comps<C...>, const std::array<plan_op, Size>& ops, const dims_of<C...>& d,
                                             const mesh_shape& m, const workload& w, const precision& prec) {
  using info = comps_info<comps<C...>>;
  std::array<op_cost, Size> c{};
  for (std::size_t i = 0; i < Size; ++i) c[i] = cost_start(ops[i], m, w, sizeof...(C), info::loss_heads);
  const auto by = group_by_node<sizeof...(C)>(ops);
  info::all(d, [&](auto component, std::size_t node, const auto& nd) {
    using Cx = typename decltype(component)::type;
    for (std::size_t k = by.first[node]; k < by.first[node + 1]; ++k) cost_in_node<Cx>(c[by.op[k]], ops[by.op[k]], nd, m, w);
  });
  for (std::size_t i = 0; i < Size; ++i) cost_finish(c[i], ops[i], prec);
  return c;
}
template <class P>
constexpr std::array<op_cost, P::size> op_costs(const typename P::model::dims& d, const mesh_shape& m,
                                                const workload& w, const precision& prec) {
  return op_costs(typename P::model::components{}, P::ops, d, m, w, prec);
}
template <class... C>
constexpr op_cost cost_of(comps<C...>, const plan_op& o, const dims_of<C...>& d, const mesh_shape& m,
                          const workload& w, const precision& prec) {
  using info = comps_info<comps<C...>>;
  op_cost c = cost_start(o, m, w, sizeof...(C), info::loss_heads);
  if (o.node_index < sizeof...(C))
    info::one(o.node_index, d, [&](auto component, const auto& nd) {
      cost_in_node<typename decltype(component)::type>(c, o, nd, m, w);
    });
  cost_finish(c, o, prec);
  return c;
}
}  // namespace detail

// Cost of one plan op of plan P.
template <class P>
constexpr op_cost cost_of(const plan_op& o, const typename P::model::dims& d, const mesh_shape& m,
                          const workload& w, const precision& prec = {}) {
  return detail::cost_of(typename P::model::components{}, o, d, m, w, prec);
}

namespace detail {
constexpr void cost_finish(op_cost& c, const plan_op& o, const precision& prec) {
  const long b = bytes_of(run_dtype(o, prec));
  const long n = c.group;
  const long shard = ceil_div(c.elements, n);
  switch (o.coll) {
    case collective::all_gather:
      c.payload_bytes = shard * b;
      c.wire_bytes = static_cast<double>(shard * (n - 1) * b);
      break;
    case collective::reduce_scatter:
      c.payload_bytes = shard * n * b;
      c.wire_bytes = static_cast<double>(shard * (n - 1) * b);
      break;
    case collective::all_reduce:
      c.payload_bytes = c.elements * b;
      c.wire_bytes = 2.0 * static_cast<double>(c.elements * b) * static_cast<double>(n - 1) / static_cast<double>(n);
      break;
    case collective::all_to_all:
      c.payload_bytes = c.elements * b;
      c.wire_bytes = static_cast<double>(c.elements * b) * static_cast<double>(n - 1) / static_cast<double>(n);
      break;
  }
  if (n <= 1) c.payload_bytes = 0, c.wire_bytes = 0;
}
}  // namespace detail

struct axis_traffic {
  axis_set over;
  long calls = 0;
  long payload_bytes = 0;
  double wire_bytes = 0;
};

struct step_traffic {
  static_vector<axis_traffic, 16> by_axis;
  long calls = 0;
  long payload_bytes = 0;
  double wire_bytes = 0;

  constexpr const axis_traffic* find(const axis_set& a) const {
    for (const auto& t : by_axis)
      if (t.over == a) return &t;
    return nullptr;
  }
};

// Bytes per rank per step, grouped by the axis set each op runs over.
template <class P>
constexpr step_traffic traffic(const typename P::model::dims& d, const mesh_shape& m, const workload& w,
                               const precision& prec = {}) {
  step_traffic t;
  const auto costs = detail::op_costs<P>(d, m, w, prec);
  for (std::size_t i = 0; i < P::size; ++i) {
    const plan_op& o = P::ops[i];
    const op_cost& c = costs[i];
    axis_traffic* slot = nullptr;
    for (std::size_t a = 0; a < t.by_axis.size(); ++a)
      if (t.by_axis[a].over == o.over) slot = &t.by_axis[a];
    if (!slot) {
      t.by_axis.push_back({o.over, 0, 0, 0});
      slot = &t.by_axis[t.by_axis.size() - 1];
    }
    slot->calls += c.calls;
    slot->payload_bytes += c.step_payload();
    slot->wire_bytes += c.step_wire();
    t.calls += c.calls;
    t.payload_bytes += c.step_payload();
    t.wire_bytes += c.step_wire();
  }
  return t;
}

struct memory_per_rank {
  long params = 0;     // bytes
  long grads = 0;
  long optimizer = 0;  // moments + master copy
  constexpr long total() const { return params + grads + optimizer; }
};

namespace detail {
// memory<P>'s walk, keyed on the components and the op count (see op_costs).
template <class... C, std::size_t Size>
constexpr memory_per_rank memory_of(comps<C...>, const std::array<plan_op, Size>& ops,
                                    const std::array<placement_list, sizeof...(C)>& placements,
                                    const dims_of<C...>& d, const mesh_shape& m, const precision& prec,
                                    const adapter_settings& adapters) {
  long param_el = 0, grad_el = 0, opt_el = 0, adapter_el = 0;
  const auto by = group_by_node<sizeof...(C)>(ops);
  comps_info<comps<C...>>::all(d, [&](auto component, std::size_t node, const auto& nd) {
    using Cx = typename decltype(component)::type;
    long dense = 1, grads = 0, opt = 0, ep_group = 1, expert_flat = 1;
    bool experts_separate = false, frozen = false;
    for (std::size_t k = by.first[node]; k < by.first[node + 1]; ++k)
      if (const plan_op& o = ops[by.op[k]]; is_adapter_grad_role(o.tensor))
        adapter_el += (o.target.unit == scope::block ? Cx::blocks(nd) : 1) *
                      adapter_elements<Cx>(o.adapter, nd, o.target.unit, adapters) /
                      (o.tensor == tensor_role::expert_adapter_grads ? m[axis::ep::name] : 1);
    for (const auto& pl : placements[node]) {
      experts_separate = experts_separate || pl.tensor == placed_tensor::expert_params;
      frozen = frozen || pl.tensor == placed_tensor::adapters || pl.tensor == placed_tensor::expert_adapters;
      if (pl.how.kind != placement_kind::shard) continue;
      const long g = m.size(pl.over);
      switch (pl.tensor) {
        case placed_tensor::params: dense *= g; break;
        case placed_tensor::grads: grads = (grads ? grads : 1) * g; break;
        case placed_tensor::optimizer_state: opt = (opt ? opt : 1) * g; break;
        case placed_tensor::expert_params: (pl.how.dim == 0 ? ep_group : expert_flat) *= g; break;
        default: break;
      }
    }
    // replicated parameters, optimizer split over n: the whole padded to a multiple of n
    const long pad = dense == 1 && opt > 1 ? opt : 1;
    if (!grads) grads = dense;
    if (!opt) opt = dense;
    for (scope s : {scope::model, scope::block}) {
      if (!has_scope<Cx>(s)) continue;
      const long reps = s == scope::block ? Cx::blocks(nd) : 1;
      const long p = unit_params<Cx>(nd, s, !experts_separate);
      const long e = experts_separate ? ceil_div(unit_expert_params<Cx>(nd, s) / ep_group, expert_flat) : 0;
      const long whole = ceil_div(p, pad) * pad;
      param_el += reps * ((dense > 1 ? ceil_div(p, dense) : whole) + e);
      if (frozen) continue;
      grad_el += reps * ((grads > 1 ? ceil_div(p, grads) : whole) + e);
      opt_el += reps * (ceil_div(p, opt) + e);
    }
  });
  memory_per_rank r;
  r.params = param_el * prec.param_bytes + adapter_el * 4;
  r.grads = grad_el * prec.grad_bytes + adapter_el * 4;
  r.optimizer = opt_el * (prec.optimizer_state_bytes + prec.master_bytes) + adapter_el * prec.optimizer_state_bytes;
  return r;
}
}  // namespace detail

// Parameter, gradient and optimizer-state bytes one rank holds. An adapted
// node (Adapt<LoRA>) holds its frozen parameters as its Shard policy places
// them but no gradient or optimizer state of theirs; its adapters are whole
// on every rank (those of experts split by EP: the local experts'), with their gradients and optimizer state, in fp32 (the
// optimizer's moments at optimizer_state_bytes). A unit's
// dense params are divided (with padding) by the group of the axes its
// policies shard them over; experts first by ep (whole experts), then by the
// axes that shard expert_params' flat dim (ep_dp). Gradients and optimizer
// state follow the params unless a policy places them (ZeRO-1/2). Replicated
// parameters whose optimizer state is split over n ranks are held padded to a
// multiple of n (equal shards to update and gather), and so are their whole
// gradients (ZeRO-1):
//   P = 10, n = 4:  ZeRO-2 params 12, grads 3, optimizer 3;  ZeRO-1 params 12, grads 12, optimizer 3.
template <class P>
constexpr memory_per_rank memory(const typename P::model::dims& d, const mesh_shape& m, const precision& prec = {},
                                 const adapter_settings& adapters = {}) {
  return detail::memory_of(typename P::model::components{}, P::ops, P::placements, d, m, prec, adapters);
}

}  // namespace veomni
