#pragma once
// Parameter storage: how each unit's parameters are held on this rank, read
// from the placements of the node's policies (core/policy.hpp), never from
// which policy placed them.
//
// A unit (a node's root, or one block) has four groups: its dense parameters;
// when an Experts<> policy places expert_params Shard(0) over E, its local
// experts (the rows [r E/|E|, (r+1) E/|E|) of every expert tensor, r this
// rank's place in E); when an Adapt<> policy places adapters, its adapters
// (LoRA: lora_A [rank, in] and lora_B [out, rank] for each linear map of the
// adapted layer kinds, whole on every rank; an expert tensor's: [E, rank, in]
// and [E, out, rank]); and when it places expert_adapters Shard(0) over E,
// the adapters of its local experts (their rows, as the experts'). The
// adapters are then all it trains: the first two groups are frozen (no
// gradient, no optimizer state).
// Each group is one flat buffer, in spec order, held one of three ways:
//
//   flat_shard   params Shard(0) / expert_params Shard(1) over A (FSDP, HSDP):
//                this rank keeps elements [r per, (r+1) per) of the flat
//                padded to |A| per; it is what the optimizer updates (the
//                master) and where the gradient is reduce-scattered to;
//                compute gathers the whole.
//   whole        replicated (DDP, or no Shard policy): the flat itself is
//                master, compute and gradient home.
//   whole_split  replicated, optimizer_state Shard(0) over C (ZeRO-1, ZeRO-2):
//                compute is the whole flat, padded to |C| per; the master is
//                a view of this rank's part of it; the gradient home is a
//                shard over C when grads are placed Shard(0) over C (ZeRO-2:
//                reduce-scattered into it) or the whole flat (ZeRO-1:
//                all-reduced, the master's gradient is a view of its part).
//
// Worked example: a block of 10 elements, FSDP over 4 ranks: per = 3, the
// flat is padded to 12, rank 2 holds elements [6, 9); ZeRO-2 over 4 ranks:
// every rank holds all 12 (10 + 2 padding), rank 2's master views [6, 9)
// and its gradient home is a 3-element shard.
#include <torch/torch.h>
#include <ATen/native/Resize.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../comm/communicator.hpp"
#include "../core/schedule.hpp"
#include "../nn/init.hpp"
#include "../nn/model.hpp"
#include "options.hpp"

namespace veomni::parallel {

// Virtual concatenation of parameter ranges: a unit's flat buffer, or its
// local experts (a contiguous range of each [E, ...] expert parameter).
struct segment {
  nn::param_spec spec;
  int64_t begin = 0, end = 0;  // element range of spec
};

inline int64_t segments_numel(const std::vector<segment>& s) {
  int64_t n = 0;
  for (const auto& x : s) n += x.end - x.begin;
  return n;
}

namespace detail {
// Elements [a, b) of the concatenation through f(segment, lo, hi) per
// overlapping piece, zeros past its end.
template <class F>
at::Tensor concat_range(const std::vector<segment>& segs, int64_t a, int64_t b, F&& f) {
  std::vector<at::Tensor> parts;
  int64_t off = 0;
  for (const auto& s : segs) {
    const int64_t n = s.end - s.begin, lo = std::max(a, off), hi = std::min(b, off + n);
    if (lo < hi) parts.push_back(f(s, s.begin + lo - off, s.begin + hi - off));
    off += n;
  }
  const int64_t pad = b - std::max(a, std::min(b, off));
  if (pad > 0) parts.push_back(at::zeros({pad}));
  return parts.empty() ? at::zeros({0}) : at::cat(parts);
}
}  // namespace detail

// Elements [a, b) of the concatenation, zero-padded past its end; each rank
// materialises only what it holds.
inline at::Tensor materialize_segments(const std::vector<segment>& segs, uint64_t seed, int64_t a, int64_t b) {
  return detail::concat_range(segs, a, b, [&](const segment& s, int64_t lo, int64_t hi) {
    return nn::materialize_slice(s.spec, seed, lo, hi);
  });
}
// 1 where weight decay applies, over the same range.
inline at::Tensor decay_mask(const std::vector<segment>& segs, int64_t a, int64_t b) {
  return detail::concat_range(segs, a, b, [](const segment& s, int64_t lo, int64_t hi) {
    return at::full({hi - lo}, s.spec.decay ? 1.0 : 0.0);
  });
}

enum class holding { whole, flat_shard, whole_split };

// How a node's placements hold its two groups: the axes a group is split
// over for each role (empty: not split).
struct node_layout {
  bool adapted = false;      // adapters placed (Adapt<LoRA>): the parameters are frozen
  axis_set expert_rows;      // expert_params Shard(0): local experts (EP)
  axis_set expert_adapter_rows;  // expert_adapters Shard(0): the local experts' adapters
  axis_set dense_flat;       // params Shard(0): flat shard (FSDP)
  axis_set expert_flat;      // expert_params Shard(1): flat shard of the local experts
  axis_set optimizer_split;  // optimizer_state Shard(0): ZeRO
  axis_set grads_split;      // grads Shard(0): ZeRO-2
  std::string_view placed_by;  // for messages: the node's policies
};

template <class P>
constexpr node_layout layout_of(std::size_t node) {
  node_layout l;
  for (const auto& d : P::placements[node]) {
    if (d.tensor == placed_tensor::adapters || d.tensor == placed_tensor::expert_adapters) l.adapted = true;
    if (d.how.kind != placement_kind::shard) continue;
    switch (d.tensor) {
      case placed_tensor::expert_adapters: l.expert_adapter_rows = d.over; break;
      case placed_tensor::expert_params: (d.how.dim == 0 ? l.expert_rows : l.expert_flat) = d.over; break;
      case placed_tensor::params: l.dense_flat = d.over; break;
      case placed_tensor::optimizer_state: l.optimizer_split = d.over; break;
      case placed_tensor::grads: l.grads_split = d.over; break;
      default: break;
    }
  }
  return l;
}

// One group of a unit's parameters on this rank.
template <class Comm>
struct param_group {
  std::vector<segment> segs;
  std::vector<std::vector<int64_t>> shapes;  // local shapes, in order
  int64_t numel = 0;                         // unsharded local elements
  holding how = holding::whole;
  Comm* split = nullptr;     // flat_shard: the shard group; whole_split: the optimizer's
  bool grads_split = false;  // whole_split: gradients reduce-scattered to a shard (ZeRO-2)
  at::Tensor master;         // leaf the optimizer updates: the shard, the whole, or a view of the whole
  at::Tensor whole;          // compute buffer of whole and whole_split (== master for whole)
  at::Tensor whole_grad;     // whole_split without grads_split: the accumulated whole gradient
  at::Tensor decay;          // 1 where weight decay applies (master's elements)
  double replicas = 1;       // copies of the master within the gradient norm's group
  at::ScalarType compute = at::kFloat;      // gathered / computed in (mixed precision)
  at::ScalarType reduce_type = at::kFloat;  // gradients reduced in
  bool leaf = false;  // whole, and nothing reduces it: autograd accumulates into the master itself
  bool frozen = false;  // an adapted node's parameters: no gradient, not updated
  bool replica_reduce = false;  // flat_shard: its reduce_scatter's output is all-reduced over replicas (HSDP)

  bool empty() const { return numel == 0; }
  int64_t split_size() const { return split ? split->size() : 1; }
  int64_t per() const { return (numel + split_size() - 1) / split_size(); }
  // Elements of the flat as its collectives see it: padded to a multiple of the split group.
  int64_t padded() const { return how == holding::whole ? numel : split_size() * per(); }
  // Its forward gathers parameters from other ranks (a shard group of one gathers nothing).
  bool gathers() const { return how == holding::flat_shard && split_size() > 1 && !empty(); }
  // The rank's first element of the flat in its master.
  int64_t master_begin() const { return how == holding::whole ? 0 : split->rank() * per(); }
};

// One unit: its groups, and what a micro-batch leaves on it.
template <class Comm>
struct unit_state {
  static constexpr std::size_t groups_n = unit_groups;
  nn::unit_id id;
  std::array<param_group<Comm>, groups_n> groups;  // [0] dense, [1] local experts, [2] adapters, [3] local experts' adapters
  // The adapters of the unit's tensor list (what nn::forward hands its
  // component: groups 0 and 1 in spec order, then lora_A, lora_B of each
  // adapted linear map, groups 2 and 3): adapter_slot[i] = k for the k-th
  // adapted tensor i (its factors at 2k, 2k + 1 after groups 0 and 1), else -1.
  std::vector<int> adapter_slot;
  bool wrapped = false;                     // its block runs inside block_fn (flat-sharded or checkpointed)
  std::array<bool, groups_n> regathers{};   // forward frees the gathered copy, backward gathers it again
  // per micro-batch
  std::array<at::Tensor, groups_n> gathered;  // an issued (or finished) gather's result
  std::array<comm::work, groups_n> gathering;
  std::array<at::Tensor, groups_n> saved;     // the gathered storage autograd saved, freed after forward
  std::array<at::Tensor, groups_n> grad;      // this micro-batch's gradient (for the reductions)
  std::array<bool, groups_n> grad_arrived{};
  std::array<bool, groups_n> regathered{};    // its backward gather has arrived

  bool flat_sharded() const {
    return groups[0].how == holding::flat_shard || groups[1].how == holding::flat_shard;
  }
  bool base_frozen() const { return groups[0].frozen; }
  void clear_micro_batch() {
    for (std::size_t g = 0; g < groups_n; ++g) {
      gathered[g] = saved[g] = grad[g] = at::Tensor();
      gathering[g] = comm::work();
      grad_arrived[g] = regathered[g] = false;
    }
  }
};

// Elements [begin, end) of parameter `name` sit at [offset, offset + end -
// begin) of master tensor number `tensor` (parameters() order): what a
// checkpoint stores of this rank.
struct piece {
  std::string name;
  int64_t begin = 0, end = 0;
  size_t tensor = 0;
  int64_t offset = 0;
};

template <class Comm>
void add_pieces(std::vector<piece>& out, const param_group<Comm>& g, size_t tensor) {
  const int64_t a = g.master_begin(), b = a + g.master.numel();
  int64_t off = 0;
  for (const auto& s : g.segs) {
    const int64_t n = s.end - s.begin, lo = std::max(a, off), hi = std::min(b, off + n);
    if (lo < hi) out.push_back({s.spec.name, s.begin + lo - off, s.begin + hi - off, tensor, lo - a});
    off += n;
  }
}


inline at::ScalarType scalar_type(dtype t) {
  switch (t) {
    case dtype::bf16: return at::kBFloat16;
    case dtype::f16: return at::kHalf;
    default: return at::kFloat;
  }
}

// Builds every unit of plan P on this rank, as its nodes' placements say,
// with the dtypes and the lifecycle (regather, leaf) of its schedule. A mesh
// the placements do not cover is an error here, before any collective.
template <class P, class Mesh>
class storage_builder {
 public:
  using G = typename P::model;
  using comm_type = typename Mesh::communicator;
  using unit_type = unit_state<comm_type>;

  storage_builder(const typename G::dims& d, Mesh& mesh, const step_schedule& sched, const options& opt)
      : d_(d), mesh_(mesh), sched_(sched), checkpoint_(opt.checkpoint), seed_(opt.seed), adapters_(opt.adapters.sizes()),
        prec_(opt.prec), device_(opt.device) {}

  // Units in model order (each node's root, then its blocks); first[node]:
  // the index of the node's root.
  std::vector<unit_type> build(std::array<std::size_t, G::size + 1>& first) {
    first_ = &first;
    for_each_node<G>([&](auto I) { build_node<I.value>(); });
    (*first_)[G::size] = out_.size();
    return std::move(out_);
  }

 private:
  template <std::size_t I>
  void build_node() {
    using C = typename G::template component_at<I>;
    constexpr node_layout L = layout_of<P>(I);
    const mesh_shape& m = mesh_.shape();
    const std::string node(G::names[I]);
    auto has_op = [&](auto pred) {
      for (const auto& o : P::ops)
        if (o.node_index == I && pred(o)) return true;
      return false;
    };
    // a mesh the node's placements do not cover is an error before any collective
    if (m.world() > 1 && !has_op([](const plan_op& o) { return o.ph == phase::backward && is_grad_role(o.tensor); }))
      throw std::invalid_argument("veomni::parallel: node '" + node + "' has no policy that reduces its gradients (a "
                                  "Shard<> policy), but the mesh spreads data over " + std::to_string(m.world()) +
                                  " ranks: its gradients would not be reduced");
    if (m.sp > 1 && C::mod == modality::text && has_layer_kind<C>(layer_kind::attention) && !splits_sequence(I))
      throw std::invalid_argument("veomni::parallel: sp = " + std::to_string(m.sp) + " but node '" + node +
                                  "' has no Split<> policy for its attention");
    if (m.ep > 1 && has_layer_kind<C>(layer_kind::moe) && L.expert_rows.empty())
      throw std::invalid_argument("veomni::parallel: ep = " + std::to_string(m.ep) + " but node '" + node +
                                  "' has no Experts<> policy for its MoE layers");
    if (!L.optimizer_split.empty() && !L.expert_rows.empty())
      throw std::invalid_argument("veomni::parallel: node '" + node +
                                  "': a split optimizer (optimizer_state Shard(0)) together with Experts<> is not supported");
    if (!L.grads_split.empty() && !(L.grads_split == L.optimizer_split))
      throw std::invalid_argument("veomni::parallel: node '" + node +
                                  "': gradients placed Shard(0) need the optimizer state placed Shard(0) over the same axes");
    (*first_)[I] = out_.size();
    const long blocks = C::blocks(veomni::get<I>(d_));
    for (long b = -1; b < blocks; ++b) out_.push_back(make_unit<I>(b, L));
  }

  bool splits_sequence(std::size_t node) const {
    for (const auto& d : P::placements[node])
      if (d.tensor == placed_tensor::activations && d.over.contains(axis::sp::name)) return true;
    return false;
  }

  template <std::size_t I>
  unit_type make_unit(long block, const node_layout& L) {
    const mesh_shape& m = mesh_.shape();
    unit_type u;
    u.id = nn::unit_id{I, block};
    const std::string node(G::names[I]);
    comm_type* rows = L.expert_rows.empty() ? nullptr : &mesh_[L.expert_rows];
    comm_type* adapter_rows = L.expert_adapter_rows.empty() ? nullptr : &mesh_[L.expert_adapter_rows];
    for (const auto& spec : nn::unit_specs<G, I>(d_, block)) {
      const bool local = spec.expert && rows;
      param_group<comm_type>& g = u.groups[local ? 1 : 0];
      add_spec(g, spec, local ? rows : nullptr);
    }
    // the adapters of this unit's adapted linear maps (the Adapt policy's ops on it: its
    // adapters, then its local experts' when they are split with the experts)
    unsigned adapted_kinds = 0;
    for (const auto& o : P::ops)
      if (o.node_index == I && is_adapter_grad_role(o.tensor)) adapted_kinds |= o.adapter.kinds;
    for (const auto& o : P::ops)
      if (o.node_index == I && is_adapter_grad_role(o.tensor) && (o.target.unit == scope::block) == (block >= 0)) {
        const bool split = o.tensor == tensor_role::expert_adapter_grads;
        if (split && !adapter_rows)
          throw std::invalid_argument("veomni::parallel: node '" + node + "': its policies reduce expert_adapter_grads "
                                      "but place no expert_adapters Shard(0)");
        add_adapters(u, o.adapter, adapted_kinds, nn::unit_specs<G, I>(d_, block), split ? adapter_rows : nullptr);
      }
    const long ss = m.dp_shard * m.sp;
    for (int gi = 0; gi < unit_groups; ++gi) {
      param_group<comm_type>& g = u.groups[static_cast<std::size_t>(gi)];
      g.numel = segments_numel(g.segs);
      g.frozen = L.adapted && gi < 2;
      const axis_set& flat = gi == 0 ? L.dense_flat : gi == 1 ? L.expert_flat : axis_set{};
      if (!flat.empty()) {
        g.how = holding::flat_shard;
        g.split = &mesh_[flat];
      } else if (gi == 0 && !L.optimizer_split.empty()) {
        g.how = holding::whole_split;
        g.split = &mesh_[L.optimizer_split];
        g.grads_split = !L.grads_split.empty();
      }
      // dtypes, replicas and leaf-ness from this unit's ops
      for (std::size_t i = 0; i < P::size; ++i) {
        const plan_op& o = P::ops[i];
        if (o.node_index != I || !o.target.is_unit || (o.target.unit == scope::block) != (block >= 0) ||
            group_of(o.tensor) != gi)
          continue;
        if (classify(P::ops[i]) == unit_op_kind::gather) g.compute = scalar_type(run_dtype(o, prec_));
        if (classify(P::ops[i]) == unit_op_kind::reduce_scatter || classify(P::ops[i]) == unit_op_kind::all_reduce)
          g.reduce_type = scalar_type(run_dtype(o, prec_));
        if (classify(P::ops[i]) == unit_op_kind::all_reduce_shard) g.replica_reduce = true;
      }
      if (gi < 2 && !g.empty() && g.how != holding::flat_shard && prec_.param_bytes != 4)
        throw std::invalid_argument("veomni::parallel: node '" + node + "' holds its parameters whole (DDP, ZeRO, or no Shard<> "
                                    "policy), so they compute in their fp32 masters: the run's precision with " +
                                    std::to_string(prec_.param_bytes) + "-byte parameters needs them gathered "
                                    "(Shard<FSDP>, Shard<HSDP>), or fix the dtype in the recipe's policy");
      const bool gathered = has_entry(I, block, gi, unit_op_kind::gather);
      if (g.how == holding::flat_shard && !gathered && !g.empty())
        throw std::invalid_argument("veomni::parallel: node '" + node + "': its placements shard parameters over " +
                                    g.split->axis_key() + " but no op of its policies gathers them");
      if (g.how == holding::whole_split && !has_entry(I, block, gi, unit_op_kind::update_gather) && !g.empty())
        throw std::invalid_argument("veomni::parallel: node '" + node + "': its placements split the optimizer over " +
                                    g.split->axis_key() + " but no op gathers the updated parameters");
      g.leaf = g.how == holding::whole && !g.frozen && !reduces(I, block, gi);
      u.regathers[static_cast<std::size_t>(gi)] = has_entry(I, block, gi, unit_op_kind::regather);
      comm_type* by_rows = gi == 1 ? rows : gi == 3 ? adapter_rows : nullptr;
      const long split = (by_rows ? by_rows->size() : 1) * (g.how == holding::whole ? 1 : g.split_size());
      g.replicas = static_cast<double>(ss) / static_cast<double>(split);
      // each rank materialises only the elements it holds (drawn on the CPU: the
      // same values on any device), then keeps them on the run's device
      const int64_t a = g.how == holding::whole ? 0 : g.split->rank() * g.per();
      if (g.how == holding::whole_split) {
        g.whole = materialize_segments(g.segs, seed_, 0, g.padded()).to(device_);
        g.master = g.whole.narrow(0, a, g.per());
        g.master.set_requires_grad(!g.frozen);
      } else {
        g.master = materialize_segments(g.segs, seed_, a, a + (g.how == holding::whole ? g.numel : g.per()))
                       .to(device_)
                       .set_requires_grad(!g.frozen);
        if (g.how == holding::whole) g.whole = g.master;
      }
      g.decay = decay_mask(g.segs, a, a + g.master.numel()).to(device_);
    }
    u.wrapped = block >= 0 && (checkpoint_ || u.flat_sharded());
    return u;
  }

  // Spec s into group g: whole, or (rows: the group that splits its experts)
  // this rank's rows [r E/n, (r+1) E/n) of its leading dimension.
  static void add_spec(param_group<comm_type>& g, const nn::param_spec& spec, comm_type* rows) {
    if (!rows) {
      g.segs.push_back({spec, 0, spec.numel()});
      g.shapes.push_back(spec.shape);
      return;
    }
    const int64_t e = spec.shape[0], per = spec.numel() / e, n = rows->size(), el = e / n;
    if (e % n != 0)
      throw std::invalid_argument("veomni::parallel: " + std::to_string(e) + " experts of '" + spec.name +
                                  "' do not divide over " + rows->axis_key() + " = " + std::to_string(n));
    g.segs.push_back({spec, rows->rank() * el * per, (rows->rank() + 1) * el * per});
    auto shape = spec.shape;
    shape[0] = el;
    g.shapes.push_back(shape);
  }

  // lora_A [rank, in] (normal, std 1/sqrt(3 in): the variance of PEFT's
  // Kaiming-uniform init) and lora_B [out, rank] (zeros: training starts
  // from the base model) for each linear map of an adapted kind, named as
  // PEFT names them (".../q_proj.lora_A.weight"); an expert tensor's
  // [E, rank, in] and [E, out, rank], one pair per expert. Into group 2, or
  // (rows: split with the experts) this rank's rows of them into group 3.
  void add_adapters(unit_type& u, const adapter_shape& policy, unsigned node_kinds,
                    const std::vector<nn::param_spec>& base, comm_type* rows) {
    const std::string node(G::names[u.id.node]);
    if ((adapters_.targets & ~node_kinds) != 0)
      throw std::invalid_argument("veomni::parallel: node '" + node + "': the adapters' targets at run time name a layer "
                                  "kind that its Adapt policy does not adapt (they may only narrow the policy's)");
    const adapter_shape a = adapters_.applied_to(policy);
    const long rank = a.rank;
    if (u.adapter_slot.empty()) u.adapter_slot.assign(base.size(), -1);
    int k = 0;
    for (int s : u.adapter_slot) k = std::max(k, s + 1);
    const int first = k;
    if (!rows && !u.groups[3].segs.empty())
      throw std::logic_error("veomni::parallel: node '" + node + "': its adapters' op follows its experts' adapters' "
                             "(the factors must follow the unit's tensors in slot order)");
    param_group<comm_type>& g = u.groups[rows ? 3 : 2];
    for (std::size_t i = 0; i < base.size(); ++i) {
      const nn::param_spec& s = base[i];
      if (!s.linear || !has_kind(a.kinds, s.kind) || u.adapter_slot[i] >= 0) continue;
      const std::string stem = nn::weight_stem(s.name);
      const std::size_t d = s.shape.size();
      const int64_t out = s.shape.at(d - 2), in = s.shape.at(d - 1);
      std::vector<int64_t> lead(s.shape.begin(), s.shape.end() - 2);  // [E] of an expert tensor
      auto shape = [&](int64_t x, int64_t y) {
        auto v = lead;
        v.push_back(x);
        v.push_back(y);
        return v;
      };
      nn::param_spec A{stem + ".lora_A.weight", shape(rank, in), nn::init_kind::normal, 1.0 / std::sqrt(3.0 * double(in)), true, false};
      nn::param_spec B{stem + ".lora_B.weight", shape(out, rank), nn::init_kind::zeros, 0.0, true, false};
      A.expert = B.expert = s.expert;
      for (const auto& spec : {A, B}) add_spec(g, spec, rows);
      u.adapter_slot[i] = k++;
    }
    if (k == first)
      throw std::invalid_argument("veomni::parallel: node '" + node + "' unit " + std::to_string(u.id.block) +
                                  ": the adapters' targets at run time leave it no layer to adapt, but the plan reduces "
                                  "its " + (rows ? "experts' adapters'" : "adapters'") + " gradients");
  }

  bool has_entry(std::size_t node, long block, int gi, unit_op_kind k) const {
    for (const auto* seq : {&sched_.micro, &sched_.optimizer})
      for (const auto& s : *seq)
        if (P::ops[s.op].node_index == node && s.block == block && classify(P::ops[s.op]) == k &&
            group_of(P::ops[s.op].tensor) == gi && P::ops[s.op].target.is_unit)
          return true;
    return false;
  }
  // Some issued instance reduces this group's gradient.
  bool reduces(std::size_t node, long block, int gi) const {
    for (const auto& s : sched_.micro) {
      const unit_op_kind k = classify(P::ops[s.op]);
      if (s.issued && P::ops[s.op].node_index == node && s.block == block && group_of(P::ops[s.op].tensor) == gi &&
          (k == unit_op_kind::reduce_scatter || k == unit_op_kind::all_reduce || k == unit_op_kind::all_reduce_shard))
        return true;
    }
    return false;
  }

  const typename G::dims& d_;
  Mesh& mesh_;
  const step_schedule& sched_;
  bool checkpoint_;
  uint64_t seed_;
  adapter_settings adapters_;
  precision prec_;
  at::Device device_;
  std::vector<unit_type> out_;
  std::array<std::size_t, G::size + 1>* first_ = nullptr;
};

namespace detail {
// Frees (or re-allocates) the memory behind a tensor while autograd keeps
// referring to its storage: FSDP's reshard after forward.
inline void resize_storage(const at::Tensor& t, size_t bytes) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  if (t.is_cpu()) {
    at::native::resize_bytes_cpu(s, bytes);
    return;
  }
  // another device (CUDA): drop the memory, or take new memory from the storage's own
  // allocator (the gather rewrites every byte); without an allocator the memory stays
  if (s->nbytes() == bytes || s->allocator() == nullptr) return;
  s->set_data_ptr_noswap(bytes > 0 ? s->allocator()->allocate(bytes) : at::DataPtr(nullptr, t.device()));
  s->set_nbytes(bytes);
}
// A tensor over `base`'s storage with its own version counter, to write the
// re-gathered parameters without tripping autograd's saved-tensor checks.
inline at::Tensor alias_of(const at::Tensor& base) {
  at::Tensor t = at::empty({0}, base.options());
  t.set_(base.storage(), 0, {base.numel()}, {1});
  return t;
}
}  // namespace detail

}  // namespace veomni::parallel

