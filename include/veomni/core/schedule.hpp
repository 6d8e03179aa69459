#pragma once
// The schedule: when, inside one training step, each op of the plan is
// issued. The plan orders ops by phase, node and layer, once per op; the
// schedule expands it for runtime sizes (each block-scope op once per block)
// into op *instances*, and places every instance at the point of the
// computation that issues it, its trigger. The runtime walks the schedule
// (parallel/executor.hpp): an instance is issued when its trigger has been
// reached and every instance before it has been issued, so the collectives
// a rank runs in a step are the schedule's, in its order; the collective
// trace shows it, op for op (tests/parallel).
//
// The schedule is the plan's order with three documented moves, each a
// runtime option that turns it off:
//   forward_prefetch   block b+1's forward all_gather is issued when block b
//                      starts, right after block b's own (same node);
//   backward_prefetch  the backward all_gather of the block backward reaches
//                      next is issued when the current block's backward
//                      starts (at the end of forward for the first one);
//   reduce lag         an all_reduce of a reduce_scatter's output (HSDP over
//                      dp_replicate) is issued after the next
//                      max_reduces_in_flight reduce_scatters (by then its
//                      own has been waited for), or at the end of backward.
// With activation checkpointing, a block's forward layer ops run again at
// the start of its backward (instances marked `recompute`).
//
// Worked example: dense_lm (2 blocks), lm: Shard<FSDP>, Split<Ulysses>,
// dp_shard = sp = 2, one micro-batch:
//   node_begin(lm)            all_gather params root
//   block_begin(lm, 0)        all_gather params block 0, all_gather params block 1
//   request                   all_to_all q, k, v, attn_out (block 0)
//   block_begin(lm, 1)        -
//   request                   all_to_all q, k, v, attn_out (block 1)
//   request                   all_reduce loss_stats (step)
//   block_backward_begin(1)   - (block 1 kept its parameters)
//   request                   all_to_all attn_out, v, k, q (block 1)
//   grads_ready(lm, 1)        reduce_scatter grads block 1
//   block_backward_begin(0)   all_gather params block 0 (its regather)
//   ...                       all_to_all attn_out, v, k, q; reduce_scatter block 0; reduce_scatter root
//   optimizer: request        all_reduce grad_norm (step)
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cost.hpp"
#include "plan.hpp"

namespace veomni {

// ---- what the runtime does for an op on a unit ---------------------------------------------

// Ops on a unit (params, grads) have one standard meaning each, which the
// runtime carries out for any policy, built-in or a user's, on the storage
// the node's placements describe (parallel/storage.hpp). Ops on layers
// (activations) are carried out by the policy's own runtime half.
enum class unit_op_kind {
  none,            // not a unit op with a standard meaning
  gather,          // forward all_gather(params): the unit's parameters from their shards
  regather,        // backward all_gather(params): again, after forward freed them
  reduce_scatter,  // backward reduce_scatter(grads): the unit's gradient into this rank's shard
  all_reduce,      // backward all_reduce(grads): the whole gradient, summed over replicas
  all_reduce_shard,  // backward all_reduce(grads) of a reduce_scatter's output (pre_sharded: HSDP)
  update_gather,   // optimizer all_gather(params): the updated shards into the whole parameters (ZeRO)
};

constexpr bool is_param_role(tensor_role t) { return t == tensor_role::params || t == tensor_role::expert_params; }
constexpr bool is_grad_role(tensor_role t) {
  return t == tensor_role::grads || t == tensor_role::expert_grads || is_adapter_grad_role(t);
}
// A unit's parameter groups: its dense parameters, its local experts, its
// adapters, its local experts' adapters (split with the experts).
inline constexpr int unit_groups = 4;
// Which group an op moves: 0 dense, 1 its local experts, 2 its adapters, 3 its local experts' adapters.
constexpr int group_of(tensor_role t) {
  if (t == tensor_role::adapter_grads) return 2;
  if (t == tensor_role::expert_adapter_grads) return 3;
  return t == tensor_role::expert_params || t == tensor_role::expert_grads ? 1 : 0;
}

constexpr unit_op_kind classify(const op_target& target, phase ph, collective c, tensor_role t, const axis_set& pre) {
  if (!target.is_unit) return unit_op_kind::none;
  if (c == collective::all_gather && is_param_role(t)) {
    if (ph == phase::forward) return unit_op_kind::gather;
    if (ph == phase::backward) return unit_op_kind::regather;
    return unit_op_kind::update_gather;
  }
  if (ph != phase::backward || !is_grad_role(t)) return unit_op_kind::none;
  if (c == collective::reduce_scatter && pre.empty()) return unit_op_kind::reduce_scatter;
  if (c == collective::all_reduce) return pre.empty() ? unit_op_kind::all_reduce : unit_op_kind::all_reduce_shard;
  return unit_op_kind::none;
}
constexpr unit_op_kind classify(const op_spec& o) { return classify(o.target, o.ph, o.coll, o.tensor, o.pre_sharded); }
constexpr unit_op_kind classify(const plan_op& o) { return classify(o.target, o.ph, o.coll, o.tensor, o.pre_sharded); }

// ---- triggers and instances ------------------------------------------------------------------

enum class trigger_kind : std::uint8_t {
  node_begin,            // forward reaches a node: its root unit's parameters are needed
  block_begin,           // forward reaches block `block` of a node
  request,               // the computation asks for this op itself (a layer's all_to_all, the loss statistics)
  forward_end,           // every node's forward is done; the loss statistics come next
  block_backward_begin,  // backward reaches a block wrapped by the runtime (sharded, or checkpointed)
  grads_ready,           // a unit's gradient (one group) is complete
  backward_end,          // backward is done
  update_end,            // the optimizer has updated this rank's parameters
};

constexpr std::string_view to_string(trigger_kind k) {
  switch (k) {
    case trigger_kind::node_begin: return "node_begin";
    case trigger_kind::block_begin: return "block_begin";
    case trigger_kind::request: return "request";
    case trigger_kind::forward_end: return "forward_end";
    case trigger_kind::block_backward_begin: return "block_backward_begin";
    case trigger_kind::grads_ready: return "grads_ready";
    case trigger_kind::backward_end: return "backward_end";
    case trigger_kind::update_end: return "update_end";
  }
  return "?";
}

struct trigger {
  trigger_kind kind = trigger_kind::request;
  std::size_t node = 0;  // G::size: the step
  long block = -1;       // -1: the node's root
  int group = 0;         // grads_ready: 0 dense, 1 experts, 2 adapters, 3 expert adapters
  friend constexpr bool operator==(const trigger&, const trigger&) = default;
};

struct scheduled_op {
  std::size_t op = 0;      // index into P::ops
  long block = -1;         // the block of a block-scope op; -1 for an op that runs once per node
  bool recompute = false;  // a forward layer op run again in backward (activation checkpointing)
  bool issued = true;      // its group has more than one rank (else no collective runs: its local part only)
  trigger when;
  friend constexpr bool operator==(const scheduled_op&, const scheduled_op&) = default;
};

struct schedule_options {
  bool checkpoint = false;  // every block's forward runs again in its backward
  bool forward_prefetch = true;
  bool backward_prefetch = true;
  int max_reduces_in_flight = 1;  // the reduce lag (0: every such all_reduce at the end of backward)
};

struct step_schedule {
  std::vector<scheduled_op> micro;      // one micro-batch's forward and backward
  std::vector<scheduled_op> optimizer;  // once per step, after the last micro-batch
};

// Is a node's parameter storage flat-sharded (its blocks are then wrapped
// by the runtime: gathered, freed, gathered again)? From its placements.
template <class P>
constexpr bool flat_sharded(std::size_t node) {
  for (const auto& d : P::placements[node])
    if (d.how.kind == placement_kind::shard && ((d.tensor == placed_tensor::params && d.how.dim == 0) ||
                                                (d.tensor == placed_tensor::expert_params && d.how.dim == 1)))
      return true;
  return false;
}

// "lm block 3 backward all_to_all(q) over sp [Split<Ulysses>]", for messages.
template <class P>
std::string describe_instance(const scheduled_op& s) {
  const plan_op& o = P::ops[s.op];
  std::string out(o.node);
  if (s.block >= 0) {
    out += " block ";
    out += std::to_string(s.block);
  } else if (o.target.is_unit) {
    out += " root";
  }
  if (!o.target.is_unit) {
    out += ' ';
    out += o.where;
  }
  out += ' ';
  out += to_string(o.ph);
  if (s.recompute) out += " (recompute)";
  out += ' ';
  out += to_string(o.coll);
  out += '(';
  out += to_string(o.tensor);
  out += ") over ";
  for (std::size_t i = 0; i < o.over.count; ++i) {
    if (i) out += '*';
    out += o.over.names[i];
  }
  out += " [";
  out += o.policy;
  out += ']';
  return out;
}

namespace detail {

template <class P>
struct schedule_builder {
  using G = typename P::model;
  const typename G::dims& d;
  const mesh_shape& m;
  const schedule_options& opt;
  std::vector<scheduled_op> out;

  long blocks_of(std::size_t node) const {
    long b = 0;
    for_each_node<G>([&](auto I) {
      if (I.value == node) b = G::template component_at<I.value>::blocks(veomni::get<I.value>(d));
    });
    return b;
  }
  // Is a layer of node `node` a block layer; where does a model-scope layer
  // sit relative to the blocks (before: -1, after: +1)?
  int side_of(std::size_t node, std::size_t layer) const {
    int s = 0;
    for_each_node<G>([&](auto I) {
      if (I.value != node) return;
      using C = typename G::template component_at<I.value>;
      if (C::layers[layer].where == scope::block) return;
      std::size_t first = C::layers.size();
      for (std::size_t i = 0; i < C::layers.size(); ++i)
        if (C::layers[i].where == scope::block && first == C::layers.size()) first = i;
      s = layer < first ? -1 : 1;
    });
    return s;
  }
  bool runs(const plan_op& o, std::size_t node, long block) const {
    if (o.node_index != node) return false;
    if (block < 0) return o.repeat != scope::block;
    if (o.repeat != scope::block) return false;
    return !(o.target.skip_last_block && block == blocks_of(node) - 1);
  }
  void emit(std::size_t i, long block, trigger t, bool recompute = false) {
    out.push_back({i, block, recompute, m.size(P::ops[i].over) > 1, t});
  }
  // Every op of `node` at `block` in phase `ph` matching `pred`, in plan order.
  template <class F>
  void each(std::size_t node, long block, phase ph, F&& pred, trigger t, bool recompute = false) {
    for (std::size_t i = 0; i < P::size; ++i) {
      const plan_op& o = P::ops[i];
      if (o.ph == ph && runs(o, node, block) && pred(o)) emit(i, block, t, recompute);
    }
  }

  static bool unit_fwd(const plan_op& o) { return o.target.is_unit; }
  static bool layer(const plan_op& o) { return !o.target.is_unit; }

  void forward_unit_ops(std::size_t node, long block, trigger t) {
    each(node, block, phase::forward, unit_fwd, t);
  }
  void backward_gathers(std::size_t node, long block, trigger t) {
    each(node, block, phase::backward, [](const plan_op& o) { return classify(o) == unit_op_kind::regather; }, t);
  }
  void layer_ops(std::size_t node, long block, phase ph, int side, bool recompute = false) {
    each(node, block, ph, [&](const plan_op& o) { return layer(o) && (block >= 0 || side_of(node, o.target.layer) == side); },
         {trigger_kind::request, node, block}, recompute);
  }
  void reductions(std::size_t node, long block) {
    for (int g = 0; g < unit_groups; ++g)
      each(node, block, phase::backward,
           [&](const plan_op& o) {
             return o.target.is_unit && classify(o) != unit_op_kind::regather && group_of(o.tensor) == g;
           },
           {trigger_kind::grads_ready, node, block, g});
  }
  // Any op the standard table does not know, on a unit (a user policy's):
  // at the unit's natural point, as a request.
  void step_ops(phase ph) {
    for (std::size_t i = 0; i < P::size; ++i)
      if (P::ops[i].ph == ph && P::ops[i].node_index == G::size) emit(i, -1, {trigger_kind::request, G::size, -1});
  }

  void build_micro() {
    std::vector<std::pair<std::size_t, long>> wrapped;  // blocks the runtime wraps, in forward order
    for (std::size_t node : G::order) {
      const bool wraps = opt.checkpoint || flat_sharded<P>(node);
      forward_unit_ops(node, -1, {trigger_kind::node_begin, node, -1});
      layer_ops(node, -1, phase::forward, -1);
      const long nb = blocks_of(node);
      for (long b = 0; b < nb; ++b) {
        const trigger t{trigger_kind::block_begin, node, b};
        if (b == 0 || !opt.forward_prefetch) forward_unit_ops(node, b, t);
        if (opt.forward_prefetch && b + 1 < nb) forward_unit_ops(node, b + 1, t);
        layer_ops(node, b, phase::forward, 0);
        if (wraps) wrapped.emplace_back(node, b);
      }
      layer_ops(node, -1, phase::forward, 1);
    }
    if (opt.backward_prefetch && !wrapped.empty())
      backward_gathers(wrapped.back().first, wrapped.back().second, {trigger_kind::forward_end, G::size, -1});
    step_ops(phase::forward);
    std::size_t w = wrapped.size();
    for (auto it = G::order.rbegin(); it != G::order.rend(); ++it) {
      const std::size_t node = *it;
      const bool wraps = opt.checkpoint || flat_sharded<P>(node);
      layer_ops(node, -1, phase::backward, 1);
      for (long b = blocks_of(node) - 1; b >= 0; --b) {
        if (wraps) {
          --w;
          const trigger t{trigger_kind::block_backward_begin, node, b};
          if (!opt.backward_prefetch) backward_gathers(node, b, t);
          if (opt.backward_prefetch && w > 0) backward_gathers(wrapped[w - 1].first, wrapped[w - 1].second, t);
          if (opt.checkpoint) layer_ops(node, b, phase::forward, 0, true);
        }
        layer_ops(node, b, phase::backward, 0);
        reductions(node, b);
      }
      layer_ops(node, -1, phase::backward, -1);
      reductions(node, -1);
    }
    step_ops(phase::backward);
    apply_reduce_lag();
  }

  // HSDP: an all_reduce of a reduce_scatter's output goes after the next
  // max_reduces_in_flight issued reduce_scatters, or to the end of backward.
  void apply_reduce_lag() {
    std::vector<scheduled_op> lagged, result;
    std::vector<std::size_t> due;  // per lagged op: issued reduce_scatters still to pass
    auto is_rs = [](const scheduled_op& s) {
      return s.issued && classify(P::ops[s.op]) == unit_op_kind::reduce_scatter;
    };
    for (std::size_t i = 0; i < out.size(); ++i) {
      const scheduled_op& s = out[i];
      if (classify(P::ops[s.op]) == unit_op_kind::all_reduce_shard) {
        // its reduce_scatter: the latest one before it on the same unit and group
        bool producer_issued = false;
        for (std::size_t j = result.size(); j-- > 0;) {
          const plan_op& p = P::ops[result[j].op];
          if (classify(p) == unit_op_kind::reduce_scatter && p.node_index == P::ops[s.op].node_index &&
              result[j].block == s.block && group_of(p.tensor) == group_of(P::ops[s.op].tensor)) {
            producer_issued = result[j].issued;
            break;
          }
        }
        if (producer_issued) {
          lagged.push_back(s);
          due.push_back(opt.max_reduces_in_flight > 0 ? static_cast<std::size_t>(opt.max_reduces_in_flight) : SIZE_MAX);
          continue;
        }
      }
      result.push_back(s);
      if (is_rs(s)) {
        // release, oldest first, those whose count of later reduce_scatters is reached
        for (auto& n : due)
          if (n != SIZE_MAX && n > 0) --n;
        while (!lagged.empty() && due.front() == 0) {
          scheduled_op l = lagged.front();
          l.when = s.when;
          result.push_back(l);
          lagged.erase(lagged.begin());
          due.erase(due.begin());
        }
      }
    }
    for (auto& l : lagged) {
      l.when = {trigger_kind::backward_end, G::size, -1};
      result.push_back(l);
    }
    result.swap(out);
  }

  void build_optimizer() {
    step_ops(phase::optimizer);
    for (std::size_t node : G::order)
      for (long b = -1; b < blocks_of(node); ++b)
        each(node, b, phase::optimizer, unit_fwd, {trigger_kind::update_end, G::size, -1});
  }
};

}  // namespace detail

// The step's schedule for plan P at these sizes. Every op instance of the
// plan appears exactly once (per micro-batch, or once in `optimizer`).
template <class P>
step_schedule schedule(const typename P::model::dims& d, const mesh_shape& m, const schedule_options& opt = {}) {
  step_schedule s;
  detail::schedule_builder<P> micro{d, m, opt, {}};
  micro.build_micro();
  s.micro = std::move(micro.out);
  detail::schedule_builder<P> optim{d, m, opt, {}};
  optim.build_optimizer();
  s.optimizer = std::move(optim.out);
  return s;
}

// The payload bytes one issued instance moves (the communicator's count),
// for the tokens its node holds in this micro-batch.
template <class P>
long instance_bytes(const scheduled_op& s, const typename P::model::dims& d, const mesh_shape& m, const workload& w,
                    const precision& prec = {}) {
  return cost_of<P>(P::ops[s.op], d, m, w, prec).payload_bytes;
}

}  // namespace veomni
