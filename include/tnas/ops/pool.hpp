// Max and average pooling. Max pooling keeps no index tensor: its backward finds the argmax
// again from the saved input, which costs one more read of x and saves an int64 tensor the
// size of the output.
#pragma once

#include "tnas/backend/cpu/pool.hpp"
#include "tnas/ops/common.hpp"

namespace tnas {

struct Pool2dOptions {
  int kernel = 3;
  int stride = 1;
  int padding = 1;
  bool count_include_pad = false;  // avg pool: divide by the in-bounds count (DARTS' choice)
};

namespace ops::detail {
inline cpu::Pool2dParams pool_params(const char* op, const Tensor& x, const Pool2dOptions& o) {
  require_rank(op, x, 4, "input [N, C, H, W]");
  TNAS_CHECK(o.kernel >= 1 && o.stride >= 1 && o.padding >= 0 && 2 * o.padding <= o.kernel, op,
             ": kernel ", o.kernel, ", stride ", o.stride, ", padding ", o.padding,
             " (padding must be at most half the kernel)");
  cpu::Pool2dParams p;
  p.N = x.dim(0), p.C = x.dim(1), p.H = x.dim(2), p.W = x.dim(3);
  p.kh = p.kw = o.kernel;
  p.stride_h = p.stride_w = o.stride;
  p.pad_h = p.pad_w = o.padding;
  p.count_include_pad = o.count_include_pad;
  TNAS_CHECK(p.P() >= 1 && p.Q() >= 1, op, ": input ", x.shape(), " is smaller than the ", o.kernel,
             "x", o.kernel, " window");
  return p;
}
inline backend::PoolShape pool_shape(const cpu::Pool2dParams& p) {
  return {p.N, p.C, p.H, p.W, p.kh, p.stride_h, p.pad_h, p.P(), p.Q(), p.count_include_pad};
}
}  // namespace ops::detail

inline Tensor max_pool2d(const Tensor& x0, const Pool2dOptions& o = {}) {
  cpu::Pool2dParams p = ops::detail::pool_params("max_pool2d", x0, o);
  Tensor x = x0.contiguous();
  Tensor y = Tensor::empty({p.N, p.C, p.P(), p.Q()}, x.dtype(), x.device());
  using K = backend::Kernels;
  if (x.device() == Device::cpu)
    dispatch(x.dtype(),
             [&]<class T>() { cpu::max_pool2d_forward<T>(p, x.data<T>(), y.data<T>()); });
  else
    backend::kernel_f32("max_pool2d", x.device(), x.dtype(), &K::max_pool2d_forward)(
        ops::detail::pool_shape(p), x.data<float>(), y.data<float>());
  if (autograd::needs_grad({&x0})) {
    Tensor xd = x.detach();
    autograd::record("max_pool2d", y, {&x0}, [xd, p](const Tensor& g0) {
      Tensor g = g0.contiguous();
      Tensor dx = Tensor::empty(xd.shape(), g.dtype(), g.device());
      if (g.device() == Device::cpu)
        dispatch(g.dtype(), [&]<class T>() {
          cpu::max_pool2d_backward<T>(p, xd.data<T>(), g.data<T>(), dx.data<T>());
        });
      else
        backend::kernel_f32("max_pool2d backward", g.device(), g.dtype(), &K::max_pool2d_backward)(
            ops::detail::pool_shape(p), xd.data<float>(), g.data<float>(), dx.data<float>());
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}

inline Tensor avg_pool2d(const Tensor& x0, const Pool2dOptions& o = {}) {
  cpu::Pool2dParams p = ops::detail::pool_params("avg_pool2d", x0, o);
  Tensor x = x0.contiguous();
  Tensor y = Tensor::empty({p.N, p.C, p.P(), p.Q()}, x.dtype(), x.device());
  using K = backend::Kernels;
  if (x.device() == Device::cpu)
    dispatch(x.dtype(),
             [&]<class T>() { cpu::avg_pool2d_forward<T>(p, x.data<T>(), y.data<T>()); });
  else
    backend::kernel_f32("avg_pool2d", x.device(), x.dtype(), &K::avg_pool2d_forward)(
        ops::detail::pool_shape(p), x.data<float>(), y.data<float>());
  Shape in = x.shape();
  autograd::record("avg_pool2d", y, {&x0}, [in, p](const Tensor& g0) {
    Tensor g = g0.contiguous();
    Tensor dx = Tensor::empty(in, g.dtype(), g.device());
    if (g.device() == Device::cpu)
      dispatch(g.dtype(),
               [&]<class T>() { cpu::avg_pool2d_backward<T>(p, g.data<T>(), dx.data<T>()); });
    else
      backend::kernel_f32("avg_pool2d backward", g.device(), g.dtype(), &K::avg_pool2d_backward)(
          ops::detail::pool_shape(p), g.data<float>(), dx.data<float>());
    return std::vector<Tensor>{dx};
  });
  return y;
}

}  // namespace tnas
