#pragma once
// Parameter storage: how each unit's parameters are held on this rank, read
// from the placements of the node's policies (core/policy.hpp), never from
// which policy placed them.
//
// A unit (a node's root, or one block) has two groups: its dense parameters
// and, when an Experts<> policy places expert_params Shard(0) over E, its
// local experts (the rows [r E/|E|, (r+1) E/|E|) of every expert tensor, r
// this rank's place in E). Each group is one flat buffer, in spec order,
// held one of three ways:
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
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../comm/communicator.hpp"
#include "../core/plan.hpp"
#include "../nn/init.hpp"
#include "../nn/model.hpp"

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
  axis_set expert_rows;      // expert_params Shard(0): local experts (EP)
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
    if (d.how.kind != placement_kind::shard) continue;
    switch (d.tensor) {
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
  nn::unit_id id;
  std::array<param_group<Comm>, 2> groups;  // [0] dense, [1] local experts
  bool wrapped = false;                     // its block runs inside block_fn (flat-sharded or checkpointed)
  std::array<bool, 2> regathers{};          // forward frees the gathered copy, backward gathers it again
  // per micro-batch
  std::array<at::Tensor, 2> gathered;  // an issued (or finished) gather's result
  std::array<comm::work, 2> gathering;
  std::array<at::Tensor, 2> saved;     // the gathered storage autograd saved, freed after forward
  std::array<at::Tensor, 2> grad;      // this micro-batch's gradient (for the reductions)
  std::array<bool, 2> grad_arrived{};

  bool flat_sharded() const {
    return groups[0].how == holding::flat_shard || groups[1].how == holding::flat_shard;
  }
  void clear_micro_batch() {
    for (int g = 0; g < 2; ++g) {
      gathered[g] = saved[g] = grad[g] = at::Tensor();
      gathering[g] = comm::work();
      grad_arrived[g] = false;
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

namespace detail {
// Frees (or re-allocates) the memory behind a tensor while autograd keeps
// referring to its storage: FSDP's reshard after forward.
inline void resize_storage(const at::Tensor& t, size_t bytes) {
  if (t.is_cpu()) at::native::resize_bytes_cpu(t.storage().unsafeGetStorageImpl(), bytes);
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

