// Batch normalisation over [N, C, HW] (float32). Statistics and gradient sums accumulate in
// double and are merged in a fixed order (deterministic); the training kernels split each
// channel over several blocks (see split_for), the elementwise parts run in the merging kernel.
#include <algorithm>

#include "common.cuh"

namespace tnas::cuda::detail {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t at(int64_t j, int64_t C, int64_t HW, int64_t c) {
  const int64_t n = j / HW;
  return (n * C + c) * HW + (j - n * HW);
}

// The training kernels split each channel's N * HW values into `splits` chunks of `chunk`
// consecutive values (in (n, hw) order) and run a grid of splits x C blocks: one block per
// channel would leave most of the GPU idle at NAS shapes (C = 16 channels of 64 x 32 x 32
// values). A first kernel writes per-chunk partials, a second merges a channel's partials in
// chunk order (so every run gives the same bits) and applies the elementwise part to its chunk.
constexpr int64_t kChunk = 2048;      // values of one channel per block, about
constexpr int64_t kMaxBlocks = 1024;  // splits stop growing once C * splits reaches this

struct Split {
  int64_t splits, chunk;
};
Split split_for(int64_t cnt, int64_t C) {
  TNAS_CHECK(C <= 65535, "batch norm (cuda): ", C, " channels (at most 65535: one grid row each)");
  const int64_t cap = std::max<int64_t>(1, kMaxBlocks / std::max<int64_t>(C, 1));
  const int64_t splits = std::clamp<int64_t>((cnt + kChunk - 1) / kChunk, 1, cap);
  return {splits, (cnt + splits - 1) / splits};
}

// Forward statistics of chunk blockIdx.x of channel blockIdx.y: (count, mean, sum of squared
// deviations from that mean), two passes over the chunk (it is in cache for the second).
__global__ void __launch_bounds__(kThreads)
    bn_stats_partial_kernel(int64_t N, int64_t C, int64_t HW, const float* __restrict__ x,
                            int64_t chunk, double* __restrict__ part) {
  __shared__ double smem[32];
  const int64_t c = blockIdx.y, cnt = N * HW;
  const int64_t j0 = blockIdx.x * chunk, j1 = min(cnt, j0 + chunk);
  const int64_t n = j1 > j0 ? j1 - j0 : 0;
  double s = 0;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) s += x[at(j, C, HW, c)];
  const double mu = n > 0 ? block_sum(s, smem) / double(n) : 0.0;
  double ss = 0;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
    const double d = x[at(j, C, HW, c)] - mu;
    ss += d * d;
  }
  ss = block_sum(ss, smem);
  if (threadIdx.x == 0) {
    double* o = part + (c * gridDim.x + blockIdx.x) * 3;
    o[0] = double(n), o[1] = mu, o[2] = ss;
  }
}

// Merges the partials of channel blockIdx.y in chunk order (Chan et al.'s pairwise update),
// writes y for chunk blockIdx.x; block 0 of the channel writes mean, invstd and the running
// statistics.
__global__ void __launch_bounds__(kThreads)
    bn_train_apply_kernel(int64_t N, int64_t C, int64_t HW, const float* __restrict__ x,
                          const float* __restrict__ gamma, const float* __restrict__ beta,
                          float eps, float momentum, int64_t chunk, const double* __restrict__ part,
                          float* __restrict__ y, float* __restrict__ mean,
                          float* __restrict__ invstd, float* __restrict__ rmean,
                          float* __restrict__ rvar) {
  __shared__ float coef[3];
  const int64_t c = blockIdx.y, cnt = N * HW;
  if (threadIdx.x == 0) {
    double n = 0, mu = 0, m2 = 0;
    for (unsigned k = 0; k < gridDim.x; ++k) {
      const double* p = part + (c * gridDim.x + k) * 3;
      if (p[0] == 0) continue;
      const double tot = n + p[0], d = p[1] - mu;
      mu += d * p[0] / tot;
      m2 += p[2] + d * d * n * p[0] / tot;
      n = tot;
    }
    const double var = m2 / double(cnt);
    const float inv = float(1.0 / sqrt(var + double(eps)));
    coef[0] = float(mu);
    coef[1] = (gamma ? gamma[c] : 1.f) * inv;
    coef[2] = beta ? beta[c] : 0.f;
    if (blockIdx.x == 0) {
      mean[c] = float(mu);
      invstd[c] = inv;
      if (rmean) {
        const double m = momentum;
        rmean[c] = float((1 - m) * rmean[c] + m * mu);
        rvar[c] = float((1 - m) * rvar[c] + m * var * double(cnt) / double(cnt - 1));
      }
    }
  }
  __syncthreads();
  // (x - mean) first, as the CPU: exact when x is near the mean, where x * scale + shift
  // would cancel two large terms
  const float mu = coef[0], scale = coef[1], b = coef[2];
  const int64_t j0 = blockIdx.x * chunk, j1 = min(cnt, j0 + chunk);
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
    const int64_t k = at(j, C, HW, c);
    y[k] = fmaf(x[k] - mu, scale, b);
  }
}

__global__ void bn_eval_forward_kernel(int64_t C, int64_t HW, int64_t total,
                                       const float* __restrict__ x, const float* __restrict__ gamma,
                                       const float* __restrict__ beta,
                                       const float* __restrict__ mean,
                                       const float* __restrict__ var, float eps,
                                       float* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / HW) % C;
    const float inv = rsqrtf(var[c] + eps);
    const float scale = (gamma ? gamma[c] : 1.f) * inv;
    y[i] = (x[i] - mean[c]) * scale + (beta ? beta[c] : 0.f);
  }
}

// Training backward, split as the forward: per-chunk sums of gy and gy * xhat, then
// gx = gamma * invstd * (gy - mean(gy) - xhat * mean(gy * xhat)) from the merged sums.
// FROM_OUTPUT (a non-affine forward): x is xhat itself, mean and gamma are not read.
template <bool FROM_OUTPUT>
__device__ __forceinline__ float xhat_of(const float* __restrict__ x, int64_t k, float mu,
                                         float inv) {
  return FROM_OUTPUT ? x[k] : (x[k] - mu) * inv;
}

template <bool FROM_OUTPUT>
__global__ void __launch_bounds__(kThreads)
    bn_backward_partial_kernel(int64_t N, int64_t C, int64_t HW, const float* __restrict__ x,
                               const float* __restrict__ gy, const float* __restrict__ mean,
                               const float* __restrict__ invstd, int64_t chunk,
                               double* __restrict__ part) {
  __shared__ double smem[32];
  const int64_t c = blockIdx.y, cnt = N * HW;
  const int64_t j0 = blockIdx.x * chunk, j1 = min(cnt, j0 + chunk);
  const float mu = FROM_OUTPUT ? 0.f : mean[c], inv = invstd[c];
  double sg = 0, sgx = 0;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
    const int64_t k = at(j, C, HW, c);
    const float g = gy[k];
    sg += g;
    sgx += double(g) * double(xhat_of<FROM_OUTPUT>(x, k, mu, inv));
  }
  sg = block_sum(sg, smem);
  sgx = block_sum(sgx, smem);
  if (threadIdx.x == 0) {
    double* o = part + (c * gridDim.x + blockIdx.x) * 2;
    o[0] = sg, o[1] = sgx;
  }
}

template <bool FROM_OUTPUT>
__global__ void __launch_bounds__(kThreads)
    bn_backward_apply_kernel(int64_t N, int64_t C, int64_t HW, const float* __restrict__ x,
                             const float* __restrict__ gy, const float* __restrict__ gamma,
                             const float* __restrict__ mean, const float* __restrict__ invstd,
                             int64_t chunk, const double* __restrict__ part, float* __restrict__ gx,
                             float* __restrict__ dgamma, float* __restrict__ dbeta) {
  __shared__ double smem[32];
  const int64_t c = blockIdx.y, cnt = N * HW;
  // the channel's partials, summed by the block in a fixed order (the same bits every run)
  double sg = 0, sgx = 0;
  for (unsigned k = threadIdx.x; k < gridDim.x; k += blockDim.x) {
    const double* p = part + (c * gridDim.x + k) * 2;
    sg += p[0], sgx += p[1];
  }
  sg = block_sum(sg, smem);
  sgx = block_sum(sgx, smem);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    if (dgamma) dgamma[c] = float(sgx);
    if (dbeta) dbeta[c] = float(sg);
  }
  if (!gx) return;
  const float mu = FROM_OUTPUT ? 0.f : mean[c], inv = invstd[c];
  const float a = (!FROM_OUTPUT && gamma ? gamma[c] : 1.f) * inv;
  const float mg = float(sg / double(cnt)), mgx = float(sgx / double(cnt));
  const int64_t j0 = blockIdx.x * chunk, j1 = min(cnt, j0 + chunk);
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
    const int64_t k = at(j, C, HW, c);
    gx[k] = a * (gy[k] - mg - xhat_of<FROM_OUTPUT>(x, k, mu, inv) * mgx);
  }
}

__global__ void __launch_bounds__(kThreads)
    bn_backward_eval_kernel(int64_t N, int64_t C, int64_t HW, const float* __restrict__ x,
                            const float* __restrict__ gy, const float* __restrict__ gamma,
                            const float* __restrict__ mean, const float* __restrict__ var,
                            float eps, float* __restrict__ gx, float* __restrict__ dgamma,
                            float* __restrict__ dbeta) {
  __shared__ double smem[32];
  const int64_t c = blockIdx.x, cnt = N * HW;
  const float mu = mean[c], inv = 1.f / sqrtf(var[c] + eps);
  const float a = (gamma ? gamma[c] : 1.f) * inv;
  double sg = 0, sgx = 0;
  for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) {
    const int64_t k = at(j, C, HW, c);
    const float g = gy[k];
    gx[k] = g * a;
    sg += g;
    sgx += double(g) * double((x[k] - mu) * inv);
  }
  sg = block_sum(sg, smem);
  sgx = block_sum(sgx, smem);
  if (threadIdx.x == 0) {
    if (dgamma) dgamma[c] = float(sgx);
    if (dbeta) dbeta[c] = float(sg);
  }
}

}  // namespace

void batch_norm_forward_train(int64_t N, int64_t C, int64_t HW, const float* x, const float* gamma,
                              const float* beta, float eps, float momentum, float* y, float* mean,
                              float* invstd, float* running_mean, float* running_var) {
  if (C == 0) return;
  const Split sp = split_for(N * HW, C);
  const size_t bytes = size_t(C * sp.splits) * 3 * sizeof(double);
  double* part = static_cast<double*>(scratch_alloc(bytes));
  const dim3 grid(unsigned(sp.splits), unsigned(C));
  bn_stats_partial_kernel<<<grid, kThreads, 0, stream()>>>(N, C, HW, x, sp.chunk, part);
  TNAS_CUDA_LAUNCHED();
  bn_train_apply_kernel<<<grid, kThreads, 0, stream()>>>(N, C, HW, x, gamma, beta, eps, momentum,
                                                         sp.chunk, part, y, mean, invstd,
                                                         running_mean, running_var);
  TNAS_CUDA_LAUNCHED();
  scratch_free(part, bytes);
}
void batch_norm_forward_eval(int64_t N, int64_t C, int64_t HW, const float* x, const float* gamma,
                             const float* beta, const float* mean, const float* var, float eps,
                             float* y) {
  const int64_t total = N * C * HW;
  if (total == 0) return;
  bn_eval_forward_kernel<<<blocks_for(total, 256), 256, 0, stream()>>>(C, HW, total, x, gamma, beta,
                                                                       mean, var, eps, y);
  TNAS_CUDA_LAUNCHED();
}
namespace {
// The split training backward (see split_for); x is xhat when FROM_OUTPUT.
template <bool FROM_OUTPUT>
void bn_backward(int64_t N, int64_t C, int64_t HW, const float* x, const float* gy,
                 const float* gamma, const float* mean, const float* invstd, float* gx,
                 float* dgamma, float* dbeta) {
  if (C == 0) return;
  const Split sp = split_for(N * HW, C);
  const size_t bytes = size_t(C * sp.splits) * 2 * sizeof(double);
  double* part = static_cast<double*>(scratch_alloc(bytes));
  const dim3 grid(unsigned(sp.splits), unsigned(C));
  bn_backward_partial_kernel<FROM_OUTPUT>
      <<<grid, kThreads, 0, stream()>>>(N, C, HW, x, gy, mean, invstd, sp.chunk, part);
  TNAS_CUDA_LAUNCHED();
  bn_backward_apply_kernel<FROM_OUTPUT><<<grid, kThreads, 0, stream()>>>(
      N, C, HW, x, gy, gamma, mean, invstd, sp.chunk, part, gx, dgamma, dbeta);
  TNAS_CUDA_LAUNCHED();
  scratch_free(part, bytes);
}
}  // namespace

void batch_norm_backward(int64_t N, int64_t C, int64_t HW, const float* x, const float* gy,
                         const float* gamma, const float* mean, const float* invstd, float* gx,
                         float* dgamma, float* dbeta) {
  bn_backward<false>(N, C, HW, x, gy, gamma, mean, invstd, gx, dgamma, dbeta);
}
void batch_norm_backward_from_output(int64_t N, int64_t C, int64_t HW, const float* xhat,
                                     const float* gy, const float* invstd, float* gx) {
  bn_backward<true>(N, C, HW, xhat, gy, nullptr, nullptr, invstd, gx, nullptr, nullptr);
}
void batch_norm_backward_eval(int64_t N, int64_t C, int64_t HW, const float* x, const float* gy,
                              const float* gamma, const float* mean, const float* var, float eps,
                              float* gx, float* dgamma, float* dbeta) {
  if (C == 0) return;
  bn_backward_eval_kernel<<<unsigned(C), kThreads, 0, stream()>>>(N, C, HW, x, gy, gamma, mean, var,
                                                                  eps, gx, dgamma, dbeta);
  TNAS_CUDA_LAUNCHED();
}

}  // namespace tnas::cuda::detail
