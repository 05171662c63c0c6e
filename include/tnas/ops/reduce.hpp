// Reductions: sum and mean over axes (or over everything), and their backward (the gradient
// spread back over the reduced axes).
#pragma once

#include <algorithm>
#include <vector>

#include "tnas/ops/common.hpp"

namespace tnas {

namespace ops::detail {
// The shape after reducing `axes` (normalised, sorted) with or without keepdim.
inline Shape reduced_shape(const Shape& s, const std::vector<int>& axes, bool keepdim) {
  Shape out;
  for (int i = 0; i < s.rank(); ++i) {
    bool r = std::find(axes.begin(), axes.end(), i) != axes.end();
    if (!r)
      out.push_back(s[i]);
    else if (keepdim)
      out.push_back(1);
  }
  return out;
}
inline std::vector<int> normalise_axes(const char* op, const Shape& s, std::vector<int> axes) {
  if (axes.empty())
    for (int i = 0; i < s.rank(); ++i) axes.push_back(i);
  for (int& a : axes) {
    int b = a < 0 ? a + s.rank() : a;
    TNAS_CHECK(b >= 0 && b < s.rank(), op, ": axis ", a, " is out of range for shape ", s);
    a = b;
  }
  std::sort(axes.begin(), axes.end());
  TNAS_CHECK(std::adjacent_find(axes.begin(), axes.end()) == axes.end(), op,
             ": repeated axis for shape ", s);
  return axes;
}
// Broadcasts g (shape of the kept-dims result) back to `shape`, times `factor`.
inline Tensor expand_scaled(const Tensor& g, const Shape& shape, const std::vector<int>& axes,
                            double factor) {
  Shape keep = reduced_shape(shape, axes, true);
  Tensor gc = g.contiguous();
  Tensor gk = gc.as_strided(keep, contiguous_strides(keep), gc.offset());
  Tensor out = Tensor::empty(shape, g.dtype(), g.device());
  Strides gs = broadcast_strides(gk, shape), os = contiguous_strides(shape);
  if (g.device() != Device::cpu) {
    backend::kernel("expand", g.device(), &backend::Kernels::copy_view)(
        g.dtype(), out.raw(), backend::make_view(shape, os.data()), gk.raw(),
        backend::make_view(shape, gs.data()), factor);
    return out;
  }
  dispatch(g.dtype(), [&]<class T>() {
    T* o = out.data<T>();
    const T* p = static_cast<const T*>(gk.impl_ptr()->storage->data);
    const T f = T(factor);
    for_each_index<2>(shape, {os.data(), gs.data()}, {0, gk.offset()},
                      [&](int64_t oo, int64_t og) { o[oo] = p[og] * f; });
  });
  return out;
}
inline Tensor reduce_sum(const char* op, const Tensor& x, const std::vector<int>& axes,
                         bool keepdim, double factor) {
  Shape keep = reduced_shape(x.shape(), axes, true);
  Shape final_shape = reduced_shape(x.shape(), axes, keepdim);
  if (x.device() != Device::cpu) {
    Tensor out = Tensor::empty(final_shape, x.dtype(), x.device());
    unsigned mask = 0;
    for (int a : axes) mask |= 1u << a;
    backend::kernel(op, x.device(), &backend::Kernels::reduce_sum)(
        x.dtype(), x.raw(), backend::make_view(x.shape(), x.strides().data()), mask, out.raw(),
        factor);
    return out;
  }
  Tensor out = Tensor::zeros(keep, x.dtype(), x.device());
  dispatch(x.dtype(), [&]<class T>() {
    T* o = out.data<T>();
    if (int(axes.size()) == x.rank() && x.is_contiguous()) {  // full reduction: pairwise-ish
      const T* p = x.data<T>();
      double acc = 0;
      for (int64_t i = 0; i < x.numel(); ++i) acc += p[i];
      o[0] = T(acc * factor);
      return;
    }
    Strides os = broadcast_strides(out, x.shape());
    const T* p = static_cast<const T*>(x.impl_ptr()->storage->data);
    for_each_index<2>(x.shape(), {os.data(), x.strides().data()}, {0, x.offset()},
                      [&](int64_t oo, int64_t ox) { o[oo] += p[ox]; });
    if (factor != 1.0)
      for (int64_t i = 0; i < out.numel(); ++i) o[i] = T(o[i] * factor);
  });
  return out.as_strided(final_shape, contiguous_strides(final_shape), 0);
}
}  // namespace ops::detail

// Sum over `axes` (all axes when empty). Negative axes count from the back.
inline Tensor sum(const Tensor& x, std::vector<int> axes = {}, bool keepdim = false) {
  axes = ops::detail::normalise_axes("sum", x.shape(), std::move(axes));
  Tensor out = ops::detail::reduce_sum("sum", x, axes, keepdim, 1.0);
  Shape s = x.shape();
  autograd::record("sum", out, {&x}, [s, axes](const Tensor& g) {
    return std::vector<Tensor>{ops::detail::expand_scaled(g, s, axes, 1.0)};
  });
  return out;
}

// Mean over `axes` (all axes when empty).
inline Tensor mean(const Tensor& x, std::vector<int> axes = {}, bool keepdim = false) {
  axes = ops::detail::normalise_axes("mean", x.shape(), std::move(axes));
  int64_t count = 1;
  for (int a : axes) count *= x.shape()[a];
  TNAS_CHECK(count > 0, "mean: reducing over an empty axis of shape ", x.shape());
  Tensor out = ops::detail::reduce_sum("mean", x, axes, keepdim, 1.0 / double(count));
  Shape s = x.shape();
  autograd::record("mean", out, {&x}, [s, axes, count](const Tensor& g) {
    return std::vector<Tensor>{ops::detail::expand_scaled(g, s, axes, 1.0 / double(count))};
  });
  return out;
}

}  // namespace tnas
