#pragma once
// The autograd functions through which a unit's parameters reach the model
// and its gradient reaches the executor (parallel/executor.hpp):
//
//   gather_fn   a unit with a flat-sharded group (a root; FSDP): forward
//               takes the gathered parameters, backward hands the gradient
//               of each group to the executor (grads_ready)
//   capture_fn  a whole group whose gradient is reduced (DDP, ZeRO): forward
//               is the compute buffer itself (no copy), backward hands this
//               micro-batch's gradient to the executor instead of the leaf
//   block_fn    a block the runtime wraps (flat-sharded or checkpointed):
//               forward runs the body on the gathered parameters and frees
//               them when the plan gathers them again in backward (reshard)
//               or drops the body's graph (checkpointing); backward
//               (re)gathers, recomputes, differentiates the body and hands
//               the gradients to the executor
//
// What a function keeps for its backward lives in its autograd context as a
// capsule (c10::intrusive_ptr): freed with the graph, also when a step is
// interrupted and backward never runs. Host (the parallel_model) and its
// units outlive every graph; they are referred to, not owned.
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <functional>
#include <utility>

#include "../core/schedule.hpp"
#include "storage.hpp"

namespace veomni::parallel {

namespace detail {
template <class Host>
struct unit_ref : torch::CustomClassHolder {
  Host* host = nullptr;
  typename Host::unit_type* unit = nullptr;
  int group = 0;
};
template <class Host>
void save_unit(torch::autograd::AutogradContext* ctx, Host* h, typename Host::unit_type* u, int group = 0) {
  auto r = c10::make_intrusive<unit_ref<Host>>();
  r->host = h, r->unit = u, r->group = group;
  ctx->saved_data["unit"] = at::IValue::make_capsule(std::move(r));
}
template <class Host>
c10::intrusive_ptr<unit_ref<Host>> load_unit(torch::autograd::AutogradContext* ctx) {
  return c10::static_intrusive_pointer_cast<unit_ref<Host>>(ctx->saved_data["unit"].toCapsule());
}
// The compute buffer of group g: gathered (flat shard), or the whole.
template <class Host>
at::Tensor compute_buffer(Host* h, typename Host::unit_type& u, int g) {
  auto& grp = u.groups[static_cast<std::size_t>(g)];
  if (grp.empty()) return at::zeros({0}, grp.master.options().requires_grad(false));
  return grp.how == holding::flat_shard ? h->exec().take_gathered(u, g) : grp.whole.detach();
}
}  // namespace detail

template <class Host>
struct gather_fn : torch::autograd::Function<gather_fn<Host>> {
  using unit_type = typename Host::unit_type;
  // The unit's dense and expert parameters as one flat buffer.
  static at::Tensor flat(Host* h, unit_type& u) {
    at::Tensor dense = detail::compute_buffer(h, u, 0), experts = detail::compute_buffer(h, u, 1);
    // no experts: the gathered buffer itself (padded), so that backward's
    // flat gradient is the reduce_scatter's input as it is
    if (u.groups[1].empty()) return dense;
    return at::cat({dense.narrow(0, 0, u.groups[0].numel), experts.narrow(0, 0, u.groups[1].numel).to(dense.scalar_type())});
  }
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor&, Host* h, unit_type* u) {
    detail::save_unit(ctx, h, u);
    return flat(h, *u);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    const auto r = detail::load_unit<Host>(ctx);
    unit_type& u = *r->unit;
    if (u.groups[1].empty()) {
      r->host->exec().grads_ready(u, 0, std::move(g[0]));
      r->host->exec().grads_ready(u, 1, {});
    } else {
      const int64_t dn = u.groups[0].numel;
      r->host->exec().grads_ready(u, 0, g[0].defined() ? g[0].narrow(0, 0, dn) : at::Tensor());
      r->host->exec().grads_ready(u, 1, g[0].defined() ? g[0].narrow(0, dn, u.groups[1].numel) : at::Tensor());
    }
    return {at::Tensor(), at::Tensor(), at::Tensor()};
  }
  // The unit's parameters (dense, then experts); frozen (an adapted node's),
  // outside autograd: no gradient of them is computed.
  static nn::tensors apply(const at::Tensor& dummy, Host* h, unit_type* u) {
    const at::Tensor all = u->base_frozen() ? flat(h, *u) : torch::autograd::Function<gather_fn>::apply(dummy, h, u);
    std::vector<std::vector<int64_t>> shapes = u->groups[0].shapes;
    shapes.insert(shapes.end(), u->groups[1].shapes.begin(), u->groups[1].shapes.end());
    return nn::split_flat(all, shapes, !u->base_frozen());
  }
};

template <class Host>
struct capture_fn : torch::autograd::Function<capture_fn<Host>> {
  using unit_type = typename Host::unit_type;
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor&, Host* h, unit_type* u, int g) {
    detail::save_unit(ctx, h, u, g);
    return u->groups[static_cast<std::size_t>(g)].whole.detach();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    const auto r = detail::load_unit<Host>(ctx);
    r->host->exec().grads_ready(*r->unit, r->group, std::move(g[0]));
    return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <class Host>
struct block_fn : torch::autograd::Function<block_fn<Host>> {
  using unit_type = typename Host::unit_type;
  using body_t = std::function<at::Tensor(const at::Tensor&)>;
  static constexpr std::size_t groups_n = unit_type::groups_n;
  struct inner {
    at::Tensor x, y, aux;
    std::array<at::Tensor, groups_n> p;  // the compute buffers: dense, experts, adapters, expert adapters
  };
  // What forward leaves for backward.
  struct state : torch::CustomClassHolder {
    Host* host = nullptr;
    unit_type* unit = nullptr;
    inner in;
    body_t body;                     // checkpointing: the body, run again in backward
    std::array<at::Tensor, 2> kept;  // checkpointing: gathered parameters the plan does not gather again
  };

  // The body on the unit's compute buffers: the parameters as views of them,
  // aux losses of the block collected as one output. Frozen parameters need
  // no gradient; the adapters (whole or their local experts', fp32) do.
  static inner run(Host* h, unit_type& u, const body_t& body, const at::Tensor& x, const at::Tensor& dense,
                   const at::Tensor& experts) {
    inner in;
    // the block computes in its parameters' dtype (mixed precision)
    in.x = x.detach().to(dense.scalar_type()).requires_grad_(x.requires_grad());
    in.p[0] = dense.detach().requires_grad_(!u.base_frozen());
    in.p[1] = experts.detach().requires_grad_(!u.base_frozen());
    for (std::size_t g = 2; g < groups_n; ++g)
      in.p[g] = detail::compute_buffer(h, u, static_cast<int>(g)).detach().requires_grad_(!u.groups[g].empty());
    std::tie(in.y, in.aux) = h->run_block(u, body, in.x, in.p);
    return in;
  }

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor&, Host* h, unit_type* u, const body_t* body) {
    auto st = c10::make_intrusive<state>();
    st->host = h;
    st->unit = u;
    const at::Tensor dense = detail::compute_buffer(h, *u, 0), experts = detail::compute_buffer(h, *u, 1);
    if (h->checkpointing()) {
      {
        torch::NoGradGuard no_grad;
        st->in = run(h, *u, *body, x, dense, experts);
      }
      st->in.y = st->in.y.detach();
      for (std::size_t g = 0; g < 2; ++g)  // kept for the recompute: no backward all_gather
        if (u->groups[g].how == holding::flat_shard && !u->regathers[g]) st->kept[g] = g == 0 ? dense : experts;
      st->body = *body;
      ctx->save_for_backward({x});
    } else {
      torch::AutoGradMode grad(true);
      st->in = run(h, *u, *body, x, dense, experts);
      // the plan gathers it again in backward: free the gathered copy now
      h->exec().free_gathered(*u, st->in.p[0], st->in.p[1]);
      u->saved[0] = st->in.p[0];
      u->saved[1] = st->in.p[1];
    }
    const at::Tensor aux = st->in.aux.defined() ? st->in.aux.detach() : at::zeros({}, x.options().dtype(at::kFloat));
    const at::Tensor y = st->in.y.detach();
    ctx->saved_data["state"] = at::IValue::make_capsule(st);
    return {y, aux};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    const auto st = c10::static_intrusive_pointer_cast<state>(ctx->saved_data["state"].toCapsule());
    Host* h = st->host;
    unit_type& u = *st->unit;
    // this block's parameters first when their gather is in flight (the
    // prefetch), then the schedule's point: the next block's gather is issued
    // once this one's has arrived
    std::array<at::Tensor, 2> params;
    if (h->checkpointing()) {
      for (std::size_t g = 0; g < 2; ++g)
        if (st->kept[g].defined()) params[g] = st->kept[g];
        else if (u.gathered[g].defined()) params[g] = h->exec().take_gathered(u, static_cast<int>(g));
    } else {
      h->exec().finish_regather(u, /*only_issued=*/true);
    }
    h->exec().reach({trigger_kind::block_backward_begin, u.id.node, u.id.block});
    if (h->checkpointing()) {
      const at::Tensor x = ctx->get_saved_variables()[0];
      for (int gi = 0; gi < 2; ++gi) {
        const auto gs = static_cast<std::size_t>(gi);
        if (!params[gs].defined()) params[gs] = detail::compute_buffer(h, u, gi);  // the backward all_gather
      }
      torch::AutoGradMode grad(true);
      h->begin_recompute(u);
      st->in = run(h, u, st->body, x, params[0], params[1]);
      h->end_recompute();
      st->kept = {};
    } else {
      h->exec().finish_regather(u);  // backward all_gather into the freed storage
    }
    inner& in = st->in;
    std::vector<at::Tensor> outs{in.y}, grads_out{g[0]};
    if (in.aux.defined() && g[1].defined()) {
      outs.push_back(in.aux);
      grads_out.push_back(g[1]);
    }
    // d(x), then the gradients of what requires one: the parameters, or an
    // adapted node's adapters alone
    std::vector<at::Tensor> wrt;
    std::array<int, groups_n> at_index;
    at_index.fill(-1);
    const bool x_grad = in.x.requires_grad();
    if (x_grad) wrt.push_back(in.x);
    for (std::size_t gi = 0; gi < groups_n; ++gi) {
      const at::Tensor& t = in.p[gi];
      if (!t.requires_grad()) continue;
      at_index[gi] = static_cast<int>(wrt.size());
      wrt.push_back(t);
    }
    std::vector<at::Tensor> grads;
    if (!wrt.empty() && in.y.requires_grad())
      grads = torch::autograd::grad(outs, wrt, grads_out, false, false, /*allow_unused=*/true);
    grads.resize(wrt.size());
    at::Tensor dx = x_grad ? std::move(grads[0]) : at::Tensor();
    for (std::size_t gi = 0; gi < groups_n; ++gi)
      h->exec().grads_ready(u, static_cast<int>(gi), at_index[gi] >= 0 ? std::move(grads[static_cast<std::size_t>(at_index[gi])]) : at::Tensor());
    if (!h->checkpointing()) h->exec().free_gathered(u, in.p[0], in.p[1]);
    u.saved = {};
    st->in = inner{};
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace veomni::parallel
