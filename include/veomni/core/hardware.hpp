#pragma once
// Hardware profiles and where a mesh axis's ranks sit on them.
//
// A profile is the few numbers the cost model needs per GPU: dense bf16
// peak, HBM bandwidth and capacity, NVLink bandwidth inside a node, NIC
// bandwidth between nodes (one NIC per GPU, as on DGX/HGX H100 with
// 8 x 400 Gb/s InfiniBand).
//
// Ranks are laid out with sp innermost (as torchrun numbers them and as
// VeOmni/torchtitan build their device mesh):
//   rank = (r * dp_shard + s) * sp + q       r: dp_replicate, s: dp_shard, q: sp
//   ep   groups are ep consecutive ranks of dp_shard x sp;
//   ep_dp groups take every ep-th rank of dp_shard x sp.
// Worked example, 128 GPUs, 8 per node, sp = 4, ep = 8:
//   {sp}          4 ranks, 4 per node, 1 node      -> NVLink
//   {dp_shard,sp} 128 ranks, 8 per node, 16 nodes  -> NICs (8 per node)
//   {ep_dp}       16 ranks, 1 per node, 16 nodes   -> one NIC per rank
#include <algorithm>
#include <array>
#include <cstddef>
#include <string_view>

#include "axis.hpp"

namespace veomni {

struct hardware {
  std::string_view name;
  double bf16_dense_flops = 0;    // per GPU, dense (no 2:4 sparsity)
  double hbm_bytes_per_s = 0;     // per GPU
  long hbm_bytes = 0;             // per GPU, what a process can allocate
  long gpus_per_node = 8;
  double nvlink_bytes_per_s = 0;  // per GPU, one direction
  double nic_bytes_per_s = 0;     // per GPU (one NIC each), one direction
  double collective_latency_s = 0;  // fixed cost of one collective call
};

namespace hardware_profiles {
// NVIDIA H100 SXM5 80 GB: 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3, NVLink 4
// 900 GB/s both directions (450 each), 8 x 400 Gb/s InfiniBand per node.
inline constexpr hardware h100{.name = "H100-SXM-80GB",
                               .bf16_dense_flops = 989e12,
                               .hbm_bytes_per_s = 3.35e12,
                               .hbm_bytes = 80L << 30,
                               .gpus_per_node = 8,
                               .nvlink_bytes_per_s = 450e9,
                               .nic_bytes_per_s = 50e9,
                               .collective_latency_s = 20e-6};
// NVIDIA H200 SXM 141 GB: the same compute and links, 4.8 TB/s HBM3e.
inline constexpr hardware h200{.name = "H200-SXM-141GB",
                               .bf16_dense_flops = 989e12,
                               .hbm_bytes_per_s = 4.8e12,
                               .hbm_bytes = 141L * 1000 * 1000 * 1000,
                               .gpus_per_node = 8,
                               .nvlink_bytes_per_s = 450e9,
                               .nic_bytes_per_s = 50e9,
                               .collective_latency_s = 20e-6};
}  // namespace hardware_profiles

// Where the members of one group of an axis set sit (all groups of a set
// have the same shape in this layout).
struct group_shape {
  long size = 1;      // ranks in the group
  long per_node = 1;  // of them on one node
  long nodes = 1;     // nodes the group spans
};

namespace detail {
struct axis_stride { long size = 1, stride = 1; };
constexpr axis_stride stride_of(std::string_view a, const mesh_shape& m) {
  if (a == axis::sp::name) return {m.sp, 1};
  if (a == axis::dp_shard::name) return {m.dp_shard, m.sp};
  if (a == axis::dp_replicate::name) return {m.dp_replicate, m.sp * m.dp_shard};
  if (a == axis::ep::name) return {m.ep, 1};
  if (a == axis::ep_dp::name) return {m[axis::ep_dp::name], m.ep};
  // a user policy's axis: outside the built-in ones
  long stride = m.sp * m.dp_shard * m.dp_replicate;
  for (const auto& e : m.extra) {
    if (e.name.empty()) continue;
    if (e.name == a) return {e.size, stride};
    stride *= e.size;
  }
  return {1, 1};
}
}  // namespace detail

// Counts the members of the group holding rank 0 that live on node 0.
constexpr group_shape placement_of(const axis_set& s, const mesh_shape& m, long gpus_per_node) {
  std::array<detail::axis_stride, axis_set::max_axes> ax{};
  long size = 1;
  for (std::size_t i = 0; i < s.count; ++i) {
    ax[i] = detail::stride_of(s.names[i], m);
    size *= std::max(ax[i].size, 1L);
  }
  long local = 0;
  for (long k = 0; k < size; ++k) {  // mixed-radix decode of member k
    long rest = k, offset = 0;
    for (std::size_t i = 0; i < s.count; ++i) {
      const long n = std::max(ax[i].size, 1L);
      offset += (rest % n) * ax[i].stride;
      rest /= n;
    }
    local += offset < gpus_per_node ? 1 : 0;
  }
  local = std::max(local, 1L);
  return {size, local, (size + local - 1) / local};
}

// Seconds for one rank to put `wire_bytes` through a ring collective
// (all_gather, reduce_scatter, all_reduce) over a group of this shape. Inside
// a node the ring runs on NVLink. Across nodes each node's members hand the
// data around on NVLink and out through their own NICs, so the ring moves at
// per_node NICs' worth (NCCL runs one ring channel per NIC), capped by NVLink.
constexpr double ring_seconds(double wire_bytes, const group_shape& g, const hardware& hw, double efficiency) {
  if (g.size <= 1 || wire_bytes <= 0) return 0;
  const double bw = g.nodes <= 1 ? hw.nvlink_bytes_per_s
                                 : std::min(hw.nvlink_bytes_per_s, static_cast<double>(g.per_node) * hw.nic_bytes_per_s);
  return hw.collective_latency_s + wire_bytes / (bw * efficiency);
}

// Seconds for one rank's all_to_all of a `buffer_bytes` buffer: the share for
// ranks on its node goes over NVLink, the rest through its own NIC, both at once.
constexpr double all_to_all_seconds(double buffer_bytes, const group_shape& g, const hardware& hw, double efficiency) {
  if (g.size <= 1 || buffer_bytes <= 0) return 0;
  const double n = static_cast<double>(g.size);
  const double intra = buffer_bytes * static_cast<double>(g.per_node - 1) / n / hw.nvlink_bytes_per_s;
  const double inter = buffer_bytes * static_cast<double>(g.size - g.per_node) / n / hw.nic_bytes_per_s;
  return hw.collective_latency_s + std::max(intra, inter) / efficiency;
}

}  // namespace veomni
