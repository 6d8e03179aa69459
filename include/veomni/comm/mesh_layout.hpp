#pragma once
// <veomni/comm/mesh_layout.hpp>: where each rank sits on the mesh, which
// ranks form the group of an axis set, and the size rules. No torch: the
// mesh is arithmetic, so it is tested without processes.
//
// Rank layout (sp fastest, then dp_shard, then dp_replicate):
//   rank = (r_rep * dp_shard + r_shard) * sp + r_sp
// dp_shard x sp is one flat index f = r_shard * sp + r_sp, which EP factors
// the other way: f = r_ep_dp * ep + r_ep. An ep group is ep consecutive f
// values of one dp_replicate slice; an ep_dp group is the f values with the
// same f % ep (the ranks that hold the same experts).
//
// Worked example, mesh {dp_replicate 2, dp_shard 2, sp 2, ep 2}, 8 ranks:
//   rank  rep shard sp | f  ep ep_dp
//     0    0    0    0 | 0  0   0
//     1    0    0    1 | 1  1   0
//     2    0    1    0 | 2  0   1
//     3    0    1    1 | 3  1   1
//     4..7 the same with rep 1
// Groups of rank 5 (rep 1, shard 0, sp 1):
//   sp {4,5}   dp_shard {5,7}   dp_shard*sp {4,5,6,7}   ep {4,5}
//   ep_dp {5,7}   dp_replicate {1,5}   dp_replicate*ep_dp {1,3,5,7}
//   dp_replicate*dp_shard*sp {0..7}
// A group over an axis set = the ranks that differ from this one only in
// those axes' coordinates, listed in rank order; a rank's index in that list
// is its rank in the group (its shard index for all_gather / reduce_scatter).
#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "../core/axis.hpp"

namespace veomni::comm {

// "dp_shard*sp": the axis key that counters and error messages use.
inline std::string axis_key(const axis_set& s) {
  if (s.empty()) return "none";
  std::string k;
  for (std::size_t i = 0; i < s.count; ++i) {
    if (i) k += '*';
    k += s.names[i];
  }
  return k;
}

// Two axis sets name the same group when they hold the same axes, in any order.
inline bool same_axes(const axis_set& a, const axis_set& b) {
  if (a.count != b.count) return false;
  for (std::size_t i = 0; i < a.count; ++i)
    if (!b.contains(a.names[i])) return false;
  return true;
}

struct mesh_coords {
  long dp_replicate = 0, dp_shard = 0, sp = 0;
  long flat = 0;  // f = dp_shard * sp_size + sp
  long ep = 0, ep_dp = 0;
};

// Throws std::invalid_argument naming the bad size and the rule, e.g.
//   "veomni::comm::validate_mesh: dp_replicate*dp_shard*sp = 6 but WORLD_SIZE = 4"
//   "veomni::comm::validate_mesh: ep = 3 must divide dp_shard*sp = 4"
inline void validate_mesh(const mesh_shape& m, long world_size) {
  const std::string fn = "veomni::comm::validate_mesh: ";
  auto positive = [&](std::string_view name, long v) {
    if (v < 1) throw std::invalid_argument(fn + std::string(name) + " = " + std::to_string(v) + " must be >= 1");
  };
  positive(axis::dp_replicate::name, m.dp_replicate);
  positive(axis::dp_shard::name, m.dp_shard);
  positive(axis::sp::name, m.sp);
  positive(axis::ep::name, m.ep);
  for (const auto& e : m.extra)
    if (!e.name.empty() && e.size != 1)
      throw std::invalid_argument(fn + "axis " + std::string(e.name) + " = " + std::to_string(e.size) +
                                  " is not laid out by comm's mesh (only dp_replicate, dp_shard, sp, ep)");
  const long product = m.dp_replicate * m.dp_shard * m.sp;
  if (product != world_size)
    throw std::invalid_argument(fn + "dp_replicate*dp_shard*sp = " + std::to_string(product) +
                                " but WORLD_SIZE = " + std::to_string(world_size));
  const long flat = m.dp_shard * m.sp;
  if (flat % m.ep != 0)
    throw std::invalid_argument(fn + "ep = " + std::to_string(m.ep) + " must divide dp_shard*sp = " +
                                std::to_string(flat));
}

inline mesh_coords coords_of(const mesh_shape& m, long rank) {
  mesh_coords c;
  c.sp = rank % m.sp;
  c.dp_shard = (rank / m.sp) % m.dp_shard;
  c.dp_replicate = rank / (m.sp * m.dp_shard);
  c.flat = c.dp_shard * m.sp + c.sp;
  c.ep = c.flat % m.ep;
  c.ep_dp = c.flat / m.ep;
  return c;
}

// The global ranks of `rank`'s group over `over`, in rank order. The mesh
// must be valid (validate_mesh). An axis set may factor dp_shard x sp one way
// (dp_shard, sp) or the other (ep, ep_dp), not both.
inline std::vector<int> group_ranks(const mesh_shape& m, const axis_set& over, long rank) {
  const std::string fn = "veomni::comm::group_ranks: ";
  bool rep = false, shard = false, sp = false, ep = false, ep_dp = false;
  for (std::size_t i = 0; i < over.count; ++i) {
    const auto a = over.names[i];
    if (a == axis::dp_replicate::name) rep = true;
    else if (a == axis::dp_shard::name) shard = true;
    else if (a == axis::sp::name) sp = true;
    else if (a == axis::ep::name) ep = true;
    else if (a == axis::ep_dp::name) ep_dp = true;
    else throw std::invalid_argument(fn + "unknown axis " + std::string(a) + " in " + axis_key(over));
  }
  if ((shard || sp) && (ep || ep_dp))
    throw std::invalid_argument(fn + axis_key(over) +
                                " mixes the dp_shard x sp and ep x ep_dp factorings of one flat index");
  const long world = m.dp_replicate * m.dp_shard * m.sp;
  if (rank < 0 || rank >= world)
    throw std::invalid_argument(fn + "rank " + std::to_string(rank) + " is outside a world of " + std::to_string(world));
  const mesh_coords me = coords_of(m, rank);
  std::vector<int> out;
  for (long q = 0; q < world; ++q) {
    const mesh_coords c = coords_of(m, q);
    if (!rep && c.dp_replicate != me.dp_replicate) continue;
    if (!shard && !ep && !ep_dp && c.dp_shard != me.dp_shard) continue;
    if (!sp && !ep && !ep_dp && c.sp != me.sp) continue;
    if ((ep || ep_dp) && !ep && c.ep != me.ep) continue;
    if ((ep || ep_dp) && !ep_dp && c.ep_dp != me.ep_dp) continue;
    out.push_back(static_cast<int>(q));
  }
  return out;
}

// The axis sets the built-in policies (core/policies.hpp) run collectives
// over; a mesh makes one group for each.
inline constexpr std::array standard_axis_sets{
    axes<axis::dp_replicate>,
    axes<axis::dp_shard>,
    axes<axis::sp>,
    axes<axis::ep>,
    axes<axis::ep_dp>,
    axes<axis::dp_shard, axis::sp>,
    axes<axis::dp_replicate, axis::ep_dp>,
    axes<axis::dp_replicate, axis::dp_shard, axis::sp>,
};

// The whole world as an axis set.
inline constexpr axis_set world_axes = axes<axis::dp_replicate, axis::dp_shard, axis::sp>;

}  // namespace veomni::comm
