// bench_comm: bandwidth of each collective on loopback through the Gloo
// communicator ("comm") and through the same c10d calls made by hand
// ("c10d"), and the communicator's overhead. Every rank must run the same
// sequence, so each benchmark has a fixed iteration count and starts after
// a barrier; only rank 0 reports.
//
//   veomni-launch --nproc 2 -- bench_comm [--benchmark_filter=all_reduce]
//
// Bytes per iteration are the counters' payload (counters.hpp), so the
// bytes_per_second column reads as the plan's cost per second.
#include <veomni/comm.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace comm = veomni::comm;
namespace axis = veomni::axis;
using veomni::axes;

namespace {

comm::gloo_communicator* group = nullptr;

// The c10d calls the communicator makes, by hand (LibTorch 1.13's Gloo).
namespace by_hand {
// n copies of the input through alltoall_base (what the communicator does)
void all_gather(at::Tensor& out, at::Tensor& in, int n) {
  const auto k = in.numel();
  at::Tensor src = at::empty({n * k}, in.options());
  src.view({n, k}).copy_(in.unsqueeze(0).expand({n, k}));
  std::vector<std::int64_t> even;
  group->c10d_group()->alltoall_base(out, src, even, even)->wait();
}
// Gloo's own list allgather (what the communicator did before)
void all_gather_list(at::Tensor& out, at::Tensor& in, int n) {
  const auto k = in.numel();
  std::vector<std::vector<at::Tensor>> outs(1);
  for (int i = 0; i < n; ++i) outs[0].push_back(out.narrow(0, i * k, k));
  std::vector<at::Tensor> ins{in};
  group->c10d_group()->allgather(outs, ins)->wait();
}
void reduce_scatter(at::Tensor& out, at::Tensor& in, at::Tensor& scratch, int n) {
  std::vector<std::int64_t> even;
  group->c10d_group()->alltoall_base(scratch, in, even, even)->wait();
  at::sum_out(out, scratch.view({n, out.numel()}), {0});
}
void all_reduce(at::Tensor& t) {
  std::vector<at::Tensor> ts{t};
  group->c10d_group()->allreduce(ts)->wait();
}
void all_to_all(at::Tensor& out, at::Tensor& in) {
  std::vector<std::int64_t> even;
  group->c10d_group()->alltoall_base(out, in, even, even)->wait();
}
void broadcast(at::Tensor& t) {
  std::vector<at::Tensor> ts{t};
  group->c10d_group()->broadcast(ts)->wait();
}
}  // namespace by_hand

// all_gather_vs_list: the communicator's all_gather against Gloo's list
// allgather by hand (not the same calls: the "overhead" is the difference).
enum class op { all_gather, all_gather_vs_list, reduce_scatter, all_reduce, all_to_all, broadcast };
const char* name_of(op o) {
  switch (o) {
    case op::all_gather: return "all_gather";
    case op::all_gather_vs_list: return "all_gather_vs_list";
    case op::reduce_scatter: return "reduce_scatter";
    case op::all_reduce: return "all_reduce";
    case op::all_to_all: return "all_to_all";
    case op::broadcast: return "broadcast";
  }
  return "?";
}

// One benchmark per (collective, size) times both paths, alternating which
// goes first each iteration, so drift on a shared machine hits both alike;
// the medians of the per-call times give the overhead. The reported time is
// the communicator's; bytes = the payload per call (all_gather: the shard).
void run_pair(benchmark::State& state, op o) {
  using clock = std::chrono::steady_clock;
  const int n = group->size();
  const std::int64_t bytes = state.range(0), elems = bytes / 4;
  at::Tensor in = at::ones({elems});
  const bool gather = o == op::all_gather || o == op::all_gather_vs_list;
  at::Tensor out = at::empty({gather ? elems * n : (o == op::reduce_scatter ? elems / n : elems)});
  at::Tensor scratch = at::empty({elems});
  auto through_comm = [&] {
    switch (o) {
      case op::all_gather:
      case op::all_gather_vs_list: group->all_gather(out, in).wait(); break;
      case op::reduce_scatter: group->reduce_scatter(out, in).wait(); break;
      case op::all_reduce: group->all_reduce(in).wait(); break;
      case op::all_to_all: group->all_to_all(out, in).wait(); break;
      case op::broadcast: group->broadcast(in, 0).wait(); break;
    }
  };
  auto through_c10d = [&] {
    switch (o) {
      case op::all_gather: by_hand::all_gather(out, in, n); break;
      case op::all_gather_vs_list: by_hand::all_gather_list(out, in, n); break;
      case op::reduce_scatter: by_hand::reduce_scatter(out, in, scratch, n); break;
      case op::all_reduce: by_hand::all_reduce(in); break;
      case op::all_to_all: by_hand::all_to_all(out, in); break;
      case op::broadcast: by_hand::broadcast(in); break;
    }
  };
  auto seconds = [](auto&& f) {
    const auto start = clock::now();
    f();
    return std::chrono::duration<double>(clock::now() - start).count();
  };
  std::vector<double> t_comm, t_c10d;
  through_comm(), through_c10d();  // warm up: connections, allocations
  group->barrier().wait();
  bool comm_first = true;
  for (auto _ : state) {
    double a = 0, b = 0;
    if (comm_first) a = seconds(through_comm), b = seconds(through_c10d);
    else b = seconds(through_c10d), a = seconds(through_comm);
    comm_first = !comm_first;
    t_comm.push_back(a), t_c10d.push_back(b);
    state.SetIterationTime(a);
  }
  auto median = [](std::vector<double> v) {
    std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
    return v[v.size() / 2];
  };
  const double m_comm = median(t_comm), m_c10d = median(t_c10d);
  state.counters["comm_us"] = m_comm * 1e6;
  state.counters["c10d_us"] = m_c10d * 1e6;
  state.counters["overhead_pct"] = 100.0 * (m_comm - m_c10d) / m_c10d;
  state.counters["comm_GBps"] = static_cast<double>(bytes) / m_comm / 1e9;
  state.counters["c10d_GBps"] = static_cast<double>(bytes) / m_c10d / 1e9;
  state.SetBytesProcessed(state.iterations() * bytes);
}

class silent_reporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const comm::launch_env env = comm::read_launch_env();
  comm::gloo_mesh mesh({.dp_shard = env.world_size}, env);
  group = &mesh[axes<axis::dp_shard, axis::sp>];
  if (group->size() < 2) {
    std::fprintf(stderr, "bench_comm: run it on 2+ ranks: veomni-launch --nproc 2 -- bench_comm\n");
    return 2;
  }
  // Sizes: 64 KiB (latency-bound), 1 MiB, 16 MiB (bandwidth-bound); fixed
  // iterations so both ranks run the same number of collectives.
  const std::vector<std::pair<std::int64_t, std::int64_t>> sizes{{64 << 10, 2000}, {1 << 20, 400}, {16 << 20, 60}};
  for (op o : {op::all_gather, op::all_gather_vs_list, op::reduce_scatter, op::all_reduce, op::all_to_all,
               op::broadcast})
    for (const auto& [bytes, iterations] : sizes)
      benchmark::RegisterBenchmark(name_of(o), [o](benchmark::State& s) { run_pair(s, o); })
          ->Arg(bytes)
          ->Iterations(iterations)
          ->Unit(benchmark::kMicrosecond)
          ->UseManualTime();
  if (env.rank == 0) {
    benchmark::ConsoleReporter r;
    benchmark::RunSpecifiedBenchmarks(&r);
  } else {
    silent_reporter r;
    benchmark::RunSpecifiedBenchmarks(&r);
  }
  group->barrier().wait();
  benchmark::Shutdown();
  return 0;
}
