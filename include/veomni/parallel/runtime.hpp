#pragma once
// The runtime of a recipe: it holds each unit's parameters as the node's
// policies say, and runs the plan's collectives around the nn components.
//
//   Shard<FSDP>/<HSDP>  a unit's dense parameters live as one flat shard
//                       (padded to a multiple of dp_shard*sp); forward
//                       all-gathers it (prefetching the next block's), a
//                       resharded block (every block but the one forward
//                       runs last, which backward needs first) frees the
//                       gathered copy after its forward and gathers it
//                       again in backward; the
//                       gradient is reduce-scattered back to the shard (HSDP:
//                       then all-reduced over dp_replicate).
//   Shard<DDP>          parameters whole; gradients all-reduced per unit.
//   Split<Ulysses>      all-to-all to (full sequence, local heads) around each
//                       attention core and back.
//   Experts<EP>         each rank holds E/ep experts; tokens go to them by an
//                       uneven all-to-all and come back by another; with
//                       FSDP the local experts are flat-sharded over ep_dp.
//   every step          the loss statistics, the MoE routers' statistics and
//                       the squared gradient norm are summed over the ranks.
//
// Gradients reach the shards directly (not through autograd's leaves), so a
// rank whose batch has no image still reduces the vision encoder's (zero)
// gradients: the plan never depends on the data.
//
// Overlap in backward (options::async_reduce, options::backward_prefetch):
// a unit's gradient reduction (FSDP/HSDP reduce_scatter, DDP all_reduce) is
// issued as soon as backward has finished that unit, and waited for at the
// end of forward_backward (a reduce_scatter earlier, once
// options::max_reduces_in_flight newer ones are issued), which adds it to the
// group's .grad: grad_norm and the optimizer see what they saw before. While
// block k differentiates, the all_gather of the block backward needs next
// (the one before k in forward order) is already in flight. Collectives are issued at points fixed by the
// program (autograd's order of units, which the synchronous version relied
// on too; DDP's all-reduces strictly in the plan's reverse unit order), never
// by how far a collective has got, so every rank issues the same sequence.
//
//   backward of block k:   wait all_gather(k) . issue all_gather(k-1) . grads of k
//                          . issue reduce_scatter(k) . wait reduce_scatter(k+1),
//                          .grad += it (HSDP: issue its all_reduce) . free block
//                          k's gathered copy
//   end of backward:       wait the rest (reduce_scatters, then HSDP's all_reduces,
//                          DDP's all_reduces) in issue order; .grad += result
#include <torch/torch.h>
#include <ATen/native/Resize.h>

#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../comm/mesh_layout.hpp"
#include "../core/plan.hpp"
#include "../nn/model.hpp"
#include "collectives.hpp"
#include "extension.hpp"
#include "setup.hpp"

namespace veomni::parallel {

struct options {
  bool checkpoint = false;  // activation checkpointing per block (recompute in backward)
  bool prefetch = true;     // all-gather the next block while this one computes
  // backward: all-gather the block backward needs next while this one differentiates
  bool backward_prefetch = true;
  // issue each unit's gradient reduction when backward finishes the unit, wait
  // at the end of backward (false: wait for each as soon as it is issued)
  bool async_reduce = true;
  // FSDP/HSDP reduce_scatters in flight at most (0: no limit, all waited at the
  // end of backward): issuing one more first waits for the oldest, so at most
  // this many units' unsharded gradients (and Gloo receive buffers) are held
  // besides the one backward is computing (1 measured as fast as 2 or 0)
  int max_reduces_in_flight = 1;
  double aux_weight = 0.01;  // MoE load-balancing loss weight
  uint64_t seed = 0;
};

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
// Elements [a, b) of the concatenation, zero-padded past its end.
inline at::Tensor materialize_segments(const std::vector<segment>& segs, uint64_t seed, int64_t a, int64_t b) {
  std::vector<at::Tensor> parts;
  int64_t off = 0;
  for (const auto& s : segs) {
    const int64_t n = s.end - s.begin, lo = std::max(a, off), hi = std::min(b, off + n);
    if (lo < hi) parts.push_back(nn::materialize_slice(s.spec, seed, s.begin + lo - off, s.begin + hi - off));
    off += n;
  }
  const int64_t pad = b - std::max(a, std::min(b, off));
  if (pad > 0) parts.push_back(at::zeros({pad}));
  return parts.empty() ? at::zeros({0}) : at::cat(parts);
}
inline at::Tensor decay_mask(const std::vector<segment>& segs, int64_t a, int64_t b) {
  std::vector<at::Tensor> parts;
  int64_t off = 0;
  for (const auto& s : segs) {
    const int64_t n = s.end - s.begin, lo = std::max(a, off), hi = std::min(b, off + n);
    if (lo < hi) parts.push_back(at::full({hi - lo}, s.spec.decay ? 1.0 : 0.0));
    off += n;
  }
  const int64_t pad = b - std::max(a, std::min(b, off));
  if (pad > 0) parts.push_back(at::zeros({pad}));
  return parts.empty() ? at::zeros({0}) : at::cat(parts);
}
}  // namespace detail

// One group of parameters of a unit (its dense part, or its local experts),
// held whole or as a flat shard.
template <class Comm>
struct param_group {
  std::vector<detail::segment> segs;
  std::vector<std::vector<int64_t>> shapes;  // local shapes, in order
  int64_t numel = 0;                         // unsharded local elements
  Comm* shard = nullptr;                     // FSDP/HSDP group; null: held whole
  Comm* reduce = nullptr;                    // DDP all-reduce or HSDP replicate group
  at::Tensor value;                          // leaf: flat shard or flat whole
  at::Tensor decay;                          // 1 where weight decay applies
  double replicas = 1;                       // copies within dp_shard*sp (for the gradient norm)
  at::ScalarType compute = at::kFloat;       // gathered / computed in (mixed precision)
  at::ScalarType reduce_type = at::kFloat;   // gradients reduced in
  // DDP: this micro-batch's gradient, all-reduced in place
  at::Tensor reduce_buf;
  bool arrived = false;  // reduce_buf holds this micro-batch's gradient
  bool empty() const { return numel == 0; }
  int64_t padded() const { return shard ? shard->size() * value.numel() : numel; }
  // Gathered parameters live in their own storage (freed when resharding).
  // A shard group of one gathers nothing: its shard is the whole.
  bool gathers() const { return shard && shard->size() > 1 && !empty(); }
  // Its gradient is all-reduced whole (DDP) over more than one rank.
  bool replicated_reduce() const { return !shard && reduce && reduce->size() > 1 && !empty(); }
};

template <class Comm>
struct unit_state {
  nn::unit_id id;
  param_group<Comm> dense, experts;
  bool reshard = false;
  // forward prefetch (and, with checkpointing, backward prefetch)
  comm::work pending_d, pending_e;
  at::Tensor pending_dense, pending_experts;
  bool has_pending = false;
  // resharded block between its forward and its backward: the gathered
  // storage autograd saved (freed), and a backward all_gather into it; with
  // checkpointing, a block that keeps its parameters: the gathered copy
  at::Tensor saved_dense, saved_experts;
  comm::work regather_d, regather_e;
  bool regathering = false;
  int64_t forward_pos = -1;  // position in this micro-batch's forward order of blocks
  nn::tensors ddp_views;     // DDP: this micro-batch's parameter views (through ddp_fn)
};

// A gradient reduction in flight: its collective reads `in` and leaves the
// reduced gradient in `out`, to be added to group->value.grad().
template <class Comm>
struct pending_reduce {
  param_group<Comm>* group = nullptr;
  at::Tensor in, out;
  comm::work w;
};

template <Model G, Recipe R, class Mesh>
class parallel_model : public nn::unit_source {
 public:
  using Comm = typename Mesh::communicator;
  using dims_t = typename G::dims;
  using plan_t = plan<G, R>;

  parallel_model(const dims_t& d, Mesh& mesh, options opt = {}) : d_(d), mesh_(mesh), opt_(opt) {
    const mesh_shape& m = mesh_.shape();
    data_ = &mesh_[axes<axis::dp_replicate, axis::dp_shard, axis::sp>];
    shard_group_ = &mesh_[axes<axis::dp_shard, axis::sp>];
    ep_rank_ = comm::coords_of(m, mesh_.rank()).ep;
    for_each_node<G>([&](auto I) { build_node<I.value>(); });
    for (auto it = units_.rbegin(); it != units_.rend(); ++it)
      for (auto* g : {&it->dense, &it->experts})
        if (g->replicated_reduce()) ddp_order_.push_back(g);
  }

  // ---- nn::unit_source --------------------------------------------------------
  nn::tensors unit(const nn::unit_id& u) override {
    unit_state<Comm>& s = state(u);
    if (u.block >= 0 && block_wrapped(s)) return current_block_params_;  // inside block_fn
    if (!s.dense.shard && !s.experts.shard) {
      if (!async_ddp(s)) return views(s, s.dense.value, s.experts.value);
      // once per micro-batch: the unit's gradient reaches ddp_fn's backward complete
      if (s.ddp_views.empty()) s.ddp_views = views(s, ddp_input(s.dense), ddp_input(s.experts));
      return s.ddp_views;
    }
    return gather_fn::apply(dummy_, this, &s);
  }

  // ---- hooks and block runner for nn::forward ---------------------------------------
  nn::block_runner runner() {
    return [this](const nn::unit_id& u, const at::Tensor& x,
                  const std::function<at::Tensor(const at::Tensor&)>& body) -> at::Tensor {
      unit_state<Comm>& s = state(u);
      if (opt_.prefetch) prefetch_next(u);
      if (!block_wrapped(s)) return body(x);
      auto out = block_fn::apply(x, dummy_, this, &s, &body);
      if (out[1].defined() && block_had_aux_) ctx_->aux_losses.push_back(out[1]);
      return out[0];
    };
  }

  template <std::size_t I>
  nn::hooks hooks_for() {
    nn::hooks h;
    constexpr node_setup s = setup_of<G, R, I>;
    if constexpr (s.ulysses) {
      Comm* sp = &mesh_[axes<axis::sp>];
      h.attention = [sp](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const nn::seq_layout& l) {
        const at::Tensor o = nn::varlen_attention(seq_to_heads(*sp, q), seq_to_heads(*sp, k), seq_to_heads(*sp, v),
                                                  l.cu_seqlens, l.causal);
        return heads_to_seq(*sp, o);
      };
    }
    if constexpr (s.ep) {
      Comm* ep = &mesh_[axes<axis::ep>];
      h.experts = [ep](const at::Tensor& x, const nn::routing& r, const nn::expert_weights& w) {
        return expert_parallel(*ep, x, r, w);
      };
    }
    Comm* data = data_;
    h.reduce_router_stats = [data](const at::Tensor& t) { return sum_over(*data, t); };
    if constexpr (s.custom > 0) {
      policy_runtime<Comm> rt{[this](const axis_set& a) -> Comm& { return mesh_[a]; }, h};
      install_custom<I>(rt, static_cast<typename veomni::detail::node_policies<G, R, I>::type*>(nullptr));
    }
    return h;
  }

  // How the recipe's Split policies lay the sequence over sp (for the data).
  static constexpr sequence_layout layout() {
    sequence_layout l = sequence_layout::contiguous;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((setup_of<G, R, I>.layout != sequence_layout::contiguous ? (l = setup_of<G, R, I>.layout) : l), ...);
    }(std::make_index_sequence<G::size>{});
    return l;
  }

  template <std::size_t I, class... P>
  void install_custom(policy_runtime<Comm>& rt, std::tuple<P...>*) {
    (
        [&] {
          using Impl = typename detail::implementation_of<P>::type;
          if constexpr (detail::has_runtime<Impl>) Impl::runtime::template install<Comm>(rt);
        }(),
        ...);
  }

  // ---- one micro-batch: forward and backward ----------------------------------------
  struct step_stats {
    double loss = 0;  // global mean loss (identical on every rank)
    std::vector<double> term_sums, term_counts;
    double aux = 0;
  };

  // Gradient accumulation over the micro-batches of one step: divide each
  // loss term by the whole step's global count of its targets (by term name,
  // e.g. "lm", "image_codes"), not this call's, and scale the auxiliary loss
  // (aux_scale = 1 / micro-batches), so that the accumulated gradient and the
  // summed losses are those of the step's whole batch.
  struct accumulation {
    std::map<std::string, double> global_counts;
    double aux_scale = 1.0;
  };

  step_stats forward_backward(const nn::batch& b, const accumulation& acc = {}) {
    nn::context ctx;
    ctx.data = &b;
    ctx_ = &ctx;
    begin_micro_batch();
    // the hooks differ per node: route them through the context by node
    nn::port_map outs = forward_nodes(ctx);
    // the first block backward needs: gather it while the loss is computed
    if (!forward_order_.empty()) prefetch_backward(forward_order_.size());
    // global counts of loss targets, and the global loss for reporting
    std::vector<at::Tensor> stat_parts;
    for (const auto& t : ctx.losses) {
      stat_parts.push_back(t.sum.detach().reshape({1}).to(at::kFloat));
      stat_parts.push_back(t.count.reshape({1}).to(at::kFloat));
    }
    at::Tensor stats = at::cat(stat_parts).contiguous();
    data_->all_reduce(stats, comm::reduce_op::sum).wait();
    const double n_data = static_cast<double>(data_->size());
    at::Tensor loss = at::zeros({});
    step_stats out;
    for (std::size_t i = 0; i < ctx.losses.size(); ++i) {
      const auto over = acc.global_counts.find(ctx.losses[i].name);
      const double gs = stats[2 * i].item<double>(),
                   gc = std::max(1.0, over != acc.global_counts.end() ? over->second : stats[2 * i + 1].item<double>());
      loss = loss + ctx.losses[i].sum / gc;
      out.term_sums.push_back(gs);
      out.term_counts.push_back(stats[2 * i + 1].item<double>());
      out.loss += gs / gc;
    }
    if (!ctx.aux_losses.empty()) {
      // every rank computes the same aux from global statistics; each adds 1/n of it
      at::Tensor aux = at::zeros({});
      for (const auto& a : ctx.aux_losses) aux = aux + a;
      aux = aux / static_cast<double>(ctx.aux_losses.size());
      loss = loss + acc.aux_scale * opt_.aux_weight * aux / n_data;
      out.aux = acc.aux_scale * aux.item<double>();
      out.loss += opt_.aux_weight * out.aux;
    }
    // keep every node's outputs in the graph so every unit's backward runs
    for (auto& [k, v] : outs)
      if (v.requires_grad()) loss = loss + 0 * v.sum();
    loss.backward();
    ctx_ = nullptr;
    finish_backward();
    in_step_ = false;
    return out;
  }

  // Global gradient norm over all shards (one all_reduce over dp_shard*sp).
  double grad_norm() {
    double local = 0;  // this rank's share, in double
    for (auto& s : units_)
      for (auto* g : {&s.dense, &s.experts})
        if (!g->empty() && g->value.grad().defined())
          local += nn::kernels::squared_norm(g->value.grad()) / static_cast<double>(g->replicas);
    at::Tensor sq = at::full({1}, local, at::TensorOptions().dtype(at::kFloat));
    shard_group_->all_reduce(sq, comm::reduce_op::sum).wait();
    return std::sqrt(sq.item<double>());
  }

  // The parameters this rank updates, and their weight-decay masks.
  std::vector<at::Tensor> parameters() {
    std::vector<at::Tensor> out;
    for (auto& s : units_)
      for (auto* g : {&s.dense, &s.experts})
        if (!g->empty()) out.push_back(g->value);
    return out;
  }
  std::vector<at::Tensor> decay_masks() {
    std::vector<at::Tensor> out;
    for (auto& s : units_)
      for (auto* g : {&s.dense, &s.experts})
        if (!g->empty()) out.push_back(g->decay);
    return out;
  }
  // Drops the gradients: the next backward assigns each group's reduced
  // gradient instead of adding it to zeros (one pass over them less).
  void zero_grad() {
    for (auto& p : parameters()) p.mutable_grad() = at::Tensor();
  }
  // Elements of parameters this rank holds (shards, padding included).
  int64_t local_numel() {
    int64_t n = 0;
    for (auto& p : parameters()) n += p.numel();
    return n;
  }
  const std::vector<unit_state<Comm>>& units() const { return units_; }
  Mesh& mesh() { return mesh_; }

 private:
  // ---- building the storage -----------------------------------------------------------
  template <std::size_t I>
  void build_node() {
    constexpr node_setup s = setup_of<G, R, I>;
    const mesh_shape& m = mesh_.shape();
    if (m.world() > 1 && s.mode == params_mode::none)
      throw std::invalid_argument(std::string("veomni::parallel: node '") + std::string(G::names[I]) +
                                  "' has no Shard<> policy, but the mesh spreads data over " +
                                  std::to_string(m.world()) + " ranks: its gradients would not be reduced");
    if (m.sp > 1 && !s.ulysses && !s.custom_split && has_layer_kind<typename G::template component_at<I>>(layer_kind::attention) &&
        G::template component_at<I>::mod == modality::text)
      throw std::invalid_argument(std::string("veomni::parallel: sp = ") + std::to_string(m.sp) + " but node '" +
                                  std::string(G::names[I]) + "' has no Split<> policy for its attention");
    if (m.ep > 1 && !s.ep && has_layer_kind<typename G::template component_at<I>>(layer_kind::moe))
      throw std::invalid_argument(std::string("veomni::parallel: ep = ") + std::to_string(m.ep) + " but node '" +
                                  std::string(G::names[I]) + "' has no Experts<> policy for its MoE layers");
    const int64_t blocks = nn::node_blocks<G>(d_, I);
    for (int64_t b = -1; b < blocks; ++b) units_.push_back(make_unit(nn::unit_id{I, b}, s));
  }

  unit_state<Comm> make_unit(const nn::unit_id& u, const node_setup& s) {
    const mesh_shape& m = mesh_.shape();
    unit_state<Comm> st;
    st.id = u;
    // the block forward runs last keeps its gathered parameters: backward starts with it
    const bool last_block = u.node == last_block_node<G>() && u.block + 1 == nn::node_blocks<G>(d_, u.node);
    st.reshard = s.sharded() && s.reshard_after_forward && u.block >= 0 && !last_block;
    for (const auto& spec : nn::unit_specs<G>(d_, u.node, u.block)) {
      const bool local_experts = spec.expert && s.ep;
      param_group<Comm>& g = local_experts ? st.experts : st.dense;
      if (local_experts) {
        const int64_t e = spec.shape[0], per = spec.numel() / e, el = e / m.ep;
        if (e % m.ep != 0)
          throw std::invalid_argument("veomni::parallel: " + std::to_string(e) + " experts of '" + spec.name +
                                      "' do not divide over ep = " + std::to_string(m.ep));
        g.segs.push_back({spec, ep_rank_ * el * per, (ep_rank_ + 1) * el * per});
        auto shape = spec.shape;
        shape[0] = el;
        g.shapes.push_back(shape);
      } else {
        g.segs.push_back({spec, 0, spec.numel()});
        g.shapes.push_back(spec.shape);
      }
    }
    const long ss = m.dp_shard * m.sp;
    auto place = [&](param_group<Comm>& g, bool experts) {
      g.numel = detail::segments_numel(g.segs);
      if (s.sharded()) {
        g.shard = experts ? &mesh_[axes<axis::ep_dp>] : shard_group_;
        if (s.mode == params_mode::hsdp) g.reduce = &mesh_[axes<axis::dp_replicate>];
      } else if (s.mode == params_mode::ddp) {
        g.reduce = experts ? &mesh_[axes<axis::dp_replicate, axis::ep_dp>] : data_;
      }
      g.replicas = g.shard ? 1.0 : static_cast<double>(experts ? ss / m.ep : ss);
      if (g.shard) g.compute = scalar_type(s.param_dtype), g.reduce_type = scalar_type(s.reduce_dtype);
      int64_t a = 0, b = g.numel;
      if (g.shard) {
        const int64_t n = g.shard->size(), per = (g.numel + n - 1) / n;
        a = g.shard->rank() * per;
        b = a + per;
      }
      // each rank materialises only the elements it holds
      g.value = detail::materialize_segments(g.segs, opt_.seed, a, b).set_requires_grad(true);
      g.decay = detail::decay_mask(g.segs, a, b);
    };
    place(st.dense, false);
    place(st.experts, true);
    return st;
  }

  unit_state<Comm>& state(const nn::unit_id& u) {
    for (auto& s : units_)
      if (s.id == u) return s;
    throw std::logic_error("veomni::parallel: unknown unit");
  }

  bool block_wrapped(const unit_state<Comm>& s) const {
    return s.dense.shard || s.experts.shard || opt_.checkpoint;
  }

  // A unit's parameters as views of its flat buffers (dense, then experts).
  static nn::tensors views(const unit_state<Comm>& s, const at::Tensor& dense, const at::Tensor& experts) {
    nn::tensors out = nn::split_flat(dense, s.dense.shapes, true);
    for (auto& t : nn::split_flat(experts, s.experts.shapes, true)) out.push_back(std::move(t));
    return out;
  }

  // ---- gathering and reducing ----------------------------------------------------------
  // Gathers in the compute dtype (bf16 halves the bytes); the shard stays fp32.
  static at::Tensor start_gather(param_group<Comm>& g, comm::work& w) {
    if (!g.gathers()) return g.value.detach().to(g.compute);  // the shard itself (no copy in its own dtype)
    at::Tensor full = at::empty({g.padded()}, g.value.options().dtype(g.compute).requires_grad(false));
    w = g.shard->all_gather(full, g.value.detach().to(g.compute).contiguous());
    return full;
  }

  // Gathered flat buffers of a unit (from the prefetch if one is pending).
  std::pair<at::Tensor, at::Tensor> gather(unit_state<Comm>& s) {
    if (s.has_pending) {
      s.has_pending = false;
      s.pending_d.wait();
      s.pending_e.wait();
      return {std::move(s.pending_dense), std::move(s.pending_experts)};
    }
    comm::work wd, we;
    at::Tensor dense = start_gather(s.dense, wd);
    at::Tensor experts = start_gather(s.experts, we);
    wd.wait();
    we.wait();
    return {dense, experts};
  }

  void start_prefetch(unit_state<Comm>& s) {
    if (s.has_pending || !(s.dense.shard || s.experts.shard)) return;
    s.pending_dense = start_gather(s.dense, s.pending_d);
    s.pending_experts = start_gather(s.experts, s.pending_e);
    s.has_pending = true;
  }

  void prefetch_next(const nn::unit_id& u) {
    nn::unit_id next{u.node, u.block + 1};
    if (next.block >= nn::node_blocks<G>(d_, u.node)) return;
    start_prefetch(state(next));
  }

  // Resharded block: frees the gathered copy autograd saved (after forward,
  // and again after backward), or gathers it back into the same storage.
  static void free_gathered(unit_state<Comm>& s, const at::Tensor& dense, const at::Tensor& experts) {
    if (s.dense.gathers()) detail::resize_storage(dense, 0);
    if (s.experts.gathers()) detail::resize_storage(experts, 0);
  }
  static void start_regather(unit_state<Comm>& s) {
    for (auto [grp, t, w] : {std::tuple{&s.dense, s.saved_dense, &s.regather_d},
                             std::tuple{&s.experts, s.saved_experts, &s.regather_e}}) {
      if (!grp->gathers()) continue;
      detail::resize_storage(t, static_cast<size_t>(grp->padded()) * t.element_size());
      *w = grp->shard->all_gather(detail::alias_of(t), grp->value.detach().to(grp->compute).contiguous());
    }
    s.regathering = true;
  }
  static void finish_regather(unit_state<Comm>& s) {
    if (!s.regathering) start_regather(s);
    s.regathering = false;
    s.regather_d.wait();
    s.regather_e.wait();
  }

  // Backward prefetch: before block forward_order_[pos] differentiates, start
  // gathering block forward_order_[pos - 1], the one backward reaches next.
  void prefetch_backward(std::size_t pos) {
    if (!opt_.backward_prefetch || pos == 0 || pos > forward_order_.size()) return;
    unit_state<Comm>& p = *forward_order_[pos - 1];
    if (!(p.dense.gathers() || p.experts.gathers())) return;
    if (!p.reshard) return;  // kept from forward
    if (opt_.checkpoint)
      start_prefetch(p);  // block_fn's recompute gathers through gather()
    else if (p.saved_dense.defined() && !p.regathering)
      start_regather(p);
  }

  void prefetch_backward_before(const unit_state<Comm>& s) {
    if (s.forward_pos >= 0) prefetch_backward(static_cast<std::size_t>(s.forward_pos));
  }

  // ---- reducing gradients ----------------------------------------------------------------
  // A gradient nothing else can see: contiguous over the whole of a storage
  // that only it refers to (what split_flat's backward hands over), so it may
  // become a .grad or a collective's buffer without a copy.
  static bool sole_owner(const at::Tensor& t) {
    return t.is_contiguous() && t.storage_offset() == 0 && t.storage().use_count() == 1 &&
           static_cast<int64_t>(t.storage().nbytes()) == t.numel() * static_cast<int64_t>(t.element_size());
  }

  // The reduced gradient into the master .grad (accumulating micro-batches).
  static void accumulate(param_group<Comm>& g, const at::Tensor& reduced, bool owned) {
    at::Tensor t = reduced.to(g.value.scalar_type());
    if (g.value.grad().defined())
      g.value.mutable_grad().add_(t);
    else
      g.value.mutable_grad() = owned || !t.is_same(reduced) ? t : t.clone();
  }

  // Reduces a unit's gradient into its group's .grad: `grad` is the gradient
  // of the gathered flat buffer (padded, or just the group's numel elements;
  // undefined: zeros). With async_reduce the reduce_scatter is only issued;
  // finish_backward waits for it.
  void reduce_into(param_group<Comm>& g, const at::Tensor& grad) {
    if (g.empty()) return;
    const bool owned = grad.defined() && sole_owner(grad);
    at::Tensor gr = grad.defined() ? grad.reshape({-1}) : at::zeros({g.numel});
    if (!g.shard) return accumulate(g, gr, false);  // held whole: nothing to scatter
    if (!g.gathers() && !g.reduce && owned && gr.numel() == g.value.numel() && gr.scalar_type() == g.reduce_type) {
      // a shard group of one (and no replicas): the gradient is the shard's as it is
      gr.narrow(0, g.numel, gr.numel() - g.numel).zero_();
      return accumulate(g, gr, true);
    }
    pending_reduce<Comm> r{&g, {}, {}, {}};
    const auto opts = at::TensorOptions().dtype(g.reduce_type);
    if (gr.numel() == g.padded() && gr.scalar_type() == g.reduce_type) {
      r.in = gr;  // the gathered buffer's own gradient: only its padding to clear
      r.in.narrow(0, g.numel, g.padded() - g.numel).zero_();
    } else {
      r.in = at::empty({g.padded()}, opts);
      r.in.narrow(0, 0, g.numel).copy_(gr.narrow(0, 0, g.numel));
      r.in.narrow(0, g.numel, g.padded() - g.numel).zero_();
    }
    r.out = at::empty({g.value.numel()}, opts);
    r.w = g.shard->reduce_scatter(r.out, r.in);
    if (!opt_.async_reduce || !in_step_) {
      scattered(r);
      return finish_replicas();
    }
    reducing_.push_back(std::move(r));
    // Wait for the oldest at points that depend only on the program: when over
    // the limit, or when its reduce_scatter ran in place (a shard group of one:
    // HSDP's all_reduce can start now).
    while (!reducing_.empty() && ((opt_.max_reduces_in_flight > 0 &&
                                   reducing_.size() > static_cast<std::size_t>(opt_.max_reduces_in_flight)) ||
                                  reducing_.front().group->shard->size() == 1)) {
      scattered(reducing_.front());
      reducing_.pop_front();
    }
  }

  // A reduce_scatter done: accumulate, or (HSDP) start the all_reduce over dp_replicate.
  void scattered(pending_reduce<Comm>& r) {
    r.w.wait();
    r.in = at::Tensor();
    if (!r.group->reduce) return accumulate(*r.group, r.out, true);
    r.w = r.group->reduce->all_reduce(r.out, comm::reduce_op::sum);
    replicating_.push_back(std::move(r));
  }
  void finish_replicas() {
    for (auto& r : replicating_) {
      r.w.wait();
      accumulate(*r.group, r.out, true);
    }
    replicating_.clear();
  }

  // DDP: a unit's parameters pass through ddp_fn, whose backward receives the
  // unit's whole gradient of this micro-batch. (All-reducing the accumulated
  // .grad instead would sum earlier micro-batches over the ranks again.)
  bool async_ddp(const unit_state<Comm>& s) const {
    return in_step_ && (s.dense.replicated_reduce() || s.experts.replicated_reduce());
  }
  at::Tensor ddp_input(param_group<Comm>& g) {
    return g.replicated_reduce() ? ddp_fn::apply(dummy_, this, &g) : g.value;
  }
  // The gradient of group g is complete: keep it, and all-reduce every group
  // whose turn has come. The turn is the plan's order (reverse unit order,
  // dense then experts), so ranks issue the same sequence whatever order
  // autograd finishes units in.
  //
  // The gradient is all-reduced in place when nothing else can see its memory:
  // ddp_fn's output (and a checkpointed block's leaves) feed only the views
  // made in views(), whose backward (nn::split_flat) allocates a fresh buffer of
  // the group's size, so autograd hands over a tensor only this call holds
  // (and a copy would cost a pass over every gradient). Anything else (a
  // view, a shared storage, another dtype) is copied.
  void ddp_arrived(param_group<Comm>& g, const at::Tensor& grad) {
    if (g.arrived) throw std::logic_error("veomni::parallel: a DDP unit's gradient arrived twice in one backward");
    const bool own = grad.defined() && sole_owner(grad) && grad.numel() == g.numel &&
                     grad.scalar_type() == g.value.scalar_type();
    if (own) {
      g.reduce_buf = grad.view({-1});
    } else {
      g.reduce_buf = at::empty({g.numel}, g.value.options().requires_grad(false));
      if (grad.defined())
        g.reduce_buf.copy_(grad.reshape({-1}));
      else
        g.reduce_buf.zero_();
    }
    g.arrived = true;
    while (ddp_issued_ < ddp_order_.size() && ddp_order_[ddp_issued_]->arrived) {
      param_group<Comm>* next = ddp_order_[ddp_issued_++];
      comm::work w = next->reduce->all_reduce(next->reduce_buf, comm::reduce_op::sum);
      ddp_reducing_.push_back({next, {}, next->reduce_buf, std::move(w)});
      if (!opt_.async_reduce) finish_ddp();
    }
  }
  void finish_ddp() {
    for (auto& r : ddp_reducing_) {
      r.w.wait();
      r.group->reduce_buf = at::Tensor();
      accumulate(*r.group, r.out, true);
    }
    ddp_reducing_.clear();
  }

  void begin_micro_batch() {
    // what an interrupted step (an exception) left behind
    reducing_.clear();
    replicating_.clear();
    ddp_reducing_.clear();
    for (auto& s : units_) {
      s.saved_dense = s.saved_experts = at::Tensor();
      s.regathering = false;
      s.forward_pos = -1;
      s.ddp_views.clear();
      s.dense.arrived = s.experts.arrived = false;
      s.dense.reduce_buf = s.experts.reduce_buf = at::Tensor();
    }
    forward_order_.clear();
    ddp_issued_ = 0;
    in_step_ = true;
  }

  // After backward: everything issued is waited for and added to .grad.
  // Replicated groups backward did not reach reduce zeros (as the plan).
  void finish_backward() {
    while (ddp_issued_ < ddp_order_.size()) ddp_arrived(*ddp_order_[ddp_issued_], at::Tensor());
    while (!reducing_.empty()) {
      scattered(reducing_.front());
      reducing_.pop_front();
    }
    finish_replicas();
    finish_ddp();
    for (auto& s : units_) {
      // prefetched for a backward that did not run: complete, and drop (the
      // next forward must gather the updated shards)
      if (s.regathering) {
        finish_regather(s);
        free_gathered(s, s.saved_dense, s.saved_experts);
      }
      if (s.has_pending) {
        gather(s);
        s.pending_dense = s.pending_experts = at::Tensor();
      }
      s.saved_dense = s.saved_experts = at::Tensor();
      s.ddp_views.clear();
    }
    forward_order_.clear();
    for (auto& s : units_)
      for (auto* g : {&s.dense, &s.experts})
        if (!g->empty() && !g->shard && !g->value.grad().defined()) g->value.mutable_grad() = at::zeros_like(g->value);
  }

  // ---- autograd functions --------------------------------------------------------------

  // A root unit (or an unwrapped sharded one): gather in forward, reduce in backward.
  struct gather_fn : torch::autograd::Function<gather_fn> {
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor&, parallel_model* self,
                              unit_state<Comm>* s) {
      ctx->saved_data["self"] = reinterpret_cast<int64_t>(self);
      ctx->saved_data["s"] = reinterpret_cast<int64_t>(s);
      auto [dense, experts] = self->gather(*s);
      // no experts: the gathered buffer itself (padded), so that backward's
      // flat gradient is the reduce_scatter's input as it is
      if (s->experts.empty()) return dense;
      return at::cat({dense.narrow(0, 0, s->dense.numel), experts.narrow(0, 0, s->experts.numel).to(dense.scalar_type())});
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list g) {
      auto* self = reinterpret_cast<parallel_model*>(ctx->saved_data["self"].toInt());
      auto* s = reinterpret_cast<unit_state<Comm>*>(ctx->saved_data["s"].toInt());
      if (s->experts.empty()) {
        self->reduce_into(s->dense, g[0]);
        return {at::Tensor(), at::Tensor(), at::Tensor()};
      }
      const int64_t dn = s->dense.numel;
      self->reduce_into(s->dense, g[0].narrow(0, 0, dn));
      self->reduce_into(s->experts, g[0].narrow(0, dn, s->experts.numel));
      return {at::Tensor(), at::Tensor(), at::Tensor()};
    }
    static nn::tensors apply(const at::Tensor& dummy, parallel_model* self, unit_state<Comm>* s) {
      const at::Tensor flat = torch::autograd::Function<gather_fn>::apply(dummy, self, s);
      std::vector<std::vector<int64_t>> shapes = s->dense.shapes;
      shapes.insert(shapes.end(), s->experts.shapes.begin(), s->experts.shapes.end());
      return nn::split_flat(flat, shapes, true);
    }
  };

  // A DDP group's parameters (no copy) whose backward hands the unit's whole
  // gradient of this micro-batch to its all_reduce instead of the leaf.
  struct ddp_fn : torch::autograd::Function<ddp_fn> {
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor&, parallel_model* self,
                              param_group<Comm>* g) {
      ctx->saved_data["self"] = reinterpret_cast<int64_t>(self);
      ctx->saved_data["g"] = reinterpret_cast<int64_t>(g);
      return g->value.detach();
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list g) {
      auto* self = reinterpret_cast<parallel_model*>(ctx->saved_data["self"].toInt());
      auto* grp = reinterpret_cast<param_group<Comm>*>(ctx->saved_data["g"].toInt());
      self->ddp_arrived(*grp, g[0]);
      return {at::Tensor(), at::Tensor(), at::Tensor()};
    }
  };

  // A block: gathers its parameters, runs the body, frees the gathered copy
  // (reshard) or keeps it; in backward gathers again if needed, recomputes
  // (checkpointing), differentiates the body and reduces the gradients.
  struct block_fn : torch::autograd::Function<block_fn> {
    using body_t = std::function<at::Tensor(const at::Tensor&)>;
    struct inner {
      at::Tensor x, dense, experts, y, aux;
    };

    static std::pair<at::Tensor, at::Tensor> full_params(parallel_model* self, unit_state<Comm>* s) {
      if (!(s->dense.shard || s->experts.shard)) return {s->dense.value, s->experts.value};  // checkpoint only
      auto [d, e] = self->gather(*s);
      return {d, e};
    }

    static inner run(parallel_model* self, unit_state<Comm>* s, const body_t& body, const at::Tensor& x,
                     const at::Tensor& dense, const at::Tensor& experts, bool sharded) {
      inner in;
      // the block computes in its parameters' dtype (mixed precision)
      in.x = x.detach().to(dense.scalar_type()).requires_grad_(x.requires_grad());
      if (sharded) {
        in.dense = dense.detach().requires_grad_(true);
        in.experts = experts.detach().requires_grad_(true);
      } else {  // checkpointing a replicated unit: the leaves themselves
        in.dense = dense;
        in.experts = experts;
      }
      self->current_block_params_ = views(*s, in.dense, in.experts);
      const std::size_t aux_before = self->ctx_->aux_losses.size();
      in.y = body(in.x);
      self->block_had_aux_ = self->ctx_->aux_losses.size() > aux_before;
      if (self->block_had_aux_) {
        in.aux = at::zeros({});
        for (std::size_t i = aux_before; i < self->ctx_->aux_losses.size(); ++i)
          in.aux = in.aux + self->ctx_->aux_losses[i];
        self->ctx_->aux_losses.resize(aux_before);
      }
      self->current_block_params_.clear();
      return in;
    }

    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                  const at::Tensor&, parallel_model* self, unit_state<Comm>* s,
                                                  const body_t* body) {
      ctx->saved_data["self"] = reinterpret_cast<int64_t>(self);
      ctx->saved_data["s"] = reinterpret_cast<int64_t>(s);
      const bool sharded = s->dense.shard || s->experts.shard;
      auto [dense, experts] = full_params(self, s);
      auto holder = std::make_shared<inner>();
      if (self->opt_.checkpoint) {
        torch::NoGradGuard no_grad;
        *holder = run(self, s, *body, x, dense, experts, sharded);
        holder->y = holder->y.detach();
        if (sharded && !s->reshard && self->in_step_) {  // kept for the recompute: no backward all_gather
          s->saved_dense = dense;
          s->saved_experts = experts;
        }
        ctx->save_for_backward({x});
        // the body is needed again in backward: keep a copy of it
        auto keep = std::make_shared<body_t>(*body);
        ctx->saved_data["body"] = reinterpret_cast<int64_t>(new std::shared_ptr<body_t>(keep));
      } else {
        torch::AutoGradMode grad(true);
        *holder = run(self, s, *body, x, dense, experts, sharded);
        if (s->reshard && sharded) {  // free the gathered copy; backward gathers it again
          free_gathered(*s, holder->dense, holder->experts);
          s->saved_dense = holder->dense;
          s->saved_experts = holder->experts;
        }
      }
      if (self->in_step_) {
        s->forward_pos = static_cast<int64_t>(self->forward_order_.size());
        self->forward_order_.push_back(s);
      }
      ctx->saved_data["inner"] = reinterpret_cast<int64_t>(new std::shared_ptr<inner>(holder));
      at::Tensor aux = holder->aux.defined() ? holder->aux.detach() : at::zeros({});
      return {holder->y.detach(), aux};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list g) {
      auto* self = reinterpret_cast<parallel_model*>(ctx->saved_data["self"].toInt());
      auto* s = reinterpret_cast<unit_state<Comm>*>(ctx->saved_data["s"].toInt());
      auto* holder_ptr = reinterpret_cast<std::shared_ptr<inner>*>(ctx->saved_data["inner"].toInt());
      std::shared_ptr<inner> holder = *holder_ptr;
      delete holder_ptr;
      const bool sharded = s->dense.shard || s->experts.shard;
      if (self->opt_.checkpoint) {
        auto* body_ptr = reinterpret_cast<std::shared_ptr<body_t>*>(ctx->saved_data["body"].toInt());
        std::shared_ptr<body_t> body = *body_ptr;
        delete body_ptr;
        const at::Tensor x = ctx->get_saved_variables()[0];
        const bool kept = s->saved_dense.defined();
        auto [dense, experts] = kept ? std::pair{s->saved_dense, s->saved_experts}
                                     : full_params(self, s);  // backward all_gather
        self->prefetch_backward_before(*s);
        torch::AutoGradMode grad(true);
        self->ctx_->h = self->node_hooks_[s->id.node];  // the recompute runs this node's hooks
        *holder = run(self, s, *body, x, dense, experts, sharded);
      } else {
        if (s->reshard && sharded) finish_regather(*s);  // backward all_gather into the freed storage
        self->prefetch_backward_before(*s);
      }
      std::vector<at::Tensor> outs{holder->y}, grads_out{g[0]};
      if (holder->aux.defined() && g[1].defined()) {
        outs.push_back(holder->aux);
        grads_out.push_back(g[1]);
      }
      std::vector<at::Tensor> wrt;
      const bool x_grad = holder->x.requires_grad();
      if (x_grad) wrt.push_back(holder->x);
      wrt.push_back(holder->dense);
      wrt.push_back(holder->experts);
      const auto grads = torch::autograd::grad(outs, wrt, grads_out, false, false, /*allow_unused=*/true);
      const std::size_t o = x_grad ? 1 : 0;
      if (sharded) {
        self->reduce_into(s->dense, grads[o]);
        self->reduce_into(s->experts, grads[o + 1]);
        if (s->reshard) free_gathered(*s, holder->dense, holder->experts);
        s->saved_dense = s->saved_experts = at::Tensor();
      } else {  // checkpointed replicated unit: all-reduce (DDP) or accumulate into the leaves
        for (auto [grp, gr] : {std::pair{&s->dense, grads[o]}, std::pair{&s->experts, grads[o + 1]}}) {
          if (grp->empty()) continue;
          if (self->in_step_ && grp->replicated_reduce()) {
            self->ddp_arrived(*grp, gr);
            continue;
          }
          if (!gr.defined()) continue;
          if (grp->value.grad().defined()) grp->value.mutable_grad().add_(gr);
          else grp->value.mutable_grad() = gr.clone();
        }
      }
      holder.reset();
      return {x_grad ? grads[0] : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
  };

  // ---- EP: dispatch to the experts' ranks and combine back ----------------------------
  static at::Tensor expert_parallel(Comm& ep, const at::Tensor& x, const nn::routing& r, const nn::expert_weights& w) {
    const int64_t p = ep.size(), el = w.count(), e = el * p;
    const nn::dispatch_order d = nn::sort_by_expert(r, e);
    const at::Tensor xs = x.index_select(0, d.token_of);
    std::vector<int64_t> send(static_cast<size_t>(p), 0);
    for (int64_t i = 0; i < e; ++i) send[static_cast<size_t>(i / el)] += d.counts[static_cast<size_t>(i)];
    // per-expert counts, so each rank knows how many rows of each local expert come from whom
    at::Tensor counts = at::tensor(d.counts, at::kLong);
    at::Tensor recv_counts = at::empty({e}, at::kLong);
    ep.all_to_all_counts(recv_counts, counts).wait();
    const int64_t* rc = recv_counts.data_ptr<int64_t>();  // rc[s * el + j]: rows from rank s for local expert j
    std::vector<int64_t> recv(static_cast<size_t>(p), 0), local_counts(static_cast<size_t>(el), 0);
    for (int64_t s = 0; s < p; ++s)
      for (int64_t j = 0; j < el; ++j) {
        recv[static_cast<size_t>(s)] += rc[s * el + j];
        local_counts[static_cast<size_t>(j)] += rc[s * el + j];
      }
    const at::Tensor xr = exchange_rows(ep, xs, send, recv);  // grouped by source, then local expert
    // regroup by local expert
    std::vector<int64_t> perm;
    perm.reserve(static_cast<size_t>(xr.size(0)));
    std::vector<int64_t> start(static_cast<size_t>(p * el), 0);
    for (int64_t s = 0, off = 0; s < p; ++s)
      for (int64_t j = 0; j < el; ++j) start[static_cast<size_t>(s * el + j)] = off, off += rc[s * el + j];
    for (int64_t j = 0; j < el; ++j)
      for (int64_t s = 0; s < p; ++s)
        for (int64_t k = 0; k < rc[s * el + j]; ++k) perm.push_back(start[static_cast<size_t>(s * el + j)] + k);
    const at::Tensor perm_t = at::tensor(perm, at::kLong);
    const at::Tensor yg = nn::grouped_experts(xr.index_select(0, perm_t), local_counts, w);
    const at::Tensor yr = at::zeros_like(yg).index_add(0, perm_t, yg);  // back to arrival order
    const at::Tensor ys = exchange_rows(ep, yr, recv, send);            // back to xs order
    return at::zeros_like(x).index_add(0, d.token_of, ys * d.weight_of.unsqueeze(1));
  }

  // ---- forward over the graph with per-node hooks ---------------------------------------
  nn::port_map forward_nodes(nn::context& ctx) {
    // nn::forward runs every node with one context; hooks differ per node, so
    // swap them in as each node starts (the executor calls unit(root) first).
    node_hooks_.clear();
    for_each_node<G>([&](auto I) { node_hooks_.push_back(hooks_for<I.value>()); });
    hook_ctx_ = &ctx;
    switching_.self = this;
    return nn::forward<G>(d_, switching_, ctx, runner());
  }

  // Installs each node's hooks as the executor asks for the node's root.
  struct switching_source : nn::unit_source {
    parallel_model* self = nullptr;
    nn::tensors unit(const nn::unit_id& u) override {
      if (u.block < 0) self->hook_ctx_->h = self->node_hooks_[u.node];
      return self->unit(u);
    }
  };
  switching_source switching_;

  dims_t d_;
  Mesh& mesh_;
  options opt_;
  Comm* data_ = nullptr;
  Comm* shard_group_ = nullptr;
  int64_t ep_rank_ = 0;
  std::vector<unit_state<Comm>> units_;
  at::Tensor dummy_ = torch::zeros({}, torch::requires_grad());  // makes gather and block functions differentiable
  nn::tensors current_block_params_;
  // backward overlap (see the top of this file)
  bool in_step_ = false;                            // inside forward_backward
  std::vector<unit_state<Comm>*> forward_order_;   // blocks in this micro-batch's forward order
  std::deque<pending_reduce<Comm>> reducing_;       // reduce_scatters issued, oldest first
  std::vector<pending_reduce<Comm>> replicating_;   // HSDP all_reduces issued
  std::vector<param_group<Comm>*> ddp_order_;       // DDP groups, in the plan's order of all_reduces
  std::size_t ddp_issued_ = 0;                      // ddp_order_[0, ddp_issued_) are issued
  std::vector<pending_reduce<Comm>> ddp_reducing_;  // DDP all_reduces issued
  nn::context* ctx_ = nullptr;
  nn::context* hook_ctx_ = nullptr;
  std::vector<nn::hooks> node_hooks_;
  bool block_had_aux_ = false;
};

}  // namespace veomni::parallel
