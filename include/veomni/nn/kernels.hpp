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
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

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

// The fused path takes contiguous fp32 tensors of one shape.
inline bool fusable(const at::Tensor& a, const at::Tensor& b) {
  return fused_available() && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && a.sizes() == b.sizes() &&
         a.is_contiguous() && b.is_contiguous() && a.device().is_cpu() && b.device().is_cpu();
}

class silu_mul_fn : public torch::autograd::Function<silu_mul_fn> {
 public:
  static constexpr int64_t grain = 1 << 14;  // elements per task (at::parallel_for)

  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b) {
    at::Tensor z = at::empty_like(a);
#ifdef VEOMNI_KERNELS_AVX2
    const float *pa = a.data_ptr<float>(), *pb = b.data_ptr<float>();
    float* pz = z.data_ptr<float>();
    at::parallel_for(0, a.numel(), grain,
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
    at::parallel_for(0, a.numel(), grain, [&](int64_t begin, int64_t end) {
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

}  // namespace veomni::nn::kernels
