// validate_comm_model: the communication part of the cost model (cost.hpp's
// payload and wire bytes, call counts) against this machine's loopback, over
// the Gloo communicator. Run it on 2 or 4 ranks:
//
//   veomni-launch --nproc 2 -- validate_comm_model
//   veomni-launch --nproc 4 -- validate_comm_model
//
// One mesh {dp_shard = N/2, sp = 2}: FSDP's ops run over dp_shard x sp (all
// N ranks, as on {dp_shard = N}), Ulysses' over sp (2 ranks), the step-level
// statistics over the world.
//   1. fit   for every (axis set, collective) the plans below use, time
//            back-to-back calls at five sizes and fit t = alpha + wire / beta
//            (weighted least squares, relative error), wire = cost.hpp's
//            definition for the logical tensor of S elements;
//   2. replay  for each plan (dense_lm x {FSDP, FSDP+Ulysses} x {tiny, larger
//            dims}), issue every plan op's collective cost_of(...).calls times
//            with a buffer of cost_of(...).elements, in plan order, each
//            waited for, and time the whole replay (median of reps; the
//            slowest rank);
//   3. report  predicted = sum over ops of calls x (alpha + wire / beta) vs
//            the measured replay; and the mesh's counters after the replays
//            must equal traffic<P>() payload bytes (and the plan's calls) per
//            axis exactly, or the program exits 3.
// Only rank 0 prints. The whole run takes ~10-30 s on two shared cores.
#include <veomni/comm.hpp>
#include <veomni/core.hpp>
#include <veomni/models/zoo.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

using namespace veomni;
namespace comm = veomni::comm;
using models::dense_lm;

namespace {

using clock_type = std::chrono::steady_clock;
using fsdp_plan = plan<dense_lm, recipe<apply<"lm", Shard<FSDP>>>>;
using fsdp_sp_plan = plan<dense_lm, recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>>>>;

// cost.hpp's wire bytes for one call on a logical tensor of `elements`
// elements of `b` bytes over `n` ranks (the same formulas as cost_of).
double wire_of(collective c, long elements, long b, long n) {
  if (n <= 1) return 0;
  const long shard = ceil_div(elements, n);
  switch (c) {
    case collective::all_gather:
    case collective::reduce_scatter: return static_cast<double>(shard * (n - 1) * b);
    case collective::all_reduce: return 2.0 * static_cast<double>(elements * b) * static_cast<double>(n - 1) / static_cast<double>(n);
    case collective::all_to_all: return static_cast<double>(elements * b) * static_cast<double>(n - 1) / static_cast<double>(n);
  }
  return 0;
}

at::ScalarType type_of(long b) { return b == 2 ? at::kHalf : b == 8 ? at::kDouble : at::kFloat; }

// Buffers for one collective on a logical tensor of `elements` (cost.hpp's
// sizes: all_gather in = the shard, reduce_scatter in = the padded tensor).
struct buffers {
  at::Tensor in, out;
};
buffers make_buffers(collective c, long elements, long b, long n) {
  const auto opt = at::TensorOptions().dtype(type_of(b));
  const long shard = ceil_div(elements, n);
  switch (c) {
    case collective::all_gather: return {at::ones({shard}, opt), at::empty({shard * n}, opt)};
    case collective::reduce_scatter: return {at::ones({shard * n}, opt), at::empty({shard}, opt)};
    case collective::all_reduce: return {at::ones({elements}, opt), {}};
    case collective::all_to_all: return {at::ones({elements}, opt), at::empty({elements}, opt)};
  }
  return {};
}

void issue(comm::gloo_communicator& g, collective c, buffers& x) {
  switch (c) {
    case collective::all_gather: g.all_gather(x.out, x.in).wait(); break;
    case collective::reduce_scatter: g.reduce_scatter(x.out, x.in).wait(); break;
    case collective::all_reduce: g.all_reduce(x.in).wait(); break;
    case collective::all_to_all: g.all_to_all(x.out, x.in).wait(); break;
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The slowest rank's value (timings are per rank; a collective ends when the last rank is done).
double slowest(comm::gloo_mesh& mesh, double x) {
  at::Tensor t = at::full({1}, x, at::kDouble);
  mesh.world().all_reduce(t, comm::reduce_op::max).wait();
  return t.item<double>();
}

struct link_fit {
  double alpha = 0;  // s per call
  double beta = 0;   // wire bytes / s
  double max_rel_residual = 0;
  std::vector<std::pair<double, double>> points;  // (wire bytes, s per call)
  double seconds(double wire) const { return alpha + wire / beta; }
  // The measured points joined by straight lines (the last segment extended):
  // no shape assumed, to tell a wrong link model from a replay effect.
  double interpolated(double wire) const {
    std::size_t i = 1;
    while (i + 1 < points.size() && points[i].first < wire) ++i;
    const auto [w0, t0] = points[i - 1];
    const auto [w1, t1] = points[i];
    return std::max(0.0, t0 + (t1 - t0) * (wire - w0) / (w1 - w0));
  }
};

// Weighted least squares of t = alpha + w * x (x = 1/beta), weights 1/t^2, so
// every size counts by its relative error.
link_fit fit_points(std::vector<std::pair<double, double>> pts) {
  double s = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (auto [w, t] : pts) {
    const double k = 1.0 / (t * t);
    s += k, sx += k * w, sy += k * t, sxx += k * w * w, sxy += k * w * t;
  }
  link_fit f;
  const double slope = (s * sxy - sx * sy) / (s * sxx - sx * sx);
  f.alpha = (sy - slope * sx) / s;
  f.beta = 1.0 / slope;
  for (auto [w, t] : pts) f.max_rel_residual = std::max(f.max_rel_residual, std::abs(f.seconds(w) - t) / t);
  f.points = std::move(pts);
  return f;
}

using fit_key = std::pair<std::string, collective>;  // (axis key, collective)

link_fit measure(comm::gloo_mesh& mesh, const axis_set& over, collective c) {
  auto& g = mesh[over];
  const long n = g.size(), b = 4;
  std::vector<std::pair<double, double>> pts;
  for (long elements : {1L << 10, 1L << 14, 1L << 17, 1L << 20, 1L << 22}) {
    const int calls = elements <= (1L << 14) ? 40 : elements <= (1L << 17) ? 16 : elements <= (1L << 20) ? 6 : 3;
    buffers x = make_buffers(c, elements, b, n);
    issue(g, c, x);  // warm up: connections, first-touch pages
    std::vector<double> reps;
    for (int r = 0; r < 3; ++r) {
      mesh.world().barrier().wait();
      const auto t0 = clock_type::now();
      for (int i = 0; i < calls; ++i) issue(g, c, x);
      reps.push_back(std::chrono::duration<double>(clock_type::now() - t0).count() / calls);
    }
    pts.push_back({wire_of(c, elements, b, n), slowest(mesh, median(reps))});
  }
  return fit_points(std::move(pts));
}

struct replay_op {
  plan_op op;
  op_cost cost;
  buffers x;
};

template <class P>
int validate(comm::gloo_mesh& mesh, std::map<fit_key, link_fit>& fits, const char* name,
             const typename P::model::dims& d, long tokens, int reps) {
  const mesh_shape& m = mesh.shape();
  workload w;
  w.default_tokens = tokens;
  const bool root = mesh.rank() == 0;
  std::vector<replay_op> ops;
  std::map<fit_key, std::array<double, 4>> by_kind;  // calls, wire, predicted s (fit, interpolated) per step
  double predicted = 0, interpolated = 0;
  for (const auto& o : P::ops) {
    const op_cost c = cost_of<P>(o, d, m, w);
    if (c.calls == 0) continue;
    const long b = c.payload_bytes / (o.coll == collective::all_gather ? ceil_div(c.elements, c.group)
                                      : o.coll == collective::reduce_scatter ? ceil_div(c.elements, c.group) * c.group
                                                                             : c.elements);
    if (wire_of(o.coll, c.elements, b, c.group) != c.wire_bytes) {
      std::fprintf(stderr, "validate_comm_model: wire_of disagrees with cost_of\n");
      return 4;
    }
    const fit_key k{comm::axis_key(o.over), o.coll};
    if (!fits.count(k)) fits[k] = measure(mesh, o.over, o.coll);
    const double t = static_cast<double>(c.calls) * fits[k].seconds(c.wire_bytes);
    auto& e = by_kind[k];
    const double ti = static_cast<double>(c.calls) * fits[k].interpolated(c.wire_bytes);
    e[0] += static_cast<double>(c.calls), e[1] += c.step_wire(), e[2] += t, e[3] += ti;
    predicted += t, interpolated += ti;
    ops.push_back({o, c, make_buffers(o.coll, c.elements, b, c.group)});
  }
  auto replay = [&] {
    for (auto& r : ops) {
      auto& g = mesh[r.op.over];
      for (long i = 0; i < r.cost.calls; ++i) issue(g, r.op.coll, r.x);
    }
  };
  replay();  // warm up
  // counters: only the timed replays run between the two snapshots (barriers aside)
  std::vector<double> times;
  const auto before = mesh.counters().snapshot();
  for (int r = 0; r < reps; ++r) {
    mesh.world().barrier().wait();
    const auto t0 = clock_type::now();
    replay();
    times.push_back(std::chrono::duration<double>(clock_type::now() - t0).count());
  }
  std::map<std::string, comm::op_count> ran;  // by axis key, barriers left out
  for (const auto& e : mesh.counters().snapshot())
    if (e.op != "barrier") ran[e.axis].calls += e.count.calls, ran[e.axis].bytes += e.count.bytes;
  for (const auto& e : before)
    if (e.op != "barrier") ran[e.axis].calls -= e.count.calls, ran[e.axis].bytes -= e.count.bytes;
  const step_traffic want = traffic<P>(d, m, w);
  std::string failures;
  for (const auto& t : want.by_axis) {
    const std::string key = comm::axis_key(t.over);
    const comm::op_count got = ran.count(key) ? ran.at(key) : comm::op_count{};
    if (got.bytes != reps * t.payload_bytes || got.calls != reps * t.calls)
      failures += " " + key + ": ran " + std::to_string(got.calls) + " calls " + std::to_string(got.bytes) +
                  " B, traffic<P>() x " + std::to_string(reps) + " = " + std::to_string(reps * t.calls) + " calls " +
                  std::to_string(reps * t.payload_bytes) + " B;";
    ran.erase(key);
  }
  for (const auto& [key, c] : ran)
    if (c.calls != 0) failures += " " + key + ": ran " + std::to_string(c.calls) + " calls not in the plan;";
  const double measured = slowest(mesh, median(times));
  const double fastest_rep = slowest(mesh, *std::min_element(times.begin(), times.end()));
  if (root) {
    std::printf("\n%s (tokens/rank %ld, mesh dp_shard=%ld sp=%ld): %ld calls/step, payload %.2f MB, wire %.2f MB\n",
                name, tokens, m.dp_shard, m.sp, want.calls, static_cast<double>(want.payload_bytes) / 1e6,
                want.wire_bytes / 1e6);
    std::printf("  %-36s %6s %10s %10s %12s\n", "axis / collective", "calls", "wire MB", "pred ms", "interp ms");
    for (const auto& [k, e] : by_kind)
      std::printf("  %-36s %6.0f %10.3f %10.3f %12.3f\n", (k.first + " " + std::string(to_string(k.second))).c_str(), e[0],
                  e[1] / 1e6, e[2] * 1e3, e[3] * 1e3);
    std::printf("  predicted %.3f ms (interpolated points: %.3f ms), measured %.3f ms (median of %d, slowest rank; best %.3f ms),"
                " measured/predicted %.2f (/interpolated %.2f)\n",
                predicted * 1e3, interpolated * 1e3, measured * 1e3, reps, fastest_rep * 1e3, measured / predicted,
                measured / interpolated);
    std::printf("  counters vs traffic<P>() payload bytes and calls, %d replays: %s\n", reps,
                failures.empty() ? "exact" : ("DIFFER:" + failures).c_str());
    std::printf("RESULT world=%ld plan=%s pred_ms=%.3f interp_ms=%.3f meas_ms=%.3f ratio=%.2f ratio_interp=%.2f counters=%s\n",
                m.world(), name, predicted * 1e3, interpolated * 1e3, measured * 1e3, measured / predicted,
                measured / interpolated, failures.empty() ? "exact" : "DIFFER");
  }
  if (!failures.empty()) std::fprintf(stderr, "rank %d: counters differ from traffic<P>():%s\n", mesh.rank(), failures.c_str());
  return failures.empty() ? 0 : 3;
}

}  // namespace

int main() {
  try {
    const comm::launch_env env = comm::read_launch_env();
    if (env.world_size < 2 || env.world_size % 2) {
      std::fprintf(stderr, "validate_comm_model: run it on an even number of ranks: veomni-launch --nproc 2 -- validate_comm_model\n");
      return 2;
    }
    comm::gloo_mesh mesh({.dp_shard = env.world_size / 2, .sp = 2}, env);
    const auto start = clock_type::now();
    dense_lm::dims larger;
    larger.at<"lm">() = {.vocab = 8192, .hidden = 512, .layers = 4, .heads = 8, .kv_heads = 4, .head_dim = 64, .ffn = 1408};
    std::map<fit_key, link_fit> fits;
    int rc = 0;
    rc |= validate<fsdp_plan>(mesh, fits, "dense_lm_tiny FSDP", models::dense_lm_tiny(), 256, 9);
    rc |= validate<fsdp_sp_plan>(mesh, fits, "dense_lm_tiny FSDP+Ulysses", models::dense_lm_tiny(), 256, 9);
    rc |= validate<fsdp_plan>(mesh, fits, "dense_lm_larger FSDP", larger, 1024, 3);
    rc |= validate<fsdp_sp_plan>(mesh, fits, "dense_lm_larger FSDP+Ulysses", larger, 1024, 3);
    if (mesh.rank() == 0) {
      std::printf("\nloopback link model, world %d (t = alpha + wire/beta per call; slowest rank, median of 3):\n",
                  env.world_size);
      std::printf("  %-36s %10s %10s %12s   points (wire KB: us)\n", "axis / collective", "alpha us", "beta GB/s",
                  "max |resid|");
      for (const auto& [k, f] : fits) {
        std::printf("  %-36s %10.1f %10.3f %11.0f%%  ", (k.first + " " + std::string(to_string(k.second))).c_str(),
                    f.alpha * 1e6, f.beta / 1e9, 100 * f.max_rel_residual);
        for (auto [w, t] : f.points) std::printf(" %.0f:%.0f", w / 1e3, t * 1e6);
        std::printf("\n");
      }
      std::printf("total %.1f s\n", std::chrono::duration<double>(clock_type::now() - start).count());
    }
    mesh.world().barrier().wait();
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "validate_comm_model: %s\n", e.what());
    return 1;
  }
}
