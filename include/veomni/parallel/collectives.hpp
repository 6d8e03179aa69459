#pragma once
// Collectives on activations as autograd functions: each forward collective
// carries its backward dual, as the plan pairs them, and each issues
// through its op handle (parallel/contract.hpp), so the schedule decides
// when and the trace says which op it was. Policies' runtime halves build
// on these.
//
//   seq_to_heads   Ulysses: [T/P, H, D] -> [T, H/P, D]   backward: heads_to_seq
//   heads_to_seq   Ulysses: [T, H/P, D] -> [T/P, H, D]   backward: seq_to_heads
//   exchange_rows  EP: uneven all_to_all of rows          backward: the same with splits swapped
//   sum_over       all_reduce(sum) whose gradient is all_reduce(sum) of the gradients
//   gather_rows    all_gather of rows (rank order)       backward: reduce_scatter of the gradient
//
// Each takes the forward op's handle f, the backward op's handle b, and the
// forward instance (f.now() by default); the backward runs b's instance of
// the same block.
//
// Worked example, Ulysses with P = 2 ranks, T = 4 tokens, H = 2 heads:
//   rank 0 holds tokens 0,1 with heads a,b; rank 1 tokens 2,3 with heads a,b.
//   seq_to_heads: rank 0 gets tokens 0..3 of head a, rank 1 tokens 0..3 of head b.
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "contract.hpp"

namespace veomni::parallel {

namespace detail {
template <class H>
at::Tensor seq_to_heads_impl(const H& h, const op_instance& i, const at::Tensor& x) {
  const int64_t p = h.size(), t = x.size(0), heads = x.size(1), d = x.size(2);
  TORCH_CHECK(heads % p == 0, "veomni::parallel::seq_to_heads: ", heads, " heads do not split over ", p, " ranks");
  // chunk j (heads block j) goes to rank j
  const at::Tensor send = x.reshape({t, p, heads / p, d}).permute({1, 0, 2, 3}).contiguous();
  at::Tensor recv = at::empty_like(send);
  h.all_to_all(i, recv, send).wait();
  // chunk i came from rank i, which holds tokens [i*t, (i+1)*t)
  return recv.reshape({p * t, heads / p, d});
}

template <class H>
at::Tensor heads_to_seq_impl(const H& h, const op_instance& i, const at::Tensor& x) {
  const int64_t p = h.size(), t = x.size(0) / p, hl = x.size(1), d = x.size(2);
  TORCH_CHECK(x.size(0) % p == 0, "veomni::parallel::heads_to_seq: ", x.size(0), " tokens do not split over ", p,
              " ranks");
  const at::Tensor send = x.contiguous();  // chunk j = tokens of rank j
  at::Tensor recv = at::empty_like(send);
  h.all_to_all(i, recv, send).wait();
  // chunk i holds heads block i of my tokens
  return recv.reshape({p, t, hl, d}).permute({1, 0, 2, 3}).reshape({t, p * hl, d});
}

template <class H>
at::Tensor exchange_rows_impl(const H& h, const op_instance& i, const at::Tensor& x, const std::vector<int64_t>& send,
                              const std::vector<int64_t>& recv) {
  int64_t rows = 0;
  for (auto r : recv) rows += r;
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = rows;
  at::Tensor out = at::empty(shape, x.options());
  h.all_to_all(i, out, x.contiguous(), recv, send).wait();
  return out;
}

// What the forward leaves for the backward: the backward op's handle and
// instance (owned by the graph: freed with it, also when backward never runs).
template <class H>
struct dual_state : torch::CustomClassHolder {
  H back;
  op_instance inst;
  std::vector<int64_t> send, recv;
};
template <class H>
void save_dual(torch::autograd::AutogradContext* ctx, const H& b, const op_instance& forward,
               std::vector<int64_t> send = {}, std::vector<int64_t> recv = {}) {
  auto s = c10::make_intrusive<dual_state<H>>();
  s->back = b;
  s->inst = b.paired(forward);
  s->send = std::move(send);
  s->recv = std::move(recv);
  ctx->saved_data["dual"] = at::IValue::make_capsule(std::move(s));
}
template <class H>
c10::intrusive_ptr<dual_state<H>> load_dual(torch::autograd::AutogradContext* ctx) {
  return c10::static_intrusive_pointer_cast<dual_state<H>>(ctx->saved_data["dual"].toCapsule());
}
}  // namespace detail

template <class H>
struct seq_to_heads_fn : torch::autograd::Function<seq_to_heads_fn<H>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, H f, H b, op_instance i) {
    detail::save_dual(ctx, b, i);
    return detail::seq_to_heads_impl(f, i, x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    const auto s = detail::load_dual<H>(ctx);
    return {detail::heads_to_seq_impl(s->back, s->inst, g[0]), {}, {}, {}};
  }
};

template <class H>
struct heads_to_seq_fn : torch::autograd::Function<heads_to_seq_fn<H>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, H f, H b, op_instance i) {
    detail::save_dual(ctx, b, i);
    return detail::heads_to_seq_impl(f, i, x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    const auto s = detail::load_dual<H>(ctx);
    return {detail::seq_to_heads_impl(s->back, s->inst, g[0]), {}, {}, {}};
  }
};

template <class H>
struct exchange_rows_fn : torch::autograd::Function<exchange_rows_fn<H>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, H f, H b, op_instance i,
                            std::vector<int64_t> send, std::vector<int64_t> recv) {
    detail::save_dual(ctx, b, i, send, recv);
    return detail::exchange_rows_impl(f, i, x, send, recv);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    const auto s = detail::load_dual<H>(ctx);
    return {detail::exchange_rows_impl(s->back, s->inst, g[0], s->recv, s->send), {}, {}, {}, {}, {}};
  }
};

template <class H>
struct sum_over_fn : torch::autograd::Function<sum_over_fn<H>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, H f, H b, op_instance i) {
    detail::save_dual(ctx, b, i);
    at::Tensor y = x.clone().contiguous();
    f.all_reduce(i, y).wait();
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    const auto s = detail::load_dual<H>(ctx);
    at::Tensor y = g[0].clone().contiguous();
    s->back.all_reduce(s->inst, y).wait();
    return {y, {}, {}, {}};
  }
};

template <class H>
struct gather_rows_fn : torch::autograd::Function<gather_rows_fn<H>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, H f, H b, op_instance i) {
    detail::save_dual(ctx, b, i);
    std::vector<int64_t> shape = x.sizes().vec();
    shape[0] *= f.size();
    at::Tensor out = at::empty(shape, x.options());
    f.all_gather(i, out, x.contiguous()).wait();
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    const auto s = detail::load_dual<H>(ctx);
    std::vector<int64_t> shape = g[0].sizes().vec();
    shape[0] /= s->back.size();
    at::Tensor out = at::empty(shape, g[0].options());
    s->back.reduce_scatter(s->inst, out, g[0].contiguous()).wait();
    return {out, {}, {}, {}};
  }
};

// f: the forward op's handle, b: its backward dual's; i: the forward instance.
template <class H>
at::Tensor seq_to_heads(const H& f, const H& b, const at::Tensor& x, const op_instance& i) {
  return seq_to_heads_fn<H>::apply(x, f, b, i);
}
template <class H>
at::Tensor seq_to_heads(const H& f, const H& b, const at::Tensor& x) { return seq_to_heads(f, b, x, f.now()); }
template <class H>
at::Tensor heads_to_seq(const H& f, const H& b, const at::Tensor& x, const op_instance& i) {
  return heads_to_seq_fn<H>::apply(x, f, b, i);
}
template <class H>
at::Tensor heads_to_seq(const H& f, const H& b, const at::Tensor& x) { return heads_to_seq(f, b, x, f.now()); }
template <class H>
at::Tensor exchange_rows(const H& f, const H& b, const op_instance& i, const at::Tensor& x, std::vector<int64_t> send,
                         std::vector<int64_t> recv) {
  return exchange_rows_fn<H>::apply(x, f, b, i, std::move(send), std::move(recv));
}
template <class H>
at::Tensor sum_over(const H& f, const H& b, const at::Tensor& x) { return sum_over_fn<H>::apply(x, f, b, f.now()); }
template <class H>
at::Tensor gather_rows(const H& f, const H& b, const at::Tensor& x) { return gather_rows_fn<H>::apply(x, f, b, f.now()); }

}  // namespace veomni::parallel
