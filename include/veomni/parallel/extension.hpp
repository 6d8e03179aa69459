#pragma once
// The runtime extension point for user policies.
//
// A policy implementation that the runtime does not know carries a nested
// `runtime` type:
//
//   struct Ring {                                  // used as Split<Ring>
//     ... name, touches, placements<Ctx>(), ops<Ctx>() as for any Policy ...
//     struct runtime {
//       static constexpr parallel::sequence_layout layout = parallel::sequence_layout::zigzag;  // optional
//       template <class Comm>
//       static void install(parallel::policy_runtime<Comm>& rt) {
//         rt.hooks.attention = ...;   // wrap or replace the node's hooks, using rt.group(axes<...>)
//       }
//     };
//   };
//
// install() runs once per node the policy is applied to, after the built-in
// policies set their hooks, and may issue only the collectives its ops<Ctx>()
// put in the plan (the counters tests hold it to that).
#include <functional>

#include "../core/axis.hpp"
#include "../nn/components.hpp"
#include "data.hpp"

namespace veomni::parallel {

template <class Comm>
struct policy_runtime {
  std::function<Comm&(const axis_set&)> group;  // the communicator over a set of mesh axes
  nn::hooks& hooks;                             // this node's hooks
};

}  // namespace veomni::parallel
