#pragma once
// <veomni/nn/kernels.hpp>: hand-fused element-wise CPU kernels for fp32.
//
// An element-wise chain written as ATen ops reads and writes every
// intermediate in memory, once per op; here each is one pass. The AVX2+FMA
// versions are compiled for that target only (function attributes, so the
// including program needs no -mavx2) and chosen at run time when the CPU has
// it; otherwise, and for other dtypes, callers use the ATen composition.
//
//   silu_mul:  z = silu(a) * b = a * sigmoid(a) * b              (SwiGLU's middle)
//     backward: da = g * b * s * (1 + a - a s),  db = g * a * s,   s = sigmoid(a)
//   rope_rows: y1 = x1 c - sign x2 s,  y2 = x2 c + sign x1 s      (rotary; sign -1: its backward)
//   rms_norm:  y = x r w,  r = 1 / sqrt(mean(x^2) + eps) per row
//     backward: dx = r dy w - x r^3 mean(dy w x),  dw = sum_rows(dy x r)
//   cross_entropy_rows: lse(x) - x[t] per row; in place softmax(x) - onehot(t)
//   softmax_rows:      attention's mask + softmax over a block of scores
//   softmax_grad_rows: dS = P (dP - rowsum(dO O)),  dot_rows: rowsum(a b)
//                      (used by nn::varlen_attention's fused fp32 path)
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__GLIBC__)
#include <dlfcn.h>
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define VEOMNI_KERNELS_AVX2 1
#endif

namespace veomni::nn::kernels {

#ifdef VEOMNI_KERNELS_AVX2
// exp of 8 floats (Cephes' expf: 2^n e^r with |r| <= ln2 / 2, degree-5
// polynomial; relative error below 2e-7 on the clamped range [-88.38, 88.38]).
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)), _mm256_set1_ps(88.3762626647949f));
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}
__attribute__((target("avx2,fma"))) inline __m256 sigmoid8(__m256 a) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), a))));
}

__attribute__((target("avx2,fma"))) inline void silu_mul_forward_avx2(const float* a, const float* b, float* z,
                                                                      int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 va = _mm256_loadu_ps(a + i);
    _mm256_storeu_ps(z + i, _mm256_mul_ps(_mm256_mul_ps(va, sigmoid8(va)), _mm256_loadu_ps(b + i)));
  }
  for (; i < n; ++i) z[i] = a[i] / (1.0f + std::exp(-a[i])) * b[i];
}

__attribute__((target("avx2,fma"))) inline void silu_mul_backward_avx2(const float* g, const float* a, const float* b,
                                                                       float* da, float* db, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 va = _mm256_loadu_ps(a + i), vg = _mm256_loadu_ps(g + i), vb = _mm256_loadu_ps(b + i);
    const __m256 s = sigmoid8(va), as = _mm256_mul_ps(va, s);
    _mm256_storeu_ps(db + i, _mm256_mul_ps(vg, as));
    const __m256 ds = _mm256_mul_ps(s, _mm256_sub_ps(_mm256_add_ps(one, va), as));  // d silu / da
    _mm256_storeu_ps(da + i, _mm256_mul_ps(_mm256_mul_ps(vg, vb), ds));
  }
  for (; i < n; ++i) {
    const float s = 1.0f / (1.0f + std::exp(-a[i])), as = a[i] * s;
    db[i] = g[i] * as;
    da[i] = g[i] * b[i] * s * (1.0f + a[i] - as);
  }
}

// Rows [t0, t1) of x [T, H, D] with tables cos, sin [T, D/2].
__attribute__((target("avx2,fma"))) inline void rope_rows_avx2(const float* x, const float* cos, const float* sin,
                                                               float* y, int64_t t0, int64_t t1, int64_t heads,
                                                               int64_t d, float sign) {
  const int64_t h2 = d / 2;
  const __m256 vsign = _mm256_set1_ps(sign);
  for (int64_t t = t0; t < t1; ++t) {
    const float *c = cos + t * h2, *s = sin + t * h2;
    for (int64_t h = 0; h < heads; ++h) {
      const float* xr = x + (t * heads + h) * d;
      float* yr = y + (t * heads + h) * d;
      int64_t i = 0;
      for (; i + 8 <= h2; i += 8) {
        const __m256 x1 = _mm256_loadu_ps(xr + i), x2 = _mm256_loadu_ps(xr + h2 + i);
        const __m256 vc = _mm256_loadu_ps(c + i), vs = _mm256_mul_ps(vsign, _mm256_loadu_ps(s + i));
        _mm256_storeu_ps(yr + i, _mm256_fnmadd_ps(x2, vs, _mm256_mul_ps(x1, vc)));
        _mm256_storeu_ps(yr + h2 + i, _mm256_fmadd_ps(x1, vs, _mm256_mul_ps(x2, vc)));
      }
      for (; i < h2; ++i) {
        const float x1 = xr[i], x2 = xr[h2 + i], ss = sign * s[i];
        yr[i] = x1 * c[i] - x2 * ss;
        yr[h2 + i] = x2 * c[i] + x1 * ss;
      }
    }
  }
}

__attribute__((target("avx2,fma"))) inline float sum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

__attribute__((target("avx2,fma"))) inline float max8(__m256 v) {
  const __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// Row passes of a softmax: the maximum; the sum of exp(x - mx), storing the
// exponentials in place if asked; a scale.
__attribute__((target("avx2,fma"))) inline float row_max_avx2(const float* row, int64_t len) {
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(row + j));
  float mx = max8(vmax);
  for (; j < len; ++j) mx = std::max(mx, row[j]);
  return mx;
}
__attribute__((target("avx2,fma"))) inline float exp_sum_avx2(float* row, int64_t len, float mx, bool store) {
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
    if (store) _mm256_storeu_ps(row + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = sum8(vsum);
  for (; j < len; ++j) {
    const float e = std::exp(row[j] - mx);
    if (store) row[j] = e;
    sum += e;
  }
  return sum;
}
__attribute__((target("avx2,fma"))) inline void scale_avx2(float* row, int64_t len, float f) {
  const __m256 vf = _mm256_set1_ps(f);
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), vf));
  for (; j < len; ++j) row[j] *= f;
}

// Flash attention's row passes over one [m, n] tile of scores s (queries
// q0.., keys k0..; diag = q0 - k0): row i sees columns [0, vis_i), vis_i = n,
// or when causal min(n, max(0, diag + i + 1)); what it does not see becomes 0.
inline int64_t visible_columns(int64_t i, int64_t n, int64_t diag, bool causal) {
  return causal ? std::min(n, std::max<int64_t>(0, diag + i + 1)) : n;
}
// Forward (online softmax): with the running maximum mx[i] and sum l[i] of
// row i over the tiles before, s becomes exp(s - mx'), mx' = max(mx, max s);
// l = l e^(mx - mx') + sum; alpha[i] = e^(mx - mx') rescales the output so far.
__attribute__((target("avx2,fma"))) inline void online_softmax_rows_avx2(float* s, int64_t m, int64_t n, int64_t diag,
                                                                         bool causal, float* mx, float* l, float* alpha) {
  for (int64_t i = 0; i < m; ++i) {
    float* row = s + i * n;
    const int64_t vis = visible_columns(i, n, diag, causal);
    if (vis == 0) {
      std::fill(row, row + n, 0.0f);
      alpha[i] = 1.0f;
      continue;
    }
    const float next = std::max(mx[i], row_max_avx2(row, vis));
    alpha[i] = std::exp(mx[i] - next);  // 0 for the first tile (mx = -inf)
    l[i] = l[i] * alpha[i] + exp_sum_avx2(row, vis, next, true);
    mx[i] = next;
    std::fill(row + vis, row + n, 0.0f);
  }
}
// Backward: s becomes the probabilities exp(s - lse[i]) (0 where not seen).
__attribute__((target("avx2,fma"))) inline void probs_rows_avx2(float* s, int64_t m, int64_t n, int64_t diag, bool causal,
                                                                const float* lse) {
  for (int64_t i = 0; i < m; ++i) {
    float* row = s + i * n;
    const int64_t vis = visible_columns(i, n, diag, causal);
    exp_sum_avx2(row, vis, lse[i], true);
    std::fill(row + vis, row + n, 0.0f);
  }
}

// Softmax's backward in place: dp [m, n] becomes p * (dp - rows[i]) on row i.
__attribute__((target("avx2,fma"))) inline void softmax_grad_rows_avx2(float* dp, const float* p, const float* rows,
                                                                       int64_t m, int64_t n) {
  for (int64_t i = 0; i < m; ++i) {
    float* d = dp + i * n;
    const float* pr = p + i * n;
    const __m256 vr = _mm256_set1_ps(rows[i]);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
      _mm256_storeu_ps(d + j, _mm256_mul_ps(_mm256_loadu_ps(pr + j), _mm256_sub_ps(_mm256_loadu_ps(d + j), vr)));
    for (; j < n; ++j) d[j] = pr[j] * (d[j] - rows[i]);
  }
}

// out[i] = sum_j a[i ld + j] b[i ld + j] for rows i < m, columns j < d.
__attribute__((target("avx2,fma"))) inline void dot_rows_avx2(const float* a, const float* b, int64_t ld, int64_t m,
                                                              int64_t d, float* out) {
  for (int64_t i = 0; i < m; ++i) {
    const float *x = a + i * ld, *y = b + i * ld;
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j), acc);
    float s = sum8(acc);
    for (; j < d; ++j) s += x[j] * y[j];
    out[i] = s;
  }
}

// Cross-entropy over rows [r0, r1) of logits x [m, V] (row-major) against
// targets t: loss[i] = lse(x_i) - x_i[t_i], and with grad the row becomes
// softmax(x_i) - onehot(t_i). A row whose target is `ignore` has loss 0 and
// a zero gradient row. Targets are checked by the caller.
__attribute__((target("avx2,fma"))) inline void cross_entropy_rows_avx2(float* x, int64_t r0, int64_t r1, int64_t v,
                                                                        const int64_t* t, int64_t ignore, bool grad,
                                                                        float* loss) {
  for (int64_t i = r0; i < r1; ++i) {
    float* row = x + i * v;
    if (t[i] == ignore) {
      loss[i] = 0.0f;
      if (grad) std::fill(row, row + v, 0.0f);
      continue;
    }
    const float xt = row[t[i]], mx = row_max_avx2(row, v);
    const float sum = exp_sum_avx2(row, v, mx, grad);
    loss[i] = mx + std::log(sum) - xt;
    if (!grad) continue;
    scale_avx2(row, v, 1.0f / sum);
    row[t[i]] -= 1.0f;
  }
}

// sum of x^2, accumulated in double
__attribute__((target("avx2,fma"))) inline double sum_squares_avx2(const float* x, int64_t n) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    a0 = _mm256_fmadd_pd(lo, lo, a0);
    a1 = _mm256_fmadd_pd(hi, hi, a1);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(a0, a1));
  double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

// One AdamW update of n elements, as train::adamw writes it with ATen ops:
//   m = b1 m + c1 g,  v = b2 v + c2 g^2          (c1, c2 include the clipping scale)
//   p = p - decay mask p,  p = p - step m / (sqrt(v) / sqrt_bc2 + eps)
struct adamw_coefficients {
  float b1, b2, c1, c2, decay, step, sqrt_bc2, eps;
};
__attribute__((target("avx2,fma"))) inline void adamw_avx2(float* p, const float* g, float* m, float* v,
                                                           const float* mask, int64_t n, const adamw_coefficients& k) {
  const __m256 b1 = _mm256_set1_ps(k.b1), b2 = _mm256_set1_ps(k.b2), c1 = _mm256_set1_ps(k.c1),
               c2 = _mm256_set1_ps(k.c2), decay = _mm256_set1_ps(-k.decay), step = _mm256_set1_ps(-k.step),
               sbc2 = _mm256_set1_ps(k.sqrt_bc2), eps = _mm256_set1_ps(k.eps);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 vg = _mm256_loadu_ps(g + i);
    const __m256 vm = _mm256_fmadd_ps(c1, vg, _mm256_mul_ps(_mm256_loadu_ps(m + i), b1));
    const __m256 vv = _mm256_fmadd_ps(_mm256_mul_ps(c2, vg), vg, _mm256_mul_ps(_mm256_loadu_ps(v + i), b2));
    __m256 vp = _mm256_loadu_ps(p + i);
    vp = _mm256_fmadd_ps(_mm256_mul_ps(decay, vp), _mm256_loadu_ps(mask + i), vp);
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), sbc2), eps);
    vp = _mm256_fmadd_ps(step, _mm256_div_ps(vm, denom), vp);
    _mm256_storeu_ps(m + i, vm);
    _mm256_storeu_ps(v + i, vv);
    _mm256_storeu_ps(p + i, vp);
  }
  for (; i < n; ++i) {
    m[i] = m[i] * k.b1 + k.c1 * g[i];
    v[i] = v[i] * k.b2 + k.c2 * g[i] * g[i];
    p[i] = p[i] - k.decay * p[i] * mask[i];
    p[i] = p[i] - k.step * m[i] / (std::sqrt(v[i]) / k.sqrt_bc2 + k.eps);
  }
}

// Rows [t0, t1) of x [T, n]: y and r (1 / rms per row).
__attribute__((target("avx2,fma"))) inline void rms_norm_rows_avx2(const float* x, const float* w, float* y, float* r,
                                                                   int64_t t0, int64_t t1, int64_t n, float eps) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* xr = x + t * n;
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = sum8(acc);
    for (; i < n; ++i) ss += xr[i] * xr[i];
    const float rr = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    r[t] = rr;
    const __m256 vr = _mm256_set1_ps(rr);
    float* yr = y + t * n;
    for (i = 0; i + 8 <= n; i += 8)
      _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vr), _mm256_loadu_ps(w + i)));
    for (; i < n; ++i) yr[i] = xr[i] * rr * w[i];
  }
}

// Rows [t0, t1): dx, and dy x r added into dw_acc [n].
__attribute__((target("avx2,fma"))) inline void rms_norm_backward_rows_avx2(const float* dy, const float* x,
                                                                            const float* w, const float* r, float* dx,
                                                                            float* dw_acc, int64_t t0, int64_t t1,
                                                                            int64_t n) {
  for (int64_t t = t0; t < t1; ++t) {
    const float *g = dy + t * n, *xr = x + t * n;
    const float rr = r[t];
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(g + i), _mm256_loadu_ps(w + i)), _mm256_loadu_ps(xr + i), acc);
    float dot = sum8(acc);
    for (; i < n; ++i) dot += g[i] * w[i] * xr[i];
    const float k = rr * rr * rr * dot / static_cast<float>(n);
    const __m256 vr = _mm256_set1_ps(rr), vk = _mm256_set1_ps(k);
    float* d = dx + t * n;
    for (i = 0; i + 8 <= n; i += 8) {
      const __m256 vg = _mm256_loadu_ps(g + i), vx = _mm256_loadu_ps(xr + i);
      _mm256_storeu_ps(d + i, _mm256_fnmadd_ps(vk, vx, _mm256_mul_ps(vr, _mm256_mul_ps(vg, _mm256_loadu_ps(w + i)))));
      _mm256_storeu_ps(dw_acc + i, _mm256_fmadd_ps(vg, _mm256_mul_ps(vx, vr), _mm256_loadu_ps(dw_acc + i)));
    }
    for (; i < n; ++i) {
      d[i] = rr * g[i] * w[i] - k * xr[i];
      dw_acc[i] += g[i] * xr[i] * rr;
    }
  }
}
#endif

// Whether the fused fp32 kernels run on this CPU.
inline bool fused_available() {
#ifdef VEOMNI_KERNELS_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// Elements per at::parallel_for task of the element-wise kernels.
inline constexpr int64_t elementwise_grain = 1 << 14;

// The fused path takes contiguous fp32 tensors of one shape.
inline bool fusable(const at::Tensor& a, const at::Tensor& b) {
  return fused_available() && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && a.sizes() == b.sizes() &&
         a.is_contiguous() && b.is_contiguous() && a.device().is_cpu() && b.device().is_cpu();
}

class silu_mul_fn : public torch::autograd::Function<silu_mul_fn> {
 public:

  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b) {
    at::Tensor z = at::empty_like(a);
#ifdef VEOMNI_KERNELS_AVX2
    const float *pa = a.data_ptr<float>(), *pb = b.data_ptr<float>();
    float* pz = z.data_ptr<float>();
    at::parallel_for(0, a.numel(), elementwise_grain,
                     [&](int64_t begin, int64_t end) { silu_mul_forward_avx2(pa + begin, pb + begin, pz + begin, end - begin); });
#endif
    ctx->save_for_backward({a, b});
    return z;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &a = saved[0], &b = saved[1];
    const at::Tensor g = grads[0].contiguous();
    at::Tensor da = at::empty_like(a), db = at::empty_like(b);
#ifdef VEOMNI_KERNELS_AVX2
    const float *pg = g.data_ptr<float>(), *pa = a.data_ptr<float>(), *pb = b.data_ptr<float>();
    float *pda = da.data_ptr<float>(), *pdb = db.data_ptr<float>();
    at::parallel_for(0, a.numel(), elementwise_grain, [&](int64_t begin, int64_t end) {
      silu_mul_backward_avx2(pg + begin, pa + begin, pb + begin, pda + begin, pdb + begin, end - begin);
    });
#endif
    return {da, db};
  }
};

// silu(a) * b: one fused pass when fusable, else the ATen composition.
inline at::Tensor silu_mul(const at::Tensor& a, const at::Tensor& b) {
  if (fusable(a, b)) return silu_mul_fn::apply(a, b);
  return at::silu(a) * b;
}

// x [T, H, D] rotated by tables cos, sin [T, 1, D/2] (sign -1: the inverse
// rotation, rotary's backward). Fused when all are contiguous fp32.
inline bool rope_fusable(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return fused_available() && x.dim() == 3 && x.size(-1) % 2 == 0 && x.scalar_type() == at::kFloat &&
         cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && x.is_contiguous() &&
         cos.is_contiguous() && sin.is_contiguous() && cos.numel() == x.size(0) * x.size(2) / 2 &&
         sin.numel() == cos.numel() && x.device().is_cpu();
}
inline at::Tensor rope_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, float sign) {
  at::Tensor y = at::empty_like(x);
#ifdef VEOMNI_KERNELS_AVX2
  const float *px = x.data_ptr<float>(), *pc = cos.data_ptr<float>(), *ps = sin.data_ptr<float>();
  float* py = y.data_ptr<float>();
  const int64_t heads = x.size(1), d = x.size(2);
  at::parallel_for(0, x.size(0), std::max<int64_t>(1, elementwise_grain / (heads * d)), [&](int64_t t0, int64_t t1) {
    rope_rows_avx2(px, pc, ps, py, t0, t1, heads, d, sign);
  });
#else
  (void)cos, (void)sin, (void)sign;
#endif
  return y;
}

// RMSNorm over the last dim of a contiguous fp32 x [..., n], weight [n].
inline bool rms_norm_fusable(const at::Tensor& x, const at::Tensor& w) {
  return fused_available() && x.dim() >= 1 && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
         w.dim() == 1 && w.size(0) == x.size(-1) && x.is_contiguous() && w.is_contiguous() && x.device().is_cpu();
}

class rms_norm_fused_fn : public torch::autograd::Function<rms_norm_fused_fn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            double eps) {
    const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(1, n);
    at::Tensor y = at::empty_like(x), r = at::empty({rows}, x.options());
#ifdef VEOMNI_KERNELS_AVX2
    const float *px = x.data_ptr<float>(), *pw = w.data_ptr<float>();
    float *py = y.data_ptr<float>(), *pr = r.data_ptr<float>();
    at::parallel_for(0, rows, std::max<int64_t>(1, elementwise_grain / std::max<int64_t>(1, n)), [&](int64_t t0, int64_t t1) {
      rms_norm_rows_avx2(px, pw, py, pr, t0, t1, n, static_cast<float>(eps));
    });
#else
    (void)eps;
#endif
    ctx->save_for_backward({x, w, r});
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &r = saved[2];
    const at::Tensor g = grads[0].contiguous();
    const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(1, n);
    at::Tensor dx = at::empty_like(x);
    // per-thread partial sums of dw, added in a fixed order after
    at::Tensor partial = at::zeros({at::get_num_threads(), n}, x.options());
#ifdef VEOMNI_KERNELS_AVX2
    const float *pg = g.data_ptr<float>(), *px = x.data_ptr<float>(), *pw = w.data_ptr<float>(), *pr = r.data_ptr<float>();
    float *pdx = dx.data_ptr<float>(), *pp = partial.data_ptr<float>();
    at::parallel_for(0, rows, std::max<int64_t>(1, elementwise_grain / std::max<int64_t>(1, n)), [&](int64_t t0, int64_t t1) {
      rms_norm_backward_rows_avx2(pg, px, pw, pr, pdx, pp + at::get_thread_num() * n, t0, t1, n);
    });
#endif
    return {dx, partial.sum(0), at::Tensor()};
  }
};

// ---- reductions and the optimizer update ---------------------------------------------

// sum(t^2) in double. fp32 contiguous: one AVX2 pass, in fixed blocks whose
// partial sums are added in order (the same result at any thread count);
// otherwise the ATen composition.
inline double squared_norm(const at::Tensor& t) {
  if (!(fused_available() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu()))
    return t.to(at::kDouble).pow(2).sum().item<double>();
  constexpr int64_t chunk = 1 << 16;
  const int64_t n = t.numel(), chunks = (n + chunk - 1) / chunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
#ifdef VEOMNI_KERNELS_AVX2
  const float* x = t.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c)
      partial[static_cast<std::size_t>(c)] = sum_squares_avx2(x + c * chunk, std::min(chunk, n - c * chunk));
  });
#endif
  double s = 0;
  for (double x : partial) s += x;
  return s;
}

// Cross-entropy of each row of fp32 logits [m, V] against int64 targets [m]
// (rows whose target is `ignore` give 0): the per-row losses, [m]. With
// grad, logits becomes in place the gradient of their sum: softmax - onehot
// (zero rows where ignored). One pass for the maximum, one for the
// exponentials and one to normalise; the ATen composition (logsumexp,
// gather, sub, exp, scatter, mask) makes eight.
inline bool cross_entropy_fusable(const at::Tensor& logits, const at::Tensor& targets) {
  return fused_available() && logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.is_contiguous() &&
         logits.device().is_cpu() && targets.dim() == 1 && targets.scalar_type() == at::kLong &&
         targets.is_contiguous() && targets.size(0) == logits.size(0);
}
inline at::Tensor cross_entropy_rows(at::Tensor& logits, const at::Tensor& targets, int64_t ignore, bool grad) {
  const int64_t m = logits.size(0), v = logits.size(1);
  const int64_t* t = targets.data_ptr<int64_t>();
  for (int64_t i = 0; i < m; ++i)
    TORCH_CHECK(t[i] == ignore || (t[i] >= 0 && t[i] < v), "veomni::nn::cross_entropy: target ", t[i], " of row ", i,
                " is outside the vocabulary [0, ", v, ") and is not the ignore index ", ignore);
  at::Tensor loss = at::empty({m}, logits.options());
#ifdef VEOMNI_KERNELS_AVX2
  float *x = logits.data_ptr<float>(), *l = loss.data_ptr<float>();
  at::parallel_for(0, m, std::max<int64_t>(1, elementwise_grain / std::max<int64_t>(1, v)), [&](int64_t r0, int64_t r1) {
    cross_entropy_rows_avx2(x, r0, r1, v, t, ignore, grad, l);
  });
#else
  (void)grad;
#endif
  return loss;
}

// Whether adamw_update can run on these tensors (the optimizer's fused path).
inline bool adamw_fusable(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                          const at::Tensor& mask) {
  for (const at::Tensor* t : {&p, &g, &m, &v, &mask})
    if (!(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu() && t->numel() == p.numel()))
      return false;
  return fused_available();
}
// p, m, v updated in place (their version counters bumped, as ATen's in-place ops do).
inline void adamw_update(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, const at::Tensor& mask,
                         const adamw_coefficients& k) {
#ifdef VEOMNI_KERNELS_AVX2
  float *pp = p.data_ptr<float>(), *pm = m.data_ptr<float>(), *pv = v.data_ptr<float>();
  const float *pg = g.data_ptr<float>(), *pk = mask.data_ptr<float>();
  at::parallel_for(0, p.numel(), elementwise_grain, [&](int64_t b, int64_t e) {
    adamw_avx2(pp + b, pg + b, pm + b, pv + b, pk + b, e - b, k);
  });
#else
  (void)g, (void)mask, (void)k;
#endif
  for (at::Tensor* t : {&p, &m, &v}) t->unsafeGetTensorImpl()->bump_version();
}

// ---- batched small GEMMs straight to the process's CBLAS ------------------------------
// LibTorch 1.13 without MKL runs at::bmm as one ATen addmm per batch entry
// (select, dispatch, checks each time, in sequence). Attention multiplies
// hundreds of small matrices per layer, so it calls the CBLAS that LibTorch
// itself loaded (cblas_sgemm / cblas_dgemm, found with dlsym), one entry per
// task of at::parallel_for. Without a CBLAS in the process: at::bmm.
namespace detail {
using sgemm_fn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using dgemm_fn = void (*)(int, int, int, int, int, int, double, const double*, int, const double*, int, double, double*,
                          int);
template <class F>
F blas_symbol(const char* name) {
#if defined(__GLIBC__)
  return reinterpret_cast<F>(dlsym(RTLD_DEFAULT, name));
#else
  (void)name;
  return nullptr;
#endif
}
inline sgemm_fn sgemm() {
  static const sgemm_fn f = blas_symbol<sgemm_fn>("cblas_sgemm");
  return f;
}
inline dgemm_fn dgemm() {
  static const dgemm_fn f = blas_symbol<dgemm_fn>("cblas_dgemm");
  return f;
}
// CBLAS's enum values (cblas.h): row-major storage, op(x) = x or x^T
inline constexpr int cblas_row_major = 101, cblas_no_trans = 111, cblas_trans = 112;
// A 3-D view BLAS can read: unit stride in the last dim, rows apart by stride(1).
inline bool blas_view(const at::Tensor& t) {
  return t.dim() == 3 && t.stride(2) == 1 && t.stride(1) >= std::max<int64_t>(1, t.size(2)) &&
         t.size(1) <= INT32_MAX && t.size(2) <= INT32_MAX && t.stride(1) <= INT32_MAX;
}
}  // namespace detail

// c[i] = alpha op(a[i]) op(b[i]) + beta c[i] for every batch entry i, with
// op(x) = x or x^T (trans_*). a, b, c are [batch, rows, cols] views with unit
// stride in the last dim (any row and batch strides), c written in place.
inline void gemm_batched(at::Tensor& c, const at::Tensor& a, bool trans_a, const at::Tensor& b, bool trans_b,
                         double alpha, double beta) {
  const int64_t batch = c.size(0), m = c.size(1), n = c.size(2), k = trans_a ? a.size(1) : a.size(2);
  const bool f32 = c.scalar_type() == at::kFloat && detail::sgemm() != nullptr;
  const bool f64 = c.scalar_type() == at::kDouble && detail::dgemm() != nullptr;
  const bool ok = (f32 || f64) && a.scalar_type() == c.scalar_type() && b.scalar_type() == c.scalar_type() &&
                  detail::blas_view(a) && detail::blas_view(b) && detail::blas_view(c) && a.size(0) == batch &&
                  b.size(0) == batch && c.device().is_cpu();
  if (!ok) {  // ATen: the same product
    const at::Tensor pa = trans_a ? a.transpose(1, 2) : a, pb = trans_b ? b.transpose(1, 2) : b;
    if (beta == 0)
      c.copy_(at::bmm(pa, pb).mul_(alpha));
    else
      c.mul_(beta).add_(at::bmm(pa, pb), alpha);
    return;
  }
  using detail::cblas_row_major, detail::cblas_no_trans, detail::cblas_trans;
  const int ta = trans_a ? cblas_trans : cblas_no_trans, tb = trans_b ? cblas_trans : cblas_no_trans;
  const auto lda = static_cast<int>(a.stride(1)), ldb = static_cast<int>(b.stride(1)), ldc = static_cast<int>(c.stride(1));
  const int64_t sa = a.stride(0), sb = b.stride(0), sc = c.stride(0);
  const auto run = [&](auto gemm, const auto* pa, const auto* pb, auto* pc, auto al, auto be) {
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        gemm(cblas_row_major, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), al, pa + i * sa,
             lda, pb + i * sb, ldb, be, pc + i * sc, ldc);
    });
  };
  if (f32)
    run(detail::sgemm(), a.data_ptr<float>(), b.data_ptr<float>(), c.data_ptr<float>(), static_cast<float>(alpha),
        static_cast<float>(beta));
  else
    run(detail::dgemm(), a.data_ptr<double>(), b.data_ptr<double>(), c.data_ptr<double>(), alpha, beta);
}

}  // namespace veomni::nn::kernels
