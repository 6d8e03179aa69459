#pragma once
// parallel_model: a model graph G trained with recipe R on a mesh. It runs
// nn::forward over the units' parameters as the executor provides them,
// with each node's hooks as its policies' runtime halves set them, and
// hands every event of the computation to the executor, which issues the
// plan's collectives in the schedule's order (executor.hpp).
//
//   parallel_model<G, R, comm::gloo_mesh> model(dims, mesh, {.seed = 1});
//   train::adamw optim(model.parameters(), model.decay_masks());
//   for (...) {
//     model.zero_grad();
//     model.forward_backward(batch);               // one micro-batch (or several, accumulating)
//     double norm = model.optimizer_step([&](double n) { optim.step(lr, train::clip_scale(n, 1.0)); });
//   }
//
// Gradients reach the masters directly (not through autograd's leaves), so a
// rank whose batch has no image still reduces the vision encoder's (zero)
// gradients: the plan never depends on the data.
#include <torch/torch.h>

#include <tuple>

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "../comm/mesh_layout.hpp"
#include "../core/plan.hpp"
#include "../nn/kernels.hpp"
#include "../nn/model.hpp"
#include "autograd.hpp"
#include "collectives.hpp"
#include "contract.hpp"
#include "data.hpp"
#include "executor.hpp"

namespace veomni::parallel {

// What a rank holds, measured: bytes of parameter storage that lives across
// steps, of gradients (the masters' .grad, or ZeRO-1's whole gradient), and
// of the optimizer's state (given by the caller: it owns it).
struct held_memory {
  long params = 0;
  long grads = 0;
};

namespace detail {
struct no_runtime {
  template <class H>
  explicit no_runtime(H&) {}
};
template <class P, class H>
struct runtime_slot {
  using type = no_runtime;
};
template <class P, class H>
  requires has_runtime<P, H>
struct runtime_slot<P, H> {
  using type = typename runtime_of<P, H>::type;
};
template <class R, class = void>
struct layout_of_runtime {
  static constexpr bool has = false;
  static constexpr sequence_layout value = sequence_layout::contiguous;
};
template <class R>
struct layout_of_runtime<R, std::void_t<decltype(R::layout)>> {
  static constexpr bool has = true;
  static constexpr sequence_layout value = R::layout;
};

// Per node: its policies' runtime halves (a heterogeneous set, one type per
// policy), constructed in recipe order with the node's handle.
template <class Exec, std::size_t I, class Tuple>
struct node_runtimes;
template <class Exec, std::size_t I, class... Ps>
struct node_runtimes<Exec, I, std::tuple<Ps...>> {
  using handle = node_handle<Exec>;
  using type = std::tuple<typename runtime_slot<Ps, handle>::type...>;
  static type make(Exec& e, nn::hooks& h) {
    return type{make_one<Ps>(e, h)...};  // braced: constructed left to right, in recipe order
  }
  template <class Pol>
  static typename runtime_slot<Pol, handle>::type make_one(Exec& e, nn::hooks& h) {
    (void)check_contract<Pol,
                         typename veomni::detail::node_ctx<typename Exec::G, typename Exec::plan_type::recipe_type,
                                                           I>::type,
                         handle, Exec::G::template node_at<I>::name>();
    handle n(e, I, Pol::name, h);
    return typename runtime_slot<Pol, handle>::type(n);
  }
  static constexpr sequence_layout layout() {
    sequence_layout l = sequence_layout::contiguous;
    ((layout_of_runtime<typename runtime_slot<Ps, handle>::type>::has
          ? (l = layout_of_runtime<typename runtime_slot<Ps, handle>::type>::value)
          : l),
     ...);
    return l;
  }
};
}  // namespace detail

template <Model G, Recipe R, class Mesh>
class parallel_model : public nn::unit_source {
 public:
  using plan_t = plan<G, R>;
  using exec_type = executor<plan_t, Mesh>;
  using Comm = typename Mesh::communicator;
  using unit_type = typename exec_type::unit_type;
  using dims_t = typename G::dims;
  template <std::size_t I>
  using node_runtimes_t = detail::node_runtimes<exec_type, I, typename veomni::detail::node_policies<G, R, I>::type>;
  template <std::size_t... I>
  static std::tuple<typename node_runtimes_t<I>::type...> all_runtimes(std::index_sequence<I...>);
  // every node's runtime halves, one tuple per node
  using runtimes_t = decltype(all_runtimes(std::make_index_sequence<G::size>{}));

  parallel_model(const dims_t& d, Mesh& mesh, options opt = {})
      : d_(d), exec_(d, mesh, opt), node_hooks_(G::size), runtimes_(make_runtimes(std::make_index_sequence<G::size>{})) {
    switching_.self = this;
  }
  parallel_model(const parallel_model&) = delete;
  parallel_model& operator=(const parallel_model&) = delete;

  // ---- nn::unit_source --------------------------------------------------------
  nn::tensors unit(const nn::unit_id& u) override {
    unit_type& s = exec_.unit(u.node, u.block);
    if (u.block >= 0 && s.wrapped) return current_block_params_;  // inside block_fn
    nn::tensors out;
    if (s.flat_sharded()) out = gather_fn<parallel_model>::apply(dummy_, this, &s);
    for (int g = s.flat_sharded() ? 2 : 0; g < static_cast<int>(unit_type::groups_n); ++g) {
      auto& grp = s.groups[static_cast<std::size_t>(g)];
      if (grp.empty()) continue;
      // whole: the leaf itself when nothing reduces it (or frozen), else
      // through capture_fn (its backward hands this micro-batch's gradient over)
      const at::Tensor flat =
          grp.leaf || grp.frozen ? grp.master : capture_fn<parallel_model>::apply(dummy_, this, &s, g);
      for (auto& t : nn::split_flat(flat, grp.shapes, !grp.frozen)) out.push_back(std::move(t));
    }
    return out;
  }

  // ---- one micro-batch: forward and backward ----------------------------------------
  // Every value is global (identical on every rank); with accumulation, the
  // sums over a step's micro-batches are the step's values.
  struct step_stats {
    double loss = 0;   // the model's token losses (LM, image codes): each term's sum over its global count
    std::map<std::string, double> terms;  // loss by term name ("lm", "image_codes"), the terms with targets
    std::vector<double> term_sums, term_counts;
    double aux = 0;    // the MoE load-balancing loss (unweighted; 0 without experts)
    double total = 0;  // what the backward minimises: loss + options.aux_weight * aux
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

  step_stats forward_backward(const nn::batch& host_batch, const accumulation& acc = {}) {
    if (exec_.optimizer_pending())
      throw std::logic_error("veomni::parallel: forward_backward after grad_norm() without after_update(): the "
                             "plan's optimizer phase has not finished (use optimizer_step)");
    // the batch on the run's device (the data pipeline builds it on the CPU)
    const nn::batch moved = on_accelerator() ? nn::to_device(host_batch, exec_.opts().device) : nn::batch{};
    const nn::batch& b = on_accelerator() ? moved : host_batch;
    nn::context ctx;
    ctx.data = &b;
    ctx_ = &ctx;
    exec_.begin_micro_batch();
    hook_ctx_ = &ctx;
    nn::port_map outs = nn::forward<G>(d_, switching_, ctx, runner());
    exec_.set_current(-1, false);
    exec_.reach({trigger_kind::forward_end, G::size, -1});
    // global counts of loss targets, and the global loss for reporting
    std::vector<at::Tensor> stat_parts;
    for (const auto& t : ctx.losses) {
      stat_parts.push_back(t.sum.detach().reshape({1}).to(at::kFloat));
      stat_parts.push_back(t.count.reshape({1}).to(at::kFloat));
    }
    at::Tensor stats = at::cat(stat_parts).contiguous();
    const auto stats_op = step_op(tensor_role::loss_stats);
    stats_op.all_reduce(stats_op.now(), stats).wait();
    const double n_data = static_cast<double>(exec_.mesh().shape().world() / exec_.mesh().shape().extra_product());
    at::Tensor loss = at::zeros({}, scalar_options());
    step_stats out;
    for (std::size_t i = 0; i < ctx.losses.size(); ++i) {
      const auto over = acc.global_counts.find(ctx.losses[i].name);
      const double gs = stats[2 * i].item<double>(),
                   gc = std::max(1.0, over != acc.global_counts.end() ? over->second : stats[2 * i + 1].item<double>());
      loss = loss + ctx.losses[i].sum / gc;
      out.term_sums.push_back(gs);
      out.term_counts.push_back(stats[2 * i + 1].item<double>());
      out.loss += gs / gc;
      if (over != acc.global_counts.end() ? over->second > 0 : stats[2 * i + 1].item<double>() > 0)
        out.terms[ctx.losses[i].name] += gs / gc;  // a term without targets in the step has no loss to report
    }
    if (!ctx.aux_losses.empty()) {
      // every rank computes the same aux from global statistics; each adds 1/n of it
      at::Tensor aux = at::zeros({}, scalar_options());
      for (const auto& a : ctx.aux_losses) aux = aux + a;
      aux = aux / static_cast<double>(ctx.aux_losses.size());
      loss = loss + acc.aux_scale * exec_.opts().aux_weight * aux / n_data;
      out.aux = acc.aux_scale * aux.item<double>();
    }
    out.total = out.loss + exec_.opts().aux_weight * out.aux;
    // keep every node's outputs in the graph so every unit's backward runs
    for (auto& [k, v] : outs)
      if (v.requires_grad()) loss = loss + 0 * v.sum();
    loss.backward();
    ctx_ = nullptr;
    exec_.finish_micro_batch();
    return out;
  }

  // ---- the optimizer phase ------------------------------------------------------------
  // The global gradient norm (the plan's grad_norm all_reduce over dp_shard*sp).
  double grad_norm() {
    exec_.begin_optimizer();
    double local = 0;  // this rank's share, in double
    for (auto& u : exec_.units())
      for (auto& g : u.groups)
        if (!g.empty() && g.master.grad().defined())
          local += nn::kernels::squared_norm(g.master.grad()) / g.replicas;
    at::Tensor sq = at::full({1}, local, scalar_options());
    const auto norm_op = step_op(tensor_role::grad_norm);
    norm_op.all_reduce(norm_op.now(), sq).wait();
    return std::sqrt(sq.item<double>());
  }
  // After the optimizer updated the masters: the plan's optimizer-phase ops
  // (ZeRO: the updated shards gathered into the whole parameters).
  void after_update() { exec_.finish_optimizer(); }
  // grad_norm, update(norm), after_update: the optimizer phase in the plan's order.
  template <class F>
  double optimizer_step(F&& update) {
    const double norm = grad_norm();
    std::forward<F>(update)(norm);
    after_update();
    return norm;
  }
  // After loading masters from a checkpoint: what is derived from them (ZeRO's whole parameters).
  void after_load() { exec_.refresh_from_masters(); }

  // ---- what the rank holds ----------------------------------------------------------------
  // Its groups, by what they hold: the trainable ones (the masters the
  // optimizer updates: all but an adapted node's frozen parameters), all,
  // the model's parameters (nn::unit_specs: not the adapters), the adapters.
  enum class held { trainable, all, base, adapters };

  // The masters of `which` in model order, their weight-decay masks, and
  // which parameter elements each holds (checkpoints, consolidation).
  std::vector<at::Tensor> masters(held which = held::all) {
    std::vector<at::Tensor> out;
    visit(*this, which, [&](auto& g, std::size_t) { out.push_back(g.master); });
    return out;
  }
  std::vector<at::Tensor> decay_masks(held which = held::trainable) {
    std::vector<at::Tensor> out;
    visit(*this, which, [&](auto& g, std::size_t) { out.push_back(g.decay); });
    return out;
  }
  std::vector<piece> pieces(held which) const {
    std::vector<piece> out;
    visit(*this, which, [&](const auto& g, std::size_t i) { add_pieces(out, g, i); });
    return out;
  }
  // The optimizer's view: parameters() and held_pieces() are masters and pieces of the trainable groups.
  std::vector<at::Tensor> parameters() { return masters(held::trainable); }
  std::vector<piece> held_pieces() const { return pieces(held::trainable); }
  // The adapters (Adapt<LoRA>) by parameter: their specs (whole shapes), in
  // model order; this rank holds pieces(held::adapters) of them (all, or of
  // experts split with the experts its local experts' rows).
  std::vector<nn::param_spec> adapter_specs() const {
    std::vector<nn::param_spec> out;
    visit(*this, held::adapters, [&](const auto& g, std::size_t) {
      for (const auto& s : g.segs) out.push_back(s.spec);
    });
    return out;
  }
  // Drops the gradients: the next backward assigns each group's reduced
  // gradient instead of adding it to zeros (one pass over them less).
  void zero_grad() {
    for (auto& u : exec_.units())
      for (auto& g : u.groups) {
        if (g.empty()) continue;
        g.master.mutable_grad() = at::Tensor();
        g.whole_grad = at::Tensor();
      }
  }
  // Elements of parameters this rank updates (shards, padding included).
  int64_t local_numel() {
    int64_t n = 0;
    for (auto& p : parameters()) n += p.numel();
    return n;
  }
  // Parameter and gradient storage held across steps, in bytes.
  held_memory held_bytes() const {
    held_memory m;
    for (const auto& u : exec_.units())
      for (const auto& g : u.groups) {
        if (g.empty()) continue;
        const at::Tensor& p = g.how == holding::whole_split ? g.whole : g.master;
        m.params += static_cast<long>(p.numel() * p.element_size());
        const at::Tensor& gr = g.whole_grad.defined() ? g.whole_grad : g.master.grad();
        if (gr.defined()) m.grads += static_cast<long>(gr.numel() * gr.element_size());
      }
    return m;
  }
  Mesh& mesh() { return exec_.mesh(); }
  exec_type& exec() { return exec_; }
  const step_schedule& schedule() const { return exec_.steps(); }

  // How the recipe's Split policies lay the sequence over sp (for the data).
  static constexpr sequence_layout layout() {
    sequence_layout l = sequence_layout::contiguous;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((runtimes_layout<I>() != sequence_layout::contiguous ? (l = runtimes_layout<I>()) : l), ...);
    }(std::make_index_sequence<G::size>{});
    return l;
  }

  // fp32 scalars (losses, statistics) on the run's device
  at::TensorOptions scalar_options() const { return at::TensorOptions().dtype(at::kFloat).device(exec_.opts().device); }
  bool on_accelerator() const { return !exec_.opts().device.is_cpu(); }

  // ---- for the autograd functions (autograd.hpp) ---------------------------------------------
  bool checkpointing() const { return exec_.opts().checkpoint; }
  std::pair<at::Tensor, at::Tensor> run_block(unit_type& u, const std::function<at::Tensor(const at::Tensor&)>& body,
                                              const at::Tensor& x, const std::array<at::Tensor, unit_type::groups_n>& bufs) {
    current_block_params_ = views(u, bufs);
    const std::size_t aux_before = ctx_->aux_losses.size();
    at::Tensor y = body(x), aux;
    block_had_aux_ = ctx_->aux_losses.size() > aux_before;
    if (block_had_aux_) {
      aux = at::zeros({}, scalar_options());
      for (std::size_t i = aux_before; i < ctx_->aux_losses.size(); ++i) aux = aux + ctx_->aux_losses[i];
      ctx_->aux_losses.resize(aux_before);
    }
    current_block_params_.clear();
    return {y, aux};
  }
  void begin_recompute(const unit_type& u) {
    ctx_->h = node_hooks_[u.id.node];  // the recompute runs this node's hooks
    exec_.set_current(u.id.block, true);
  }
  void end_recompute() { exec_.set_current(-1, false); }

 private:
  template <std::size_t I>
  static constexpr sequence_layout runtimes_layout() {
    return node_runtimes_t<I>::layout();
  }

  template <std::size_t... I>
  runtimes_t make_runtimes(std::index_sequence<I...>) {
    (install_step_hooks<I>(), ...);
    return runtimes_t{node_runtimes_t<I>::make(exec_, node_hooks_[I])...};
  }

  // The step's router statistics (the plan's "Step" ops on MoE layers): summed
  // over the ranks that share the batch, through their op handles.
  template <std::size_t I>
  void install_step_hooks() {
    using C = typename G::template component_at<I>;
    if constexpr (has_layer_kind<C>(layer_kind::moe)) {
      node_handle<exec_type> n(exec_, I, veomni::detail::step_policy, node_hooks_[I]);
      const auto f = n.op(layer_kind::moe, phase::forward, tensor_role::router_stats);
      const auto b = n.op(layer_kind::moe, phase::backward, tensor_role::router_stats);
      // in fp32 (at least) whatever the compute dtype (the plan's statistics are fp32: run_dtype)
      node_hooks_[I].reduce_router_stats = [f, b](const at::Tensor& t) {
        return sum_over(f, b, t.to(at::promote_types(t.scalar_type(), at::kFloat)));
      };
    }
  }

  // The step's own op on tensor t (loss statistics, gradient norm).
  op_handle<exec_type> step_op(tensor_role t) {
    for (std::size_t i = 0; i < plan_t::size; ++i)
      if (plan_t::ops[i].node_index == G::size && plan_t::ops[i].tensor == t) return {&exec_, i};
    throw std::logic_error("veomni::parallel: the plan has no step op on " + std::string(to_string(t)));
  }

  // f(group, i) for every non-empty group of `which` in model order, i its index among them.
  template <class Self, class F>
  static void visit(Self& self, held which, F&& f) {
    std::size_t i = 0;
    for (auto& u : self.exec_.units())
      for (std::size_t gi = 0; gi < unit_type::groups_n; ++gi) {
        auto& g = u.groups[gi];
        if (g.empty()) continue;
        const bool adapter = gi >= 2;
        if (which == held::all || (which == held::trainable && !g.frozen) || (which == held::base && !adapter) ||
            (which == held::adapters && adapter))
          f(g, i++);
      }
  }

  // A unit's parameters as views of its flat buffers (dense, experts, adapters, expert adapters).
  static nn::tensors views(const unit_type& s, const std::array<at::Tensor, unit_type::groups_n>& bufs) {
    nn::tensors out;
    for (std::size_t g = 0; g < unit_type::groups_n; ++g)
      for (auto& t : nn::split_flat(bufs[g], s.groups[g].shapes, true)) out.push_back(std::move(t));
    return out;
  }

  // Per node: the plan has a backward op on one of its layers.
  static constexpr std::array<bool, G::size> backward_layer_ops = [] {
    std::array<bool, G::size> out{};
    for (const auto& o : plan_t::ops)
      if (o.node_index < G::size && !o.target.is_unit && o.ph == phase::backward) out[o.node_index] = true;
    return out;
  }();

  nn::block_runner runner() {
    return [this](const nn::unit_id& u, const at::Tensor& x,
                  const std::function<at::Tensor(const at::Tensor&)>& body) -> at::Tensor {
      unit_type& s = exec_.unit(u.node, u.block);
      exec_.set_current(u.block, false);
      exec_.reach({trigger_kind::block_begin, u.node, u.block});
      // a frozen node's first block may see an input that needs no gradient
      // (a frozen embedding): differentiate it anyway when the plan has
      // backward layer ops on the node, so that backward runs through every
      // block and issues them there (Ulysses' all_to_alls around an attention
      // without adapters)
      const at::Tensor in = s.base_frozen() && !x.requires_grad() && backward_layer_ops[u.node]
                                ? x.detach().requires_grad_(true)
                                : x;
      if (!s.wrapped) return body(in);
      auto out = block_fn<parallel_model>::apply(in, dummy_, this, &s, &body);
      if (out[1].defined() && block_had_aux_) ctx_->aux_losses.push_back(out[1]);
      return out[0];
    };
  }

  // Installs each node's hooks as the forward asks for the node's root.
  struct switching_source : nn::unit_source {
    parallel_model* self = nullptr;
    nn::tensors unit(const nn::unit_id& u) override {
      if (u.block < 0) {
        self->hook_ctx_->h = self->node_hooks_[u.node];
        self->exec_.set_current(-1, false);
        self->exec_.reach({trigger_kind::node_begin, u.node, -1});
      }
      return self->unit(u);
    }
  };

  dims_t d_;
  exec_type exec_;
  std::vector<nn::hooks> node_hooks_;  // one per node, at stable addresses (the runtime halves refer to them)
  // makes gather and block functions differentiable
  at::Tensor dummy_ = torch::zeros({}, scalar_options().requires_grad(true));
  nn::tensors current_block_params_;
  nn::context* ctx_ = nullptr;
  nn::context* hook_ctx_ = nullptr;
  switching_source switching_;
  bool block_had_aux_ = false;
  runtimes_t runtimes_;  // held for the runs' lifetime (a runtime half may keep state)
};

}  // namespace veomni::parallel
