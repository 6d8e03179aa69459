// bench_nn: the functional components against plain LibTorch modules.
//
//   block/*       forward + backward of one dense-LM block (hidden 256, 4 heads,
//                 8 packed sequences of 256, SwiGLU 1024, fp32):
//                   functional  nn::impl<text_decoder>::block, parameters as tensors
//                   module      torch::nn::Module with torch::nn::Linear, the same
//                               algorithm (RoPE from positions, attention per sequence)
//                   batched     the module a LibTorch user writes for equal lengths:
//                               cached RoPE tables, one [B, H, L, L] causal attention
//   attention/*   forward + backward of the causal attention core alone, on the
//                 block's q, k, v [2048, 4, 64] (8 sequences of 256):
//                   blocked       nn::varlen_attention (equal-length samples
//                                 batched, query blocks of 64, one autograd function)
//                   per_sequence  the composition it replaced: autograd through
//                                 matmul, mask, softmax, matmul, one sequence at a time
//                   batched       one [B, H, L, L] causal attention, as the
//                                 PyTorch peer (benchmarks/peer_torch.py) computes it
//   kernels/*     forward + backward of each fused fp32 kernel (nn/kernels.hpp)
//                 against the ATen composition it replaced, at the block's
//                 shapes: silu_mul [2048, 1024], rms_norm [2048, 256],
//                 rope [2048, 4, 64] (the composition recomputes its angles,
//                 as the old rope did on every call), lm_loss: the head's
//                 logits [2048, 1024] and their summed cross-entropy
//                 (nn::lm_loss_sum against matmul + cross_entropy)
//   train_step/*  one training step of the dense_peer model (4 such blocks,
//                 vocabulary 1024, AdamW, clipping) at world 1:
//                   veomni      parallel_model (DDP or FSDP recipe, world of one)
//                               + train::adamw
//                   libtorch    the batched module stack + torch::optim::AdamW
//
// All variants of a benchmark run in one loop, alternating which goes first
// every iteration, so drift on a shared machine hits all alike; the counters
// are medians of the per-iteration times (ms) and overhead_pct compares the
// medians. Setup checks that the variants compute the same values.
//
//   bench_nn [--benchmark_repetitions=3]            2 intra-op threads
//   BENCH_NN_THREADS=1 OMP_NUM_THREADS=1 bench_nn   1 thread, adds *_cpu_ms counters
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <cstdio>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <veomni/comm.hpp>
#include <veomni/core.hpp>
#include <veomni/nn.hpp>
#include <veomni/parallel.hpp>
#include <veomni/train/optimizer.hpp>

#include "peer_data.hpp"

namespace {

using namespace veomni;
using clock_type = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("bench_nn: " + what);
}

// ---- plain LibTorch modules ------------------------------------------------------------

struct RMSNormImpl : torch::nn::Module {
  explicit RMSNormImpl(int64_t n, double eps = 1e-6) : eps(eps) { weight = register_parameter("weight", torch::ones({n})); }
  torch::Tensor forward(const torch::Tensor& x) { return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * weight; }
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

torch::nn::Linear linear(int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); }

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t d = x.size(-1);
  return torch::cat({-x.narrow(-1, d / 2, d / 2), x.narrow(-1, 0, d / 2)}, -1);
}

// Llama-style pre-norm block. `same_algorithm`: the functional form's
// algorithm (RoPE angles from the position ids on every call, attention one
// sequence at a time); otherwise cached RoPE tables and one batched causal
// attention over [B, H, L, L].
struct BlockImpl : torch::nn::Module {
  BlockImpl(int64_t hidden, int64_t heads, int64_t ffn, int64_t seq, bool same_algorithm)
      : heads(heads), head_dim(hidden / heads), seq(seq), same(same_algorithm) {
    attn_norm = register_module("attn_norm", RMSNorm(hidden));
    q = register_module("q", linear(hidden, hidden));
    k = register_module("k", linear(hidden, hidden));
    v = register_module("v", linear(hidden, hidden));
    o = register_module("o", linear(hidden, hidden));
    mlp_norm = register_module("mlp_norm", RMSNorm(hidden));
    gate = register_module("gate", linear(hidden, ffn));
    up = register_module("up", linear(hidden, ffn));
    down = register_module("down", linear(ffn, hidden));
    const torch::Tensor inv = torch::pow(10000.0, -torch::arange(0, head_dim, 2, torch::kFloat) / double(head_dim));
    const torch::Tensor ang = torch::arange(0, seq, torch::kFloat).unsqueeze(1) * inv.unsqueeze(0);  // [L, D/2]
    cos_table = register_buffer("cos", torch::cat({ang.cos(), ang.cos()}, -1));                      // [L, D]
    sin_table = register_buffer("sin", torch::cat({ang.sin(), ang.sin()}, -1));
    causal = register_buffer("causal", torch::ones({seq, seq}, torch::kBool).triu(1));
  }

  // In the functional form's parameter order.
  std::vector<torch::Tensor> ordered() {
    return {attn_norm->weight, q->weight, k->weight, v->weight, o->weight,
            mlp_norm->weight,  gate->weight, up->weight, down->weight};
  }

  // x [T, hidden] with T = B * seq (equal-length sequences back to back).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& pos) {
    const int64_t t = x.size(0), b = t / seq;
    const torch::Tensor h = attn_norm(x);
    torch::Tensor attn;
    if (same) {
      const torch::Tensor qs = rope_from(q(h).view({t, heads, head_dim}), pos);
      const torch::Tensor ks = rope_from(k(h).view({t, heads, head_dim}), pos);
      const torch::Tensor vs = v(h).view({t, heads, head_dim});
      std::vector<torch::Tensor> outs;
      for (int64_t s = 0; s < b; ++s) {
        const torch::Tensor qq = qs.narrow(0, s * seq, seq).transpose(0, 1), kk = ks.narrow(0, s * seq, seq).transpose(0, 1),
                            vv = vs.narrow(0, s * seq, seq).transpose(0, 1);
        torch::Tensor sc = torch::matmul(qq, kk.transpose(1, 2)) * (1.0 / std::sqrt(double(head_dim)));
        sc = sc.masked_fill(torch::ones({seq, seq}, x.options().dtype(torch::kBool)).triu(1),
                            -std::numeric_limits<double>::infinity());
        outs.push_back(torch::matmul(sc.softmax(-1), vv).transpose(0, 1));
      }
      attn = torch::cat(outs, 0).reshape({t, heads * head_dim});
    } else {
      auto split = [&](const torch::Tensor& y) { return y.view({b, seq, heads, head_dim}).transpose(1, 2); };  // [B,H,L,D]
      const torch::Tensor qq = rope_cached(split(q(h))), kk = rope_cached(split(k(h))), vv = split(v(h));
      torch::Tensor sc = torch::matmul(qq, kk.transpose(-1, -2)) * (1.0 / std::sqrt(double(head_dim)));
      sc = sc.masked_fill(causal, -std::numeric_limits<double>::infinity());
      attn = torch::matmul(sc.softmax(-1), vv).transpose(1, 2).reshape({t, heads * head_dim});
    }
    const torch::Tensor a = x + o(attn);
    const torch::Tensor m = mlp_norm(a);
    return a + down(torch::silu(gate(m)) * up(m));
  }

  torch::Tensor rope_from(const torch::Tensor& x, const torch::Tensor& pos) const {
    const torch::Tensor inv = torch::pow(10000.0, -torch::arange(0, head_dim, 2, x.options()) / double(head_dim));
    const torch::Tensor ang = pos.to(x.scalar_type()).unsqueeze(1) * inv.unsqueeze(0);
    const torch::Tensor c = torch::cat({ang.cos(), ang.cos()}, -1).unsqueeze(1), s = torch::cat({ang.sin(), ang.sin()}, -1).unsqueeze(1);
    return x * c + rotate_half(x) * s;
  }
  torch::Tensor rope_cached(const torch::Tensor& x) const { return x * cos_table + rotate_half(x) * sin_table; }

  int64_t heads, head_dim, seq;
  bool same;
  RMSNorm attn_norm{nullptr}, mlp_norm{nullptr};
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr}, gate{nullptr}, up{nullptr}, down{nullptr};
  torch::Tensor cos_table, sin_table, causal;
};
TORCH_MODULE(Block);

// The dense LM as a LibTorch user writes it.
struct LMImpl : torch::nn::Module {
  LMImpl(const bench::peer_config& c) {
    embed = register_module("embed", torch::nn::Embedding(c.vocab, c.hidden));
    for (int64_t i = 0; i < c.layers; ++i)
      blocks.push_back(register_module("block" + std::to_string(i), Block(c.hidden, c.heads, c.ffn, c.seq, false)));
    norm = register_module("norm", RMSNorm(c.hidden));
    head = register_module("head", linear(c.hidden, c.vocab));
  }
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& pos) {
    torch::Tensor x = embed(tokens);
    for (auto& b : blocks) x = b(x, pos);
    return head(norm(x));
  }
  torch::nn::Embedding embed{nullptr};
  std::vector<Block> blocks;
  RMSNorm norm{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(LM);

void copy_into(const std::vector<torch::Tensor>& dst, const std::vector<torch::Tensor>& src) {
  torch::NoGradGuard g;
  require(dst.size() == src.size(), "parameter counts differ");
  for (size_t i = 0; i < dst.size(); ++i) {
    require(dst[i].sizes() == src[i].sizes(), "parameter shapes differ");
    dst[i].copy_(src[i]);
  }
}

double max_rel(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item<double>();
}

// ---- block: functional vs modules --------------------------------------------------------

struct block_case {
  text_decoder::dims d;
  bench::peer_config c;
  std::vector<torch::Tensor> w;  // functional parameters
  Block same{nullptr}, batched{nullptr};
  torch::Tensor x, gy, pos;
  nn::seq_layout layout;
  nn::context ctx;

  block_case() {
    d = bench::peer_dims().at<"lm">();
    const int64_t t = c.global_batch * c.seq;
    torch::manual_seed(0);
    for (const auto& s : nn::impl<text_decoder>::block_specs(d, 0))
      w.push_back((s.init == nn::init_kind::ones ? 1.0 + 0.1 * torch::randn(s.shape) : 0.02 * torch::randn(s.shape))
                      .set_requires_grad(true));
    same = Block(c.hidden, c.heads, c.ffn, c.seq, true);
    batched = Block(c.hidden, c.heads, c.ffn, c.seq, false);
    copy_into(same->ordered(), w);
    copy_into(batched->ordered(), w);
    x = torch::randn({t, c.hidden}).requires_grad_(true);
    gy = torch::randn({t, c.hidden});
    layout = nn::detail::uniform_layout(c.global_batch, c.seq, true);
    pos = layout.position_ids;
  }
  void clear() {
    for (auto* ps : {&w}) for (auto& p : *ps) p.mutable_grad().reset();
    for (auto& p : same->parameters()) p.mutable_grad().reset();
    for (auto& p : batched->parameters()) p.mutable_grad().reset();
    x.mutable_grad().reset();
  }
  torch::Tensor functional() { return nn::impl<text_decoder>::block(d, w, x, ctx, layout); }
  void run(int which) {
    torch::Tensor y = which == 0 ? functional() : which == 1 ? same->forward(x, pos) : batched->forward(x, pos);
    y.backward(gy);
  }
  // The three compute the same output and gradients.
  void check() {
    const torch::Tensor y0 = functional(), y1 = same->forward(x, pos), y2 = batched->forward(x, pos);
    require(max_rel(y1, y0) < 1e-5 && max_rel(y2, y0) < 1e-5, "block outputs differ");
    auto grads = [&](const torch::Tensor& y, const std::vector<torch::Tensor>& ps) {
      std::vector<torch::Tensor> wrt = ps;
      wrt.push_back(x);
      return torch::autograd::grad({y}, wrt, {gy});
    };
    const auto g0 = grads(y0, w), g1 = grads(y1, same->ordered()), g2 = grads(y2, batched->ordered());
    double worst = 0;
    for (size_t i = 0; i < g0.size(); ++i) worst = std::max({worst, max_rel(g1[i], g0[i]), max_rel(g2[i], g0[i])});
    require(worst < 1e-4, "block gradients differ (max relative " + std::to_string(worst) + ")");
    std::printf("bench_nn: block check: outputs max rel diff %.2e / %.2e, gradients %.2e\n", max_rel(y1, y0),
                max_rel(y2, y0), worst);
  }
};

// ---- attention core: blocked vs the per-sequence composition vs one batched [B, H, L, L] ------

// The per-sequence composition nn::varlen_attention replaced (autograd through every op).
torch::Tensor per_sequence_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     int64_t seq) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2)));
  std::vector<torch::Tensor> outs;
  for (int64_t b = 0; b < q.size(0); b += seq) {
    const torch::Tensor qs = q.narrow(0, b, seq).transpose(0, 1), ks = k.narrow(0, b, seq).transpose(0, 1),
                        vs = v.narrow(0, b, seq).transpose(0, 1);
    torch::Tensor s = torch::matmul(qs, ks.transpose(1, 2)) * scale;
    s = s.masked_fill(torch::ones({seq, seq}, q.options().dtype(torch::kBool)).triu(1),
                      -std::numeric_limits<double>::infinity());
    outs.push_back(torch::matmul(s.softmax(-1), vs).transpose(0, 1));
  }
  return torch::cat(outs, 0);
}

struct attention_case {
  bench::peer_config c;
  torch::Tensor q, k, v, gy, mask;
  nn::seq_layout layout;

  attention_case() {
    const int64_t t = c.global_batch * c.seq, d = c.hidden / c.heads;
    torch::manual_seed(0);
    q = torch::randn({t, c.heads, d}).requires_grad_(true);
    k = torch::randn({t, c.heads, d}).requires_grad_(true);
    v = torch::randn({t, c.heads, d}).requires_grad_(true);
    gy = torch::randn({t, c.heads, d});
    layout = nn::detail::uniform_layout(c.global_batch, c.seq, true);
    mask = torch::ones({c.seq, c.seq}, torch::kBool).triu(1);
  }
  torch::Tensor batched() {
    const int64_t b = c.global_batch, h = c.heads, d = c.hidden / c.heads;
    auto split = [&](const torch::Tensor& y) { return y.view({b, c.seq, h, d}).transpose(1, 2); };  // [B, H, L, D]
    torch::Tensor s = torch::matmul(split(q), split(k).transpose(-1, -2)) * (1.0 / std::sqrt(double(d)));
    s = s.masked_fill(mask, -std::numeric_limits<double>::infinity());
    return torch::matmul(s.softmax(-1), split(v)).transpose(1, 2).reshape(q.sizes());
  }
  torch::Tensor out(int which) {
    return which == 0 ? nn::varlen_attention(q, k, v, layout.cu_seqlens, true)
                      : which == 1 ? per_sequence_attention(q, k, v, c.seq) : batched();
  }
  void clear() {
    for (auto* t : {&q, &k, &v}) t->mutable_grad().reset();
  }
  void run(int which) { out(which).backward(gy); }
  void check() {
    double worst = 0;
    const torch::Tensor y0 = out(0);
    const auto g0 = torch::autograd::grad({y0}, {q, k, v}, {gy});
    for (int w = 1; w < 3; ++w) {
      const torch::Tensor y = out(w);
      worst = std::max(worst, max_rel(y, y0));
      const auto g = torch::autograd::grad({y}, {q, k, v}, {gy});
      for (size_t i = 0; i < g.size(); ++i) worst = std::max(worst, max_rel(g[i], g0[i]));
    }
    require(worst < 1e-5, "attention variants differ (max relative " + std::to_string(worst) + ")");
    std::printf("bench_nn: attention check: outputs and gradients max rel diff %.2e\n", worst);
  }
};

int threads() {
  const char* e = std::getenv("BENCH_NN_THREADS");
  return e ? std::atoi(e) : 2;
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Wall time per variant; with one intra-op thread also this thread's CPU
// time, which does all the work then and is not stretched when another
// process takes the core (the shared machine's main noise).
void time_alternating(benchmark::State& state, int variants, const std::function<void(int)>& run,
                      const std::function<void()>& clear, const std::vector<const char*>& names) {
  std::vector<std::vector<double>> t(static_cast<size_t>(variants)), cpu(static_cast<size_t>(variants));
  int64_t it = 0;
  for (auto _ : state) {
    for (int j = 0; j < variants; ++j) {
      const int v = static_cast<int>((j + it) % variants);  // rotate who goes first
      clear();
      const double c0 = thread_cpu_seconds();
      const auto t0 = clock_type::now();
      run(v);
      t[static_cast<size_t>(v)].push_back(std::chrono::duration<double>(clock_type::now() - t0).count());
      cpu[static_cast<size_t>(v)].push_back(thread_cpu_seconds() - c0);
    }
    state.SetIterationTime(t[0].back());
    ++it;
  }
  const double base = median(t[0]);
  for (int v = 0; v < variants; ++v) state.counters[std::string(names[static_cast<size_t>(v)]) + "_ms"] = 1e3 * median(t[static_cast<size_t>(v)]);
  for (int v = 1; v < variants; ++v)
    state.counters[std::string("vs_") + names[static_cast<size_t>(v)] + "_pct"] =
        100.0 * (base - median(t[static_cast<size_t>(v)])) / median(t[static_cast<size_t>(v)]);
  if (threads() != 1) return;
  const double cbase = median(cpu[0]);
  for (int v = 0; v < variants; ++v)
    state.counters[std::string(names[static_cast<size_t>(v)]) + "_cpu_ms"] = 1e3 * median(cpu[static_cast<size_t>(v)]);
  for (int v = 1; v < variants; ++v)
    state.counters[std::string("cpu_vs_") + names[static_cast<size_t>(v)] + "_pct"] =
        100.0 * (cbase - median(cpu[static_cast<size_t>(v)])) / median(cpu[static_cast<size_t>(v)]);
}

void block_fwd_bwd(benchmark::State& state) {
  static block_case bc;  // built (and checked) once per process
  static const bool checked = (bc.check(), true);
  (void)checked;
  for (int i = 0; i < 3; ++i) for (int v = 0; v < 3; ++v) bc.clear(), bc.run(v);  // warm up
  time_alternating(state, 3, [&](int v) { bc.run(v); }, [&] { bc.clear(); }, {"functional", "module", "batched"});
}

// ---- fused kernels vs the ATen compositions --------------------------------------------

struct kernel_case {
  torch::Tensor a, b, ga, x, w, gx, q, gq, pos, h, head, targets;
  nn::rope_table table;
  kernel_case() {
    torch::manual_seed(0);
    a = torch::randn({2048, 1024}).requires_grad_(true);
    b = torch::randn({2048, 1024}).requires_grad_(true);
    ga = torch::randn({2048, 1024});
    x = torch::randn({2048, 256}).requires_grad_(true);
    w = torch::randn({256}).requires_grad_(true);
    gx = torch::randn({2048, 256});
    q = torch::randn({2048, 4, 64}).requires_grad_(true);
    gq = torch::randn({2048, 4, 64});
    pos = torch::arange(0, 256, torch::kLong).repeat({8});
    table = nn::make_rope_table(pos, 64, torch::kFloat);
    h = torch::randn({2048, 256}).requires_grad_(true);
    head = (torch::randn({1024, 256}) * 0.05).requires_grad_(true);
    targets = torch::randint(0, 1024, {2048}, torch::kLong);
    require(nn::kernels::fused_available(), "the fused kernels need AVX2 + FMA");
  }
  void clear() {
    for (auto* t : {&a, &b, &x, &w, &q, &h, &head}) t->mutable_grad().reset();
  }
  static torch::Tensor rope_composed(const torch::Tensor& x, const torch::Tensor& pos) {
    const int64_t d = x.size(-1);
    const torch::Tensor inv = torch::pow(10000.0, -torch::arange(0, d, 2, x.options()) / double(d));
    const torch::Tensor ang = pos.to(x.scalar_type()).unsqueeze(1) * inv.unsqueeze(0);
    const torch::Tensor c = torch::cat({ang.cos(), ang.cos()}, -1).unsqueeze(1),
                        s = torch::cat({ang.sin(), ang.sin()}, -1).unsqueeze(1);
    return x * c + rotate_half(x) * s;
  }
  void run(int kernel, int fused) {
    switch (kernel) {
      case 0: (fused ? nn::kernels::silu_mul(a, b) : torch::silu(a) * b).backward(ga); break;
      case 1: (fused ? nn::rms_norm(x, w) : x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-6) * w).backward(gx); break;
      case 3:
        (fused ? nn::lm_loss_sum(h, head, targets)
               : torch::nn::functional::cross_entropy(torch::matmul(h, head.t()), targets,
                                                      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)))
            .backward();
        break;
      default: (fused ? nn::rope(q, table) : rope_composed(q, pos)).backward(gq); break;
    }
  }
};

template <int Kernel>
void kernel_fwd_bwd(benchmark::State& state) {
  static kernel_case kc;
  for (int i = 0; i < 3; ++i) for (int v = 0; v < 2; ++v) kc.clear(), kc.run(Kernel, 1 - v);  // warm up
  time_alternating(state, 2, [&](int v) { kc.run(Kernel, 1 - v); }, [&] { kc.clear(); }, {"fused", "aten"});
}

void attention_fwd_bwd(benchmark::State& state) {
  static attention_case ac;
  static const bool checked = (ac.check(), true);
  (void)checked;
  for (int i = 0; i < 3; ++i) for (int v = 0; v < 3; ++v) ac.clear(), ac.run(v);  // warm up
  time_alternating(state, 3, [&](int v) { ac.run(v); }, [&] { ac.clear(); }, {"blocked", "per_sequence", "batched"});
}

// ---- training step: veomni at world 1 vs a hand-written LibTorch loop ----------------------

template <class R>
struct step_case {
  using G = models::dense_lm;
  bench::peer_config c;
  G::dims d = bench::peer_dims();
  comm::gloo_mesh mesh{mesh_shape{}, comm::launch_env{}};
  parallel::parallel_model<G, R, comm::gloo_mesh> model{d, mesh, parallel::options{.seed = 1234}};
  train::adamw optim{model.parameters(), model.decay_masks(), {.lr = 1e-3, .eps = 1e-8, .weight_decay = 0.1}};
  LM lm{c};
  std::unique_ptr<torch::optim::AdamW> torch_optim;
  nn::batch b;
  torch::Tensor tokens, targets, pos;

  step_case() {
    // the hand-written model starts from veomni's initial weights
    nn::local_params<G> init(d, 1234);
    const auto& ps = init.parameters();
    std::vector<torch::Tensor> dst{lm->embed->weight};
    for (auto& blk : lm->blocks) for (auto& p : blk->ordered()) dst.push_back(p);
    dst.push_back(lm->norm->weight);
    dst.push_back(lm->head->weight);
    // init order: root (embed, norm, head), then blocks
    std::vector<torch::Tensor> src{ps[0]};
    for (size_t i = 3; i < ps.size(); ++i) src.push_back(ps[i]);
    src.push_back(ps[1]);
    src.push_back(ps[2]);
    copy_into(dst, src);
    std::vector<torch::Tensor> decay, no_decay;
    for (auto& p : lm->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
    torch::optim::AdamWOptions o(1e-3);
    o.betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1);
    std::vector<torch::optim::OptimizerParamGroup> groups{torch::optim::OptimizerParamGroup(decay),
                                                          torch::optim::OptimizerParamGroup(no_decay)};
    torch_optim = std::make_unique<torch::optim::AdamW>(groups, o);
    static_cast<torch::optim::AdamWOptions&>(torch_optim->param_groups()[1].options()).weight_decay(0.0);
    b = parallel::local_batch(bench::peer_batch(0), mesh_shape{}, 0, -1, -1);
    tokens = b.tokens.view({c.global_batch * c.seq});
    targets = b.targets;
    pos = b.position_ids;
  }
  double veomni_step() {
    model.zero_grad();
    const auto st = model.forward_backward(b);
    model.optimizer_step([&](double n) { optim.step(1e-3, train::clip_scale(n, 1.0)); });
    return st.loss;
  }
  double torch_step() {
    torch_optim->zero_grad();
    const torch::Tensor loss = torch::nn::functional::cross_entropy(lm(tokens, pos), targets);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(lm->parameters(), 1.0);
    torch_optim->step();
    return loss.item<double>();
  }
  void check() {  // first step from the same weights gives the same loss
    const double a = veomni_step(), t = torch_step();
    require(std::abs(a - t) <= 1e-5 * std::abs(t), "first-step losses differ: veomni " + std::to_string(a) +
                                                       ", libtorch " + std::to_string(t));
    std::printf("bench_nn: train step check: first-step loss veomni %.7f, libtorch %.7f\n", a, t);
  }
};

template <class R>
void train_step(benchmark::State& state) {
  static step_case<R> sc;
  static const bool checked = (sc.check(), true);
  (void)checked;
  for (int i = 0; i < 2; ++i) sc.veomni_step(), sc.torch_step();
  time_alternating(state, 2, [&](int v) { v == 0 ? sc.veomni_step() : sc.torch_step(); }, [] {}, {"veomni", "libtorch"});
}

using ddp_recipe = recipe<apply<"lm", Shard<DDP>>>;
using fsdp_recipe = recipe<apply<"lm", Shard<FSDP>>>;

}  // namespace

BENCHMARK(kernel_fwd_bwd<0>)->Name("kernels/silu_mul")->Iterations(100)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(kernel_fwd_bwd<1>)->Name("kernels/rms_norm")->Iterations(200)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(kernel_fwd_bwd<2>)->Name("kernels/rope")->Iterations(200)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(kernel_fwd_bwd<3>)->Name("kernels/lm_loss")->Iterations(100)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(attention_fwd_bwd)->Name("attention/fwd_bwd")->Iterations(60)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(block_fwd_bwd)->Name("block/fwd_bwd")->Iterations(60)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(train_step<ddp_recipe>)->Name("train_step/ddp_recipe_world1")->Iterations(30)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(train_step<fsdp_recipe>)->Name("train_step/fsdp_recipe_world1")->Iterations(30)->UseManualTime()->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  at::set_num_threads(threads());  // one process on two cores: 2 (BENCH_NN_THREADS=1 for CPU-time counters)
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  try {
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  benchmark::Shutdown();
  return 0;
}
