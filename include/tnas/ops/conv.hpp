// 2-D convolution (cross-correlation, as every DL framework defines it) with stride, padding,
// dilation and groups: dense, depthwise (groups == channels), pointwise (1x1) and dilated
// depthwise are all this one op; the CPU backend picks a kernel per case.
#pragma once

#include "tnas/backend/cpu/conv.hpp"
#include "tnas/ops/common.hpp"
#include "tnas/ops/elementwise.hpp"

namespace tnas {

struct Conv2dOptions {
  int stride = 1;
  int padding = 0;
  int dilation = 1;
  int groups = 1;
};

namespace ops::detail {
inline cpu::Conv2dParams conv_params(const Tensor& x, const Tensor& w, const Conv2dOptions& o) {
  require_same("conv2d", x, w);
  require_rank("conv2d", x, 4, "input [N, C, H, W]");
  require_rank("conv2d", w, 4, "weight [K, C/groups, R, S]");
  TNAS_CHECK(o.stride >= 1 && o.dilation >= 1 && o.padding >= 0 && o.groups >= 1, "conv2d: stride ",
             o.stride, ", dilation ", o.dilation, ", padding ", o.padding, ", groups ", o.groups,
             " (need stride, dilation, groups >= 1 and padding >= 0)");
  TNAS_CHECK(x.dim(1) % o.groups == 0 && w.dim(0) % o.groups == 0, "conv2d: groups ", o.groups,
             " must divide input channels (", x.dim(1), ") and output channels (", w.dim(0), ")");
  TNAS_CHECK(w.dim(1) * o.groups == x.dim(1), "conv2d: input ", x.shape(), " has ", x.dim(1),
             " channels but weight ", w.shape(), " with groups ", o.groups, " expects ",
             w.dim(1) * o.groups);
  cpu::Conv2dParams p;
  p.N = x.dim(0), p.C = x.dim(1), p.H = x.dim(2), p.W = x.dim(3);
  p.K = w.dim(0), p.R = w.dim(2), p.S = w.dim(3);
  p.stride_h = p.stride_w = o.stride;
  p.pad_h = p.pad_w = o.padding;
  p.dil_h = p.dil_w = o.dilation;
  p.groups = o.groups;
  TNAS_CHECK(p.P() >= 1 && p.Q() >= 1, "conv2d: input ", x.shape(), " is too small for weight ",
             w.shape(), " with padding ", o.padding, " and dilation ", o.dilation);
  return p;
}
inline backend::ConvShape conv_shape(const cpu::Conv2dParams& p, bool relu_x = false) {
  return {p.N,        p.C,     p.H,     p.W,      p.K,   p.R,   p.S,
          p.stride_h, p.pad_h, p.dil_h, p.groups, p.P(), p.Q(), relu_x};
}
// The per-channel bias as a view of the output's shape [N, K, P, Q] (stride 0 but on K).
inline backend::View bias_view(const cpu::Conv2dParams& p) {
  const int64_t shape[4] = {p.N, p.K, p.P(), p.Q()}, strides[4] = {0, 1, 0, 0};
  backend::View v;
  v.rank = 4;
  for (int i = 0; i < 4; ++i) v.shape[i] = shape[i], v.stride[i] = strides[i];
  return v;
}
}  // namespace ops::detail

namespace ops::detail {
// The backward of conv2d: xd shapes dx, xw is the input the weight gradient reads. relu_x (a
// device only): the kernels apply the ReLU themselves, xd = xw is the ReLU's input.
inline std::vector<Tensor> conv2d_impl_backward(const cpu::Conv2dParams& p, const Tensor& g,
                                                const Tensor& xd, const Tensor& xw,
                                                const Tensor& wd, bool gx, bool gw, bool gb,
                                                bool relu_x = false) {
  using K = backend::Kernels;
  Tensor dx, dw, db;

  if (g.device() != Device::cpu) {
    const Device d = g.device();
    const backend::ConvShape cs = ops::detail::conv_shape(p, relu_x);
    if (gx) {
      dx = Tensor::empty(xd.shape(), g.dtype(), d);
      backend::kernel_f32("conv2d backward", d, g.dtype(), &K::conv2d_backward_input)(
          cs, g.data<float>(), wd.data<float>(), relu_x ? xd.data<float>() : nullptr,
          dx.data<float>());
    }
    if (gw) {
      dw = Tensor::empty(wd.shape(), g.dtype(), d);
      backend::kernel_f32("conv2d backward", d, g.dtype(), &K::conv2d_backward_weight)(
          cs, xw.data<float>(), g.data<float>(), dw.data<float>());
    }
    if (gb) {
      db = Tensor::empty({p.K}, g.dtype(), d);
      backend::kernel("conv2d backward", d, &K::reduce_sum)(
          g.dtype(), g.raw(), backend::make_view(g.shape(), g.strides().data()), 0b1101u, db.raw(),
          1.0);
    }
    return std::vector<Tensor>{dx, dw, db};
  }
  TNAS_CHECK(!relu_x, "conv2d backward: the CPU kernels take the ReLU applied outside");
  dispatch(g.dtype(), [&]<class T>() {
    if (gx) {
      dx = Tensor::empty(xd.shape(), g.dtype(), g.device());
      cpu::conv2d_backward_input<T>(p, g.data<T>(), wd.data<T>(), dx.data<T>());
    }
    if (gw) {
      dw = Tensor::empty(wd.shape(), g.dtype(), g.device());
      cpu::conv2d_backward_weight<T>(p, xw.data<T>(), g.data<T>(), dw.data<T>());
    }
    if (gb) {
      db = Tensor::zeros({p.K}, g.dtype(), g.device());
      const T* pg = g.data<T>();
      T* o = db.data<T>();
      const int64_t PQ = p.P() * p.Q();
      for (int64_t n = 0; n < p.N; ++n)
        for (int64_t k = 0; k < p.K; ++k) {
          T s = 0;
          for (int64_t i = 0; i < PQ; ++i) s += pg[(n * p.K + k) * PQ + i];
          o[k] += s;
        }
    }
  });
  return std::vector<Tensor>{dx, dw, db};
}

// g * (x > 0), the ReLU's backward from its input (CPU tensors; the device kernels fuse it).
inline Tensor relu_mask(const Tensor& g, const Tensor& x) {
  Tensor out = Tensor::empty(g.shape(), g.dtype(), g.device());
  dispatch(g.dtype(), [&]<class T>() {
    const T* pg = g.data<T>();
    const T* px = x.data<T>();
    T* o = out.data<T>();
    const int64_t n = g.numel();
#pragma omp parallel for simd if (n > 65536)
    for (int64_t i = 0; i < n; ++i) o[i] = px[i] > T(0) ? pg[i] : T(0);
  });
  return out;
}
}  // namespace ops::detail

namespace ops::detail {
// The gradients {dx, dw, db} of conv2d(relu_input ? relu(x) : x, w) for the output gradient g
// (contiguous), from the input x itself: a device's kernels apply the ReLU and its mask
// (ConvShape::relu_x); on the CPU relu(x) is recomputed for dw and dx is masked with x > 0.
inline std::vector<Tensor> conv2d_grads(const cpu::Conv2dParams& p, const Tensor& g,
                                        const Tensor& x, const Tensor& w, bool gx, bool gw, bool gb,
                                        bool relu_input) {
  if (!relu_input) return conv2d_impl_backward(p, g, x, x, w, gx, gw, gb);
  if (g.device() != Device::cpu) return conv2d_impl_backward(p, g, x, x, w, gx, gw, gb, true);
  Tensor xr = gw ? relu(x) : Tensor();
  auto grads = conv2d_impl_backward(p, g, x, xr, w, gx, gw, gb);
  if (grads[0].defined()) grads[0] = relu_mask(grads[0], x);
  return grads;
}

// conv2d(relu_input ? relu(x0) : x0, w0) + bias. With relu_input the tape keeps x0 instead of
// relu(x0), so the ReLU output of ReLU -> Conv chains (every DARTS candidate) is never held
// between forward and backward. On the CPU the ReLU is a pass of its own, recomputed in the
// backward; a device's conv kernels apply it as they read x and mask dx with x > 0 (one launch
// and one tensor fewer each way: ConvShape::relu_x).
inline Tensor conv2d_impl(const Tensor& x0, const Tensor& w0, const Conv2dOptions& o,
                          const Tensor& bias, bool relu_input) {
  cpu::Conv2dParams p = ops::detail::conv_params(x0, w0, o);
  Tensor x = x0.contiguous(), w = w0.contiguous();
  const Device dev = x.device();
  const bool fused = relu_input && dev != Device::cpu;  // the kernels apply the ReLU
  Tensor xin = x;                                       // what the convolution reads
  if (relu_input && !fused) {
    NoGrad ng;
    xin = relu(x);
  }
  Tensor y = Tensor::empty({p.N, p.K, p.P(), p.Q()}, x.dtype(), x.device());
  using K = backend::Kernels;
  if (dev == Device::cpu)
    dispatch(x.dtype(), [&]<class T>() {
      cpu::conv2d_forward<T>(p, xin.data<T>(), w.data<T>(), y.data<T>());
    });
  else
    backend::kernel_f32("conv2d", dev, x.dtype(), &K::conv2d_forward)(
        ops::detail::conv_shape(p, fused), xin.data<float>(), w.data<float>(), y.data<float>());
  xin = Tensor();  // with a CPU relu_input, the temporary goes back to the allocator here
  if (bias.defined()) {
    ops::detail::require_same("conv2d", x0, bias);
    TNAS_CHECK(bias.rank() == 1 && bias.dim(0) == p.K, "conv2d: bias of shape ", bias.shape(),
               " for ", p.K, " output channels");
    Tensor b = bias.contiguous();
    if (dev != Device::cpu) {
      const backend::View vy = backend::make_view(y.shape(), y.strides().data());
      backend::kernel("conv2d", dev, &K::binary)(backend::BinaryOp::add, y.dtype(), y.raw(), vy,
                                                 b.raw(), ops::detail::bias_view(p), y.raw());
    } else
      dispatch(x.dtype(), [&]<class T>() {
        T* py = y.data<T>();
        const T* pb = b.data<T>();
        const int64_t PQ = p.P() * p.Q();
        for (int64_t n = 0; n < p.N; ++n)
          for (int64_t k = 0; k < p.K; ++k)
            for (int64_t i = 0; i < PQ; ++i) py[(n * p.K + k) * PQ + i] += pb[k];
      });
  }
  if (autograd::needs_grad({&x0, &w0, &bias})) {
    Tensor xd = x.detach(), wd = w.detach();
    const bool gx = x0.requires_grad(), gw = w0.requires_grad();
    const bool gb = bias.defined() && bias.requires_grad();
    autograd::record(relu_input ? "relu_conv2d" : "conv2d", y, {&x0, &w0, &bias},
                     [=](const Tensor& g0) {
                       return conv2d_grads(p, g0.contiguous(), xd, wd, gx, gw, gb, relu_input);
                     });
  }
  return y;
}
}  // namespace ops::detail

namespace ops::detail {
inline Tensor separable_conv2d_impl(const Tensor& x0, const Tensor& wd0, const Tensor& wp0,
                                    const Conv2dOptions& o, bool relu_input) {
  const cpu::Conv2dParams pd = conv_params(x0, wd0, o);
  TNAS_CHECK(pd.groups == pd.C && pd.K == pd.C, "separable_conv2d: the first weight ", wd0.shape(),
             " with groups ", o.groups, " is not depthwise for ", pd.C,
             " input channels (need weight [C, 1, R, S] and groups == C)");
  cpu::Conv2dParams pp{};
  Tensor y;
  {
    NoGrad ng;
    // the depthwise output: a temporary, here and in the backward
    Tensor d = conv2d_impl(x0, wd0, o, {}, relu_input);
    pp = conv_params(d, wp0, {});
    TNAS_CHECK(pp.R == 1 && pp.S == 1, "separable_conv2d: the second weight ", wp0.shape(),
               " is not pointwise (need [K, C, 1, 1])");
    y = conv2d_impl(d, wp0, {}, {}, false);
  }
  if (autograd::needs_grad({&x0, &wd0, &wp0})) {
    Tensor xd = x0.contiguous().detach(), wdd = wd0.contiguous().detach();
    Tensor wpd = wp0.contiguous().detach();
    const bool gx = x0.requires_grad(), gwd = wd0.requires_grad(), gwp = wp0.requires_grad();
    autograd::record(relu_input ? "relu_separable_conv2d" : "separable_conv2d", y,
                     {&x0, &wd0, &wp0}, [=](const Tensor& g0) {
                       Tensor g = g0.contiguous();
                       Tensor dd;  // recomputed: the pointwise weight gradient reads it
                       {
                         NoGrad ng;
                         dd = conv2d_impl(xd, wdd, o, {}, relu_input);
                       }
                       auto gp = conv2d_impl_backward(pp, g, dd, dd, wpd, gx || gwd, gwp, false);
                       dd = Tensor();
                       std::vector<Tensor> grads{Tensor(), Tensor(), gp[1]};
                       if (gx || gwd) {
                         auto gd = conv2d_grads(pd, gp[0], xd, wdd, gx, gwd, false, relu_input);
                         grads[0] = gd[0], grads[1] = gd[1];
                       }
                       return grads;
                     });
  }
  return y;
}
}  // namespace ops::detail

// y[N, K, P, Q] = conv(x[N, C, H, W], w[K, C/groups, R, S]) (+ bias[K] when defined).
inline Tensor conv2d(const Tensor& x0, const Tensor& w0, const Conv2dOptions& o = {},
                     const Tensor& bias = {}) {
  return ops::detail::conv2d_impl(x0, w0, o, bias, false);
}

// conv2d(relu(x), w) + bias, keeping x rather than relu(x) for the backward (see conv2d_impl).
inline Tensor relu_conv2d(const Tensor& x0, const Tensor& w0, const Conv2dOptions& o = {},
                          const Tensor& bias = {}) {
  return ops::detail::conv2d_impl(x0, w0, o, bias, true);
}

// A depthwise separable convolution, conv2d(conv2d(x, w_dw, o), w_pw): the depthwise conv
// w_dw [C, 1, R, S] with groups == C and options o, then the pointwise conv w_pw [K, C, 1, 1].
// The same result and gradients as the two convs in a row, but only x is kept for the backward:
// the depthwise output, which the pointwise weight gradient reads, is recomputed there (one
// depthwise forward, a memory-bound pass) instead of being held from the forward to the
// backward. Every DARTS sep_conv / dil_conv is made of these, so a supernet's step holds one
// tensor fewer per depthwise conv until its backward: about 40% of a DARTS search step's
// activation memory.
inline Tensor separable_conv2d(const Tensor& x, const Tensor& w_dw, const Tensor& w_pw,
                               const Conv2dOptions& o) {
  return ops::detail::separable_conv2d_impl(x, w_dw, w_pw, o, false);
}

// separable_conv2d(relu(x), w_dw, w_pw, o), keeping x rather than relu(x) (as relu_conv2d).
inline Tensor relu_separable_conv2d(const Tensor& x, const Tensor& w_dw, const Tensor& w_pw,
                                    const Conv2dOptions& o) {
  return ops::detail::separable_conv2d_impl(x, w_dw, w_pw, o, true);
}

}  // namespace tnas
