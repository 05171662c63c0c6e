// Elementwise kernels, strided copies and reductions (float32 and float64), and the mixed-op
// weighted sum (float32). All are grid-stride loops enqueued on the tnas stream.
#include <algorithm>

#include "common.cuh"

namespace tnas::cuda::detail {
namespace {

constexpr int kThreads = 256;

// Calls f.template operator()<T>() for T = float or double.
template <class F>
void by_type(DType t, F&& f) {
  if (t == DType::f32)
    f.template operator()<float>();
  else
    f.template operator()<double>();
}

// ---- unary ---------------------------------------------------------------------------------
template <UnaryOp Op, class T>
__device__ __forceinline__ T apply_unary(T v, T s) {
  if constexpr (Op == UnaryOp::relu) return v > T(0) ? v : T(0);
  if constexpr (Op == UnaryOp::sigmoid) return T(1) / (T(1) + exp(-v));
  if constexpr (Op == UnaryOp::tanh) return tanh(v);
  if constexpr (Op == UnaryOp::exp) return exp(v);
  if constexpr (Op == UnaryOp::log) return log(v);
  if constexpr (Op == UnaryOp::square) return v * v;
  if constexpr (Op == UnaryOp::sign_ste) return v >= T(0) ? T(1) : T(-1);
  if constexpr (Op == UnaryOp::scale) return v * s;
  if constexpr (Op == UnaryOp::add_scalar) return v + s;
  return v;
}
// d f / d x expressed through x and the forward output y.
template <UnaryOp Op, class T>
__device__ __forceinline__ T apply_dfdy(T x, T y) {
  if constexpr (Op == UnaryOp::relu) return y > T(0) ? T(1) : T(0);
  if constexpr (Op == UnaryOp::sigmoid) return y * (T(1) - y);
  if constexpr (Op == UnaryOp::tanh) return T(1) - y * y;
  if constexpr (Op == UnaryOp::exp) return y;
  if constexpr (Op == UnaryOp::log) return T(1) / x;
  if constexpr (Op == UnaryOp::square) return T(2) * x;
  if constexpr (Op == UnaryOp::sign_ste) return fabs(x) <= T(1) ? T(1) : T(0);
  return T(1);
}

template <UnaryOp Op, class T>
__global__ void unary_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, T s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = apply_unary<Op>(x[i], s);
}
template <UnaryOp Op, class T>
__global__ void unary_backward_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                      const T* __restrict__ y, T* __restrict__ gx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    gx[i] = g[i] * apply_dfdy<Op>(x[i], y[i]);
}

// Calls f.template operator()<Op>() for the run-time op.
template <class F>
void by_unary(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::relu:
      return f.template operator()<UnaryOp::relu>();
    case UnaryOp::sigmoid:
      return f.template operator()<UnaryOp::sigmoid>();
    case UnaryOp::tanh:
      return f.template operator()<UnaryOp::tanh>();
    case UnaryOp::exp:
      return f.template operator()<UnaryOp::exp>();
    case UnaryOp::log:
      return f.template operator()<UnaryOp::log>();
    case UnaryOp::square:
      return f.template operator()<UnaryOp::square>();
    case UnaryOp::sign_ste:
      return f.template operator()<UnaryOp::sign_ste>();
    case UnaryOp::scale:
      return f.template operator()<UnaryOp::scale>();
    case UnaryOp::add_scalar:
      return f.template operator()<UnaryOp::add_scalar>();
  }
}

// ---- strided views -------------------------------------------------------------------------
// A view by value in kernel parameters; offsets in int64 (views of large tensors).
struct DView {
  int rank;
  int64_t shape[kMaxDims];
  int64_t stride[kMaxDims];
};
DView dview(const View& v) {
  DView d{};
  d.rank = v.rank;
  for (int i = 0; i < v.rank; ++i) {
    d.shape[i] = v.shape[i];
    d.stride[i] = v.stride[i];
  }
  return d;
}
bool is_contiguous(const View& v) {
  int64_t acc = 1;
  for (int i = v.rank - 1; i >= 0; --i) {
    if (v.shape[i] != 1 && v.stride[i] != acc) return false;
    acc *= v.shape[i];
  }
  return true;
}
int64_t numel(const View& v) {
  int64_t n = 1;
  for (int i = 0; i < v.rank; ++i) n *= v.shape[i];
  return n;
}
// Element offset of row-major linear index i under the view's strides.
__device__ __forceinline__ int64_t offset_of(int64_t i, const DView& v) {
  int64_t off = 0;
  for (int k = v.rank - 1; k >= 0; --k) {
    const int64_t e = v.shape[k];
    off += (i % e) * v.stride[k];
    i /= e;
  }
  return off;
}

template <BinaryOp Op, class T>
__device__ __forceinline__ T apply_binary(T a, T b) {
  if constexpr (Op == BinaryOp::add) return a + b;
  if constexpr (Op == BinaryOp::sub) return a - b;
  if constexpr (Op == BinaryOp::mul) return a * b;
  if constexpr (Op == BinaryOp::neg_div) return -a / b;
  return a / b;
}
// mode 0: both contiguous; 1: a contiguous, b a single value; 2: general strided.
template <BinaryOp Op, int Mode, class T>
__global__ void binary_kernel(const T* a, DView va, const T* b, DView vb, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    if constexpr (Mode == 0) {
      out[i] = apply_binary<Op>(a[i], b[i]);
    } else if constexpr (Mode == 1) {
      out[i] = apply_binary<Op>(a[i], b[0]);
    } else {
      out[i] = apply_binary<Op>(a[offset_of(i, va)], b[offset_of(i, vb)]);
    }
  }
}

template <class T>
__global__ void copy_view_kernel(T* dst, DView vd, const T* src, DView vs, int64_t n, T factor,
                                 bool dst_contig) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const T v = src[offset_of(i, vs)] * factor;
    dst[dst_contig ? i : offset_of(i, vd)] = v;
  }
}
template <class T>
__global__ void scale_copy_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t n,
                                  T factor) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = src[i] * factor;
}

// One block per output element: the kept axes (vk) give the output's base offset, the reduced
// axes (vr) are summed over by the block, in double.
template <class T>
__global__ void __launch_bounds__(1024)
    reduce_sum_kernel(const T* __restrict__ x, DView vk, DView vr, int64_t outputs,
                      int64_t per_output, T* __restrict__ out, double factor) {
  __shared__ double smem[32];
  for (int64_t o = blockIdx.x; o < outputs; o += gridDim.x) {
    const int64_t base = offset_of(o, vk);
    double acc = 0;
    for (int64_t j = threadIdx.x; j < per_output; j += blockDim.x)
      acc += x[base + offset_of(j, vr)];
    acc = block_sum(acc, smem);
    if (threadIdx.x == 0) out[o] = T(acc * factor);
  }
}

template <class T>
__global__ void fill_kernel(T* __restrict__ d, T v, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    d[i] = v;
}
template <class D, class S>
__global__ void convert_kernel(D* __restrict__ d, const S* __restrict__ s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    d[i] = D(s[i]);
}
template <class T>
__global__ void accumulate_kernel(T* __restrict__ d, const T* __restrict__ s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    d[i] += s[i];
}

// ---- mixed-op weighted sum -----------------------------------------------------------------
constexpr int kMaxCandidates = 16;
struct Candidates {
  const float* y[kMaxCandidates];
  float* gy[kMaxCandidates];
};

// out[i] = sum_k w[k] y_k[i]; four elements per thread when every pointer is 16-byte aligned
// and n % 4 == 0 (Vec4), one otherwise. The weights stay on the device: no host sync.
template <bool Vec4>
__global__ void weighted_sum_kernel(Candidates c, int K, const float* __restrict__ w,
                                    float* __restrict__ out, int64_t n) {
  __shared__ float ws[kMaxCandidates];
  if (int(threadIdx.x) < K) ws[threadIdx.x] = w[threadIdx.x];
  __syncthreads();
  const int64_t m = Vec4 ? n / 4 : n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m;
       i += int64_t(gridDim.x) * blockDim.x) {
    if constexpr (Vec4) {
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int k = 0; k < K; ++k) {
        if (!c.y[k]) continue;
        const float4 v = __ldg(reinterpret_cast<const float4*>(c.y[k]) + i);
        const float wk = ws[k];
        acc.x += wk * v.x, acc.y += wk * v.y, acc.z += wk * v.z, acc.w += wk * v.w;
      }
      reinterpret_cast<float4*>(out)[i] = acc;
    } else {
      float acc = 0.f;
      for (int k = 0; k < K; ++k)
        if (c.y[k]) acc += ws[k] * __ldg(c.y[k] + i);
      out[i] = acc;
    }
  }
}

// gy_k[i] = w[k] g[i] for the wanted k, and per block partial[block][k] = sum_i g[i] y_k[i]
// (float accumulation per thread, reduced in the block; a second kernel sums the blocks in a
// fixed order, so the result is deterministic and there are no atomics).
__global__ void weighted_sum_backward_kernel(Candidates c, int K, const float* __restrict__ w,
                                             const float* __restrict__ g, int64_t n,
                                             float* __restrict__ partial, bool want_w) {
  __shared__ float ws[kMaxCandidates];
  __shared__ float red[kThreads / 32][kMaxCandidates];
  if (int(threadIdx.x) < K) ws[threadIdx.x] = w[threadIdx.x];
  __syncthreads();
  float acc[kMaxCandidates];
#pragma unroll
  for (int k = 0; k < kMaxCandidates; ++k) acc[k] = 0.f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i];
#pragma unroll
    for (int k = 0; k < kMaxCandidates; ++k) {
      if (k >= K) break;
      if (c.gy[k]) c.gy[k][i] = ws[k] * gi;
      if (want_w && c.y[k]) acc[k] += gi * __ldg(c.y[k] + i);
    }
  }
  if (!want_w) return;
  // The K sums: warp shuffles, one row of K per warp in shared memory, one barrier.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < kMaxCandidates; ++k) {
    if (k >= K) break;
    const float s = warp_sum(acc[k]);
    if (lane == 0) red[warp][k] = s;
  }
  __syncthreads();
  if (int(threadIdx.x) < K) {
    float s = 0.f;
    for (int i = 0; i < kThreads / 32; ++i) s += red[i][threadIdx.x];
    partial[blockIdx.x * K + threadIdx.x] = s;
  }
}
__global__ void sum_partials_kernel(const float* __restrict__ partial, int blocks, int K,
                                    float* __restrict__ gw) {
  const int k = threadIdx.x;
  if (k >= K) return;
  double s = 0;
  for (int b = 0; b < blocks; ++b) s += partial[b * K + k];
  gw[k] = float(s);
}

}  // namespace

void unary(UnaryOp op, DType t, const void* x, void* y, int64_t n, double s) {
  if (n == 0) return;
  by_type(t, [&]<class T>() {
    by_unary(op, [&]<UnaryOp Op>() {
      unary_kernel<Op, T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
          static_cast<const T*>(x), static_cast<T*>(y), n, T(s));
    });
  });
  TNAS_CUDA_LAUNCHED();
}

void unary_backward(UnaryOp op, DType t, const void* g, const void* x, const void* y, void* gx,
                    int64_t n) {
  if (n == 0) return;
  by_type(t, [&]<class T>() {
    by_unary(op, [&]<UnaryOp Op>() {
      unary_backward_kernel<Op, T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
          static_cast<const T*>(g), static_cast<const T*>(x), static_cast<const T*>(y),
          static_cast<T*>(gx), n);
    });
  });
  TNAS_CUDA_LAUNCHED();
}

void binary(BinaryOp op, DType t, const void* a, const View& va, const void* b, const View& vb,
            void* out) {
  const int64_t n = numel(va);
  if (n == 0) return;
  const bool ca = is_contiguous(va), cb = is_contiguous(vb);
  const int mode = ca && cb ? 0
                   : (ca && numel(vb) == 1) || (ca &&
                                                [&] {
                                                  for (int i = 0; i < vb.rank; ++i)
                                                    if (vb.shape[i] != 1 && vb.stride[i] != 0)
                                                      return false;
                                                  return true;
                                                }())
                       ? 1
                       : 2;
  const DView da = dview(va), db = dview(vb);
  by_type(t, [&]<class T>() {
    auto go = [&]<BinaryOp Op>() {
      const T* pa = static_cast<const T*>(a);
      const T* pb = static_cast<const T*>(b);
      T* po = static_cast<T*>(out);
      const unsigned blocks = blocks_for(n, kThreads);
      if (mode == 0)
        binary_kernel<Op, 0, T><<<blocks, kThreads, 0, stream()>>>(pa, da, pb, db, po, n);
      else if (mode == 1)
        binary_kernel<Op, 1, T><<<blocks, kThreads, 0, stream()>>>(pa, da, pb, db, po, n);
      else
        binary_kernel<Op, 2, T><<<blocks, kThreads, 0, stream()>>>(pa, da, pb, db, po, n);
    };
    switch (op) {
      case BinaryOp::add:
        go.template operator()<BinaryOp::add>();
        break;
      case BinaryOp::sub:
        go.template operator()<BinaryOp::sub>();
        break;
      case BinaryOp::mul:
        go.template operator()<BinaryOp::mul>();
        break;
      case BinaryOp::div:
        go.template operator()<BinaryOp::div>();
        break;
      case BinaryOp::neg_div:
        go.template operator()<BinaryOp::neg_div>();
        break;
    }
  });
  TNAS_CUDA_LAUNCHED();
}

void copy_view(DType t, void* dst, const View& vd, const void* src, const View& vs, double factor) {
  const int64_t n = numel(vs);
  if (n == 0) return;
  const bool cd = is_contiguous(vd), cs = is_contiguous(vs);
  by_type(t, [&]<class T>() {
    if (cd && cs && factor == 1.0) {
      TNAS_CUDA_CHECK(
          cudaMemcpyAsync(dst, src, size_t(n) * sizeof(T), cudaMemcpyDeviceToDevice, stream()));
    } else if (cd && cs) {
      scale_copy_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
          static_cast<T*>(dst), static_cast<const T*>(src), n, T(factor));
    } else {
      copy_view_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
          static_cast<T*>(dst), dview(vd), static_cast<const T*>(src), dview(vs), n, T(factor), cd);
    }
  });
  TNAS_CUDA_LAUNCHED();
}

void gather(void* dst, const void* src, DType t, const int64_t* shape, const int64_t* strides,
            int rank) {
  View vs, vd;
  vs.rank = vd.rank = rank;
  int64_t acc = 1;
  for (int i = rank - 1; i >= 0; --i) {
    vs.shape[i] = vd.shape[i] = shape[i];
    vs.stride[i] = strides[i];
    vd.stride[i] = acc;
    acc *= shape[i];
  }
  copy_view(t, dst, vd, src, vs, 1.0);
}

void reduce_sum(DType t, const void* x, const View& vx, unsigned mask, void* out, double factor) {
  View vk, vr;  // kept and reduced axes, each in their original order
  for (int i = 0; i < vx.rank; ++i) {
    View& v = (mask >> i) & 1u ? vr : vk;
    v.shape[v.rank] = vx.shape[i];
    v.stride[v.rank] = vx.stride[i];
    ++v.rank;
  }
  const int64_t outputs = numel(vk), per = numel(vr);
  if (outputs == 0) return;
  by_type(t, [&]<class T>() {
    if (per == 0) {
      fill_kernel<T><<<blocks_for(outputs, kThreads), kThreads, 0, stream()>>>(static_cast<T*>(out),
                                                                               T(0), outputs);
      return;
    }
    const int threads = per >= 4096 ? 1024 : per >= 256 ? 256 : 32;
    reduce_sum_kernel<T>
        <<<unsigned(std::min<int64_t>(outputs, 65535LL * 4)), threads, 0, stream()>>>(
            static_cast<const T*>(x), dview(vk), dview(vr), outputs, per, static_cast<T*>(out),
            factor);
  });
  TNAS_CUDA_LAUNCHED();
}

void fill(void* dst, DType t, double value, size_t count) {
  if (count == 0) return;
  by_type(t, [&]<class T>() {
    if (value == 0.0) {
      TNAS_CUDA_CHECK(cudaMemsetAsync(dst, 0, count * sizeof(T), stream()));
      return;
    }
    fill_kernel<T><<<blocks_for(int64_t(count), kThreads), kThreads, 0, stream()>>>(
        static_cast<T*>(dst), T(value), int64_t(count));
  });
  TNAS_CUDA_LAUNCHED();
}

void convert(void* dst, DType dt, const void* src, DType st, size_t count) {
  if (count == 0) return;
  const int64_t n = int64_t(count);
  by_type(dt, [&]<class D>() {
    by_type(st, [&]<class S>() {
      convert_kernel<D, S><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
          static_cast<D*>(dst), static_cast<const S*>(src), n);
    });
  });
  TNAS_CUDA_LAUNCHED();
}

void accumulate(void* dst, const void* src, DType t, size_t count) {
  if (count == 0) return;
  const int64_t n = int64_t(count);
  by_type(t, [&]<class T>() {
    accumulate_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
        static_cast<T*>(dst), static_cast<const T*>(src), n);
  });
  TNAS_CUDA_LAUNCHED();
}

void weighted_sum_forward(int K, const float* const* ys, const float* w, float* out, int64_t n) {
  TNAS_CHECK(K >= 1 && K <= kMaxCandidates, "weighted_sum (cuda): ", K,
             " candidates; the kernel takes 1 to ", kMaxCandidates);
  if (n == 0) return;
  Candidates c{};
  bool aligned = n % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  for (int k = 0; k < K; ++k) {
    c.y[k] = ys[k];
    if (ys[k] && reinterpret_cast<uintptr_t>(ys[k]) % 16 != 0) aligned = false;
  }
  if (aligned)
    weighted_sum_kernel<true>
        <<<blocks_for(n / 4, kThreads, 8LL * sm_count() * 4), kThreads, 0, stream()>>>(c, K, w, out,
                                                                                       n);
  else
    weighted_sum_kernel<false>
        <<<blocks_for(n, kThreads, 8LL * sm_count() * 4), kThreads, 0, stream()>>>(c, K, w, out, n);
  TNAS_CUDA_LAUNCHED();
}

void weighted_sum_backward(int K, const float* const* ys, const float* w, const float* g,
                           float* const* gys, float* gw, int64_t n) {
  TNAS_CHECK(K >= 1 && K <= kMaxCandidates, "weighted_sum (cuda): ", K,
             " candidates; the kernel takes 1 to ", kMaxCandidates);
  Candidates c{};
  for (int k = 0; k < K; ++k) {
    c.y[k] = ys[k];
    c.gy[k] = gys[k];
  }
  // A fixed grid (a few blocks per SM): the partial sums are [blocks, K] and small.
  const unsigned blocks = blocks_for(n, kThreads, 4LL * std::max(1, sm_count()));
  const size_t pbytes = size_t(blocks) * K * sizeof(float);
  float* partial = gw ? static_cast<float*>(scratch_alloc(pbytes)) : nullptr;
  if (n > 0)
    weighted_sum_backward_kernel<<<blocks, kThreads, 0, stream()>>>(c, K, w, g, n, partial,
                                                                    gw != nullptr);
  TNAS_CUDA_LAUNCHED();
  if (gw) {
    if (n > 0) {
      sum_partials_kernel<<<1, 32, 0, stream()>>>(partial, int(blocks), K, gw);
    } else {
      TNAS_CUDA_CHECK(cudaMemsetAsync(gw, 0, size_t(K) * sizeof(float), stream()));
    }
    TNAS_CUDA_LAUNCHED();
    scratch_free(partial, pbytes);
  }
}

}  // namespace tnas::cuda::detail
