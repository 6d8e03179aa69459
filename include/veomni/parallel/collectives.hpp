#pragma once
// Collectives as autograd functions: each forward collective carries its
// backward dual, as the plan says.
//
//   seq_to_heads   Ulysses: [T/P, H, D] -> [T, H/P, D]   backward: heads_to_seq
//   heads_to_seq   Ulysses: [T, H/P, D] -> [T/P, H, D]   backward: seq_to_heads
//   exchange_rows  EP: uneven all_to_all of rows          backward: the same with splits swapped
//   sum_over       all_reduce(sum) whose gradient is all_reduce(sum) of the gradients
//   gather_rows    all_gather of rows (rank order)       backward: reduce_scatter of the gradient
//
// Worked example, Ulysses with P = 2 ranks, T = 4 tokens, H = 2 heads:
//   rank 0 holds tokens 0,1 with heads a,b; rank 1 tokens 2,3 with heads a,b.
//   seq_to_heads: rank 0 gets tokens 0..3 of head a, rank 1 tokens 0..3 of head b.
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "../comm/communicator.hpp"

namespace veomni::parallel {

namespace detail {
template <class Comm>
at::Tensor seq_to_heads_impl(Comm& c, const at::Tensor& x) {
  const int64_t p = c.size(), t = x.size(0), h = x.size(1), d = x.size(2);
  TORCH_CHECK(h % p == 0, "veomni::parallel::seq_to_heads: ", h, " heads do not split over ", c.axis_key(), " = ", p);
  // chunk j (heads block j) goes to rank j
  const at::Tensor send = x.reshape({t, p, h / p, d}).permute({1, 0, 2, 3}).contiguous();
  at::Tensor recv = at::empty_like(send);
  c.all_to_all(recv, send).wait();
  // chunk i came from rank i, which holds tokens [i*t, (i+1)*t)
  return recv.reshape({p * t, h / p, d});
}

template <class Comm>
at::Tensor heads_to_seq_impl(Comm& c, const at::Tensor& x) {
  const int64_t p = c.size(), t = x.size(0) / p, hl = x.size(1), d = x.size(2);
  TORCH_CHECK(x.size(0) % p == 0, "veomni::parallel::heads_to_seq: ", x.size(0), " tokens do not split over ",
              c.axis_key(), " = ", p);
  const at::Tensor send = x.contiguous();  // chunk j = tokens of rank j
  at::Tensor recv = at::empty_like(send);
  c.all_to_all(recv, send).wait();
  // chunk i holds heads block i of my tokens
  return recv.reshape({p, t, hl, d}).permute({1, 0, 2, 3}).reshape({t, p * hl, d});
}

template <class Comm>
at::Tensor exchange_rows_impl(Comm& c, const at::Tensor& x, const std::vector<int64_t>& send,
                              const std::vector<int64_t>& recv) {
  int64_t rows = 0;
  for (auto r : recv) rows += r;
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = rows;
  at::Tensor out = at::empty(shape, x.options());
  c.all_to_all(out, x.contiguous(), recv, send).wait();
  return out;
}
}  // namespace detail

template <class Comm>
struct seq_to_heads_fn : torch::autograd::Function<seq_to_heads_fn<Comm>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, Comm* c) {
    ctx->saved_data["c"] = reinterpret_cast<int64_t>(c);
    return detail::seq_to_heads_impl(*c, x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto* c = reinterpret_cast<Comm*>(ctx->saved_data["c"].toInt());
    return {detail::heads_to_seq_impl(*c, g[0]), at::Tensor()};
  }
};

template <class Comm>
struct heads_to_seq_fn : torch::autograd::Function<heads_to_seq_fn<Comm>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, Comm* c) {
    ctx->saved_data["c"] = reinterpret_cast<int64_t>(c);
    return detail::heads_to_seq_impl(*c, x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto* c = reinterpret_cast<Comm*>(ctx->saved_data["c"].toInt());
    return {detail::seq_to_heads_impl(*c, g[0]), at::Tensor()};
  }
};

template <class Comm>
struct exchange_rows_fn : torch::autograd::Function<exchange_rows_fn<Comm>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, Comm* c,
                            std::vector<int64_t> send, std::vector<int64_t> recv) {
    ctx->saved_data["c"] = reinterpret_cast<int64_t>(c);
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    return detail::exchange_rows_impl(*c, x, send, recv);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto* c = reinterpret_cast<Comm*>(ctx->saved_data["c"].toInt());
    const auto send = ctx->saved_data["send"].toIntVector(), recv = ctx->saved_data["recv"].toIntVector();
    return {detail::exchange_rows_impl(*c, g[0], recv, send), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <class Comm>
struct sum_over_fn : torch::autograd::Function<sum_over_fn<Comm>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, Comm* c) {
    ctx->saved_data["c"] = reinterpret_cast<int64_t>(c);
    at::Tensor y = x.clone().contiguous();
    c->all_reduce(y, comm::reduce_op::sum).wait();
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto* c = reinterpret_cast<Comm*>(ctx->saved_data["c"].toInt());
    at::Tensor y = g[0].clone().contiguous();
    c->all_reduce(y, comm::reduce_op::sum).wait();
    return {y, at::Tensor()};
  }
};

template <class Comm>
struct gather_rows_fn : torch::autograd::Function<gather_rows_fn<Comm>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, Comm* c) {
    ctx->saved_data["c"] = reinterpret_cast<int64_t>(c);
    std::vector<int64_t> shape = x.sizes().vec();
    shape[0] *= c->size();
    at::Tensor out = at::empty(shape, x.options());
    c->all_gather(out, x.contiguous()).wait();
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto* c = reinterpret_cast<Comm*>(ctx->saved_data["c"].toInt());
    std::vector<int64_t> shape = g[0].sizes().vec();
    shape[0] /= c->size();
    at::Tensor out = at::empty(shape, g[0].options());
    c->reduce_scatter(out, g[0].contiguous()).wait();
    return {out, at::Tensor()};
  }
};

template <class Comm>
at::Tensor seq_to_heads(Comm& c, const at::Tensor& x) { return seq_to_heads_fn<Comm>::apply(x, &c); }
template <class Comm>
at::Tensor gather_rows(Comm& c, const at::Tensor& x) { return gather_rows_fn<Comm>::apply(x, &c); }
template <class Comm>
at::Tensor heads_to_seq(Comm& c, const at::Tensor& x) { return heads_to_seq_fn<Comm>::apply(x, &c); }
template <class Comm>
at::Tensor exchange_rows(Comm& c, const at::Tensor& x, std::vector<int64_t> send, std::vector<int64_t> recv) {
  return exchange_rows_fn<Comm>::apply(x, &c, std::move(send), std::move(recv));
}
template <class Comm>
at::Tensor sum_over(Comm& c, const at::Tensor& x) { return sum_over_fn<Comm>::apply(x, &c); }

}  // namespace veomni::parallel
