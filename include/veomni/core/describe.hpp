#pragma once
// describe(): the plan as a table a person reads before launching.
//
//   node    where  x   phase     collective      axes         tensor  policy       dtype  bytes/call  calls  bytes/step
//   lm      block  x4  forward   all_gather      dp_shard*sp  params  Shard<FSDP>  f32    ...
//
// bytes are payload bytes per rank (what the communicator is handed), for the
// dims, mesh and workload given; dtype is the op's own (plan_op::dt) or the
// precision's for its tensor (4 bytes: f32; 2 bytes: bf16, the 2-byte
// preset). Per-axis totals, split by dtype, and per-rank memory follow.
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cost.hpp"

namespace veomni {

inline std::string to_string(const axis_set& a) {
  if (a.empty()) return "-";
  std::string s;
  for (std::size_t i = 0; i < a.count; ++i) {
    if (i) s += '*';
    s += a.names[i];
  }
  return s;
}

// 1536 -> "1.5 KiB"; exact byte counts below 1 KiB.
inline std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) b /= 1024.0, ++u;
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%.0f B", b);
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", b, units[u]);
  return buf;
}

namespace detail {
constexpr std::string_view op_dtype(const plan_op& o, const precision& prec) { return to_string(run_dtype(o, prec)); }

inline std::string render_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> w;
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (w.size() <= i) w.push_back(0);
      w[i] = std::max(w[i], r[i].size());
    }
  std::string out;
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(w[i] - r[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + '\n';
  }
  return out;
}
}  // namespace detail

template <class P>
std::string describe(const typename P::model::dims& d, const mesh_shape& m, const workload& w,
                     const precision& prec = {}) {
  using G = typename P::model;
  std::vector<std::vector<std::string>> rows{
      {"node", "where", "x", "phase", "collective", "axes", "tensor", "policy", "dtype", "bytes/call", "calls", "bytes/step"}};
  struct axis_dtype {
    std::string axes;
    std::string_view dt;
    long bytes = 0;
  };
  std::vector<axis_dtype> split;  // payload per step by (axes, dtype), in the order first met
  for (const auto& o : P::ops) {
    const op_cost c = cost_of<P>(o, d, m, w, prec);
    long reps = 1;
    for_each_node<G>([&](auto I) {
      if (I.value == o.node_index) reps = repeats<typename G::template component_at<I.value>>(o, veomni::get<I.value>(d));
    });
    const bool but_last = o.repeat == scope::block && o.target.skip_last_block;
    rows.push_back({std::string(o.node), std::string(o.where) + (but_last ? " but last" : ""), "x" + std::to_string(reps),
                    std::string(to_string(o.ph)), std::string(to_string(o.coll)), to_string(o.over),
                    std::string(to_string(o.tensor)), std::string(o.policy), std::string(detail::op_dtype(o, prec)),
                    std::to_string(c.payload_bytes), std::to_string(c.calls), std::to_string(c.step_payload())});
    if (c.calls == 0) continue;
    const std::string axes = to_string(o.over);
    const std::string_view dt = detail::op_dtype(o, prec);
    auto it = std::find_if(split.begin(), split.end(), [&](const axis_dtype& e) { return e.axes == axes && e.dt == dt; });
    if (it == split.end()) split.push_back({axes, dt, 0}), it = split.end() - 1;
    it->bytes += c.step_payload();
  }
  std::string out = "plan: " + std::to_string(P::size) + " ops, mesh dp_replicate=" + std::to_string(m.dp_replicate) +
                    " dp_shard=" + std::to_string(m.dp_shard) + " sp=" + std::to_string(m.sp) +
                    " ep=" + std::to_string(m.ep) + " (world " + std::to_string(m.world()) + ")\n";
  out += detail::render_table(rows);

  const step_traffic t = traffic<P>(d, m, w, prec);
  std::vector<std::vector<std::string>> ax{{"axes", "group", "calls/step", "payload/step", "wire/step", "payload by dtype"}};
  auto by_dtype = [&](const std::string& axes) {  // "" : over every axis (the total row)
    std::vector<std::pair<std::string_view, long>> sums;
    for (const auto& e : split) {
      if (!axes.empty() && e.axes != axes) continue;
      auto it = std::find_if(sums.begin(), sums.end(), [&](const auto& p) { return p.first == e.dt; });
      if (it == sums.end()) sums.emplace_back(e.dt, e.bytes);
      else it->second += e.bytes;
    }
    std::string s;
    for (const auto& [dt, b] : sums) s += (s.empty() ? "" : ", ") + std::string(dt) + " " + human_bytes(static_cast<double>(b));
    return s;
  };
  for (const auto& a : t.by_axis)
    ax.push_back({to_string(a.over), std::to_string(m.size(a.over)), std::to_string(a.calls),
                  human_bytes(static_cast<double>(a.payload_bytes)), human_bytes(a.wire_bytes), by_dtype(to_string(a.over))});
  ax.push_back({"total", "", std::to_string(t.calls), human_bytes(static_cast<double>(t.payload_bytes)),
                human_bytes(t.wire_bytes), by_dtype("")});
  out += "\nper rank per step:\n" + detail::render_table(ax);

  const memory_per_rank mem = memory<P>(d, m, prec);
  out += "\nmemory per rank: params " + human_bytes(static_cast<double>(mem.params)) + ", grads " +
         human_bytes(static_cast<double>(mem.grads)) + ", optimizer " +
         human_bytes(static_cast<double>(mem.optimizer)) + ", total " +
         human_bytes(static_cast<double>(mem.total())) + "\n";
  return out;
}

}  // namespace veomni
