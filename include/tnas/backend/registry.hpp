// Backend registry: the kernels of each non-CPU device, as a table of function pointers.
//
// represents: one `Kernels` table per Device. The CPU path is not in the table: ops call their
//   CPU kernels inline (templated, no indirection), and look the table up only for other devices
//   (one branch per op, not per element). A device's backend fills its table when it is loaded;
//   the CUDA backend (library tnas::cuda, sources in cuda/) does it in tnas_cuda_register().
// requires: every pointer argument is device memory of the table's device, contiguous NCHW
//   (row-major) unless a descriptor gives strides; kernels are enqueued on the backend's stream
//   and return without waiting for the device.
// ensures: a missing entry (nullptr) is reported by kernel() as "<op>: no kernel for device
//   <device> in this build", so an op that a backend lacks fails with its own name.
// Adding a kernel: add the pointer here, set it in the backend's register function, call it
//   from the op through kernel(). kKernelCount keeps this table and its users in step.
#pragma once

#include <cstdint>

#include "tnas/core/dtype.hpp"
#include "tnas/core/error.hpp"
#include "tnas/core/shape.hpp"

namespace tnas::backend {

// A 2-D convolution: input [N, C, H, W], weight [K, C/groups, R, S], output [N, K, P, Q]. Square
// stride / padding / dilation, as ops/conv.hpp's options. relu_x: the convolution reads
// max(x, 0) where it reads x (the ReLU fused into its consumer; the float conv kernels only,
// xnor_conv2d takes it false).
struct ConvShape {
  int64_t N, C, H, W, K, R, S, stride, pad, dil, groups, P, Q;
  bool relu_x = false;
};
// A 2-D pooling window: input [N, C, H, W], output [N, C, P, Q], window k x k.
struct PoolShape {
  int64_t N, C, H, W, k, stride, pad, P, Q;
  bool count_include_pad;
};
// A strided view: element (i_0, ..., i_{rank-1}) is at base + sum i_j * stride[j] (elements).
struct View {
  int rank = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
};

// Hyperparameters of the fused optimizer updates (optim/sgd.hpp and optim/adam.hpp give the
// rules; float32 as the parameters).
struct SgdStep {
  float momentum, dampening, weight_decay;
  bool nesterov;
};
struct AdamStep {
  float beta1, beta2, eps, weight_decay;
};

enum class UnaryOp : uint8_t { relu, sigmoid, tanh, exp, log, square, sign_ste, scale, add_scalar };
// neg_div: -a / b (the factor of d(a/b)/db).
enum class BinaryOp : uint8_t { add, sub, mul, div, neg_div };

struct Kernels {
  // ---- elementwise and data movement (float32 and float64) -------------------------------
  // y[i] = f(x[i]) for i < n; `s` is the constant of scale / add_scalar.
  void (*unary)(UnaryOp op, DType t, const void* x, void* y, int64_t n, double s) = nullptr;
  // gx[i] = g[i] * f'(x[i]) where f' may read the forward output y (relu, sigmoid, tanh, exp).
  void (*unary_backward)(UnaryOp op, DType t, const void* g, const void* x, const void* y, void* gx,
                         int64_t n) = nullptr;
  // out (contiguous, shape of `a`'s view) = f(a, b); a and b are views of the output shape
  // (stride 0 on broadcast axes). out may alias a when a is contiguous.
  void (*binary)(BinaryOp op, DType t, const void* a, const View& va, const void* b, const View& vb,
                 void* out) = nullptr;
  // dst (view of shape vs.shape) = factor * src (view). Copies, gathers and broadcasts.
  void (*copy_view)(DType t, void* dst, const View& vd, const void* src, const View& vs,
                    double factor) = nullptr;
  // out[contiguous over the axes not in reduce_mask] = factor * sum of x over the axes whose
  // bit is set in reduce_mask.
  void (*reduce_sum)(DType t, const void* x, const View& vx, unsigned reduce_mask, void* out,
                     double factor) = nullptr;

  // ---- convolution (float32) --------------------------------------------------------------
  // Every conv kernel overwrites its output. With p.relu_x, forward and backward-weight read
  // max(x, 0) for x, and backward-input multiplies its result by (x > 0): x is then the
  // forward's input (read only then; may be null otherwise).
  void (*conv2d_forward)(const ConvShape& p, const float* x, const float* w, float* y) = nullptr;
  void (*conv2d_backward_input)(const ConvShape& p, const float* gy, const float* w, const float* x,
                                float* gx) = nullptr;
  void (*conv2d_backward_weight)(const ConvShape& p, const float* x, const float* gy,
                                 float* gw) = nullptr;
  // Row-major C[M, N] = alpha * op(A) op(B) + beta * C, as cpu::gemm.
  void (*gemm)(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc) = nullptr;

  // ---- pooling (float32; no index tensor, max recomputes the argmax) ---------------------
  void (*max_pool2d_forward)(const PoolShape& p, const float* x, float* y) = nullptr;
  void (*max_pool2d_backward)(const PoolShape& p, const float* x, const float* gy,
                              float* gx) = nullptr;
  void (*avg_pool2d_forward)(const PoolShape& p, const float* x, float* y) = nullptr;
  void (*avg_pool2d_backward)(const PoolShape& p, const float* gy, float* gx) = nullptr;

  // ---- batch norm over [N, C, HW] (float32; gamma/beta null when not affine) ------------
  // Training: batch statistics into mean / invstd [C]; running_mean / running_var (may be
  // null) updated in place with `momentum` and the unbiased variance.
  void (*batch_norm_forward_train)(int64_t N, int64_t C, int64_t HW, const float* x,
                                   const float* gamma, const float* beta, float eps, float momentum,
                                   float* y, float* mean, float* invstd, float* running_mean,
                                   float* running_var) = nullptr;
  void (*batch_norm_forward_eval)(int64_t N, int64_t C, int64_t HW, const float* x,
                                  const float* gamma, const float* beta, const float* mean,
                                  const float* var, float eps, float* y) = nullptr;
  // Training backward; dgamma / dbeta may be null (not wanted).
  void (*batch_norm_backward)(int64_t N, int64_t C, int64_t HW, const float* x, const float* gy,
                              const float* gamma, const float* mean, const float* invstd, float* gx,
                              float* dgamma, float* dbeta) = nullptr;
  // Training backward of a non-affine forward from its output xhat = (x - mean) * invstd
  // alone, so the tape need not keep x: gx = invstd * (gy - mean(gy) - xhat * mean(gy * xhat)),
  // means per channel.
  void (*batch_norm_backward_from_output)(int64_t N, int64_t C, int64_t HW, const float* xhat,
                                          const float* gy, const float* invstd,
                                          float* gx) = nullptr;
  // Evaluation backward (the statistics are constants); dgamma / dbeta may be null.
  void (*batch_norm_backward_eval)(int64_t N, int64_t C, int64_t HW, const float* x,
                                   const float* gy, const float* gamma, const float* mean,
                                   const float* var, float eps, float* gx, float* dgamma,
                                   float* dbeta) = nullptr;

  // ---- mixed-op weighted sum (float32) ----------------------------------------------------
  // out[i] = sum_k w[k] * ys[k][i]; ys[k] null = a zero candidate. w is device memory [K].
  void (*weighted_sum_forward)(int K, const float* const* ys, const float* w, float* out,
                               int64_t n) = nullptr;
  // gys[k][i] = w[k] * g[i] (gys[k] null: not wanted); gw[k] = <g, ys[k]> (gw null: not
  // wanted; 0 for a null ys[k]).
  void (*weighted_sum_backward)(int K, const float* const* ys, const float* w, const float* g,
                                float* const* gys, float* gw, int64_t n) = nullptr;

  // ---- softmax and cross-entropy over the last axis (float32) ----------------------------
  void (*log_softmax_forward)(int64_t rows, int64_t cols, const float* x, float* y) = nullptr;
  void (*log_softmax_backward)(int64_t rows, int64_t cols, const float* g, const float* y,
                               float* gx) = nullptr;
  void (*softmax_forward)(int64_t rows, int64_t cols, const float* x, float* y) = nullptr;
  void (*softmax_backward)(int64_t rows, int64_t cols, const float* g, const float* y,
                           float* gx) = nullptr;
  // loss[0] = mean_i -log softmax(x_i)[labels[i]] and dlogits = (softmax(x) - onehot) / B, so
  // backward is dlogits * g with no host synchronisation. labels is device memory [B]: class
  // indices as floats; one outside [0, K) makes the loss and its row of dlogits NaN.
  void (*cross_entropy_forward)(int64_t B, int64_t K, const float* x, const float* labels,
                                float* loss, float* dlogits) = nullptr;

  // ---- binary (XNOR / popcount) convolution and GEMM: float32 in, float32 out --------------
  // With sgn(v) = (v >= 0 ? +1 : -1): y[n, k, p, q] = sum over the in-bounds taps and the
  // channels of k's group of sgn(x) * sgn(w), an exact integer stored as float (zero padding
  // contributes 0, as in a float conv on +/-1 tensors). The kernel binarises and bit-packs x
  // and w itself.
  void (*xnor_conv2d)(const ConvShape& p, const float* x, const float* w, float* y) = nullptr;
  // C[m, n] = sum_k sgn(A[m, k]) * sgn(B[n, k]); A [M, K] and B [N, K] row-major, C [M, N].
  void (*xnor_gemm)(int64_t M, int64_t N, int64_t K, const float* A, const float* B,
                    float* C) = nullptr;

  // ---- updates over a list of tensors (float32): one pass over all of them, no host reads --
  // A list is n tensors of numel[i] elements; the arrays are host memory, the pointers device
  // memory (read when the kernels run, so the arrays may be freed on return).
  // The values that change from step to step are read from device memory (`lr`, `scalars`),
  // so a captured step replays with the values staged before each replay.
  // SGD: buf[i] null when momentum is 0; first[i] != 0 on a momentum buffer's first step;
  // lr device memory [1].
  void (*sgd_step)(int n, const int64_t* numel, float* const* p, const float* const* g,
                   float* const* buf, const uint8_t* first, const SgdStep& a,
                   const float* lr) = nullptr;
  // Adam: scalars device memory [2n]: step_size_i = lr / (1 - beta1^t_i), then
  // bc2_i = sqrt(1 - beta2^t_i) for each tensor i.
  void (*adam_step)(int n, const int64_t* numel, float* const* p, const float* const* g,
                    float* const* m, float* const* v, const AdamStep& a,
                    const float* scalars) = nullptr;
  // out[0] (device) = the sum of x^2 over every element of every tensor, accumulated in double
  // in a fixed order (the same bits on every run).
  void (*sum_squares)(int n, const int64_t* numel, const float* const* x, float* out) = nullptr;
  // Gradient clipping without reading the norm on the host: with c = max_norm / (sqrt(sumsq[0])
  // + 1e-6) (sumsq device memory), every x is scaled by c when c < 1 and sumsq is finite.
  void (*clip_scale)(int n, const int64_t* numel, float* const* x, const float* sumsq,
                     float max_norm) = nullptr;
};
// The number of kernel slots; change it together with the table (and the backends' register
// functions, which static_assert against it).
inline constexpr size_t kKernelCount = 31;
static_assert(
    sizeof(Kernels) == kKernelCount * sizeof(void*),
    "backend::Kernels changed: update kKernelCount and every backend's register function");

// The table of device d (never null; entries are null until a backend fills them).
inline Kernels& kernels(Device d) {
  static Kernels tables[2];
  return tables[static_cast<int>(d)];
}

// The kernel in `slot` for device d, or a tnas::Error naming the op and the device.
template <class Fn>
Fn kernel(const char* op, Device d, Fn Kernels::*slot) {
  Fn f = kernels(d).*slot;
  TNAS_CHECK(f, op, ": no kernel for device ", d, " in this build");
  return f;
}
// As kernel(), for the float32-only entries: also checks the dtype.
template <class Fn>
Fn kernel_f32(const char* op, Device d, DType t, Fn Kernels::*slot) {
  TNAS_CHECK(t == DType::f32, op, ": the ", d, " kernels take float32, got ", t);
  return kernel(op, d, slot);
}

// A View of a tensor's shape and strides (as arrays of kMaxDims).
inline View make_view(const Shape& s, const int64_t* strides) {
  View v;
  v.rank = s.rank();
  for (int i = 0; i < v.rank; ++i) {
    v.shape[i] = s[i];
    v.stride[i] = strides[i];
  }
  return v;
}

}  // namespace tnas::backend
