#pragma once
// The runtime of a recipe: it holds each unit's parameters as the node's
// policies say, and runs the plan's collectives around the nn components.
//
//   Shard<FSDP>/<HSDP>  a unit's dense parameters live as one flat shard
//                       (padded to a multiple of dp_shard*sp); forward
//                       all-gathers it (prefetching the next block's), a
//                       resharded block frees the gathered copy after its
//                       forward and gathers it again in backward; the
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
#include <torch/torch.h>
#include <ATen/native/Resize.h>

#include <cmath>
#include <cstdint>
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
  bool empty() const { return numel == 0; }
  int64_t padded() const { return shard ? shard->size() * value.numel() : numel; }
};

template <class Comm>
struct unit_state {
  nn::unit_id id;
  param_group<Comm> dense, experts;
  bool reshard = false;
  // forward prefetch
  comm::work pending_d, pending_e;
  at::Tensor pending_dense, pending_experts;
  bool has_pending = false;
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
  }

  // ---- nn::unit_source --------------------------------------------------------
  nn::tensors unit(const nn::unit_id& u) override {
    unit_state<Comm>& s = state(u);
    if (u.block >= 0 && block_wrapped(s)) return current_block_params_;  // inside block_fn
    if (!s.dense.shard && !s.experts.shard) return views(s, s.dense.value, s.experts.value);
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
    // the hooks differ per node: route them through the context by node
    nn::port_map outs = forward_nodes(ctx);
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
    return out;
  }

  // Global gradient norm over all shards (one all_reduce over dp_shard*sp).
  double grad_norm() {
    at::Tensor sq = at::zeros({1});
    for (auto& s : units_)
      for (auto* g : {&s.dense, &s.experts})
        if (!g->empty() && g->value.grad().defined())
          sq += g->value.grad().to(at::kDouble).pow(2).sum().to(at::kFloat) / g->replicas;
    sq = sq.contiguous();
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
  void zero_grad() {
    for (auto& p : parameters())
      if (p.grad().defined()) p.mutable_grad().zero_();
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
    st.reshard = s.sharded() && s.reshard_after_forward && u.block >= 0;
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

  static nn::tensors views(const unit_state<Comm>& s, const at::Tensor& dense, const at::Tensor& experts) {
    nn::tensors out;
    int64_t off = 0;
    for (const auto& shape : s.dense.shapes) {
      int64_t n = 1;
      for (auto x : shape) n *= x;
      out.push_back(dense.narrow(0, off, n).view(shape));
      off += n;
    }
    off = 0;
    for (const auto& shape : s.experts.shapes) {
      int64_t n = 1;
      for (auto x : shape) n *= x;
      out.push_back(experts.narrow(0, off, n).view(shape));
      off += n;
    }
    return out;
  }

  // ---- gathering and reducing ----------------------------------------------------------
  // Gathers in the compute dtype (bf16 halves the bytes); the shard stays fp32.
  static at::Tensor start_gather(param_group<Comm>& g, comm::work& w) {
    if (!g.shard || g.empty()) return g.value.detach().to(g.compute);
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

  void prefetch_next(const nn::unit_id& u) {
    nn::unit_id next{u.node, u.block + 1};
    if (next.block >= nn::node_blocks<G>(d_, u.node)) return;
    unit_state<Comm>& s = state(next);
    if (s.has_pending || !(s.dense.shard || s.experts.shard)) return;
    s.pending_dense = start_gather(s.dense, s.pending_d);
    s.pending_experts = start_gather(s.experts, s.pending_e);
    s.has_pending = true;
  }

  // Reduces a unit's full gradient (flat, unpadded) into its group's .grad.
  void reduce_into(param_group<Comm>& g, const at::Tensor& full_grad) {
    if (g.empty()) return;
    at::Tensor gr = full_grad.defined() ? full_grad.reshape({-1}) : at::zeros({g.numel});
    at::Tensor shard_grad;
    if (g.shard) {
      const auto opts = at::TensorOptions().dtype(g.reduce_type);
      at::Tensor padded = at::zeros({g.padded()}, opts);
      padded.narrow(0, 0, g.numel).copy_(gr);
      shard_grad = at::empty({g.value.numel()}, opts);
      g.shard->reduce_scatter(shard_grad, padded).wait();
      if (g.reduce) g.reduce->all_reduce(shard_grad, comm::reduce_op::sum).wait();
      shard_grad = shard_grad.to(g.value.scalar_type());  // into the fp32 master shard
    } else {
      shard_grad = gr.clone();
    }
    if (g.value.grad().defined())
      g.value.mutable_grad().add_(shard_grad);
    else
      g.value.mutable_grad() = shard_grad;
  }

  // After backward: DDP's per-unit all-reduce (reverse unit order, as the plan),
  // and zero gradients for replicated units that got none.
  void finish_backward() {
    for (auto it = units_.rbegin(); it != units_.rend(); ++it)
      for (auto* g : {&it->dense, &it->experts}) {
        if (g->empty() || g->shard) continue;
        if (!g->value.grad().defined()) g->value.mutable_grad() = at::zeros_like(g->value);
        if (g->reduce) g->reduce->all_reduce(g->value.mutable_grad(), comm::reduce_op::sum).wait();
      }
  }

  // ---- autograd functions --------------------------------------------------------------

  // A root unit (or an unwrapped sharded one): gather in forward, reduce in backward.
  struct gather_fn : torch::autograd::Function<gather_fn> {
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor&, parallel_model* self,
                              unit_state<Comm>* s) {
      ctx->saved_data["self"] = reinterpret_cast<int64_t>(self);
      ctx->saved_data["s"] = reinterpret_cast<int64_t>(s);
      auto [dense, experts] = self->gather(*s);
      ctx->saved_data["dn"] = s->dense.numel;
      return at::cat({dense.narrow(0, 0, s->dense.numel), experts.narrow(0, 0, s->experts.numel).to(dense.scalar_type())});
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list g) {
      auto* self = reinterpret_cast<parallel_model*>(ctx->saved_data["self"].toInt());
      auto* s = reinterpret_cast<unit_state<Comm>*>(ctx->saved_data["s"].toInt());
      const int64_t dn = s->dense.numel;
      self->reduce_into(s->dense, g[0].narrow(0, 0, dn));
      self->reduce_into(s->experts, g[0].narrow(0, dn, s->experts.numel));
      return {at::Tensor(), at::Tensor(), at::Tensor()};
    }
    static nn::tensors apply(const at::Tensor& dummy, parallel_model* self, unit_state<Comm>* s) {
      const at::Tensor flat = torch::autograd::Function<gather_fn>::apply(dummy, self, s);
      const int64_t dn = s->dense.numel;
      return views(*s, flat.narrow(0, 0, dn), flat.narrow(0, dn, s->experts.numel));
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
      const int64_t dn = s->dense.numel;
      self->current_block_params_ =
          views(*s, in.dense.narrow(0, 0, dn), in.experts.narrow(0, 0, s->experts.numel));
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
        ctx->save_for_backward({x});
        // the body is needed again in backward: keep a copy of it
        auto keep = std::make_shared<body_t>(*body);
        ctx->saved_data["body"] = reinterpret_cast<int64_t>(new std::shared_ptr<body_t>(keep));
      } else {
        torch::AutoGradMode grad(true);
        *holder = run(self, s, *body, x, dense, experts, sharded);
        if (s->reshard && sharded) {  // free the gathered copy; backward gathers it again
          detail::resize_storage(holder->dense, 0);
          detail::resize_storage(holder->experts, 0);
        }
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
        auto [dense, experts] = full_params(self, s);  // backward all_gather
        torch::AutoGradMode grad(true);
        self->ctx_->h = self->node_hooks_[s->id.node];  // the recompute runs this node's hooks
        *holder = run(self, s, *body, x, dense, experts, sharded);
      } else if (s->reshard && sharded) {  // backward all_gather into the freed storage
        comm::work wd, we;
        for (auto [grp, t, w] : {std::tuple{&s->dense, holder->dense, &wd}, std::tuple{&s->experts, holder->experts, &we}}) {
          if (grp->empty() || !grp->shard) continue;
          detail::resize_storage(t, static_cast<size_t>(grp->padded()) * t.element_size());
          *w = grp->shard->all_gather(detail::alias_of(t), grp->value.detach().to(grp->compute).contiguous());
        }
        wd.wait();
        we.wait();
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
        self->reduce_into(s->dense, grads[o].defined() ? grads[o].narrow(0, 0, s->dense.numel) : at::Tensor());
        self->reduce_into(s->experts,
                          grads[o + 1].defined() ? grads[o + 1].narrow(0, 0, s->experts.numel) : at::Tensor());
        if (s->reshard) {
          detail::resize_storage(holder->dense, 0);
          detail::resize_storage(holder->experts, 0);
        }
      } else {  // checkpointed replicated unit: accumulate into the leaves
        for (auto [grp, gr] : {std::pair{&s->dense, grads[o]}, std::pair{&s->experts, grads[o + 1]}}) {
          if (grp->empty() || !gr.defined()) continue;
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
  nn::context* ctx_ = nullptr;
  nn::context* hook_ctx_ = nullptr;
  std::vector<nn::hooks> node_hooks_;
  bool block_had_aux_ = false;
};

}  // namespace veomni::parallel
