// Batch normalisation over [N, C, HW] on raw buffers (HW = H*W; a 2-D input [N, C] is HW = 1).
// Statistics are reduced per channel in two passes (mean, then squared deviations); each
// contiguous HW row is summed in T with vector lanes and the row sums are accumulated in double.
// Every kernel overwrites its outputs; none reads them first.
#pragma once

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "tnas/core/error.hpp"

namespace tnas::cpu {

namespace detail {

// out [C*K] <- for each channel c, K double sums accumulated by f(c, row, acc + c*K) over the N
// rows of that channel (row = pointer offset (n*C + c)*HW of a contiguous HW segment). Long rows:
// channels in parallel; short rows (HW small, e.g. 2-D input): images in parallel with
// per-thread partial sums.
template <int K, class F>
void bn_channel_sums(int64_t N, int64_t C, int64_t HW, double* out, F&& f) {
  if (HW >= 64 || N < 2) {
#pragma omp parallel for schedule(static) if (C > 1)
    for (int64_t c = 0; c < C; ++c) {
      double* acc = out + c * K;
      for (int k = 0; k < K; ++k) acc[k] = 0;
      for (int64_t n = 0; n < N; ++n) f(c, (n * C + c) * HW, acc);
    }
    return;
  }
  const int nthreads = omp_get_max_threads();
  std::vector<double> part(static_cast<size_t>(nthreads * C * K), 0.0);
#pragma omp parallel num_threads(nthreads)
  {
    double* my = part.data() + omp_get_thread_num() * C * K;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) f(c, (n * C + c) * HW, my + c * K);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < C * K; ++i) {
      double s = 0;
      for (int t = 0; t < nthreads; ++t) s += part[static_cast<size_t>(t * C * K + i)];
      out[i] = s;
    }
  }
}

inline void check_bn(int64_t N, int64_t C, int64_t HW, const char* who) {
  TNAS_CHECK(N > 0 && C > 0 && HW > 0, who, ": bad sizes N=", N, " C=", C, " HW=", HW);
}

}  // namespace detail

// Training-mode batch norm. x, y [N, C, HW]; gamma, beta [C] or nullptr (scale 1, shift 0);
// mean, invstd [C] are outputs (batch mean and 1/sqrt(biased variance + eps), saved for
// backward).
template <class T>
void batch_norm_forward_train(int64_t N, int64_t C, int64_t HW, const T* x, const T* gamma,
                              const T* beta, T eps, T* y, T* mean, T* invstd) {
  detail::check_bn(N, C, HW, "batch_norm_forward_train");
  const double M = static_cast<double>(N * HW);
  std::vector<double> s1(static_cast<size_t>(C)), s2(static_cast<size_t>(C));
  detail::bn_channel_sums<1>(N, C, HW, s1.data(), [&](int64_t, int64_t row, double* acc) {
    // In double: a float sum of a channel far from zero (mean 100, spread 0.01) loses the
    // mean's last bits, an ulp of which is already a large part of xhat's error.
    const T* r = x + row;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < HW; ++i) s += static_cast<double>(r[i]);
    acc[0] += s;
  });
  for (int64_t c = 0; c < C; ++c) mean[c] = static_cast<T>(s1[static_cast<size_t>(c)] / M);
  detail::bn_channel_sums<1>(N, C, HW, s2.data(), [&](int64_t c, int64_t row, double* acc) {
    const T* r = x + row;
    const T m = mean[c];
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < HW; ++i) s += (r[i] - m) * (r[i] - m);
    acc[0] += static_cast<double>(s);
  });
  std::vector<T> scale(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    const double var = s2[static_cast<size_t>(c)] / M;
    const double is = 1.0 / std::sqrt(var + static_cast<double>(eps));
    invstd[c] = static_cast<T>(is);
    scale[static_cast<size_t>(c)] =
        static_cast<T>(is * (gamma ? static_cast<double>(gamma[c]) : 1.0));
  }
#pragma omp parallel for schedule(static) if (N * C > 1)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t c = nc % C;
    const T m = mean[c], k = scale[static_cast<size_t>(c)], b = beta ? beta[c] : T(0);
    const T* r = x + nc * HW;
    T* o = y + nc * HW;
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) o[i] = (r[i] - m) * k + b;
  }
}

// The running statistics after a training forward over `count` values per channel: the
// variance back from invstd, unbiased, blended with `momentum` in double.
template <class T>
void batch_norm_update_running(int64_t count, int64_t C, const T* mean, const T* invstd, double eps,
                               double momentum, T* running_mean, T* running_var) {
  const double m = momentum, cnt = double(count);
  for (int64_t c = 0; c < C; ++c) {
    const double var = 1.0 / (double(invstd[c]) * invstd[c]) - eps;
    running_mean[c] = T((1 - m) * running_mean[c] + m * mean[c]);
    running_var[c] = T((1 - m) * running_var[c] + m * var * cnt / (cnt - 1));
  }
}

// Eval-mode batch norm with running statistics. x, y [N, C, HW]; gamma, beta [C] or nullptr;
// running_mean, running_var [C].
template <class T>
void batch_norm_forward_eval(int64_t N, int64_t C, int64_t HW, const T* x, const T* gamma,
                             const T* beta, const T* running_mean, const T* running_var, T eps,
                             T* y) {
  detail::check_bn(N, C, HW, "batch_norm_forward_eval");
  std::vector<T> scale(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    const double is =
        1.0 / std::sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps));
    scale[static_cast<size_t>(c)] =
        static_cast<T>(is * (gamma ? static_cast<double>(gamma[c]) : 1.0));
  }
#pragma omp parallel for schedule(static) if (N * C > 1)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t c = nc % C;
    const T m = running_mean[c], k = scale[static_cast<size_t>(c)], b = beta ? beta[c] : T(0);
    const T* r = x + nc * HW;
    T* o = y + nc * HW;
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) o[i] = (r[i] - m) * k + b;
  }
}

// Backward of batch_norm_forward_train. x, gy, gx [N, C, HW]; gamma [C] or nullptr; mean,
// invstd [C] as saved by the forward; ggamma, gbeta [C] or nullptr when not wanted (gx may be
// nullptr too).
template <class T>
void batch_norm_backward(int64_t N, int64_t C, int64_t HW, const T* x, const T* gy, const T* gamma,
                         const T* mean, const T* invstd, T* gx, T* ggamma, T* gbeta) {
  detail::check_bn(N, C, HW, "batch_norm_backward");
  const double M = static_cast<double>(N * HW);
  std::vector<double> s(static_cast<size_t>(2 * C));  // per channel: sum gy, sum gy*(x - mean)
  detail::bn_channel_sums<2>(N, C, HW, s.data(), [&](int64_t c, int64_t row, double* acc) {
    const T* r = x + row;
    const T* g = gy + row;
    const T m = mean[c];
    T a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < HW; ++i) {
      a += g[i];
      b += g[i] * (r[i] - m);
    }
    acc[0] += static_cast<double>(a);
    acc[1] += static_cast<double>(b);
  });
  std::vector<T> k1(static_cast<size_t>(C)), k2(static_cast<size_t>(C)), k3(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    const double sg = s[static_cast<size_t>(2 * c)], sgx = s[static_cast<size_t>(2 * c + 1)];
    const double is = static_cast<double>(invstd[c]);
    const double k = is * (gamma ? static_cast<double>(gamma[c]) : 1.0);
    if (gbeta) gbeta[c] = static_cast<T>(sg);
    if (ggamma) ggamma[c] = static_cast<T>(sgx * is);
    // gx = k * (gy - sg/M - (x - mean) * is^2 * sgx/M)
    k1[static_cast<size_t>(c)] = static_cast<T>(k);
    k2[static_cast<size_t>(c)] = static_cast<T>(-k * sg / M);
    k3[static_cast<size_t>(c)] = static_cast<T>(-k * is * is * sgx / M);
  }
  if (!gx) return;
#pragma omp parallel for schedule(static) if (N * C > 1)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const size_t c = static_cast<size_t>(nc % C);
    const T m = mean[c], a = k1[c], b = k2[c], d = k3[c];
    const T* r = x + nc * HW;
    const T* g = gy + nc * HW;
    T* o = gx + nc * HW;
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) o[i] = a * g[i] + b + d * (r[i] - m);
  }
}

// Backward of batch_norm_forward_eval: the statistics are constants, so gx = gy * gamma * inv
// with inv = 1/sqrt(var + eps); ggamma = sum gy * (x - mean) * inv and gbeta = sum gy per
// channel, or nullptr when not wanted.
template <class T>
void batch_norm_backward_eval(int64_t N, int64_t C, int64_t HW, const T* x, const T* gy,
                              const T* gamma, const T* running_mean, const T* running_var, T eps,
                              T* gx, T* ggamma, T* gbeta) {
  detail::check_bn(N, C, HW, "batch_norm_backward_eval");
  for (int64_t c = 0; c < C; ++c) {
    const T inv = T(1) / std::sqrt(running_var[c] + eps);
    const T s = (gamma ? gamma[c] : T(1)) * inv;
    T sg = 0, sgx = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t k = (n * C + c) * HW + i;
        gx[k] = gy[k] * s;
        sg += gy[k];
        sgx += gy[k] * (x[k] - running_mean[c]) * inv;
      }
    if (ggamma) ggamma[c] = sgx;
    if (gbeta) gbeta[c] = sg;
  }
}

// Backward of a non-affine batch_norm_forward_train from its output xhat = (x - mean) * invstd,
// so the forward input can be freed: gx = invstd * (gy - mean(gy) - xhat * mean(gy * xhat)).
template <class T>
void batch_norm_backward_from_output(int64_t N, int64_t C, int64_t HW, const T* xhat, const T* gy,
                                     const T* invstd, T* gx) {
  detail::check_bn(N, C, HW, "batch_norm_backward_from_output");
  const double M = static_cast<double>(N * HW);
  std::vector<double> s(static_cast<size_t>(2 * C));  // per channel: sum gy, sum gy*xhat
  detail::bn_channel_sums<2>(N, C, HW, s.data(), [&](int64_t, int64_t row, double* acc) {
    const T* r = xhat + row;
    const T* g = gy + row;
    T a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < HW; ++i) {
      a += g[i];
      b += g[i] * r[i];
    }
    acc[0] += static_cast<double>(a);
    acc[1] += static_cast<double>(b);
  });
#pragma omp parallel for schedule(static) if (N * C > 1)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const size_t c = static_cast<size_t>(nc % C);
    const double is = static_cast<double>(invstd[c]);
    const T a = static_cast<T>(is), b = static_cast<T>(-is * s[2 * c] / M),
            d = static_cast<T>(-is * s[2 * c + 1] / M);
    const T* r = xhat + nc * HW;
    const T* g = gy + nc * HW;
    T* o = gx + nc * HW;
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) o[i] = a * g[i] + b + d * r[i];
  }
}

}  // namespace tnas::cpu
