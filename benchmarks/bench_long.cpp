// Long context on one machine (issue 22): the attention core alone, and a
// training step of the dense_peer model on one long sample, at world 1 or
// with Ulysses over 2 ranks. Prints RESULT lines (benchmarks/long_summary.py
// reads them; scripts/bench_long.sh runs the whole comparison).
//
//   bench_long peak THREADS                          fp32 GEMM peak (at::mm, 2048^3, median)
//   bench_long attention L HEADS DIM TILE THREADS STEPS [SAMPLES]
//       forward + backward of causal attention on SAMPLES (1) samples of L tokens:
//       time, GFLOP/s (model: 4 L^2 D per head forward and backward, causal
//       half counted: 2 matmuls forward, 4 backward; executed: + the QK^T
//       recomputed in backward), peak RSS
//   bench_long train L STEPS WARMUP THREADS          (world 1, or veomni-launch --nproc 2: Ulysses 2)
//       one sample of L tokens per step, FSDP + Ulysses, activation
//       checkpointing: step time, tokens/s, peak RSS per rank, what the
//       steps add to the resident memory (peak - resident before the first
//       step) against the cost model's activations and FSDP buffers.
//       BENCH_LONG_LIVE=1: freed memory goes back at once (the peak RSS is
//       the peak of live memory, as the plan counts it)
#include <malloc.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <veomni/comm.hpp>
#include <veomni/core.hpp>
#include <veomni/models/zoo.hpp>
#include <veomni/parallel.hpp>
#include <veomni/train/optimizer.hpp>

#include "peer_data.hpp"

using namespace veomni;
using clock_type = std::chrono::steady_clock;

namespace {

double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}
// CPU seconds of this process (all its threads): what the work costs,
// however busy the machine is.
double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}
long peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}
// Resident memory now (MB), from /proc/self/statm.
double rss_mb() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

// fp32 GEMM (at::mm, 2048^3): the median over 8 of wall-clock GFLOP/s, and of
// GFLOP per CPU second (per core: the rate a core delivers while it runs).
struct gemm_rate {
  double wall = 0, per_cpu = 0;
};
gemm_rate gemm_peak(int threads) {
  at::set_num_threads(threads);
  const int64_t n = 2048;
  const at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
  at::Tensor c = at::empty({n, n});
  for (int i = 0; i < 2; ++i) at::mm_out(c, a, b);
  std::vector<double> g, cpu;
  for (int i = 0; i < 8; ++i) {
    const auto t0 = clock_type::now();
    const double c0 = cpu_seconds();
    at::mm_out(c, a, b);
    g.push_back(2.0 * n * n * n / seconds_since(t0) / 1e9);
    cpu.push_back(2.0 * n * n * n / (cpu_seconds() - c0) / 1e9);
  }
  return {median(g), median(cpu)};
}

int peak(int threads) {
  const gemm_rate r = gemm_peak(threads);
  std::printf("RESULT mode=peak threads=%d gflops=%.1f gflops_per_cpu_s=%.1f\n", threads, r.wall, r.per_cpu);
  return 0;
}

int attention(int64_t len, int64_t heads, int64_t dim, int64_t tile, int threads, int steps, int64_t samples) {
  at::set_num_threads(threads);
  const int64_t t = samples * len;
  const at::Tensor q = at::randn({t, heads, dim}).requires_grad_(), k = at::randn({t, heads, dim}).requires_grad_(),
                   v = at::randn({t, heads, dim}).requires_grad_();
  const at::Tensor g = at::randn({t, heads, dim}), cu = at::arange(0, samples + 1, at::kLong) * len;
  const gemm_rate before = gemm_peak(threads);
  at::set_num_threads(threads);
  std::vector<double> fwd, bwd, cpu;
  for (int i = 0; i < steps + 1; ++i) {
    const auto t0 = clock_type::now();
    const double c0 = cpu_seconds();
    const at::Tensor y = nn::varlen_attention(q, k, v, cu, true, tile);
    const double f = seconds_since(t0);
    const auto t1 = clock_type::now();
    y.backward(g);
    const double b = seconds_since(t1);
    if (i > 0) fwd.push_back(f), bwd.push_back(b), cpu.push_back(cpu_seconds() - c0);  // the first is a warm-up
    q.mutable_grad().reset(), k.mutable_grad().reset(), v.mutable_grad().reset();
  }
  const gemm_rate after = gemm_peak(threads);
  // causal: L(L+1)/2 scores per head; a matmul over them is 2 D flops each
  const double tri = static_cast<double>(len) * static_cast<double>(len + 1) / 2.0,
               per = 2.0 * tri * dim * heads * static_cast<double>(samples);
  const double f = median(fwd), b = median(bwd), c = median(cpu);
  // against the GEMM peak measured in the same process just before and after
  // (wall clock), and per CPU second against the GEMM's per CPU second (the
  // share of a core's GEMM rate, however busy the machine)
  const double peak_wall = std::max(before.wall, after.wall), peak_cpu = std::max(before.per_cpu, after.per_cpu);
  const double model = 6.0 * per / (f + b) / 1e9, model_cpu = 6.0 * per / c / 1e9;
  std::printf(
      "RESULT mode=attention len=%lld samples=%lld heads=%lld dim=%lld tile=%lld threads=%d steps=%d fwd_s=%.4f bwd_s=%.4f "
      "fwd_bwd_s=%.4f model_gflops=%.1f executed_gflops=%.1f gemm_peak_gflops=%.1f of_peak=%.3f "
      "model_gflops_per_cpu_s=%.1f gemm_gflops_per_cpu_s=%.1f of_peak_cpu=%.3f peak_rss_mb=%ld\n",
      static_cast<long long>(len), static_cast<long long>(samples), static_cast<long long>(heads),
      static_cast<long long>(dim), static_cast<long long>(tile), threads, steps, f, b, f + b, model, 7.0 * per / (f + b) / 1e9, peak_wall,
      model / peak_wall, model_cpu, peak_cpu, model_cpu / peak_cpu, peak_rss_mb());
  return 0;
}

// The dense_peer model (hidden 256, 4 layers, 4 heads x 64, SwiGLU 1024) on one
// sample of `len` tokens per step.
int train_step(int64_t len, int steps, int warmup, int threads) {
  at::set_num_threads(threads);
  // BENCH_LONG_LIVE=1: every block above 64 KiB its own mapping, returned
  // when freed, so that the peak RSS is the peak of live memory (what the
  // cost model predicts); otherwise freed memory stays in the process for
  // the next step, as veomni-train runs (faster, the peak includes the heap's
  // fragments)
  const char* live_env = std::getenv("BENCH_LONG_LIVE");
  const bool live = live_env != nullptr && std::string(live_env) == "1";
  if (live)
    mallopt(M_MMAP_THRESHOLD, 64 * 1024);
  else
    parallel::retain_host_memory();
  const comm::launch_env env = comm::read_launch_env();
  const mesh_shape m{.sp = env.world_size};
  comm::gloo_mesh mesh(m, env);
  using R = recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>>>;
  using P = plan<models::dense_lm, R>;
  const auto d = bench::peer_dims();
  parallel::parallel_model<models::dense_lm, R, comm::gloo_mesh> model(d, mesh, {.checkpoint = true, .seed = 1234});
  train::adamw optim(model.parameters(), model.decay_masks(), {.lr = 1e-3, .eps = 1e-8, .weight_decay = 0.1});
  bench::peer_config c;
  c.seq = len;
  c.global_batch = 1;
  std::vector<double> t;
  double loss = 0;
  // resident before the first step: LibTorch, the model's parameters and
  // gradient buffers, the optimizer's moments (allocated and zeroed by their
  // constructors); the peak above it is what the steps add: activations and
  // the collectives' buffers, which the plan predicts (footprint<P>)
  const double before_mb = rss_mb();
  for (int step = 0; step < warmup + steps; ++step) {
    const nn::batch b = parallel::local_batch(bench::peer_batch(step, c), m, env.rank, -1, -1, decltype(model)::layout());
    const auto t0 = clock_type::now();
    model.zero_grad();
    loss = model.forward_backward(b).loss;
    model.optimizer_step([&](double n) { optim.step(1e-3, train::clip_scale(n, 1.0)); });
    if (step >= warmup) t.push_back(seconds_since(t0));
  }
  // the cost model's memory per rank for this step (fp32, veomni's chunked loss)
  training_step st;
  st.seq = len;
  st.global_batch = 1;
  st.micro_batch = 1;
  st.checkpointing = true;
  st.prec = precisions::fp32;
  const gpu_memory f = footprint<P>(d, m, st);
  const double mb = 1 << 20;
  const double plan_step = static_cast<double>(f.activations.total() + f.buffers) / mb;
  const double step_s = median(t);
  const long peak = peak_rss_mb();
  std::printf(
      "RESULT mode=train live=%d len=%lld world=%d rank=%d threads=%d steps=%d warmup=%d step_s=%.3f tokens_per_s=%.1f "
      "loss=%.4f peak_rss_mb=%ld before_mb=%.1f step_mb=%.1f plan_step_mb=%.1f step_over_plan=%.3f "
      "plan_activation_mb=%.1f plan_kept_mb=%.1f plan_working_mb=%.1f plan_backward_mb=%.1f plan_root_mb=%.1f "
      "plan_params_mb=%.1f "
      "plan_grads_mb=%.1f plan_optimizer_mb=%.1f plan_buffers_mb=%.1f\n",
      live ? 1 : 0, static_cast<long long>(len), env.world_size, env.rank, threads, steps, warmup, step_s,
      static_cast<double>(len) / step_s, loss, peak, before_mb, static_cast<double>(peak) - before_mb, plan_step,
      (static_cast<double>(peak) - before_mb) / plan_step, static_cast<double>(f.activations.total()) / mb,
      static_cast<double>(f.activations.kept) / mb, static_cast<double>(f.activations.working) / mb,
      static_cast<double>(f.activations.backward) / mb, static_cast<double>(f.activations.root) / mb, static_cast<double>(f.states.params) / mb,
      static_cast<double>(f.states.grads) / mb, static_cast<double>(f.states.optimizer) / mb,
      static_cast<double>(f.buffers) / mb);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> a(argv + 1, argv + argc);
  auto num = [&](std::size_t i, long def) { return i < a.size() ? std::atol(a[i].c_str()) : def; };
  try {
    if (!a.empty() && a[0] == "peak") return peak(static_cast<int>(num(1, 2)));
    if (a.size() >= 2 && a[0] == "attention")
      return attention(num(1, 16384), num(2, 4), num(3, 64), num(4, 128), static_cast<int>(num(5, 2)),
                       static_cast<int>(num(6, 3)), num(7, 1));
    if (a.size() >= 2 && a[0] == "train")
      return train_step(num(1, 8192), static_cast<int>(num(2, 2)), static_cast<int>(num(3, 1)), static_cast<int>(num(4, 2)));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_long: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: bench_long peak THREADS | attention L HEADS DIM TILE THREADS STEPS [SAMPLES] | "
                       "train L STEPS WARMUP THREADS\n");
  return 2;
}
