// Max and average pooling (float32, NCHW), forward and backward. Max pooling keeps no index
// tensor: backward recomputes each window's argmax from x (first maximum in row-major order,
// first NaN if any; a window of -infinity passes nothing), as the CPU kernels do. Backward
// kernels gather (one thread per input element, looping over the windows that contain it),
// so there are no atomics and the result is deterministic.
#include "common.cuh"

namespace tnas::cuda::detail {
namespace {

struct DPool {
  int N, C, H, W, k, st, pad, P, Q;
  bool include_pad;
};
DPool dpool(const PoolShape& p) {
  return DPool{int(p.N),      int(p.C),   int(p.H), int(p.W), int(p.k),
               int(p.stride), int(p.pad), int(p.P), int(p.Q), p.count_include_pad};
}

// Row-major index (within the plane) of the window's first maximum, or -1 when no in-bounds
// element beats -infinity. *best gets the window's maximum (NaN if the window has one).
__device__ __forceinline__ int window_argmax(const float* __restrict__ xp, const DPool& d, int p,
                                             int q, float* best) {
  float m = -INFINITY;
  int idx = -1;
  const int h0 = p * d.st - d.pad, w0 = q * d.st - d.pad;
  for (int r = 0; r < d.k; ++r) {
    const int h = h0 + r;
    if (h < 0 || h >= d.H) continue;
    for (int s = 0; s < d.k; ++s) {
      const int w = w0 + s;
      if (w < 0 || w >= d.W) continue;
      const float v = __ldg(xp + h * d.W + w);
      if (m != m) continue;  // a NaN already won
      if (v > m || v != v) {
        m = v;
        idx = h * d.W + w;
      }
    }
  }
  *best = m;
  return idx;
}

__global__ void max_pool_forward_kernel(DPool d, const float* __restrict__ x, float* __restrict__ y,
                                        int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int q = int(i % d.Q), p = int((i / d.Q) % d.P);
    const int64_t plane = i / (int64_t(d.P) * d.Q);
    float m;
    window_argmax(x + plane * d.H * d.W, d, p, q, &m);
    y[i] = m;
  }
}

// The output windows that contain input row h: p in [lo, hi].
__device__ __forceinline__ void windows_of(int h, int pad, int k, int st, int P, int* lo, int* hi) {
  const int a = h + pad - k + 1;  // p * st >= a
  *lo = a <= 0 ? 0 : (a + st - 1) / st;
  const int b = (h + pad) / st;  // p * st <= h + pad
  *hi = b < P - 1 ? b : P - 1;
}

__global__ void max_pool_backward_kernel(DPool d, const float* __restrict__ x,
                                         const float* __restrict__ gy, float* __restrict__ gx,
                                         int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int w = int(i % d.W), h = int((i / d.W) % d.H);
    const int64_t plane = i / (int64_t(d.H) * d.W);
    const float* xp = x + plane * d.H * d.W;
    const float* gp = gy + plane * d.P * d.Q;
    int p0, p1, q0, q1;
    windows_of(h, d.pad, d.k, d.st, d.P, &p0, &p1);
    windows_of(w, d.pad, d.k, d.st, d.Q, &q0, &q1);
    const int me = h * d.W + w;
    float acc = 0.f;
    for (int p = p0; p <= p1; ++p)
      for (int q = q0; q <= q1; ++q) {
        float m;
        if (window_argmax(xp, d, p, q, &m) == me) acc += __ldg(gp + p * d.Q + q);
      }
    gx[i] = acc;
  }
}

__device__ __forceinline__ float avg_divisor(const DPool& d, int p, int q) {
  if (d.include_pad) return float(d.k * d.k);
  const int h0 = p * d.st - d.pad, w0 = q * d.st - d.pad;
  const int hs = max(h0, 0), he = min(h0 + d.k, d.H), ws = max(w0, 0), we = min(w0 + d.k, d.W);
  return float((he - hs) * (we - ws));
}

__global__ void avg_pool_forward_kernel(DPool d, const float* __restrict__ x, float* __restrict__ y,
                                        int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int q = int(i % d.Q), p = int((i / d.Q) % d.P);
    const float* xp = x + (i / (int64_t(d.P) * d.Q)) * d.H * d.W;
    const int h0 = p * d.st - d.pad, w0 = q * d.st - d.pad;
    float s = 0.f;
    for (int r = max(h0, 0); r < min(h0 + d.k, d.H); ++r)
      for (int c = max(w0, 0); c < min(w0 + d.k, d.W); ++c) s += __ldg(xp + r * d.W + c);
    y[i] = s / avg_divisor(d, p, q);
  }
}

__global__ void avg_pool_backward_kernel(DPool d, const float* __restrict__ gy,
                                         float* __restrict__ gx, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int w = int(i % d.W), h = int((i / d.W) % d.H);
    const float* gp = gy + (i / (int64_t(d.H) * d.W)) * d.P * d.Q;
    int p0, p1, q0, q1;
    windows_of(h, d.pad, d.k, d.st, d.P, &p0, &p1);
    windows_of(w, d.pad, d.k, d.st, d.Q, &q0, &q1);
    float acc = 0.f;
    for (int p = p0; p <= p1; ++p)
      for (int q = q0; q <= q1; ++q) acc += __ldg(gp + p * d.Q + q) / avg_divisor(d, p, q);
    gx[i] = acc;
  }
}

}  // namespace

void max_pool2d_forward(const PoolShape& p, const float* x, float* y) {
  const int64_t total = p.N * p.C * p.P * p.Q;
  if (total == 0) return;
  max_pool_forward_kernel<<<blocks_for(total, 256), 256, 0, stream()>>>(dpool(p), x, y, total);
  TNAS_CUDA_LAUNCHED();
}
void max_pool2d_backward(const PoolShape& p, const float* x, const float* gy, float* gx) {
  const int64_t total = p.N * p.C * p.H * p.W;
  if (total == 0) return;
  max_pool_backward_kernel<<<blocks_for(total, 256), 256, 0, stream()>>>(dpool(p), x, gy, gx,
                                                                         total);
  TNAS_CUDA_LAUNCHED();
}
void avg_pool2d_forward(const PoolShape& p, const float* x, float* y) {
  const int64_t total = p.N * p.C * p.P * p.Q;
  if (total == 0) return;
  avg_pool_forward_kernel<<<blocks_for(total, 256), 256, 0, stream()>>>(dpool(p), x, y, total);
  TNAS_CUDA_LAUNCHED();
}
void avg_pool2d_backward(const PoolShape& p, const float* gy, float* gx) {
  const int64_t total = p.N * p.C * p.H * p.W;
  if (total == 0) return;
  avg_pool_backward_kernel<<<blocks_for(total, 256), 256, 0, stream()>>>(dpool(p), gy, gx, total);
  TNAS_CUDA_LAUNCHED();
}

}  // namespace tnas::cuda::detail
