#pragma once
// Experts<EP>'s runtime half: each rank holds E/ep experts (its placements
// say so; parallel/storage.hpp keeps those rows); tokens go to the ranks
// holding their experts by an uneven all_to_all and come back by another.
// Its compile-time half is in core/policies.hpp; it uses only the public
// contract (parallel/contract.hpp), as a user's policy does.
//
//   dispatch  counts per expert (all_to_all of E int64), then the routed rows (uneven all_to_all)
//   experts   this rank's E/ep experts on the rows they got, grouped by expert
//   combine   the rows back to their tokens' ranks (uneven all_to_all), weighted and summed
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "../../core/policies.hpp"
#include "../collectives.hpp"
#include "../contract.hpp"

namespace veomni::parallel {

// x [T, H] routed by r to E = el x ep experts, el of them here (w).
template <class H>
at::Tensor expert_parallel(const H& dispatch, const H& dispatch_back, const H& combine, const H& combine_back,
                           const at::Tensor& x, const nn::routing& r, const nn::expert_weights& w) {
  const int64_t p = dispatch.size(), el = w.count(), e = el * p;
  const nn::dispatch_order d = nn::sort_by_expert(r, e);
  const at::Tensor xs = x.index_select(0, d.token_of);
  std::vector<int64_t> send(static_cast<size_t>(p), 0);
  for (int64_t i = 0; i < e; ++i) send[static_cast<size_t>(i / el)] += d.counts[static_cast<size_t>(i)];
  // per-expert counts, so each rank knows how many rows of each local expert come from whom
  const op_instance di = dispatch.now();
  // (on x's device, as the communicator needs; the split sizes are read on the host)
  const auto on = at::TensorOptions().dtype(at::kLong).device(x.device());
  at::Tensor counts = at::tensor(d.counts, at::kLong).to(x.device());
  at::Tensor recv_counts = at::empty({e}, on);
  dispatch.all_to_all_counts(di, recv_counts, counts).wait();
  const at::Tensor rc_host = recv_counts.cpu();
  const int64_t* rc = rc_host.data_ptr<int64_t>();  // rc[s * el + j]: rows from rank s for local expert j
  std::vector<int64_t> recv(static_cast<size_t>(p), 0), local_counts(static_cast<size_t>(el), 0);
  for (int64_t s = 0; s < p; ++s)
    for (int64_t j = 0; j < el; ++j) {
      recv[static_cast<size_t>(s)] += rc[s * el + j];
      local_counts[static_cast<size_t>(j)] += rc[s * el + j];
    }
  const at::Tensor xr = exchange_rows(dispatch, dispatch_back, di, xs, send, recv);  // grouped by source, then local expert
  // regroup by local expert
  std::vector<int64_t> perm;
  perm.reserve(static_cast<size_t>(xr.size(0)));
  std::vector<int64_t> start(static_cast<size_t>(p * el), 0);
  for (int64_t s = 0, off = 0; s < p; ++s)
    for (int64_t j = 0; j < el; ++j) start[static_cast<size_t>(s * el + j)] = off, off += rc[s * el + j];
  for (int64_t j = 0; j < el; ++j)
    for (int64_t s = 0; s < p; ++s)
      for (int64_t k = 0; k < rc[s * el + j]; ++k) perm.push_back(start[static_cast<size_t>(s * el + j)] + k);
  const at::Tensor perm_t = at::tensor(perm, at::kLong).to(x.device());
  const at::Tensor yg = nn::grouped_experts(xr.index_select(0, perm_t), local_counts, w);
  const at::Tensor yr = at::zeros_like(yg).index_add(0, perm_t, yg);                 // back to arrival order
  const at::Tensor ys = exchange_rows(combine, combine_back, combine.now(), yr, recv, send);  // back to xs order
  return at::zeros_like(x).index_add(0, d.token_of, ys * d.weight_of.unsqueeze(1));
}

}  // namespace veomni::parallel

namespace veomni {

template <class Node>
struct EP::runtime {
  explicit runtime(Node& node) {
    const auto df = node.op(phase::forward, tensor_role::dispatch), db = node.op(phase::backward, tensor_role::dispatch);
    const auto cf = node.op(phase::forward, tensor_role::combine), cb = node.op(phase::backward, tensor_role::combine);
    node.hooks().experts = [=](const at::Tensor& x, const nn::routing& r, const nn::expert_weights& w) {
      return parallel::expert_parallel(df, db, cf, cb, x, r, w);
    };
  }
};

}  // namespace veomni
