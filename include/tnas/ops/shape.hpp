// Shape ops: reshape, strided slicing (views), concat and split along an axis, flatten and
// global average pooling. Slices are views that share storage; their backward scatters the
// gradient into a zero tensor of the input's shape.
#pragma once

#include <numeric>
#include <vector>

#include "tnas/ops/common.hpp"

namespace tnas {

// The same elements in another shape (one extent may be -1, inferred). A view when x is
// contiguous, a copy otherwise.
inline Tensor reshape(const Tensor& x, std::vector<int64_t> dims) {
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] == -1) {
      TNAS_CHECK(infer < 0, "reshape: more than one -1 in the new shape for ", x.shape());
      infer = int(i);
    } else {
      known *= dims[i];
    }
  }
  if (infer >= 0) {
    TNAS_CHECK(known > 0 && x.numel() % known == 0, "reshape: cannot infer -1 reshaping ",
               x.shape());
    dims[infer] = x.numel() / known;
  }
  Shape s(dims.begin(), dims.end());
  TNAS_CHECK(s.numel() == x.numel(), "reshape: cannot reshape ", x.shape(), " (", x.numel(),
             " elements) to ", s, " (", s.numel(), " elements)");
  Tensor c = x.contiguous();
  Tensor out = c.as_strided(s, contiguous_strides(s), c.offset());
  Shape in = x.shape();
  autograd::record("reshape", out, {&x}, [in](const Tensor& g) {
    Tensor gc = g.contiguous();
    return std::vector<Tensor>{gc.as_strided(in, contiguous_strides(in), gc.offset())};
  });
  return out;
}

// [N, ...] -> [N, rest].
inline Tensor flatten(const Tensor& x) {
  TNAS_CHECK(x.rank() >= 1, "flatten: needs rank >= 1, got shape ", x.shape());
  return reshape(x, {x.dim(0), -1});
}

// Elements start, start+step, ... (< end) along `axis`: a view. Negative start/end count
// from the back; end is clamped to the extent.
inline Tensor slice(const Tensor& x, int axis, int64_t start, int64_t end, int64_t step = 1) {
  const int a = x.shape().axis(axis);
  const int64_t n = x.shape()[a];
  if (start < 0) start += n;
  if (end < 0) end += n;
  end = std::min(end, n);
  TNAS_CHECK(step >= 1, "slice: step must be >= 1, got ", step);
  TNAS_CHECK(start >= 0 && start <= end, "slice: range [", start, ", ", end, ") is invalid for ",
             "axis ", axis, " of shape ", x.shape());
  Shape s = x.shape();
  s[a] = (end - start + step - 1) / step;
  Strides st = x.strides();
  int64_t off = x.offset() + start * st[a];
  st[a] *= step;
  Tensor out = x.as_strided(s, st, off);
  Shape in = x.shape();
  autograd::record("slice", out, {&x}, [in, a, start, step](const Tensor& g) {
    Tensor gx = Tensor::zeros(in, g.dtype(), g.device());
    Strides gs = gx.strides();
    int64_t goff = start * gs[a];
    gs[a] *= step;
    ops::detail::strided_copy(gx.as_strided(g.shape(), gs, goff), g);
    return std::vector<Tensor>{gx};
  });
  return out;
}

// Joins tensors along `axis` (all other extents equal).
inline Tensor concat(const std::vector<Tensor>& xs, int axis = 1) {
  TNAS_CHECK(!xs.empty(), "concat: no tensors");
  const Tensor& x0 = xs[0];
  const int a = x0.shape().axis(axis);
  Shape s = x0.shape();
  s[a] = 0;
  std::vector<int64_t> sizes;
  for (const Tensor& x : xs) {
    ops::detail::require_same("concat", x0, x);
    TNAS_CHECK(x.rank() == x0.rank(), "concat: rank mismatch, ", x0.shape(), " and ", x.shape());
    for (int i = 0; i < x.rank(); ++i)
      TNAS_CHECK(i == a || x.shape()[i] == x0.shape()[i], "concat along axis ", axis, ": shapes ",
                 x0.shape(), " and ", x.shape(), " differ in axis ", i);
    sizes.push_back(x.shape()[a]);
    s[a] += x.shape()[a];
  }
  Tensor out = Tensor::empty(s, x0.dtype(), x0.device());
  int64_t pos = 0;
  for (const Tensor& x : xs) {
    Shape ps = out.shape();
    ps[a] = x.shape()[a];
    ops::detail::strided_copy(out.as_strided(ps, out.strides(), pos * out.strides()[a]), x);
    pos += x.shape()[a];
  }
  autograd::record_vec("concat", out, xs, [sizes, a](const Tensor& g) {
    std::vector<Tensor> gs;
    int64_t p = 0;
    for (int64_t n : sizes) {
      Shape ps = g.shape();
      ps[a] = n;
      gs.push_back(g.as_strided(ps, g.strides(), g.offset() + p * g.strides()[a]));
      p += n;
    }
    return gs;
  });
  return out;
}

// Splits x along `axis` into pieces of the given sizes (they must add up to the extent).
inline std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int axis = 1) {
  const int a = x.shape().axis(axis);
  int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t(0));
  TNAS_CHECK(total == x.shape()[a], "split: sizes add up to ", total, " but axis ", axis,
             " of shape ", x.shape(), " has ", x.shape()[a]);
  std::vector<Tensor> out;
  int64_t p = 0;
  for (int64_t n : sizes) {
    out.push_back(slice(x, a, p, p + n));
    p += n;
  }
  return out;
}

// [N, C, H, W] -> [N, C]: the mean over each feature map.
inline Tensor global_avg_pool(const Tensor& x0) {
  ops::detail::require_rank("global_avg_pool", x0, 4, "input");
  Tensor x = x0.contiguous();
  const int64_t NC = x.dim(0) * x.dim(1), HW = x.dim(2) * x.dim(3);
  Tensor out = Tensor::empty({x.dim(0), x.dim(1)}, x.dtype(), x.device());
  if (x.device() != Device::cpu) {  // a mean over axes 2 and 3
    backend::kernel("global_avg_pool", x.device(), &backend::Kernels::reduce_sum)(
        x.dtype(), x.raw(), backend::make_view(x.shape(), x.strides().data()), 0b1100u, out.raw(),
        1.0 / double(HW));
  } else
    dispatch(x.dtype(), [&]<class T>() {
      const T* p = x.data<T>();
      T* o = out.data<T>();
      for (int64_t i = 0; i < NC; ++i) {
        T acc = 0;
        for (int64_t j = 0; j < HW; ++j) acc += p[i * HW + j];
        o[i] = acc / T(HW);
      }
    });
  Shape in = x.shape();
  autograd::record("global_avg_pool", out, {&x0}, [in, NC, HW](const Tensor& g0) {
    Tensor g = g0.contiguous();
    Tensor gx = Tensor::empty(in, g.dtype(), g.device());
    if (g.device() != Device::cpu) {  // g / HW broadcast over each map
      const Strides gs{in[1], 1, 0, 0}, os = contiguous_strides(in);
      backend::kernel("global_avg_pool", g.device(), &backend::Kernels::copy_view)(
          g.dtype(), gx.raw(), backend::make_view(in, os.data()), g.raw(),
          backend::make_view(in, gs.data()), 1.0 / double(HW));
      return std::vector<Tensor>{gx};
    }
    dispatch(g.dtype(), [&]<class T>() {
      const T* pg = g.data<T>();
      T* o = gx.data<T>();
      for (int64_t i = 0; i < NC; ++i) {
        const T v = pg[i] / T(HW);
        for (int64_t j = 0; j < HW; ++j) o[i * HW + j] = v;
      }
    });
    return std::vector<Tensor>{gx};
  });
  return out;
}

// A differentiable contiguous copy (identity gradient).
inline Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  Tensor out = x.contiguous();
  autograd::record("contiguous", out, {&x}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  return out;
}

}  // namespace tnas
