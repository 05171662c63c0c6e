// Binary (1-bit) convolution ops.
//
//   xnor_conv2d(x, w, o)      exact sum of sgn(x) * sgn(w) with XOR + popcount kernels (CPU:
//                             backend/cpu/xnor.hpp; CUDA: the xnor_conv2d table entry). No
//                             gradient: it is the inference kernel of a fully binary layer.
//   xnor_matmul(a, b)         a [M, K], b [N, K] -> [M, N] = sgn(a) sgn(b)^T, the same for GEMM.
//   binarize_weight(w)        XNOR-Net weights: sgn(w) * alpha_k, alpha_k = mean |w| over output
//                             channel k (a constant of the step), straight-through gradient.
//   binary_conv2d(x, w, o, b) the training form of a binary layer: sign_ste(x) convolved with w
//                             (real weights, BATS' search) or with sgn(w), times alpha_k (the
//                             fully binary network: binarize_weight's values), optionally
//                             scaled per position by XNOR-Net's K (mean |x| over channels,
//                             averaged over each window).
// sgn(v) = v >= 0 ? +1 : -1 everywhere (sign_ste's convention), so a layer gives the same
// numbers through binary_conv2d (float arithmetic on +/-1 values) and through xnor_conv2d.
#pragma once

#include "tnas/backend/cpu/xnor.hpp"
#include "tnas/ops/conv.hpp"
#include "tnas/ops/elementwise.hpp"
#include "tnas/ops/reduce.hpp"
#include "tnas/ops/shape.hpp"

namespace tnas {

namespace ops::detail {
inline cpu::xnor::Shape xnor_shape(const cpu::Conv2dParams& p) {
  return {p.N, p.C, p.H, p.W, p.K, p.R, p.S, p.stride_h, p.pad_h, p.dil_h, p.groups};
}
}  // namespace ops::detail

// y[n, k, p, q] = sum over in-bounds taps and k's group of sgn(x) * sgn(w) (float32, exact
// integers). Zero padding contributes 0, as in conv2d. Inputs are not differentiated.
inline Tensor xnor_conv2d(const Tensor& x0, const Tensor& w0, const Conv2dOptions& o = {}) {
  cpu::Conv2dParams p = ops::detail::conv_params(x0, w0, o);
  TNAS_CHECK(x0.dtype() == DType::f32, "xnor_conv2d: takes float32 tensors, got ", x0.dtype());
  Tensor x = x0.contiguous(), w = w0.contiguous();
  Tensor y = Tensor::empty({p.N, p.K, p.P(), p.Q()}, DType::f32, x.device());
  if (x.device() == Device::cpu)
    cpu::xnor::conv2d(ops::detail::xnor_shape(p), x.data<float>(), w.data<float>(),
                      y.data<float>());
  else
    backend::kernel("xnor_conv2d", x.device(), &backend::Kernels::xnor_conv2d)(
        ops::detail::conv_shape(p), x.data<float>(), w.data<float>(), y.data<float>());
  return y;
}

// [M, N] = sgn(a) sgn(b)^T for a [M, K], b [N, K] (float32, exact integers). No gradient.
inline Tensor xnor_matmul(const Tensor& a0, const Tensor& b0) {
  ops::detail::require_same("xnor_matmul", a0, b0);
  ops::detail::require_rank("xnor_matmul", a0, 2, "a [M, K]");
  ops::detail::require_rank("xnor_matmul", b0, 2, "b [N, K]");
  TNAS_CHECK(a0.dim(1) == b0.dim(1), "xnor_matmul: a ", a0.shape(), " and b ", b0.shape(),
             " need the same K (b is [N, K], the transposed operand)");
  TNAS_CHECK(a0.dtype() == DType::f32, "xnor_matmul: takes float32 tensors, got ", a0.dtype());
  Tensor a = a0.contiguous(), b = b0.contiguous();
  const int64_t M = a.dim(0), N = b.dim(0), K = a.dim(1);
  Tensor c = Tensor::empty({M, N}, DType::f32, a.device());
  if (a.device() == Device::cpu)
    cpu::xnor::gemm(M, N, K, a.data<float>(), b.data<float>(), c.data<float>());
  else
    backend::kernel("xnor_matmul", a.device(), &backend::Kernels::xnor_gemm)(
        M, N, K, a.data<float>(), b.data<float>(), c.data<float>());
  return c;
}

// XNOR-Net's per-output-channel scale of a weight [K, ...]: mean |w| over all but axis 0, as a
// [K, 1, ..., 1] constant (no gradient).
inline Tensor weight_scale(const Tensor& w) {
  NoGrad ng;
  TNAS_CHECK(w.rank() >= 2, "weight_scale: weight must be [K, ...], got ", w.shape());
  std::vector<int> axes;
  for (int a = 1; a < w.rank(); ++a) axes.push_back(a);
  return mean(mul(w, sign_ste(w)), axes, /*keepdim=*/true);
}

// sgn(w) * weight_scale(w); the gradient passes straight through sign (times the scale).
inline Tensor binarize_weight(const Tensor& w) {
  return mul(sign_ste(w), weight_scale(w));
}

struct BinaryConvOptions {
  bool binary_weights = false;     // binarize_weight(w) instead of the real w
  bool scale_activations = false;  // XNOR-Net's per-position K factor
};

// XNOR-Net's K [N, 1, P, Q]: mean |x| over channels, averaged over each R x S window with the
// conv's stride / padding / dilation. A constant of the step (no gradient), as in XNOR-Net.
inline Tensor activation_scale(const Tensor& x, int64_t R, int64_t S, const Conv2dOptions& o) {
  NoGrad ng;
  Tensor a = mean(mul(x, sign_ste(x)), {1}, /*keepdim=*/true);
  Tensor box = Tensor::full({1, 1, R, S}, 1.0 / double(R * S), x.dtype(), x.device());
  return conv2d(a, box, {o.stride, o.padding, o.dilation, 1});
}

// conv2d(sign_ste(x), w or binarize_weight(w)) (* K): the differentiable form of a binary layer.
inline Tensor binary_conv2d(const Tensor& x, const Tensor& w, const Conv2dOptions& o = {},
                            const BinaryConvOptions& b = {}) {
  Tensor y;
  if (b.binary_weights)  // conv(sgn x, sgn w) * alpha_k: the integers of xnor_conv2d, then the
                         // scale, so this and the XNOR inference path agree bit for bit
    y = mul(conv2d(sign_ste(x), sign_ste(w), o), reshape(weight_scale(w), {1, w.dim(0), 1, 1}));
  else
    y = conv2d(sign_ste(x), w, o);
  if (b.scale_activations) y = mul(y, activation_scale(x, w.dim(2), w.dim(3), o));
  return y;
}

}  // namespace tnas
