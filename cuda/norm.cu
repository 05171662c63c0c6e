// Batch normalisation over [N, C, HW] (float32). Statistics and gradient sums take one block
// per channel, accumulate in double and read x in a fixed order (deterministic); the
// elementwise parts are fused into the same pass where they can be.
#include "common.cuh"

namespace tnas::cuda::detail {
namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ int64_t at(int64_t j, int64_t C, int64_t HW, int64_t c) {
  const int64_t n = j / HW;
  return (n * C + c) * HW + (j - n * HW);
}

// Two passes per channel (mean, then the centred sum of squares), then y.
__global__ void __launch_bounds__(kThreads)
    bn_train_forward_kernel(int64_t N, int64_t C, int64_t HW, const float* __restrict__ x,
                            const float* __restrict__ gamma, const float* __restrict__ beta,
                            float eps, float momentum, float* __restrict__ y,
                            float* __restrict__ mean, float* __restrict__ invstd,
                            float* __restrict__ rmean, float* __restrict__ rvar) {
  __shared__ double smem[32];
  const int64_t c = blockIdx.x, cnt = N * HW;
  double s = 0;
  for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) s += x[at(j, C, HW, c)];
  const double mu = block_sum(s, smem) / double(cnt);
  double ss = 0;
  for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) {
    const double d = x[at(j, C, HW, c)] - mu;
    ss += d * d;
  }
  const double var = block_sum(ss, smem) / double(cnt);
  const float inv = float(1.0 / sqrt(var + double(eps)));
  const float g = gamma ? gamma[c] : 1.f, b = beta ? beta[c] : 0.f;
  const float scale = g * inv, shift = b - float(mu) * scale;
  for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) {
    const int64_t k = at(j, C, HW, c);
    y[k] = fmaf(x[k], scale, shift);
  }
  if (threadIdx.x == 0) {
    mean[c] = float(mu);
    invstd[c] = inv;
    if (rmean) {
      const double m = momentum;
      rmean[c] = float((1 - m) * rmean[c] + m * mu);
      rvar[c] = float((1 - m) * rvar[c] + m * var * double(cnt) / double(cnt - 1));
    }
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

// Training backward: sums of gy and gy * xhat per channel, then
// gx = gamma * invstd * (gy - mean(gy) - xhat * mean(gy * xhat)).
__global__ void __launch_bounds__(kThreads)
    bn_backward_kernel(int64_t N, int64_t C, int64_t HW, const float* __restrict__ x,
                       const float* __restrict__ gy, const float* __restrict__ gamma,
                       const float* __restrict__ mean, const float* __restrict__ invstd,
                       float* __restrict__ gx, float* __restrict__ dgamma,
                       float* __restrict__ dbeta) {
  __shared__ double smem[32];
  const int64_t c = blockIdx.x, cnt = N * HW;
  const float mu = mean[c], inv = invstd[c];
  double sg = 0, sgx = 0;
  for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) {
    const int64_t k = at(j, C, HW, c);
    const float g = gy[k];
    sg += g;
    sgx += double(g) * double((x[k] - mu) * inv);
  }
  sg = block_sum(sg, smem);
  sgx = block_sum(sgx, smem);
  const float a = (gamma ? gamma[c] : 1.f) * inv;
  const float mg = float(sg / double(cnt)), mgx = float(sgx / double(cnt));
  for (int64_t j = threadIdx.x; j < cnt; j += blockDim.x) {
    const int64_t k = at(j, C, HW, c);
    const float xh = (x[k] - mu) * inv;
    gx[k] = a * (gy[k] - mg - xh * mgx);
  }
  if (threadIdx.x == 0) {
    if (dgamma) dgamma[c] = float(sgx);
    if (dbeta) dbeta[c] = float(sg);
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
  bn_train_forward_kernel<<<unsigned(C), kThreads, 0, stream()>>>(
      N, C, HW, x, gamma, beta, eps, momentum, y, mean, invstd, running_mean, running_var);
  TNAS_CUDA_LAUNCHED();
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
void batch_norm_backward(int64_t N, int64_t C, int64_t HW, const float* x, const float* gy,
                         const float* gamma, const float* mean, const float* invstd, float* gx,
                         float* dgamma, float* dbeta) {
  if (C == 0) return;
  bn_backward_kernel<<<unsigned(C), kThreads, 0, stream()>>>(N, C, HW, x, gy, gamma, mean, invstd,
                                                             gx, dgamma, dbeta);
  TNAS_CUDA_LAUNCHED();
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
