// Updates over lists of tensors: the fused SGD and Adam steps, and the two halves of gradient
// clipping (a deterministic sum of squares, and a scale whose factor is computed on the device),
// so an optimizer step is a few launches for all parameters together and never reads a value
// back to the host.
//
// A list is cut into launches of at most kMaxList tensors whose pointers and sizes travel in the
// kernel's parameters (under the classic 4 KiB limit), so nothing is copied to the device
// first and a step can be captured in a CUDA graph. Each block takes kChunk elements of one
// tensor: block_start[] maps a block to its tensor.
#include <algorithm>
#include <vector>

#include "common.cuh"

namespace tnas::cuda::detail {
namespace {

constexpr int kMaxList = 40;
constexpr int kThreads = 256;
constexpr int kChunk = kThreads * 8;  // elements per block

struct List {
  int n = 0;
  int block_start[kMaxList + 1];
  int64_t numel[kMaxList];
  float* p[kMaxList];
  const float* g[kMaxList];
  float* b0[kMaxList];
  float* b1[kMaxList];
  int index[kMaxList];  // the tensor's number in the caller's list (for `scalars`)
  uint8_t flag[kMaxList];
};
static_assert(sizeof(List) < 4000, "List must fit the 4 KiB kernel parameter space");

// The tensor whose chunk block b is, and the chunk's first element.
__device__ __forceinline__ int find_tensor(const List& L, int b, int64_t& base) {
  int t = 0;
  while (t + 1 < L.n && L.block_start[t + 1] <= b) ++t;
  base = int64_t(b - L.block_start[t]) * kChunk;
  return t;
}

__global__ void sgd_kernel(const List L, SgdStep a, const float* __restrict__ lr_p) {
  int64_t base;
  const int t = find_tensor(L, blockIdx.x, base);
  const int64_t end = min(L.numel[t], base + kChunk);
  float* __restrict__ p = L.p[t];
  const float* __restrict__ g = L.g[t];
  float* __restrict__ b = L.b0[t];
  const bool first = L.flag[t] != 0;
  const float damp = 1.0f - a.dampening, lr = *lr_p;
  for (int64_t i = base + threadIdx.x; i < end; i += blockDim.x) {
    const float pi = p[i];
    float d = g[i];
    if (a.weight_decay != 0.0f) d += a.weight_decay * pi;
    if (b) {
      const float bi = first ? d : a.momentum * b[i] + damp * d;
      b[i] = bi;
      d = a.nesterov ? d + a.momentum * bi : bi;
    }
    p[i] = pi - lr * d;
  }
}

__global__ void adam_kernel(const List L, AdamStep a, const float* __restrict__ scalars) {
  int64_t base;
  const int t = find_tensor(L, blockIdx.x, base);
  const int64_t end = min(L.numel[t], base + kChunk);
  float* __restrict__ p = L.p[t];
  const float* __restrict__ g = L.g[t];
  float* __restrict__ m = L.b0[t];
  float* __restrict__ v = L.b1[t];
  const float step_size = scalars[2 * L.index[t]], c2 = scalars[2 * L.index[t] + 1];
  const float w1 = 1.0f - a.beta1, w2 = 1.0f - a.beta2;
  for (int64_t i = base + threadIdx.x; i < end; i += blockDim.x) {
    const float pi = p[i];
    float d = g[i];
    if (a.weight_decay != 0.0f) d += a.weight_decay * pi;
    const float mi = w1 < 0.5f ? m[i] + w1 * (d - m[i]) : d - (d - m[i]) * (1.0f - w1);
    const float vi = v[i] * a.beta2 + w2 * (d * d);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + -step_size * (mi / (sqrtf(vi) / c2 + a.eps));
  }
}

// partial[first_block + b] = the sum of squares of block b's chunk (double).
__global__ void sum_squares_kernel(const List L, double* partial, int first_block) {
  __shared__ double smem[32];
  int64_t base;
  const int t = find_tensor(L, blockIdx.x, base);
  const int64_t end = min(L.numel[t], base + kChunk);
  const float* __restrict__ x = L.g[t];
  double s = 0;
  for (int64_t i = base + threadIdx.x; i < end; i += blockDim.x) {
    const double v = x[i];
    s += v * v;
  }
  s = block_sum(s, smem);
  if (threadIdx.x == 0) partial[first_block + blockIdx.x] = s;
}

__global__ void __launch_bounds__(1024)
    sum_partials_kernel(const double* partial, int n, float* out) {
  __shared__ double smem[32];
  double s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  s = block_sum(s, smem);
  if (threadIdx.x == 0) out[0] = float(s);
}

__global__ void clip_scale_kernel(const List L, const float* sumsq, float max_norm) {
  const float sq = sumsq[0];
  const float c = max_norm / (sqrtf(sq) + 1e-6f);
  if (!(c < 1.0f) || !isfinite(sq)) return;
  int64_t base;
  const int t = find_tensor(L, blockIdx.x, base);
  const int64_t end = min(L.numel[t], base + kChunk);
  float* __restrict__ x = L.p[t];
  for (int64_t i = base + threadIdx.x; i < end; i += blockDim.x) x[i] *= c;
}

// Calls launch(list, blocks, first_block) for consecutive groups of at most kMaxList tensors
// (empty tensors skipped); fill(list, slot, i) sets the group's per-tensor fields of tensor i.
// Returns the total number of blocks.
template <class Fill, class Launch>
int for_each_group(int n, const int64_t* numel, Fill fill, Launch launch) {
  List L;
  int blocks = 0, total = 0;
  auto flush = [&] {
    if (L.n == 0) return;
    L.block_start[L.n] = blocks;
    launch(L, blocks, total);
    TNAS_CUDA_LAUNCHED();
    total += blocks;
    L.n = 0;
    blocks = 0;
  };
  for (int i = 0; i < n; ++i) {
    if (numel[i] <= 0) continue;
    const int64_t nb = (numel[i] + kChunk - 1) / kChunk;
    TNAS_CHECK(nb < (int64_t(1) << 30), "optimizer kernels: a tensor of ", numel[i],
               " elements is too large");
    if (L.n == kMaxList || blocks + nb > (int64_t(1) << 30)) flush();
    const int s = L.n++;
    L.block_start[s] = blocks;
    L.numel[s] = numel[i];
    L.p[s] = nullptr;
    L.g[s] = nullptr;
    L.b0[s] = L.b1[s] = nullptr;
    L.index[s] = i;
    L.flag[s] = 0;
    fill(L, s, i);
    blocks += int(nb);
  }
  flush();
  return total;
}

int count_blocks(int n, const int64_t* numel) {
  int64_t b = 0;
  for (int i = 0; i < n; ++i)
    if (numel[i] > 0) b += (numel[i] + kChunk - 1) / kChunk;
  TNAS_CHECK(b < (int64_t(1) << 30), "optimizer kernels: too many elements");
  return int(b);
}

}  // namespace

void sgd_step(int n, const int64_t* numel, float* const* p, const float* const* g,
              float* const* buf, const uint8_t* first, const SgdStep& a, const float* lr) {
  for_each_group(
      n, numel,
      [&](List& L, int s, int i) {
        L.p[s] = p[i];
        L.g[s] = g[i];
        L.b0[s] = buf ? buf[i] : nullptr;
        L.flag[s] = first ? first[i] : 0;
      },
      [&](const List& L, int blocks, int) {
        sgd_kernel<<<blocks, kThreads, 0, stream()>>>(L, a, lr);
      });
}

void adam_step(int n, const int64_t* numel, float* const* p, const float* const* g, float* const* m,
               float* const* v, const AdamStep& a, const float* scalars) {
  for_each_group(
      n, numel,
      [&](List& L, int s, int i) {
        L.p[s] = p[i];
        L.g[s] = g[i];
        L.b0[s] = m[i];
        L.b1[s] = v[i];
      },
      [&](const List& L, int blocks, int) {
        adam_kernel<<<blocks, kThreads, 0, stream()>>>(L, a, scalars);
      });
}

void sum_squares(int n, const int64_t* numel, const float* const* x, float* out) {
  const int total = count_blocks(n, numel);
  const size_t bytes = sizeof(double) * size_t(std::max(total, 1));
  auto* partial = static_cast<double*>(scratch_alloc(bytes));
  for_each_group(
      n, numel, [&](List& L, int s, int i) { L.g[s] = x[i]; },
      [&](const List& L, int blocks, int first_block) {
        sum_squares_kernel<<<blocks, kThreads, 0, stream()>>>(L, partial, first_block);
      });
  sum_partials_kernel<<<1, 1024, 0, stream()>>>(partial, total, out);
  TNAS_CUDA_LAUNCHED();
  scratch_free(partial, bytes);
}

void clip_scale(int n, const int64_t* numel, float* const* x, const float* sumsq, float max_norm) {
  for_each_group(
      n, numel, [&](List& L, int s, int i) { L.p[s] = x[i]; },
      [&](const List& L, int blocks, int) {
        clip_scale_kernel<<<blocks, kThreads, 0, stream()>>>(L, sumsq, max_norm);
      });
}

}  // namespace tnas::cuda::detail
