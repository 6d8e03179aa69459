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

#include <cmath>
#include <optional>
#include <vector>

namespace veomni::nn {

inline at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps = 1e-6) {
  const at::Tensor var = x.pow(2).mean(-1, /*keepdim=*/true);
  return x * at::rsqrt(var + eps) * weight;
}

// Rotary embedding on x [T, H, D] at positions pos [T] (rotate-half form).
inline at::Tensor rope(const at::Tensor& x, const at::Tensor& pos, double theta = 10000.0) {
  const int64_t d = x.size(-1);
  TORCH_CHECK(d % 2 == 0, "veomni::nn::rope: head dim ", d, " must be even");
  const auto opts = x.options();
  const at::Tensor inv = at::pow(theta, -at::arange(0, d, 2, opts) / static_cast<double>(d));  // [D/2]
  const at::Tensor ang = pos.to(x.scalar_type()).unsqueeze(1) * inv.unsqueeze(0);           // [T, D/2]
  const at::Tensor cos = at::cat({ang.cos(), ang.cos()}, -1).unsqueeze(1);                  // [T, 1, D]
  const at::Tensor sin = at::cat({ang.sin(), ang.sin()}, -1).unsqueeze(1);
  const at::Tensor x1 = x.narrow(-1, 0, d / 2), x2 = x.narrow(-1, d / 2, d / 2);
  return x * cos + at::cat({-x2, x1}, -1) * sin;
}

// Attention over packed variable-length sequences.
//   q [T, Hq, D], k and v [T, Hkv, D] with Hq a multiple of Hkv (grouped-query).
// Each sample (a segment of cu_seqlens) attends only to itself; with
// `causal`, token i sees tokens j <= i of its sample. Returns [T, Hq, D].
inline at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& cu_seqlens, bool causal) {
  const int64_t hq = q.size(1), hkv = k.size(1), d = q.size(2);
  TORCH_CHECK(hq % hkv == 0, "veomni::nn::varlen_attention: ", hq, " query heads are not a multiple of ", hkv,
              " kv heads");
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const auto cu = cu_seqlens.to(at::kLong).contiguous();
  const int64_t* c = cu.data_ptr<int64_t>();
  std::vector<at::Tensor> outs;
  outs.reserve(static_cast<size_t>(cu.numel()));
  for (int64_t s = 0; s + 1 < cu.numel(); ++s) {
    const int64_t b = c[s], len = c[s + 1] - c[s];
    if (len == 0) continue;
    // [H, L, D]; kv heads repeated for their query group
    const at::Tensor qs = q.narrow(0, b, len).transpose(0, 1);
    at::Tensor ks = k.narrow(0, b, len).transpose(0, 1), vs = v.narrow(0, b, len).transpose(0, 1);
    if (hkv != hq) ks = ks.repeat_interleave(hq / hkv, 0), vs = vs.repeat_interleave(hq / hkv, 0);
    at::Tensor scores = at::matmul(qs, ks.transpose(1, 2)) * scale;  // [H, L, L]
    if (causal) {
      const at::Tensor mask = at::ones({len, len}, q.options().dtype(at::kBool)).triu(1);
      scores = scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
    }
    outs.push_back(at::matmul(scores.softmax(-1), vs).transpose(0, 1));  // [L, H, D]
  }
  return outs.empty() ? at::zeros_like(q) : at::cat(outs, 0);
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
  return at::matmul(at::silu(at::matmul(x, w_gate.t())) * at::matmul(x, w_up.t()), w_down.t());
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
  r.probs = at::matmul(x, router.t()).softmax(-1);
  auto [w, e] = r.probs.topk(top_k, -1);
  r.weights = renormalize ? w / w.sum(-1, true) : w;
  r.experts = e;
  return r;
}

// Expert weights stored [E, ...]: gate and up [E, F, H], down [E, H, F].
struct expert_weights {
  at::Tensor gate, up, down;
  int64_t count() const { return gate.size(0); }
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
    if (n > 0) ys.push_back(swiglu(x_sorted.narrow(0, offset, n), w.gate[e], w.up[e], w.down[e]));
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
  const at::Tensor counts = at::bincount(flat, {}, num_experts).contiguous();
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
// rows so that at most chunk x vocab logits exist at once, in forward and in
// backward (which recomputes them). Returns the sum; divide by the global
// count of targets.
class chunked_lm_loss : public torch::autograd::Function<chunked_lm_loss> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk, int64_t ignore_index) {
    ctx->save_for_backward({hidden, weight, targets});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["ignore"] = ignore_index;
    at::Tensor total = at::zeros({}, hidden.options());
    for (int64_t b = 0; b < hidden.size(0); b += chunk) {
      const int64_t n = std::min(chunk, hidden.size(0) - b);
      const at::Tensor logits = at::matmul(hidden.narrow(0, b, n), weight.t());
      total += at::cross_entropy_loss(logits, targets.narrow(0, b, n), {}, at::Reduction::Sum, ignore_index);
    }
    return total;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &weight = saved[1], &targets = saved[2];
    const int64_t chunk = ctx->saved_data["chunk"].toInt(), ignore = ctx->saved_data["ignore"].toInt();
    const at::Tensor g = grads[0];
    at::Tensor d_hidden = at::zeros_like(hidden), d_weight = at::zeros_like(weight);
    for (int64_t b = 0; b < hidden.size(0); b += chunk) {
      const int64_t n = std::min(chunk, hidden.size(0) - b);
      const at::Tensor h = hidden.narrow(0, b, n), t = targets.narrow(0, b, n);
      at::Tensor d_logits = at::matmul(h, weight.t()).softmax(-1);  // softmax - onehot, masked
      const at::Tensor valid = t.ne(ignore);
      const at::Tensor safe_t = at::where(valid, t, at::zeros_like(t));
      d_logits.scatter_add_(1, safe_t.unsqueeze(1), -at::ones({n, 1}, d_logits.options()));
      d_logits *= valid.unsqueeze(1).to(d_logits.scalar_type()) * g;
      d_hidden.narrow(0, b, n).copy_(at::matmul(d_logits, weight));
      d_weight += at::matmul(d_logits.t(), h);
    }
    return {d_hidden, d_weight, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

inline at::Tensor lm_loss_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                              int64_t chunk = 1024, int64_t ignore_index = -100) {
  return chunked_lm_loss::apply(hidden, weight, targets, chunk, ignore_index);
}

}  // namespace veomni::nn
