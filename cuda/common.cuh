// Private helpers of the CUDA backend: error checks that throw tnas::Error, the one stream
// every tnas kernel runs on, launch geometry, and the declarations of the kernels that
// runtime.cu puts into the backend table.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "tnas/backend/registry.hpp"
#include "tnas/core/error.hpp"

#define TNAS_CUDA_CHECK(expr)                                                            \
  do {                                                                                   \
    cudaError_t _e = (expr);                                                             \
    TNAS_CHECK(_e == cudaSuccess, "CUDA error ", cudaGetErrorName(_e), " (",             \
               cudaGetErrorString(_e), ") in ", #expr, " at ", __FILE__, ":", __LINE__); \
  } while (0)
// After a launch: reports a bad configuration at once (no synchronisation).
#define TNAS_CUDA_LAUNCHED() TNAS_CUDA_CHECK(cudaGetLastError())
#define TNAS_CUBLAS_CHECK(expr)                                                              \
  do {                                                                                       \
    cublasStatus_t _s = (expr);                                                              \
    TNAS_CHECK(_s == CUBLAS_STATUS_SUCCESS, "cuBLAS error ", int(_s), " in ", #expr, " at ", \
               __FILE__, ":", __LINE__);                                                     \
  } while (0)

namespace tnas::cuda::detail {

// The stream every tnas kernel, copy and cuBLAS call is enqueued on. Blocks of the caching
// allocator are reused in this stream's order, which is what makes reuse without
// synchronisation safe.
cudaStream_t stream();
cublasHandle_t cublas();
int sm_count();
// The most shared memory (static plus dynamic) a block may opt in to on this device.
size_t smem_optin();
// The device's grid limit along y (axis 1) or z (axis 2): 65535 on every GPU so far. Under
// tests/cudasim it is asked for at each call, so that a test can lower it and check that the
// launches that split their work to fit it still cover all of it.
unsigned max_grid(int axis);

// Lets Kernel (a kernel without static shared memory) launch with `bytes` of dynamic shared
// memory. Past the default 48 KiB it opts Kernel in to the device's maximum, once: never to
// `bytes` itself, since a later, smaller launch would lower the limit under a launch captured
// in a graph before it. `what` names the op in the error when the device has too little.
template <auto Kernel>
void allow_smem(size_t bytes, const char* what) {
  if (bytes <= size_t(48) * 1024) return;
  TNAS_CHECK(bytes <= smem_optin(), what, " (cuda): ", bytes,
             " bytes of shared memory, more than the device's ", smem_optin());
  static const bool raised = [] {
    TNAS_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(smem_optin())));
    return true;
  }();
  (void)raised;
}

// Scratch device memory from the caching allocator, returned in stream order (a later kernel
// on the stream may reuse it after the kernels that use it now).
void* scratch_alloc(size_t bytes);
void scratch_free(void* p, size_t bytes);

inline unsigned blocks_for(int64_t n, int threads, int64_t cap = 65535LL * 8) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > cap) b = cap;
  return unsigned(b);
}

// Warp and block sums (blockDim.x a multiple of 32, at most 1024). Every thread gets the total.
// Under tests/cudasim the warp reductions are one simulated step that does the same shuffles
// and additions in the same order (five thread switches fewer per reduction).
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#ifdef TNAS_CUDASIM
  return cudasim::warp_reduce<T, false>(0xffffffffu, v, 32);
#else
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
#endif
}
// The sum over lanes [0, lanes) of a warp, in lane 0 (the other lanes get partial sums); for a
// block whose last warp is partial (lanes < 32), whose missing lanes a full-mask shuffle would
// name (undefined behaviour).
template <class T>
__device__ __forceinline__ T warp_sum_lane0(T v, int lanes) {
  const unsigned mask = lanes >= 32 ? 0xffffffffu : (1u << lanes) - 1u;
#ifdef TNAS_CUDASIM
  return cudasim::warp_reduce<T, true>(mask, v, lanes);
#endif
  const int lane = int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T u = __shfl_down_sync(mask, v, o);
    if (lane + o < lanes) v += u;
  }
  return v;
}
template <class T>
__device__ __forceinline__ T block_sum(T v, T* smem32) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem32 may still be read by a previous call
  if (lane == 0) smem32[wid] = v;
  __syncthreads();
  v = lane < nw ? smem32[lane] : T(0);
  return warp_sum(v);
}

// ---- kernels registered in the table (see backend/registry.hpp for the contracts) --------
using backend::BinaryOp;
using backend::ConvShape;
using backend::PoolShape;
using backend::UnaryOp;
using backend::View;

void unary(UnaryOp op, DType t, const void* x, void* y, int64_t n, double s);
void unary_backward(UnaryOp op, DType t, const void* g, const void* x, const void* y, void* gx,
                    int64_t n);
void binary(BinaryOp op, DType t, const void* a, const View& va, const void* b, const View& vb,
            void* out);
void copy_view(DType t, void* dst, const View& vd, const void* src, const View& vs, double factor);
void reduce_sum(DType t, const void* x, const View& vx, unsigned mask, void* out, double factor);
void fill(void* dst, DType t, double value, size_t count);
void convert(void* dst, DType dt, const void* src, DType st, size_t count);
void accumulate(void* dst, const void* src, DType t, size_t count);
void gather(void* dst, const void* src, DType t, const int64_t* shape, const int64_t* strides,
            int rank);

void conv2d_forward(const ConvShape& p, const float* x, const float* w, float* y);
void conv2d_backward_input(const ConvShape& p, const float* gy, const float* w, const float* x,
                           float* gx);
void conv2d_backward_weight(const ConvShape& p, const float* x, const float* gy, float* gw);
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// cudnn.cu: cuDNN's plan for convolution p where the current ConvEngine (cuda.hpp) sends p to
// cuDNN, given whether tnas has a kernel written for its shape; null where it does not, where
// cuDNN cannot take the shape, and in a build without cuDNN. The cudnn_ calls run a plan and
// read x as given (the caller applies p.relu_x: cuDNN does not fuse it).
struct CudnnPlan;
const CudnnPlan* cudnn_plan(const ConvShape& p, bool native_kernel_for_shape);
void cudnn_conv2d_forward(const CudnnPlan& pl, const float* x, const float* w, float* y);
void cudnn_conv2d_backward_input(const CudnnPlan& pl, const float* gy, const float* w, float* gx);
void cudnn_conv2d_backward_weight(const CudnnPlan& pl, const float* x, const float* gy, float* gw);
// Creates the cuDNN handle now if the engine may use it (before a graph capture begins).
void cudnn_prepare();

void max_pool2d_forward(const PoolShape& p, const float* x, float* y);
void max_pool2d_backward(const PoolShape& p, const float* x, const float* gy, float* gx);
void avg_pool2d_forward(const PoolShape& p, const float* x, float* y);
void avg_pool2d_backward(const PoolShape& p, const float* gy, float* gx);

void batch_norm_forward_train(int64_t N, int64_t C, int64_t HW, const float* x, const float* gamma,
                              const float* beta, float eps, float momentum, float* y, float* mean,
                              float* invstd, float* running_mean, float* running_var);
void batch_norm_forward_eval(int64_t N, int64_t C, int64_t HW, const float* x, const float* gamma,
                             const float* beta, const float* mean, const float* var, float eps,
                             float* y);
void batch_norm_backward(int64_t N, int64_t C, int64_t HW, const float* x, const float* gy,
                         const float* gamma, const float* mean, const float* invstd, float* gx,
                         float* dgamma, float* dbeta);
void batch_norm_backward_from_output(int64_t N, int64_t C, int64_t HW, const float* xhat,
                                     const float* gy, const float* invstd, float* gx);
void batch_norm_backward_eval(int64_t N, int64_t C, int64_t HW, const float* x, const float* gy,
                              const float* gamma, const float* mean, const float* var, float eps,
                              float* gx, float* dgamma, float* dbeta);

void weighted_sum_forward(int K, const float* const* ys, const float* w, float* out, int64_t n);
void weighted_sum_backward(int K, const float* const* ys, const float* w, const float* g,
                           float* const* gys, float* gw, int64_t n);

void log_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y);
void log_softmax_backward(int64_t rows, int64_t cols, const float* g, const float* y, float* gx);
void softmax_forward(int64_t rows, int64_t cols, const float* x, float* y);
void softmax_backward(int64_t rows, int64_t cols, const float* g, const float* y, float* gx);
void cross_entropy_forward(int64_t B, int64_t K, const float* x, const float* labels, float* loss,
                           float* dlogits);

using backend::AdamStep;
using backend::SgdStep;
void sgd_step(int n, const int64_t* numel, float* const* p, const float* const* g,
              float* const* buf, const uint8_t* first, const SgdStep& a, const float* lr);
void adam_step(int n, const int64_t* numel, float* const* p, const float* const* g, float* const* m,
               float* const* v, const AdamStep& a, const float* scalars);
void sum_squares(int n, const int64_t* numel, const float* const* x, float* out);
void clip_scale(int n, const int64_t* numel, float* const* x, const float* sumsq, float max_norm);

}  // namespace tnas::cuda::detail
