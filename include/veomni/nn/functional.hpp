#pragma once
// The math of the modality components as plain functions of (parameters,
// inputs). No module state: parallel policies decide where parameters live
// and hand them in.
//
// Packed sequences: a batch is one row of T tokens holding several samples
// back to back, described by cumulative lengths cu_seqlens = [0, l0, l0+l1,
// ...] and per-token position ids restarting at 0 in each sample. Attention
// never crosses a sample boundary.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <typeinfo>
#include <vector>

#include "flash_attention.hpp"
#include "kernels.hpp"

namespace veomni::nn {

// y = x / sqrt(mean(x^2) + eps) * w over the last dim. One autograd function:
// forward keeps x_hat = x r (r = 1 / rms per row) and r; backward
//   dw = sum_rows(dy * x_hat),  dx = r * (dy w - x_hat * mean(dy w * x_hat)).
class rms_norm_fn : public torch::autograd::Function<rms_norm_fn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            double eps) {
    const auto n = static_cast<double>(x.size(-1));
    // sum of squares by a vector norm: one pass, no x^2 temporary
    const at::Tensor r = at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/true).square_().div_(n).add_(eps).rsqrt_();
    const at::Tensor x_hat = x * r;
    ctx->save_for_backward({x_hat, r, weight});
    return x_hat * weight;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x_hat = saved[0], &r = saved[1], &weight = saved[2];
    const at::Tensor& dy = grads[0];
    at::Tensor dw;
    if (weight.requires_grad()) dw = (dy * x_hat).reshape({-1, x_hat.size(-1)}).sum(0).reshape(weight.sizes());
    at::Tensor dx = dy * weight;
    const at::Tensor c = (dx * x_hat).mean(-1, /*keepdim=*/true);
    dx.addcmul_(x_hat, c, -1).mul_(r);
    return {dx, dw, at::Tensor()};
  }
};

inline at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps = 1e-6) {
  if (kernels::rms_norm_fusable(x, weight)) return kernels::rms_norm_fused_fn::apply(x, weight, eps);
  return rms_norm_fn::apply(x, weight, eps);
}

// Rotary embedding (rotate-half form). A table holds, for positions pos [T]
// and head dim D, cos and sin of pos * theta^(-2i/D), i < D/2, as [T, 1, D/2]:
// built once per batch and layout, then applied to q and k of every layer.
// theta is the model's rope_theta (Llama 2: 10000, Qwen2: 1e6).
struct rope_table {
  at::Tensor pos, cos, sin;
  int64_t dim = 0;
  double theta = 10000.0;
};

inline rope_table make_rope_table(const at::Tensor& pos, int64_t d, at::ScalarType type, double theta = 10000.0) {
  TORCH_CHECK(d % 2 == 0, "veomni::nn::rope: head dim ", d, " must be even");
  const auto opts = pos.options().dtype(type);  // on the positions' device
  const at::Tensor inv = at::pow(theta, -at::arange(0, d, 2, opts) / static_cast<double>(d));  // [D/2]
  const at::Tensor ang = pos.to(type).unsqueeze(1) * inv.unsqueeze(0);                      // [T, D/2]
  return {pos, ang.cos().unsqueeze(1), ang.sin().unsqueeze(1), d, theta};
}

// y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin (halves of the head dim);
// backward: dx1 = g1 cos + g2 sin, dx2 = g2 cos - g1 sin.
class rope_fn : public torch::autograd::Function<rope_fn> {
 public:
  static at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, double sign) {
    if (kernels::rope_fusable(x, cos, sin)) return kernels::rope_rows(x, cos, sin, static_cast<float>(sign));
    const int64_t h = x.size(-1) / 2;
    const at::Tensor x1 = x.narrow(-1, 0, h), x2 = x.narrow(-1, h, h);
    at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
    at::Tensor y1 = y.narrow(-1, 0, h), y2 = y.narrow(-1, h, h);
    at::mul_out(y1, x1, cos).addcmul_(x2, sin, -sign);
    at::mul_out(y2, x2, cos).addcmul_(x1, sin, sign);
    return y;
  }
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return rotate(x, cos, sin, 1.0);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {rotate(grads[0], saved[0], saved[1], -1.0), at::Tensor(), at::Tensor()};
  }
};

// x [T, H, D]
inline at::Tensor rope(const at::Tensor& x, const rope_table& table) {
  TORCH_CHECK(x.size(-1) == table.dim && x.size(0) == table.cos.size(0), "veomni::nn::rope: x ", x.sizes(),
              " does not match a table for ", table.cos.size(0), " positions and head dim ", table.dim);
  // x's dtype, and x's device (an encoder's positions are made on the host)
  return rope_fn::apply(x, table.cos.to(x.device(), x.scalar_type()), table.sin.to(x.device(), x.scalar_type()));
}

// Rotary embedding on x [T, H, D] at positions pos [T].
inline at::Tensor rope(const at::Tensor& x, const at::Tensor& pos, double theta = 10000.0) {
  return rope(x, make_rope_table(pos, x.size(-1), x.scalar_type(), theta));
}

// Attention over packed variable-length sequences.
//   q [T, Hq, D], k and v [T, Hkv, D] with Hq a multiple of Hkv (grouped-query).
// Each sample (a segment of cu_seqlens) attends only to itself; with
// `causal`, token i sees tokens j <= i of its sample. Returns [T, Hq, D].
//
// How it is computed (one autograd function, attention_fn below): fp32 on
// the CPU with AVX2 and a CBLAS, flash attention in tiles of `block` queries
// and keys (0: chosen per sample length, flash_tile), keeping only each row's
// log-sum-exp for backward (memory O(T)).
// Otherwise (other dtypes and devices) the ATen path: consecutive samples of
// equal length form a run, laid out [samples x heads, L, D] so that one
// batched matmul serves them all; a causal run is cut into query blocks of
// `block` rows (0: 64), and block i only multiplies against keys [0, end of
// block i): the masked triangle above the diagonal blocks is never computed (at
// L = 4 blocks, 10 of 16 score tiles). That path keeps the softmax
// probabilities for backward (memory O(L^2) per sample and head) and uses
// dS = P * (dP - rowsum(dO * O)).
namespace detail {
// Consecutive samples of equal length: tokens [begin, begin + count * len).
struct attention_run {
  int64_t begin, count, len;
};
inline std::vector<attention_run> attention_runs(const at::Tensor& cu_seqlens) {
  const at::Tensor cu = cu_seqlens.to(at::TensorOptions().device(at::kCPU).dtype(at::kLong)).contiguous();  // read on the host
  const int64_t* c = cu.data_ptr<int64_t>();
  std::vector<attention_run> out;
  for (int64_t s = 0; s + 1 < cu.numel(); ++s) {
    const int64_t len = c[s + 1] - c[s];
    if (len == 0) continue;
    if (!out.empty() && out.back().len == len && out.back().begin + out.back().count * len == c[s])
      ++out.back().count;
    else
      out.push_back({c[s], 1, len});
  }
  return out;
}
// Rows of x [T, H, D] of run r as [count * H, len, D] (contiguous), and back into out.
inline at::Tensor to_run(const at::Tensor& x, const attention_run& r) {
  const int64_t h = x.size(1), d = x.size(2);
  return x.narrow(0, r.begin, r.count * r.len)
      .view({r.count, r.len, h, d})
      .permute({0, 2, 1, 3})
      .reshape({r.count * h, r.len, d});
}
// Whether the runs cover all t tokens (then outputs need no zero fill).
inline bool covers(const std::vector<attention_run>& runs, int64_t t) {
  if (runs.empty()) return t == 0;
  return runs.front().begin == 0 && runs.back().begin + runs.back().count * runs.back().len == t;
}
inline at::Tensor run_output(const at::Tensor& like, bool covered) {
  return covered ? at::empty_like(like, at::MemoryFormat::Contiguous) : at::zeros_like(like, at::MemoryFormat::Contiguous);
}
inline void from_run(at::Tensor& out, const at::Tensor& y, const attention_run& r) {
  const int64_t h = out.size(1), d = out.size(2);
  out.narrow(0, r.begin, r.count * r.len).view({r.count, r.len, h, d}).copy_(y.view({r.count, h, r.len, d}).permute({0, 2, 1, 3}));
}

// Query rows [q0, q0 + m) of a sample of length len against keys [0, n);
// offset: where its probabilities [m, n] start in the (sample, head)'s share.
struct attention_block {
  int64_t q0, m, n, offset;
};
inline std::vector<attention_block> attention_blocks(int64_t len, bool causal, int64_t block, int64_t& total) {
  std::vector<attention_block> out;
  const int64_t step = causal ? (block > 0 ? block : 64) : len;  // 0: the default
  total = 0;
  for (int64_t q0 = 0; q0 < len; q0 += step) {
    const int64_t m = std::min(step, len - q0), n = causal ? q0 + m : len;
    out.push_back({q0, m, n, total});
    total += m * n;
  }
  return out;
}

// The fused fp32 path: flash attention (nn/flash_attention.hpp), every
// (sample, head) read and written in place in the [T, H, D] tensors (its rows
// H * D apart, as CBLAS's leading dimension), in tiles of `block` queries and
// keys; memory O(T) (the per-row log-sum-exp), no [samples x heads, L, D]
// copies. One (sample, head) per at::parallel_for task.
inline bool attention_fusable(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return kernels::fused_available() && kernels::detail::sgemm() != nullptr && q.scalar_type() == at::kFloat &&
         k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat && q.device().is_cpu() &&
         q.sizes() == k.sizes() && q.sizes() == v.sizes() && q.size(0) <= INT32_MAX && q.size(1) * q.size(2) <= INT32_MAX;
}
struct attention_task {
  std::size_t run;
  int64_t bh;  // sample * heads + head within the run
};
inline std::vector<attention_task> attention_tasks(const std::vector<attention_run>& runs, int64_t heads) {
  std::vector<attention_task> out;
  for (std::size_t i = 0; i < runs.size(); ++i)
    for (int64_t bh = 0; bh < runs[i].count * heads; ++bh) out.push_back({i, bh});
  return out;
}
#ifdef VEOMNI_KERNELS_AVX2
// Flash attention (nn/flash_attention.hpp) over every (sample, head): out
// written; returns the log-sum-exp of each row, [H, T] (one head's tokens
// contiguous), all that backward keeps besides q, k, v and out.
// The tile of a run: `block` if given (> 0), else a quarter of its samples'
// length within [64, 256] (short samples: small tiles skip more of the
// causal triangle; long ones: larger GEMMs; `bench_long attention L H D TILE`
// compares tiles).
inline int64_t flash_tile(int64_t block, int64_t len) {
  return block > 0 ? block : std::clamp<int64_t>(len / 4, 64, 256);
}
inline int64_t largest_tile(int64_t block, const std::vector<attention_run>& runs) {
  int64_t t = 1;
  for (const auto& r : runs) t = std::max(t, flash_tile(block, r.len));
  return t;
}

inline at::Tensor attention_forward_flash(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                                          const std::vector<attention_run>& runs, bool causal, int64_t tile,
                                          float scale) {
  const int64_t t = q.size(0), h = q.size(1), d = q.size(2), ld = h * d;
  at::Tensor lse = at::zeros({h, t}, q.options());
  // one task per query tile of each (sample, head), the most work first
  struct tile_task {
    std::size_t run;
    int64_t bh, q0, work;
  };
  std::vector<tile_task> tasks;
  for (const auto& [run, bh] : attention_tasks(runs, h)) {
    const int64_t len = runs[run].len, bq = flash_tile(tile, len);
    for (int64_t q0 = 0; q0 < len; q0 += bq) tasks.push_back({run, bh, q0, causal ? q0 + std::min(bq, len - q0) : len});
  }
  const int64_t most = largest_tile(tile, runs);
  std::stable_sort(tasks.begin(), tasks.end(), [](const tile_task& a, const tile_task& b) { return a.work > b.work; });
  const float *pq = q.data_ptr<float>(), *pk = k.data_ptr<float>(), *pv = v.data_ptr<float>();
  float *po = out.data_ptr<float>(), *pl = lse.data_ptr<float>();
  for_each_dynamic(
      static_cast<int64_t>(tasks.size()),
      [&] { return std::vector<float>(static_cast<std::size_t>(most * most + 3 * most)); },
      [&](int64_t i, std::vector<float>& scratch) {
        const tile_task& x = tasks[static_cast<std::size_t>(i)];
        const attention_run& r = runs[x.run];
        const int64_t first = r.begin + x.bh / h * r.len, base = first * ld + x.bh % h * d, bq = flash_tile(tile, r.len);
        flash_forward_tile(pq + base, pk + base, pv + base, po + base, pl + x.bh % h * t + first, x.q0,
                           std::min(bq, r.len - x.q0), r.len, d, ld, causal, bq, scale, scratch.data(),
                           scratch.data() + bq * bq);
      });
  return lse;
}

// Its backward: dq, dk, dv written from g (= dOut), q, k, v, out and lse.
inline void attention_backward_flash(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& o, const at::Tensor& lse, const std::vector<attention_run>& runs,
                                     bool causal, int64_t tile, float scale, at::Tensor& dq, at::Tensor& dk,
                                     at::Tensor& dv) {
  const int64_t t = q.size(0), h = q.size(1), d = q.size(2), ld = h * d;
  int64_t longest = 0;
  for (const auto& r : runs) longest = std::max(longest, r.len);
  // one task per (sample, head), the longest first: each task owns its rows
  // of dq, dk, dv and adds into them in a fixed order (deterministic)
  auto tasks = attention_tasks(runs, h);
  std::stable_sort(tasks.begin(), tasks.end(),
                   [&](const attention_task& a, const attention_task& b) { return runs[a.run].len > runs[b.run].len; });
  const float *pg = g.data_ptr<float>(), *pq = q.data_ptr<float>(), *pk = k.data_ptr<float>(), *pv = v.data_ptr<float>(),
              *po = o.data_ptr<float>(), *pl = lse.data_ptr<float>();
  float *pdq = dq.data_ptr<float>(), *pdk = dk.data_ptr<float>(), *pdv = dv.data_ptr<float>();
  const int64_t most = largest_tile(tile, runs);
  for_each_dynamic(
      static_cast<int64_t>(tasks.size()),
      [&] { return std::vector<float>(static_cast<std::size_t>(2 * most * most + longest)); },
      [&](int64_t i, std::vector<float>& scratch) {
        const attention_task& x = tasks[static_cast<std::size_t>(i)];
        const attention_run& r = runs[x.run];
        const int64_t first = r.begin + x.bh / h * r.len, base = first * ld + x.bh % h * d, b = flash_tile(tile, r.len);
        flash_backward_one(pg + base, pq + base, pk + base, pv + base, po + base, pl + x.bh % h * t + first,
                           pdq + base, pdk + base, pdv + base, r.len, d, ld, causal, b, b, scale, scratch.data(),
                           scratch.data() + b * b, scratch.data() + 2 * b * b);
      });
}
#endif
}  // namespace detail

class attention_fn : public torch::autograd::Function<attention_fn> {
 public:
  // q, k, v [T, H, D] (the same heads); cu_seqlens as above.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q_in, const at::Tensor& k_in,
                            const at::Tensor& v_in, const at::Tensor& cu_seqlens, bool causal, int64_t block) {
    const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2)));
    const auto runs = detail::attention_runs(cu_seqlens);
    at::Tensor out = detail::run_output(q, detail::covers(runs, q.size(0)));  // tokens of no sample: zeros
    std::vector<int64_t> meta;  // per run: begin, count, len
    for (const auto& r : runs) meta.insert(meta.end(), {r.begin, r.count, r.len});
    ctx->saved_data["meta"] = meta;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["block"] = block;
#ifdef VEOMNI_KERNELS_AVX2
    if (detail::attention_fusable(q, k, v)) {
      const at::Tensor lse = detail::attention_forward_flash(q, k, v, out, runs, causal, block, static_cast<float>(scale));
      ctx->save_for_backward({q, k, v, out, lse});
      ctx->saved_data["fused"] = true;
      return out;
    }
#endif
    ctx->saved_data["fused"] = false;
    std::vector<at::Tensor> saved;  // per run: q, k, v, o, then each query block's probabilities
    std::map<int64_t, at::Tensor> upper;  // [m, m] strictly upper triangles, by m
    for (const auto& r : runs) {
      const at::Tensor qr = detail::to_run(q, r), kr = detail::to_run(k, r), vr = detail::to_run(v, r);
      at::Tensor o = at::empty_like(qr);
      saved.insert(saved.end(), {qr, kr, vr, o});
      int64_t total = 0;
      for (const auto& [q0, m, n, offset] : detail::attention_blocks(r.len, causal, block, total)) {
        at::Tensor s = at::empty({qr.size(0), m, n}, qr.options());
        kernels::gemm_batched(s, qr.narrow(1, q0, m), false, kr.narrow(1, 0, n), true, scale, 0);
        if (causal) {
          auto& u = upper[m];
          if (!u.defined()) u = at::ones({m, m}, q.options().dtype(at::kBool)).triu(1);
          s.narrow(2, q0, m).masked_fill_(u, -std::numeric_limits<double>::infinity());
        }
        at::Tensor p = s.softmax(-1);
        at::Tensor o_block = o.narrow(1, q0, m);
        kernels::gemm_batched(o_block, p, false, vr.narrow(1, 0, n), false, 1, 0);
        saved.push_back(p);
      }
      detail::from_run(out, o, r);
    }
    ctx->save_for_backward(saved);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto meta = ctx->saved_data["meta"].toIntVector();
    const bool causal = ctx->saved_data["causal"].toBool();
    const int64_t block = ctx->saved_data["block"].toInt();
    const at::Tensor g = grads[0].contiguous();
    const double scale = 1.0 / std::sqrt(static_cast<double>(g.size(2)));
    std::vector<detail::attention_run> runs;
    for (std::size_t i = 0; i + 2 < meta.size(); i += 3) runs.push_back({meta[i], meta[i + 1], meta[i + 2]});
    const bool covered = detail::covers(runs, g.size(0));
    at::Tensor dq = detail::run_output(g, covered), dk = detail::run_output(g, covered),
               dv = detail::run_output(g, covered);
#ifdef VEOMNI_KERNELS_AVX2
    if (ctx->saved_data["fused"].toBool()) {
      detail::attention_backward_flash(g, saved[0], saved[1], saved[2], saved[3], saved[4], runs, causal, block,
                                       static_cast<float>(scale), dq, dk, dv);
      return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
    }
#endif
    std::size_t at_saved = 0;
    for (const auto& r : runs) {
      const at::Tensor &qr = saved[at_saved], &kr = saved[at_saved + 1], &vr = saved[at_saved + 2],
                       &o = saved[at_saved + 3];
      at_saved += 4;
      const at::Tensor go = detail::to_run(g, r);
      const at::Tensor rows = (go * o).sum(-1, /*keepdim=*/true);  // rowsum(dO * O) = rowsum(dP * P)
      at::Tensor gq = at::empty_like(qr), gk = at::zeros_like(kr), gv = at::zeros_like(vr);
      int64_t total = 0;
      for (const auto& [q0, m, n, offset] : detail::attention_blocks(r.len, causal, block, total)) {
        const at::Tensor& p = saved[at_saved++];
        const at::Tensor gi = go.narrow(1, q0, m), kn = kr.narrow(1, 0, n);
        at::Tensor gv_keys = gv.narrow(1, 0, n), gk_keys = gk.narrow(1, 0, n), gq_block = gq.narrow(1, q0, m);
        kernels::gemm_batched(gv_keys, p, true, gi, false, 1, 1);  // dV += P^T dO
        at::Tensor ds = at::empty({qr.size(0), m, n}, qr.options());
        kernels::gemm_batched(ds, gi, false, vr.narrow(1, 0, n), true, 1, 0);  // dP = dO V^T
        ds.sub_(rows.narrow(1, q0, m)).mul_(p);                               // dS (zero where masked)
        kernels::gemm_batched(gq_block, ds, false, kn, false, scale, 0);       // dQ = dS K / sqrt(d)
        kernels::gemm_batched(gk_keys, ds, true, qr.narrow(1, q0, m), false, scale, 1);  // dK += dS^T Q / sqrt(d)
      }
      detail::from_run(dq, gq, r);
      detail::from_run(dk, gk, r);
      detail::from_run(dv, gv, r);
    }
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

inline at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& cu_seqlens, bool causal, int64_t block = 0) {
  const int64_t hq = q.size(1), hkv = k.size(1);
  TORCH_CHECK(hq % hkv == 0, "veomni::nn::varlen_attention: ", hq, " query heads are not a multiple of ", hkv,
              " kv heads");
  if (hkv == hq) return attention_fn::apply(q, k, v, cu_seqlens, causal, block);
  // kv heads repeated for their query group (their gradients summed back by autograd)
  return attention_fn::apply(q, k.repeat_interleave(hq / hkv, 1), v.repeat_interleave(hq / hkv, 1), cu_seqlens, causal,
                             block);
}

// Parameters laid one after another from the start of a flat buffer, as
// views of it. When autograd is to differentiate them they come out of one
// autograd node, whose backward writes their gradients into one fresh flat
// gradient: zero where no parameter lies (padding) or none got a gradient.
// (Views made with narrow() each have their own backward, which allocates a
// zero-filled tensor of the whole flat and autograd adds them all up: two
// passes over the flat per parameter.)
//
// With direct gradients (split_flat(..., true), what the parallel runtime
// asks for), ops that produce a weight's gradient by a GEMM (nn::project, the
// LM loss's head) write it straight into its place in that flat gradient
// (grad_slot) and hand autograd no tensor for it: the node then skips that
// parameter's copy. The views' own gradients are then not what autograd sees
// for them (only the flat's is): ask for the flat's.
struct flat_grad_sink : torch::CustomClassHolder {
  std::vector<int64_t> offsets;
  std::vector<std::vector<int64_t>> shapes;
  int64_t numel = 0;
  at::TensorOptions options;
  bool direct = false;        // ops may write into it (split_flat(..., true))
  at::Tensor flat;            // allocated by the first write; backward takes it
  std::vector<char> written;  // per parameter: its place holds a gradient

  at::Tensor place(std::size_t i) {
    if (!flat.defined()) flat = at::empty({numel}, options);
    return flat.narrow(0, offsets[i], c10::multiply_integers(shapes[i])).view(shapes[i]);
  }
};

class split_flat_fn : public torch::autograd::Function<split_flat_fn> {
 public:
  using shape_list = std::vector<std::vector<int64_t>>;
  static std::vector<at::Tensor> views(const at::Tensor& flat, const shape_list& shapes) {
    std::vector<at::Tensor> out;
    int64_t off = 0;
    for (const auto& shape : shapes) {
      const int64_t n = c10::multiply_integers(shape);
      out.push_back(flat.narrow(0, off, n).view(shape));
      off += n;
    }
    return out;
  }
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& flat,
                                                const shape_list& shapes, bool direct) {
    ctx->set_materialize_grads(false);
    auto sink = c10::make_intrusive<flat_grad_sink>();
    sink->shapes = shapes;
    sink->numel = flat.numel();
    sink->options = flat.options().requires_grad(false);
    sink->written.assign(shapes.size(), 0);
    sink->direct = direct;
    int64_t off = 0;
    for (const auto& shape : shapes) {
      sink->offsets.push_back(off);
      off += c10::multiply_integers(shape);
    }
    ctx->saved_data["sink"] = at::IValue::make_capsule(std::move(sink));
    return views(flat, shapes);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto sink = c10::static_intrusive_pointer_cast<flat_grad_sink>(ctx->saved_data["sink"].toCapsule());
    // what the ops wrote is this backward's: a second backward (retain_graph) starts afresh
    at::Tensor flat = std::move(sink->flat);
    std::vector<char> written(sink->shapes.size(), 0);
    std::swap(written, sink->written);
    const auto any = std::find_if(g.begin(), g.end(), [](const at::Tensor& t) { return t.defined(); });
    if (any == g.end() && !flat.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    if (!flat.defined()) flat = at::empty({sink->numel}, any->options());
    int64_t end = 0;
    for (std::size_t i = 0; i < sink->shapes.size(); ++i) {
      const int64_t n = c10::multiply_integers(sink->shapes[i]);
      at::Tensor part = flat.narrow(0, sink->offsets[i], n);
      if (g[i].defined())
        written[i] ? part.add_(g[i].reshape({-1})) : part.copy_(g[i].reshape({-1}));
      else if (!written[i])
        part.zero_();
      end = sink->offsets[i] + n;
    }
    if (end < sink->numel) flat.narrow(0, end, sink->numel - end).zero_();
    return {flat, at::Tensor(), at::Tensor()};
  }
};
inline std::vector<at::Tensor> split_flat(const at::Tensor& flat, const std::vector<std::vector<int64_t>>& shapes,
                                          bool direct_grads = false) {
  if (shapes.empty()) return {};
  int64_t total = 0;
  for (const auto& shape : shapes) total += c10::multiply_integers(shape);
  TORCH_CHECK(flat.dim() == 1 && total <= flat.numel(), "veomni::nn::split_flat: parameters of ", total,
              " elements do not fit a flat buffer of shape ", flat.sizes());
  if (flat.requires_grad() && at::GradMode::is_enabled()) return split_flat_fn::apply(flat, shapes, direct_grads);
  return split_flat_fn::views(flat, shapes);
}

// Where a weight's gradient may be written directly: its place in the flat
// gradient of the split_flat (with direct gradients) it is a view of, or
// nothing (any other tensor, or a view of a view). Ops keep it in their
// autograd context (save / load) and write with mm / scaled; the first write
// sets the place, later ones (a weight used twice) add.
class grad_slot {
 public:
  static grad_slot of(const at::Tensor& w) {
    const auto fn = w.grad_fn();
    if (!fn || typeid(*fn) != typeid(torch::autograd::CppNode<split_flat_fn>)) return {};
    auto& data = static_cast<torch::autograd::CppNode<split_flat_fn>&>(*fn).ctx_.saved_data;
    grad_slot s;
    s.sink_ = c10::static_intrusive_pointer_cast<flat_grad_sink>(data["sink"].toCapsule());
    s.index_ = w.output_nr();
    if (!s.sink_->direct || s.index_ >= s.sink_->shapes.size() || w.sizes() != at::IntArrayRef(s.sink_->shapes[s.index_])) return {};
    return s;
  }
  explicit operator bool() const { return static_cast<bool>(sink_); }

  void save(torch::autograd::AutogradContext* ctx, const std::string& key) const {
    if (!sink_) return;
    ctx->saved_data[key + ".sink"] = at::IValue::make_capsule(sink_);
    ctx->saved_data[key + ".index"] = static_cast<int64_t>(index_);
  }
  static grad_slot load(torch::autograd::AutogradContext* ctx, const std::string& key) {
    const auto it = ctx->saved_data.find(key + ".sink");
    if (it == ctx->saved_data.end()) return {};
    grad_slot s;
    s.sink_ = c10::static_intrusive_pointer_cast<flat_grad_sink>(it->second.toCapsule());
    s.index_ = static_cast<std::size_t>(ctx->saved_data[key + ".index"].toInt());
    return s;
  }

  // place (+)= a b
  void mm(const at::Tensor& a, const at::Tensor& b) {
    at::Tensor p = sink_->place(index_);
    if (sink_->written[index_])
      p.addmm_(a, b);
    else
      at::mm_out(p, a, b);
    sink_->written[index_] = 1;
  }
  // place (+)= t * scale
  void scaled(const at::Tensor& t, const at::Tensor& scale) {
    at::Tensor p = sink_->place(index_);
    if (sink_->written[index_])
      p.add_(t * scale);
    else
      at::mul_out(p, t, scale);
    sink_->written[index_] = 1;
  }

 private:
  c10::intrusive_ptr<flat_grad_sink> sink_;
  std::size_t index_ = 0;
};

// y = x w^T over the last dim of x (no bias). Backward: dx = dy w, and
// dw = dy^T x written into its place in the flat gradient when w is a
// split_flat view with direct gradients (grad_slot); else a tensor of its own.
class project_fn : public torch::autograd::Function<project_fn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    ctx->save_for_backward({x, w});
    grad_slot::of(w).save(ctx, "w");
    auto sizes = x.sizes().vec();
    sizes.back() = w.size(0);
    return at::mm(x.reshape({-1, x.size(-1)}), w.t()).view(sizes);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1];
    const at::Tensor dy = grads[0].reshape({-1, w.size(0)});
    at::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) dx = at::mm(dy, w).view(x.sizes());
    if (ctx->needs_input_grad(1)) {
      const at::Tensor x2 = x.reshape({-1, x.size(-1)});
      if (grad_slot slot = grad_slot::load(ctx, "w"))
        slot.mm(dy.t(), x2);
      else
        dw = at::mm(dy.t(), x2);
    }
    return {dx, dw};
  }
};
inline at::Tensor project(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), "veomni::nn::project: input of shape ",
              x.sizes(), " does not fit a weight of shape ", w.sizes());
  if (!(x.requires_grad() || w.requires_grad()) || !at::GradMode::is_enabled()) return at::matmul(x, w.t());
  return project_fn::apply(x, w);
}

// 1-D convolution over frames, channels last: x [N, F, C], w [O, C, k] ->
// [N, F', O] with F' = (F + 2 pad - k) / stride + 1. Written as unfold +
// matmul: Debian's LibTorch 1.13 computes wrong fp32 gradients for two
// stacked at::conv1d (its oneDNN path; see tests/nn), and this form is exact.
inline at::Tensor conv1d_frames(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                                int64_t pad) {
  const int64_t n = x.size(0), c = x.size(2), o = w.size(0), k = w.size(2);
  const at::Tensor padded = at::constant_pad_nd(x, {0, 0, pad, pad});           // [N, F + 2 pad, C]
  const at::Tensor cols = padded.unfold(1, k, stride);                           // [N, F', C, k]
  const int64_t f = cols.size(1);
  const at::Tensor y = at::matmul(cols.reshape({n * f, c * k}), w.reshape({o, c * k}).t()) + b;
  return y.reshape({n, f, o});
}

inline at::Tensor swiglu(const at::Tensor& x, const at::Tensor& w_gate, const at::Tensor& w_up,
                         const at::Tensor& w_down) {
  return project(kernels::silu_mul(project(x, w_gate), project(x, w_up)), w_down);
}

// ---- mixture of experts ---------------------------------------------------------

// Routing of T tokens to k of E experts.
struct routing {
  at::Tensor probs;    // [T, E] softmax of the router logits
  at::Tensor experts;  // [T, k] chosen expert ids
  at::Tensor weights;  // [T, k] their (optionally renormalised) probabilities
};

inline routing route(const at::Tensor& x, const at::Tensor& router, int64_t top_k, bool renormalize) {
  routing r;
  r.probs = project(x, router).softmax(-1);
  auto [w, e] = r.probs.topk(top_k, -1);
  r.weights = renormalize ? w / w.sum(-1, true) : w;
  r.experts = e;
  return r;
}

// Expert weights stored [E, ...]: gate and up [E, F, H], down [E, H, F].
// `linear`, when set, applies projection k (0 gate, 1 up, 2 down) of expert
// e to its rows (the component routes it through hooks::expert_linear, where
// adapters add their term); unset: x W[e]^T.
struct expert_weights {
  at::Tensor gate, up, down;
  std::function<at::Tensor(const at::Tensor&, int, int64_t)> linear;
  int64_t count() const { return gate.size(0); }
  at::Tensor project(const at::Tensor& x, int k, int64_t e) const {
    return linear ? linear(x, k, e) : nn::project(x, (k == 0 ? gate : k == 1 ? up : down)[e]);
  }
};

// Runs rows of x grouped by expert: rows [offset_e, offset_e + counts[e]) go
// to expert e. One matmul per expert over all its rows, not one per token.
inline at::Tensor grouped_experts(const at::Tensor& x_sorted, const std::vector<int64_t>& counts,
                                  const expert_weights& w) {
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == w.count(), "veomni::nn::grouped_experts: ", counts.size(),
              " counts for ", w.count(), " experts");
  std::vector<at::Tensor> ys;
  int64_t offset = 0;
  for (int64_t e = 0; e < w.count(); ++e) {
    const int64_t n = counts[static_cast<size_t>(e)];
    if (n > 0) {
      const at::Tensor x = x_sorted.narrow(0, offset, n);
      ys.push_back(w.project(kernels::silu_mul(w.project(x, 0, e), w.project(x, 1, e)), 2, e));
    }
    offset += n;
  }
  // keep every expert in the graph so each gets a (possibly zero) gradient
  if (ys.empty()) return x_sorted.narrow(0, 0, 0) + 0 * (w.gate.sum() + w.up.sum() + w.down.sum());
  return at::cat(ys, 0);
}

// Token copies sorted by expert: row i of the sorted input is token
// token_of[i], sent to expert expert_of[i] with weight weight_of[i].
struct dispatch_order {
  at::Tensor token_of, weight_of;
  std::vector<int64_t> counts;  // per expert
};

inline dispatch_order sort_by_expert(const routing& r, int64_t num_experts) {
  const int64_t k = r.experts.size(1);
  const at::Tensor flat = r.experts.reshape({-1});
  const at::Tensor order = std::get<1>(flat.sort(/*stable=*/true, 0, false));
  dispatch_order d;
  d.token_of = at::div(order, k, "floor");
  d.weight_of = r.weights.reshape({-1}).index_select(0, order);
  const at::Tensor counts = at::bincount(flat, {}, num_experts).cpu().contiguous();  // sizes: read on the host
  d.counts.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + num_experts);
  return d;
}

// Switch-Transformer load-balancing loss: E * sum_e f_e * P_e, where f_e is
// the fraction of routed copies sent to e and P_e the mean router
// probability of e. Computed from sums so that ranks can add their
// statistics first: counts [E], prob_sums [E], tokens (a scalar tensor, total T).
inline at::Tensor load_balancing_loss(const at::Tensor& counts, const at::Tensor& prob_sums, const at::Tensor& tokens,
                                      int64_t top_k) {
  const auto e = static_cast<double>(counts.size(0));
  return e * (counts.to(prob_sums.scalar_type()) / (tokens * static_cast<double>(top_k)) * (prob_sums / tokens)).sum();
}

// Cross-entropy summed over targets != ignore_index, computed in chunks of
// rows so that at most chunk x vocab logits exist at once. Forward also
// computes the gradients (softmax - onehot of each chunk, multiplied out
// against the weight and the hidden rows at once), so the logits are never
// recomputed and backward only scales them. Returns the sum; divide by the
// global count of targets.
class chunked_lm_loss : public torch::autograd::Function<chunked_lm_loss> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk, int64_t ignore_index) {
    // what needs a gradient: a frozen head (LoRA) needs none, and its [V, H]
    // gradient would cost a vocabulary-sized buffer and a GEMM per chunk
    const bool want_hidden = hidden.requires_grad(), want_weight = weight.requires_grad();
    const bool grads = want_hidden || want_weight;
    at::Tensor total = at::zeros({}, hidden.options());
    at::Tensor d_hidden, d_weight;
    if (want_hidden) d_hidden = at::empty_like(hidden, at::MemoryFormat::Contiguous);
    if (want_weight)  // the first chunk sets it, the others add (no rows: zero)
      d_weight = hidden.size(0) > 0 ? at::empty_like(weight, at::MemoryFormat::Contiguous)
                                     : at::zeros_like(weight, at::MemoryFormat::Contiguous);
    for (int64_t b = 0; b < hidden.size(0); b += chunk) {
      const int64_t n = std::min(chunk, hidden.size(0) - b);
      const at::Tensor h = hidden.narrow(0, b, n), t = targets.narrow(0, b, n);
      at::Tensor logits = at::matmul(h, weight.t());  // [n, V], then the gradient of the sum over its rows
      if (kernels::cross_entropy_fusable(logits, t)) {
        total += kernels::cross_entropy_rows(logits, t, ignore_index, grads).sum();  // three passes (fp32)
      } else {
        const at::Tensor valid = t.ne(ignore_index);
        const at::Tensor safe_t = at::where(valid, t, at::zeros_like(t)).unsqueeze(1);
        const at::Tensor lse = at::logsumexp(logits, 1, /*keepdim=*/true);  // [n, 1]
        const at::Tensor vf = valid.to(logits.scalar_type()).unsqueeze(1);
        total += ((lse - logits.gather(1, safe_t)) * vf).sum();
        if (grads) {
          logits.sub_(lse).exp_();              // softmax, in place
          logits.scatter_add_(1, safe_t, -vf);  // - onehot(target)
          logits.mul_(vf);                      // no gradient from ignored rows
        }
      }
      if (!grads) continue;
      if (want_hidden) {
        at::Tensor rows = d_hidden.narrow(0, b, n);  // contiguous rows: written in place
        at::mm_out(rows, logits, weight);
      }
      if (!want_weight) continue;
      if (b == 0)
        at::mm_out(d_weight, logits.t(), h);
      else
        d_weight.addmm_(logits.t(), h);
    }
    if (grads) ctx->save_for_backward({d_hidden, d_weight});
    grad_slot::of(weight).save(ctx, "weight");
    return total;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor g = grads[0];
    at::Tensor d_weight;
    if (!saved[1].defined())
      ;  // a frozen head
    else if (grad_slot slot = grad_slot::load(ctx, "weight"))
      slot.scaled(saved[1], g);  // straight into the flat gradient
    else
      d_weight = saved[1] * g;
    return {saved[0].defined() ? saved[0] * g : at::Tensor(), d_weight, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

inline at::Tensor lm_loss_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                              int64_t chunk = 1024, int64_t ignore_index = -100) {
  return chunked_lm_loss::apply(hidden, weight, targets, chunk, ignore_index);
}

}  // namespace veomni::nn
