#pragma once
// Memory per GPU, and a budget a launch must fit in.
//
//   footprint = parameters + gradients + optimizer state   (cost.hpp: memory<P>)
//             + activations                               (activation.hpp)
//             + buffers: the gathered FSDP units in flight (the root, the
//               current block and the prefetched next one) and one block's
//               unsharded gradient before its reduce-scatter
//
// Opt-in checks, at compile time where everything is known then:
//
//   struct my_launch {
//     static constexpr auto dims = models::paper::qwen2_72b_dims();
//     static constexpr mesh_shape mesh{.dp_shard = 16, .sp = 8};
//     static constexpr training_step step{.seq = 131072};
//     static constexpr long budget_bytes = 80L << 30;
//   };
//   static_assert(fits_memory_budget<plan<qwen2_72b, fsdp_sp>, my_launch>);
//
// fails with "the predicted memory per GPU exceeds the budget" and the numbers
// in MiB as the template arguments of memory_budget_exceeded<predicted, budget,
// states, activations, buffers>; and before launch where sizes are runtime:
// check_memory_budget<P>(dims, mesh, step, budget) throws with the numbers.
#include <algorithm>
#include <concepts>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "activation.hpp"
#include "cost.hpp"
#include "plan.hpp"
#include "step.hpp"

namespace veomni {

struct gpu_memory {
  memory_per_rank states;  // params, grads, optimizer
  activation_memory activations;
  long buffers = 0;
  constexpr long total() const { return states.total() + activations.total() + buffers; }
};

// Bytes of one rank's FSDP buffers: gathered units and one unsharded gradient.
template <class P>
constexpr long fsdp_buffers(const typename P::model::dims& d, const mesh_shape& m, const training_step& st) {
  using G = typename P::model;
  const workload w = st.template micro_workload<G>(m);
  // every op's cost once, and each node's ops through the plan's grouping by node
  const auto costs = detail::op_costs<P>(d, m, w, st.prec);
  const auto by = detail::group_by_node<G::size>(P::ops);
  long worst = 0;
  for (std::size_t node = 0; node < G::size; ++node) {
    long gathered_root = 0, gathered_block = 0, grad_unit = 0;
    for (std::size_t k = by.first[node]; k < by.first[node + 1]; ++k) {
      const plan_op& o = P::ops[by.op[k]];
      if (!o.target.is_unit) continue;
      const op_cost& c = costs[by.op[k]];
      if (c.group <= 1) continue;
      if (o.ph == phase::forward && o.coll == collective::all_gather)
        (o.repeat == scope::block ? gathered_block : gathered_root) += c.elements * st.prec.param_bytes;
      if (o.coll == collective::reduce_scatter) grad_unit = std::max(grad_unit, c.elements * st.prec.grad_bytes);
    }
    worst = std::max(worst, gathered_root + 2 * gathered_block + grad_unit);
  }
  return worst;
}

template <class P>
constexpr gpu_memory footprint(const typename P::model::dims& d, const mesh_shape& m, const training_step& st) {
  gpu_memory g;
  g.states = memory<P>(d, m, st.prec);
  g.activations = activations<typename P::model>(d, st, m);
  g.buffers = fsdp_buffers<P>(d, m, st);
  return g;
}

// The longest sequence per sample that fits `budget_bytes` per GPU: the
// largest multiple of `unit` (at least the Ulysses degree, so that every rank
// holds whole tokens) whose footprint fits, or 0 if not even `unit` does.
// `adjust(step)` restates what depends on the length (a vision stream's
// patches); the footprint grows with the sequence, so doubling then bisecting
// finds it in O(log) footprints. Worked example (tests/core/test_predict.cpp):
// Qwen2-7B, FSDP over 128 H100s, bf16, checkpointing, 80 GiB: states and
// buffers take a fixed 1.2 GiB, every token ~0.18 MB more.
template <class P, class Adjust>
constexpr long longest_sequence(const typename P::model::dims& d, const mesh_shape& m, training_step st,
                                long budget_bytes, long unit, Adjust adjust) {
  auto fits = [&](long n) {
    st.seq = n * unit;
    adjust(st);
    return footprint<P>(d, m, st).total() <= budget_bytes;
  };
  if (unit < 1 || !fits(1)) return 0;
  long lo = 1, hi = 2;  // fits(lo), and (once found) !fits(hi)
  while (hi < (1L << 40) / unit && fits(hi)) lo = hi, hi *= 2;
  while (hi - lo > 1) {
    const long mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo * unit;
}
template <class P>
constexpr long longest_sequence(const typename P::model::dims& d, const mesh_shape& m, const training_step& st,
                                long budget_bytes) {
  return longest_sequence<P>(d, m, st, budget_bytes, m.sp > 0 ? m.sp : 1, [](training_step&) {});
}

// "79.31 GiB"
inline std::string gib(long bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / static_cast<double>(1L << 30));
  return buf;
}

// Pre-launch check for runtime sizes: throws std::length_error with the numbers.
template <class P>
gpu_memory check_memory_budget(const typename P::model::dims& d, const mesh_shape& m, const training_step& st,
                               long budget_bytes) {
  const gpu_memory g = footprint<P>(d, m, st);
  if (g.total() > budget_bytes)
    throw std::length_error("veomni::check_memory_budget: the predicted memory per GPU, " + gib(g.total()) +
                            ", exceeds the budget of " + gib(budget_bytes) + " (params " + gib(g.states.params) +
                            ", grads " + gib(g.states.grads) + ", optimizer " + gib(g.states.optimizer) +
                            ", activations " + gib(g.activations.total()) + ", buffers " + gib(g.buffers) + ")");
  return g;
}

namespace detail {
constexpr long mib(long bytes) { return (bytes + (1L << 20) - 1) >> 20; }
}  // namespace detail

// Instantiated with the numbers, so that the compiler prints them. True
// either way: when it does not fit, its assertion has already failed the
// build, and the user's static_assert(fits_memory_budget<...>) must not add a
// second error (a function, not a class: clang would mark a class whose
// assertion failed invalid, and every read of it an error too).
template <long predicted_MiB, long budget_MiB, long states_MiB, long activations_MiB, long buffers_MiB>
constexpr bool memory_budget_exceeded() {
  static_assert(predicted_MiB <= budget_MiB,
                "veomni::fits_memory_budget<P, Launch>: the predicted memory per GPU exceeds the budget "
                "(memory_budget_exceeded<predicted, budget, states, activations, buffers>, in MiB)");
  return true;
}

template <class L>
concept LaunchSpec = requires {
  L::dims;
  { L::mesh } -> std::convertible_to<mesh_shape>;
  { L::step } -> std::convertible_to<training_step>;
  { L::budget_bytes } -> std::convertible_to<long>;
};

template <class P, LaunchSpec L>
struct memory_budget {
  static constexpr gpu_memory predicted = footprint<P>(L::dims, L::mesh, L::step);
  static constexpr bool value =
      memory_budget_exceeded<detail::mib(predicted.total()), (L::budget_bytes >> 20),
                             detail::mib(predicted.states.total()), detail::mib(predicted.activations.total()),
                             detail::mib(predicted.buffers)>();
};

template <class P, class L>
inline constexpr bool fits_memory_budget = memory_budget<P, L>::value;

}  // namespace veomni
