// Softmax, log-softmax and cross-entropy over the last axis of [rows, cols] (float32). One warp
// per row (rows of NAS heads are short: the class count), 8 rows per block.
#include "common.cuh"

namespace tnas::cuda::detail {
namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Log-sum-exp of one row, computed by the whole warp.
__device__ __forceinline__ float row_lse(const float* __restrict__ x, int64_t cols, int lane) {
  float m = -INFINITY;
  for (int64_t c = lane; c < cols; c += 32) m = fmaxf(m, x[c]);
  m = warp_max(m);
  float s = 0.f;
  for (int64_t c = lane; c < cols; c += 32) s += expf(x[c] - m);
  s = warp_sum(s);
  return m + logf(s);
}

template <bool Log>
__global__ void softmax_forward_kernel(int64_t rows, int64_t cols, const float* __restrict__ x,
                                       float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (r >= rows) return;
  const float* xr = x + r * cols;
  float* yr = y + r * cols;
  const float lse = row_lse(xr, cols, lane);
  for (int64_t c = lane; c < cols; c += 32) yr[c] = Log ? xr[c] - lse : expf(xr[c] - lse);
}

// Log: gx = g - exp(y) * sum(g); softmax: gx = y * (g - sum(g * y)).
template <bool Log>
__global__ void softmax_backward_kernel(int64_t rows, int64_t cols, const float* __restrict__ g,
                                        const float* __restrict__ y, float* __restrict__ gx) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (r >= rows) return;
  const float* gr = g + r * cols;
  const float* yr = y + r * cols;
  float s = 0.f;
  for (int64_t c = lane; c < cols; c += 32) s += Log ? gr[c] : gr[c] * yr[c];
  s = warp_sum(s);
  for (int64_t c = lane; c < cols; c += 32)
    gx[r * cols + c] = Log ? gr[c] - expf(yr[c]) * s : yr[c] * (gr[c] - s);
}

// One block: each warp takes rows lane-strided, keeps its partial loss, and the block sums the
// warps' partials in warp order (deterministic).
__global__ void cross_entropy_kernel(int64_t B, int64_t K, const float* __restrict__ x,
                                     const float* __restrict__ labels, float* __restrict__ loss,
                                     float* __restrict__ dlogits) {
  __shared__ float part[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float invB = 1.f / float(B);
  float acc = 0.f;
  for (int64_t r = warp; r < B; r += kWarps) {
    const float* xr = x + r * K;
    const float lse = row_lse(xr, K, lane);
    const float lf = labels[r];
    const bool ok = lf >= 0.f && lf < float(K);  // else NaN: a bad label is seen in the loss
    const int64_t lab = ok ? int64_t(lf) : 0;
    for (int64_t c = lane; c < K; c += 32)
      dlogits[r * K + c] = ok ? (expf(xr[c] - lse) - (c == lab ? 1.f : 0.f)) * invB : nanf("");
    acc += ok ? lse - xr[lab] : nanf("");
  }
  if (lane == 0) part[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int w = 0; w < kWarps; ++w) s += part[w];
    *loss = s * invB;
  }
}

unsigned row_blocks(int64_t rows) {
  return unsigned((rows + kWarps - 1) / kWarps);
}

}  // namespace

void log_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y) {
  if (rows == 0) return;
  softmax_forward_kernel<true><<<row_blocks(rows), 32 * kWarps, 0, stream()>>>(rows, cols, x, y);
  TNAS_CUDA_LAUNCHED();
}
void log_softmax_backward(int64_t rows, int64_t cols, const float* g, const float* y, float* gx) {
  if (rows == 0) return;
  softmax_backward_kernel<true>
      <<<row_blocks(rows), 32 * kWarps, 0, stream()>>>(rows, cols, g, y, gx);
  TNAS_CUDA_LAUNCHED();
}
void softmax_forward(int64_t rows, int64_t cols, const float* x, float* y) {
  if (rows == 0) return;
  softmax_forward_kernel<false><<<row_blocks(rows), 32 * kWarps, 0, stream()>>>(rows, cols, x, y);
  TNAS_CUDA_LAUNCHED();
}
void softmax_backward(int64_t rows, int64_t cols, const float* g, const float* y, float* gx) {
  if (rows == 0) return;
  softmax_backward_kernel<false>
      <<<row_blocks(rows), 32 * kWarps, 0, stream()>>>(rows, cols, g, y, gx);
  TNAS_CUDA_LAUNCHED();
}
void cross_entropy_forward(int64_t B, int64_t K, const float* x, const float* labels, float* loss,
                           float* dlogits) {
  cross_entropy_kernel<<<1, 32 * kWarps, 0, stream()>>>(B, K, x, labels, loss, dlogits);
  TNAS_CUDA_LAUNCHED();
}

}  // namespace tnas::cuda::detail
