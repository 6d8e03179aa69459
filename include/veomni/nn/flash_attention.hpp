#pragma once
// Memory-efficient attention for fp32 on the CPU (the FlashAttention-2
// algorithm): per (sample, head), queries in tiles of bq rows against keys in
// tiles of bk, through the process's CBLAS, with an online softmax, so that
// no [L, L] matrix is ever held. Forward keeps, per row, only the log-sum-exp
// of its scores; backward recomputes each tile's probabilities from it.
//
//   forward, per query tile i, key tiles j = 0.. (up to the diagonal when causal):
//     S = Q_i K_j^T / sqrt(d)                          (gemm, [bq, bk])
//     m' = max(m, rowmax S),  P = e^(S - m'),  l = l e^(m - m') + rowsum P
//     O_i = O_i e^(m - m') + P V_j                     (gemm, beta 1 after the first)
//     then O_i /= l,  lse_i = m + log l
//   backward, per key tile j, query tiles i that see it:
//     P = e^(Q_i K_j^T / sqrt(d) - lse_i)              (recomputed)
//     dV_j += P^T dO_i,  dP = dO_i V_j^T,  dS = P (dP - rowsum(dO_i O_i))
//     dQ_i += dS K_j / sqrt(d),  dK_j += dS^T Q_i / sqrt(d)
//
// Memory per (sample, head): the lse row (L floats), and per thread a tile of
// scores and one of dP (bq x bk each). Work: the causal tiles above the
// diagonal are skipped; a tile on it masks what its rows must not see.
// Worked example, L = 5, bq = bk = 2, causal: query tiles {0,1}, {2,3}, {4};
// tile {2,3} multiplies key tiles {0,1} (all seen) and {2,3} (row 2 sees
// key 2 only): 6 of the 9 tiles of a dense 5 x 5 grid.
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels.hpp"

namespace veomni::nn::detail {

// f(i) for every i in [0, n) on at::parallel_for's threads, each taking the
// next index as it becomes free, in order (work dealt dynamically: a thread
// slowed by another process does less of it; list the largest tasks first).
// setup() makes each thread's scratch.
template <class Setup, class F>
void for_each_dynamic(int64_t n, Setup&& setup, F&& f) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(n, at::get_num_threads()));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto scratch = setup();
    for (int64_t i; (i = next.fetch_add(1)) < n;) f(i, scratch);
  });
}

#ifdef VEOMNI_KERNELS_AVX2
// One query tile of one (sample, head): rows [q0, q0 + mq) of q and o, all
// len rows of k and v, at stride ld (elements between consecutive tokens),
// d columns each; lse rows [q0, q0 + mq) written. Scratch: s [bq * bk],
// stats [3 * bq].
inline void flash_forward_tile(const float* q, const float* k, const float* v, float* o, float* lse, int64_t q0,
                               int64_t mq, int64_t len, int64_t d, int64_t ld, bool causal, int64_t bk, float scale,
                               float* s, float* stats) {
  using kernels::detail::cblas_row_major, kernels::detail::cblas_no_trans, kernels::detail::cblas_trans;
  const auto gemm = kernels::detail::sgemm();
  const int ild = static_cast<int>(ld), id = static_cast<int>(d), m = static_cast<int>(mq);
  float *mx = stats, *l = stats + mq, *alpha = stats + 2 * mq;
  const int64_t kend = causal ? q0 + mq : len;
  std::fill(mx, mx + mq, -std::numeric_limits<float>::infinity());
  std::fill(l, l + mq, 0.0f);
  float* oi = o + q0 * ld;
  for (int64_t k0 = 0; k0 < kend; k0 += bk) {
    const int64_t nk = std::min(bk, kend - k0);
    const int n = static_cast<int>(nk);
    gemm(cblas_row_major, cblas_no_trans, cblas_trans, m, n, id, scale, q + q0 * ld, ild, k + k0 * ld, ild, 0.0f, s, n);
    kernels::online_softmax_rows_avx2(s, mq, nk, q0 - k0, causal, mx, l, alpha);
    if (k0 > 0)
      for (int64_t i = 0; i < mq; ++i) kernels::scale_avx2(oi + i * ld, d, alpha[i]);
    gemm(cblas_row_major, cblas_no_trans, cblas_no_trans, m, id, n, 1.0f, s, n, v + k0 * ld, ild, k0 > 0 ? 1.0f : 0.0f,
         oi, ild);
  }
  for (int64_t i = 0; i < mq; ++i) {
    kernels::scale_avx2(oi + i * ld, d, 1.0f / l[i]);
    lse[q0 + i] = mx[i] + std::log(l[i]);
  }
}

// Its backward: dq, dk, dv rows of this (sample, head) written (they are the
// task's own). g: dO; rows [len]: rowsum(dO O). Scratch: s and dp [bq * bk].
inline void flash_backward_one(const float* g, const float* q, const float* k, const float* v, const float* o,
                               const float* lse, float* dq, float* dk, float* dv, int64_t len, int64_t d, int64_t ld,
                               bool causal, int64_t bq, int64_t bk, float scale, float* s, float* dp, float* rows) {
  using kernels::detail::cblas_row_major, kernels::detail::cblas_no_trans, kernels::detail::cblas_trans;
  const auto gemm = kernels::detail::sgemm();
  const int ild = static_cast<int>(ld), id = static_cast<int>(d);
  kernels::dot_rows_avx2(g, o, ld, len, d, rows);  // rowsum(dO * O) = rowsum(dP * P)
  for (int64_t i = 0; i < len; ++i) std::fill(dq + i * ld, dq + i * ld + d, 0.0f);
  for (int64_t k0 = 0; k0 < len; k0 += bk) {
    const int64_t nk = std::min(bk, len - k0);
    const int n = static_cast<int>(nk);
    float *dkj = dk + k0 * ld, *dvj = dv + k0 * ld;
    bool first = true;  // dK_j, dV_j set by the first tile, added to by the rest
    for (int64_t q0 = causal ? k0 / bq * bq : 0; q0 < len; q0 += bq) {
      const int64_t mq = std::min(bq, len - q0);
      const int m = static_cast<int>(mq);
      const float *qi = q + q0 * ld, *gi = g + q0 * ld;
      gemm(cblas_row_major, cblas_no_trans, cblas_trans, m, n, id, scale, qi, ild, k + k0 * ld, ild, 0.0f, s, n);
      kernels::probs_rows_avx2(s, mq, nk, q0 - k0, causal, lse + q0);
      const float beta = first ? 0.0f : 1.0f;
      gemm(cblas_row_major, cblas_trans, cblas_no_trans, n, id, m, 1.0f, s, n, gi, ild, beta, dvj, ild);  // dV_j (+)= P^T dO_i
      gemm(cblas_row_major, cblas_no_trans, cblas_trans, m, n, id, 1.0f, gi, ild, v + k0 * ld, ild, 0.0f, dp, n);  // dP
      kernels::softmax_grad_rows_avx2(dp, s, rows + q0, mq, nk);  // dS
      gemm(cblas_row_major, cblas_no_trans, cblas_no_trans, m, id, n, scale, dp, n, k + k0 * ld, ild, 1.0f, dq + q0 * ld,
           ild);  // dQ_i += dS K_j / sqrt(d)
      gemm(cblas_row_major, cblas_trans, cblas_no_trans, n, id, m, scale, dp, n, qi, ild, beta, dkj, ild);  // dK_j (+)= dS^T Q_i / sqrt(d)
      first = false;
    }
    // every key tile is seen by at least one query tile (causal: the one
    // holding its first key), so the loop above has set dK_j and dV_j
  }
}
#endif

}  // namespace veomni::nn::detail
