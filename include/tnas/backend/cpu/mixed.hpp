// The mixed-op weighted sum on raw buffers (ops/mixed.hpp), with the arguments of its device
// kernels (backend::Kernels::weighted_sum_forward / _backward): ys[k] null is a zero candidate.
#pragma once

#include <algorithm>
#include <cstdint>

namespace tnas::cpu {

// out[i] = sum_k w[k] * ys[k][i] for i < n.
template <class T>
void weighted_sum_forward(int K, const T* const* ys, const T* w, T* out, int64_t n) {
  bool init = false;
  for (int k = 0; k < K; ++k) {
    if (!ys[k]) continue;
    const T* py = ys[k];
    const T wk = w[k];
    if (!init) {
#pragma omp parallel for simd if (n > 65536)
      for (int64_t i = 0; i < n; ++i) out[i] = wk * py[i];
      init = true;
    } else {
#pragma omp parallel for simd if (n > 65536)
      for (int64_t i = 0; i < n; ++i) out[i] += wk * py[i];
    }
  }
  if (!init) std::fill_n(out, n, T(0));  // every candidate a zero
}

// gys[k][i] = w[k] * g[i] (gys[k] null: not wanted); gw[k] = <g, ys[k]> accumulated in double
// (gw null: not wanted; 0 for a null ys[k]).
template <class T>
void weighted_sum_backward(int K, const T* const* ys, const T* w, const T* g, T* const* gys, T* gw,
                           int64_t n) {
  for (int k = 0; k < K; ++k) {
    if (gys[k]) {
      T* o = gys[k];
      const T wk = w[k];
#pragma omp parallel for simd if (n > 65536)
      for (int64_t i = 0; i < n; ++i) o[i] = wk * g[i];
    }
    if (gw) {
      double s = 0;
      if (const T* py = ys[k]) {
        // Blocks of 4096 over the threads, each a vectorised sum. (One `parallel for simd`
        // reduction does the same, but Clang 14 cannot vectorise it for T = double and warns.)
        constexpr int64_t kBlock = 4096;
        const int64_t nb = (n + kBlock - 1) / kBlock;
#pragma omp parallel for reduction(+ : s) if (nb > 16)
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t i1 = std::min(n, (b + 1) * kBlock);
          double sb = 0;
#pragma omp simd reduction(+ : sb)
          for (int64_t i = b * kBlock; i < i1; ++i) sb += double(g[i]) * py[i];
          s += sb;
        }
      }
      gw[k] = T(s);
    }
  }
}

}  // namespace tnas::cpu
