// bench_peer: the veomni side of scripts/bench_peer.sh. Trains the dense_peer
// model (benchmarks/configs/dense_peer.yaml) with parallel_model directly
// and prints one "RESULT key=value ..." line (rank 0).
//
//   bench_peer train RECIPE STEPS WARMUP THREADS [DATA_WORLD DATA_RANK]
//       RECIPE fsdp | fsdp_keep (reshard_after_forward = false) | ddp; the
//       mesh is dp_shard = launched world size.
//       Every step holds the communicators' bytes against the plan's cost
//       model (exit 3 on any difference). With DATA_WORLD, a world-1 run
//       computes only data rank DATA_RANK's share of a DATA_WORLD-rank batch:
//       the compute-only reference for the hidden-communication measurement.
//   bench_peer comm RECIPE STEPS WARMUP
//       Issues, with no computation, the collectives of one step exactly as
//       the plan prices them (same ops, groups and sizes), one at a time.
//   bench_peer ab RECIPE STEPS WARMUP THREADS OVERLAP_A OVERLAP_B
//       Two models with different backward-overlap options (each
//       "ASYNC_REDUCE,BACKWARD_PREFETCH,MAX_REDUCES_IN_FLIGHT", e.g. 0,0,0 and
//       1,1,1), steps interleaved under the same load; exit 4 if their losses
//       differ. BENCH_PEER_OVERLAP sets the same options for `train`.
//   bench_peer peak THREADS
//       fp32 GEMM throughput (at::mm, square sizes), the MFU denominator.
//   bench_peer flops
//       Model FLOPs per token (core/flops.hpp) and parameter counts.
//
// Launch multi-rank modes with veomni-launch --nproc 2 -- bench_peer ...
// BENCH_PEER_PROFILE=FILE (train): LibTorch's op-level trace of the timed
// steps of rank 0, summarised by benchmarks/profile_summary.py.
// Like veomni-train, it keeps freed host memory (parallel::retain_host_memory)
// unless BENCH_PEER_GLIBC_DEFAULTS=1 is set.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <torch/csrc/autograd/profiler.h>

#include <veomni/comm.hpp>
#include <veomni/core.hpp>
#include <veomni/parallel.hpp>
#include <veomni/train/optimizer.hpp>

#include "peer_data.hpp"

using namespace veomni;
using models::dense_lm;
using clock_type = std::chrono::steady_clock;

namespace {

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}
double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The plan's payload bytes of one step, by (collective, axis key).
template <class P>
std::map<std::pair<std::string, std::string>, int64_t> predicted(const dense_lm::dims& d, const mesh_shape& m,
                                                                 int64_t tokens) {
  workload w;
  w.with("lm", tokens);
  std::map<std::pair<std::string, std::string>, int64_t> out;
  for (const auto& o : P::ops) out[{std::string(to_string(o.coll)), comm::axis_key(o.over)}] += cost_of<P>(o, d, m, w).step_payload();
  return out;
}

std::map<std::pair<std::string, std::string>, int64_t> delta(const std::vector<comm::comm_counters::entry>& after,
                                                             const std::vector<comm::comm_counters::entry>& before) {
  std::map<std::pair<std::string, std::string>, int64_t> ran;
  for (const auto& e : after) ran[{e.op, e.axis}] += e.count.bytes;
  for (const auto& e : before) ran[{e.op, e.axis}] -= e.count.bytes;
  for (auto it = ran.begin(); it != ran.end();) it = it->second == 0 ? ran.erase(it) : std::next(it);
  return ran;
}

// "" when equal, else what differs.
std::string compare(const std::map<std::pair<std::string, std::string>, int64_t>& ran,
                    const std::map<std::pair<std::string, std::string>, int64_t>& want) {
  std::string f;
  for (const auto& [k, b] : want)
    if (b != (ran.count(k) ? ran.at(k) : 0))
      f += " " + k.first + "/" + k.second + " ran " + std::to_string(ran.count(k) ? ran.at(k) : 0) + " B, plan " +
           std::to_string(b) + " B;";
  for (const auto& [k, b] : ran)
    if (!want.count(k) || want.at(k) == 0) f += " " + k.first + "/" + k.second + " ran " + std::to_string(b) + " B, not in the plan;";
  return f;
}

int64_t sum_bytes(const std::map<std::pair<std::string, std::string>, int64_t>& m) {
  int64_t s = 0;
  for (const auto& [k, b] : m) s += b;
  return s;
}

// The backward overlap's options from "ASYNC_REDUCE,BACKWARD_PREFETCH,MAX_REDUCES_IN_FLIGHT"
// (e.g. "0,0,0": synchronous backward; "1,1,1": the defaults); null: the defaults.
parallel::options overlap_options(const char* spec) {
  parallel::options opt;
  opt.seed = 1234;
  if (spec) {
    int a = opt.async_reduce, p = opt.backward_prefetch, w = opt.max_reduces_in_flight;
    std::sscanf(spec, "%d,%d,%d", &a, &p, &w);
    opt.async_reduce = a != 0, opt.backward_prefetch = p != 0, opt.max_reduces_in_flight = w;
  }
  return opt;
}

// Two models with different overlap options, on one mesh, trained on the
// same batches with their steps interleaved (A B B A A B ...), so that both
// see the same machine load; prints both medians and the median of the
// per-pair differences (B - A). Their losses must agree step for step.
template <class R>
int run_ab(const std::string& name, int steps, int warmup, int threads, const char* spec_a, const char* spec_b) {
  at::set_num_threads(threads);
  const comm::launch_env env = comm::read_launch_env();
  const mesh_shape m{.dp_shard = env.world_size};
  comm::gloo_mesh mesh(m, env);
  const dense_lm::dims d = bench::peer_dims();
  using model_t = parallel::parallel_model<dense_lm, R, comm::gloo_mesh>;
  model_t ma(d, mesh, overlap_options(spec_a)), mb(d, mesh, overlap_options(spec_b));
  train::adamw oa(ma.parameters(), ma.decay_masks(), {.lr = 1e-3, .eps = 1e-8, .weight_decay = 0.1});
  train::adamw ob(mb.parameters(), mb.decay_masks(), {.lr = 1e-3, .eps = 1e-8, .weight_decay = 0.1});
  auto one = [](model_t& md, train::adamw& o, const nn::batch& b, double& loss) {
    const auto t0 = clock_type::now();
    md.zero_grad();
    loss = md.forward_backward(b).loss;
    md.optimizer_step([&](double n) { o.step(1e-3, train::clip_scale(n, 1.0)); });
    return seconds_since(t0);
  };
  std::vector<double> ta, tb, diff;
  int mismatches = 0;
  for (int step = 0; step < warmup + steps; ++step) {
    const nn::batch b = parallel::local_batch(bench::peer_batch(step), m, env.rank, -1, -1);
    double la = 0, lb = 0, sa, sb;
    if (step % 2 == 0) {
      sa = one(ma, oa, b, la), sb = one(mb, ob, b, lb);
    } else {
      sb = one(mb, ob, b, lb), sa = one(ma, oa, b, la);
    }
    if (la != lb) ++mismatches;
    if (step >= warmup) ta.push_back(sa), tb.push_back(sb), diff.push_back(sb - sa);
  }
  if (env.rank != 0) return 0;
  std::printf("RESULT mode=ab recipe=%s world=%d threads=%d steps=%d a=%s b=%s a_step_s=%.6f b_step_s=%.6f "
              "diff_median_s=%.6f diff_rel=%.4f loss_mismatches=%d\n",
              name.c_str(), env.world_size, threads, steps, spec_a, spec_b, median(ta), median(tb), median(diff),
              median(diff) / median(ta), mismatches);
  return mismatches ? 4 : 0;
}

// BENCH_PEER_SHAPE=qwen2_0.5b: the model of Qwen2-0.5B's shape (vocabulary
// 151,936, hidden 896, 24 layers, 14 heads over 2 KV heads of 64, MLP 4,864,
// q/k/v biases, tied embeddings: 494 M parameters) on the same synthetic
// batch, for the LoRA against full fine-tuning comparison (issue 21);
// otherwise dense_peer.
bool qwen2_shape() {
  const char* s = std::getenv("BENCH_PEER_SHAPE");
  return s && std::string(s) == "qwen2_0.5b";
}
bench::peer_config shape_config() {
  bench::peer_config c;
  if (qwen2_shape()) c.vocab = 151936;
  return c;
}
dense_lm::dims shape_dims() {
  if (!qwen2_shape()) return bench::peer_dims();
  dense_lm::dims d;
  d.at<"lm">() = {.vocab = 151936, .hidden = 896, .layers = 24, .heads = 14, .kv_heads = 2, .head_dim = 64, .ffn = 4864,
                  .qkv_bias = true, .tie_word_embeddings = true};
  return d;
}
double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

template <class R>
int run_training(const std::string& name, int steps, int warmup, int threads, long data_world, long data_rank) {
  using P = plan<dense_lm, R>;
  at::set_num_threads(threads);
  comm::launch_env env = comm::read_launch_env();
  const bool solo = data_world > 0;
  if (solo) env = comm::launch_env{};  // compute only: a world of one, no connection
  const mesh_shape m{.dp_shard = env.world_size};
  const mesh_shape data_mesh{.dp_shard = solo ? data_world : m.dp_shard};
  const long data_index = solo ? data_rank : env.rank;
  comm::gloo_mesh mesh(m, env);
  const dense_lm::dims d = shape_dims();
  parallel::options opt = overlap_options(std::getenv("BENCH_PEER_OVERLAP"));
  parallel::parallel_model<dense_lm, R, comm::gloo_mesh> model(d, mesh, opt);
  train::adamw optim(model.parameters(), model.decay_masks(), {.lr = 1e-3, .eps = 1e-8, .weight_decay = 0.1});

  std::vector<double> t_step, t_fb, t_norm, t_opt;
  int64_t step_bytes = -1, plan_bytes = -1, tokens = 0;
  double first_loss = 0, last_loss = 0;
  // BENCH_PEER_PROFILE=FILE: the op-level trace (LibTorch's profiler, chrome
  // format) of the timed steps, for benchmarks/profile_summary.py
  const char* profile_path = std::getenv("BENCH_PEER_PROFILE");
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  for (int step = 0; step < warmup + steps; ++step) {
    if (step == warmup && profile_path && env.rank == 0)
      profile = std::make_unique<torch::autograd::profiler::RecordProfile>(std::string(profile_path));
    const nn::batch b = parallel::local_batch(bench::peer_batch(step, shape_config()), data_mesh, data_index, -1, -1);
    tokens = b.tokens.size(0);
    const auto before = mesh.counters().snapshot();
    const auto t0 = clock_type::now();
    model.zero_grad();
    const auto stats = model.forward_backward(b);
    const double fb = seconds_since(t0);
    const auto t1 = clock_type::now();
    const double norm = model.grad_norm();
    const double gn = seconds_since(t1);
    const auto t2 = clock_type::now();
    optim.step(1e-3, train::clip_scale(norm, 1.0));
    model.after_update();
    const double op = seconds_since(t2);
    const double total = seconds_since(t0);
    // outside the timed region: this step's counters against the plan
    const auto ran = delta(mesh.counters().snapshot(), before);
    const auto want = predicted<P>(d, m, tokens);
    if (const std::string f = compare(ran, want); !f.empty()) {
      std::fprintf(stderr, "bench_peer: step %d: communicator bytes differ from the cost model:%s\n", step, f.c_str());
      return 3;
    }
    step_bytes = sum_bytes(ran);
    plan_bytes = sum_bytes(want);
    if (step == 0) first_loss = stats.loss;
    last_loss = stats.loss;
    if (step >= warmup) t_step.push_back(total), t_fb.push_back(fb), t_norm.push_back(gn), t_opt.push_back(op);
  }
  profile.reset();  // writes the trace
  // what the rank holds against the cost model: parameters, gradients, AdamW's moments
  const parallel::held_memory held = model.held_bytes();
  long opt_bytes = 0;
  for (const auto* v : {&optim.exp_avg(), &optim.exp_avg_sq()})
    for (const auto& t : *v) opt_bytes += static_cast<long>(t.numel() * t.element_size());
  const auto mem = memory<P>(d, m);
  const bool memory_match = held.params == mem.params && held.grads == mem.grads && opt_bytes == mem.optimizer;
  if (!memory_match) {
    std::fprintf(stderr, "bench_peer: rank %d holds params %ld, grads %ld, optimizer %ld B; cost model %ld, %ld, %ld B\n",
                 env.rank, held.params, held.grads, opt_bytes, mem.params, mem.grads, mem.optimizer);
    return 3;
  }
  std::printf("RSS rank=%d peak_rss_mib=%.1f\n", env.rank, peak_rss_mib());
  if (env.rank != 0) return 0;
  const int64_t local = model.local_numel();
  const double global_tokens = static_cast<double>(shape_config().global_batch * shape_config().seq);
  const double step_s = median(t_step);
  std::printf(
      "RESULT side=veomni recipe=%s world=%d threads=%d solo=%d data_world=%ld steps=%d step_s=%.6f fb_s=%.6f "
      "norm_s=%.6f opt_s=%.6f step_min_s=%.6f tokens_per_rank=%lld global_tokens_per_s=%.1f loss0=%.6f loss_last=%.6f "
      "comm_bytes_step=%lld plan_bytes_step=%lld bytes_match=1 local_param_bytes=%lld plan_param_bytes=%ld "
      "plan_grad_bytes=%ld plan_optimizer_bytes=%ld held_param_bytes=%ld held_grad_bytes=%ld held_optimizer_bytes=%ld "
      "memory_match=1 trainable=%lld peak_rss_mib=%.1f\n",
      name.c_str(), env.world_size, threads, solo ? 1 : 0, solo ? data_world : m.dp_shard, steps, step_s, median(t_fb),
      median(t_norm), median(t_opt), *std::min_element(t_step.begin(), t_step.end()), static_cast<long long>(tokens),
      global_tokens / step_s, first_loss, last_loss, static_cast<long long>(step_bytes),
      static_cast<long long>(plan_bytes), static_cast<long long>(local * 4), mem.params, mem.grads, mem.optimizer,
      held.params, held.grads, opt_bytes, static_cast<long long>(local), peak_rss_mib());
  return 0;
}

// The step's collectives with no computation: every plan op, as many calls
// and of the size the cost model gives, on the group the plan names.
template <class R>
int comm_only(const std::string& name, int steps, int warmup) {
  using P = plan<dense_lm, R>;
  at::set_num_threads(1);
  const comm::launch_env env = comm::read_launch_env();
  const mesh_shape m{.dp_shard = env.world_size};
  comm::gloo_mesh mesh(m, env);
  const dense_lm::dims d = bench::peer_dims();
  const int64_t tokens = parallel::local_batch(bench::peer_batch(0), m, env.rank, -1, -1).tokens.size(0);
  workload w;
  w.with("lm", tokens);
  struct call {
    comm::gloo_mesh::communicator* c;
    collective coll;
    at::Tensor in, out;
  };
  std::vector<call> calls;
  for (const auto& o : P::ops) {
    const op_cost c = cost_of<P>(o, d, m, w);
    for (long i = 0; i < c.calls; ++i) {
      call k{&mesh[o.over], o.coll, {}, {}};
      const int64_t n = c.payload_bytes / 4, g = c.group;
      switch (o.coll) {
        case collective::all_gather: k.in = at::ones({n}), k.out = at::empty({n * g}); break;
        case collective::reduce_scatter: k.in = at::ones({n}), k.out = at::empty({n / g}); break;
        case collective::all_reduce: k.in = at::ones({n}); break;
        case collective::all_to_all: k.in = at::ones({n}), k.out = at::empty({n}); break;
      }
      calls.push_back(k);
    }
  }
  std::vector<double> t;
  for (int step = 0; step < warmup + steps; ++step) {
    const auto before = mesh.counters().snapshot();
    mesh.world().barrier().wait();
    const auto t0 = clock_type::now();
    for (auto& k : calls) {
      switch (k.coll) {
        case collective::all_gather: k.c->all_gather(k.out, k.in).wait(); break;
        case collective::reduce_scatter: k.c->reduce_scatter(k.out, k.in).wait(); break;
        case collective::all_reduce: k.c->all_reduce(k.in, comm::reduce_op::sum).wait(); break;
        case collective::all_to_all: k.c->all_to_all(k.out, k.in).wait(); break;
      }
    }
    const double s = seconds_since(t0);
    auto ran = delta(mesh.counters().snapshot(), before);
    ran.erase(std::pair<std::string, std::string>{"barrier", comm::axis_key(comm::world_axes)});
    if (const std::string f = compare(ran, predicted<P>(d, m, tokens)); !f.empty()) {
      std::fprintf(stderr, "bench_peer comm: replay differs from the plan:%s\n", f.c_str());
      return 3;
    }
    if (step >= warmup) t.push_back(s);
  }
  if (env.rank == 0)
    std::printf("RESULT side=veomni mode=comm recipe=%s world=%d steps=%d calls=%zu comm_s=%.6f comm_min_s=%.6f\n",
                name.c_str(), env.world_size, steps, calls.size(), median(t), *std::min_element(t.begin(), t.end()));
  return 0;
}

int peak(int threads) {
  at::set_num_threads(threads);
  double best = 0;
  int64_t best_n = 0;
  for (int64_t n : {512, 1024, 2048}) {
    const at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
    at::Tensor c = at::empty({n, n});
    for (int i = 0; i < 3; ++i) at::mm_out(c, a, b);
    std::vector<double> g;
    const int reps = n <= 512 ? 200 : n <= 1024 ? 30 : 6;
    for (int i = 0; i < reps; ++i) {
      const auto t0 = clock_type::now();
      at::mm_out(c, a, b);
      g.push_back(2.0 * n * n * n / seconds_since(t0) / 1e9);
    }
    const double med = median(g);
    std::printf("PEAK n=%lld threads=%d gflops_median=%.1f gflops_max=%.1f\n", static_cast<long long>(n), threads, med,
                *std::max_element(g.begin(), g.end()));
    if (med > best) best = med, best_n = n;
  }
  // One thread, per second of this thread's CPU time: what a core delivers
  // while it runs the GEMM, however busy the machine (x cores: the quiet peak).
  at::set_num_threads(1);
  double core = 0;
  {
    const int64_t n = 1024;
    const at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
    at::Tensor c = at::empty({n, n});
    std::vector<double> g;
    for (int i = 0; i < 23; ++i) {
      timespec t0{}, t1{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
      at::mm_out(c, a, b);
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
      if (i >= 3) g.push_back(2.0 * n * n * n / ((t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec)) / 1e9);
    }
    core = median(g);
  }
  std::printf("RESULT mode=peak threads=%d gflops=%.1f n=%lld core_cpu_gflops=%.1f quiet_gflops=%.1f\n", threads, best,
              static_cast<long long>(best_n), core, core * threads);
  return 0;
}

int flops() {
  const dense_lm::dims d = bench::peer_dims();
  const bench::peer_config c;
  training_step st;
  st.seq = c.seq;
  const double executed = training_flops_per_sample<dense_lm>(d, st, flop_convention::executed) / static_cast<double>(c.seq);
  const double paper = training_flops_per_sample<dense_lm>(d, st, flop_convention::paper) / static_cast<double>(c.seq);
  nn::local_params<dense_lm> p(d, 0);
  int64_t n = 0;
  for (const auto& s : p.specs()) n += s.numel();
  const int64_t embed = c.vocab * c.hidden;
  std::printf("RESULT mode=flops params=%lld params_no_embedding=%lld flops_per_token_executed=%.0f "
              "flops_per_token_paper=%.0f\n",
              static_cast<long long>(n), static_cast<long long>(n - embed), executed, paper);
  return 0;
}

using fsdp_recipe = recipe<apply<"lm", Shard<FSDP>>>;
using ddp_recipe = recipe<apply<"lm", Shard<DDP>>>;
// FSDP keeping gathered parameters from forward to backward (PyTorch FSDP's
// SHARD_GRAD_OP, ZeRO-2-like): no backward all-gather; shards, gradients and
// optimizer state still 1/N per rank.
using fsdp_keep_recipe = recipe<apply<"lm", Shard<fsdp<fsdp_options{.reshard_after_forward = false}>>>>;
// LoRA of rank 8 (alpha 16) on every attention and MLP projection, the model frozen
using lora_fsdp_recipe = recipe<apply<"lm", Shard<FSDP>, Adapt<LoRA>>>;
using lora_ddp_recipe = recipe<apply<"lm", Shard<DDP>, Adapt<LoRA>>>;

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> a(argv + 1, argv + argc);
  auto arg = [&](size_t i, long dflt) { return i < a.size() ? std::atol(a[i].c_str()) : dflt; };
  const char* glibc = std::getenv("BENCH_PEER_GLIBC_DEFAULTS");
  if (!(glibc && std::string(glibc) == "1")) parallel::retain_host_memory();
  try {
    if (a.size() >= 2 && a[0] == "train") {
      const int steps = static_cast<int>(arg(2, 50)), warmup = static_cast<int>(arg(3, 5)),
                threads = static_cast<int>(arg(4, 1));
      const long dw = arg(5, 0), dr = arg(6, 0);
      if (a[1] == "fsdp") return run_training<fsdp_recipe>(a[1], steps, warmup, threads, dw, dr);
      if (a[1] == "ddp") return run_training<ddp_recipe>(a[1], steps, warmup, threads, dw, dr);
      if (a[1] == "fsdp_keep") return run_training<fsdp_keep_recipe>(a[1], steps, warmup, threads, dw, dr);
      if (a[1] == "lora_fsdp") return run_training<lora_fsdp_recipe>(a[1], steps, warmup, threads, dw, dr);
      if (a[1] == "lora_ddp") return run_training<lora_ddp_recipe>(a[1], steps, warmup, threads, dw, dr);
    } else if (a.size() >= 7 && a[0] == "ab") {
      // bench_peer ab RECIPE STEPS WARMUP THREADS OVERLAP_A OVERLAP_B
      const int steps = static_cast<int>(arg(2, 50)), warmup = static_cast<int>(arg(3, 5)),
                threads = static_cast<int>(arg(4, 1));
      if (a[1] == "fsdp") return run_ab<fsdp_recipe>(a[1], steps, warmup, threads, a[5].c_str(), a[6].c_str());
      if (a[1] == "ddp") return run_ab<ddp_recipe>(a[1], steps, warmup, threads, a[5].c_str(), a[6].c_str());
    } else if (a.size() >= 2 && a[0] == "comm") {
      const int steps = static_cast<int>(arg(2, 50)), warmup = static_cast<int>(arg(3, 5));
      if (a[1] == "fsdp") return comm_only<fsdp_recipe>(a[1], steps, warmup);
      if (a[1] == "ddp") return comm_only<ddp_recipe>(a[1], steps, warmup);
      if (a[1] == "fsdp_keep") return comm_only<fsdp_keep_recipe>(a[1], steps, warmup);
    } else if (!a.empty() && a[0] == "peak") {
      return peak(static_cast<int>(arg(1, 2)));
    } else if (!a.empty() && a[0] == "flops") {
      return flops();
    }
    std::fprintf(stderr,
                 "usage: bench_peer train fsdp|fsdp_keep|ddp|lora_fsdp|lora_ddp STEPS WARMUP THREADS [DATA_WORLD DATA_RANK]\n"
                 "       (BENCH_PEER_SHAPE=qwen2_0.5b: the Qwen2-0.5B shape instead of dense_peer)\n"
                 "       bench_peer comm fsdp|fsdp_keep|ddp STEPS WARMUP\n       bench_peer peak THREADS\n       bench_peer flops\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_peer: %s\n", e.what());
    return 1;
  }
}
