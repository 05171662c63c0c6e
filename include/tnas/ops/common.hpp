// Helpers shared by the op families: argument checks that name the op and the shapes, and the
// strided iteration the elementwise and shape ops are built on.
#pragma once

#include <vector>

#include "tnas/autograd/engine.hpp"
#include "tnas/autograd/node.hpp"
#include "tnas/backend/registry.hpp"
#include "tnas/core/tensor.hpp"

namespace tnas::ops::detail {

using autograd::needs_grad;
using autograd::record;

// For ops that have no kernel outside the CPU. Ops with device kernels run their CPU kernels
// inline and take every other device's from backend::kernel(), which names the op and device
// when the kernel is missing.
inline void require_cpu(const char* op, const Tensor& t) {
  TNAS_CHECK(t.device() == Device::cpu, op, ": no kernel for device ", t.device(),
             " in this build (tensor of shape ", t.shape(), ")");
}
inline void require_same(const char* op, const Tensor& a, const Tensor& b) {
  TNAS_CHECK(a.defined() && b.defined(), op, ": undefined tensor argument");
  TNAS_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch, ", a.dtype(), " ", a.shape(), " and ",
             b.dtype(), " ", b.shape());
  TNAS_CHECK(a.device() == b.device(), op, ": device mismatch, ", a.device(), " ", a.shape(),
             " and ", b.device(), " ", b.shape());
}
inline void require_rank(const char* op, const Tensor& t, int rank, const char* what) {
  TNAS_CHECK(t.defined(), op, ": ", what, " is undefined");
  TNAS_CHECK(t.rank() == rank, op, ": ", what, " must have rank ", rank, ", got shape ", t.shape());
}

// Calls f(offset_0, ..., offset_{k-1}) for every index of `shape` in row-major order, where
// offset_j is the element offset of that index under strides[j]. The innermost axis runs as
// a plain loop so the compiler can vectorise f where strides allow.
template <size_t K, class F>
void for_each_index(const Shape& shape, const std::array<const int64_t*, K>& strides,
                    const std::array<int64_t, K>& base, F&& f) {
  const int r = shape.rank();
  if (shape.numel() == 0) return;
  if (r == 0) {
    std::apply([&](auto... b) { f(b...); }, base);
    return;
  }
  int64_t idx[kMaxDims] = {};
  const int64_t inner = shape[r - 1];
  std::array<int64_t, K> inner_stride;
  for (size_t j = 0; j < K; ++j) inner_stride[j] = strides[j][r - 1];
  const int64_t outer = shape.numel() / inner;
  for (int64_t o = 0; o < outer; ++o) {
    std::array<int64_t, K> off = base;
    for (int k = 0; k < r - 1; ++k)
      for (size_t j = 0; j < K; ++j) off[j] += idx[k] * strides[j][k];
    for (int64_t i = 0; i < inner; ++i) {
      std::apply([&](auto... b) { f(b...); }, off);
      for (size_t j = 0; j < K; ++j) off[j] += inner_stride[j];
    }
    for (int k = r - 2; k >= 0; --k) {
      if (++idx[k] < shape[k]) break;
      idx[k] = 0;
    }
  }
}

// Strides that read a tensor of shape `from` as if it had the broadcast shape `to` (0 on
// broadcast axes). Shapes align at the right, as in NumPy.
inline Strides broadcast_strides(const Tensor& t, const Shape& to) {
  Strides st{};
  const int off = to.rank() - t.rank();
  for (int i = 0; i < to.rank(); ++i) {
    int k = i - off;
    st[i] = (k < 0 || t.shape()[k] == 1) ? 0 : t.strides()[k];
  }
  return st;
}

inline Shape broadcast_shape(const char* op, const Shape& a, const Shape& b) {
  const int r = std::max(a.rank(), b.rank());
  Shape out;
  for (int i = 0; i < r; ++i) {
    int ia = i - (r - a.rank()), ib = i - (r - b.rank());
    int64_t da = ia < 0 ? 1 : a[ia], db = ib < 0 ? 1 : b[ib];
    TNAS_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", a, " and ", b,
               " do not broadcast (axis ", i, ": ", da, " vs ", db, ")");
    out.push_back(da == 1 ? db : da);
  }
  return out;
}

// Copies src (any strides) into dst (any strides, same shape). No autograd.
inline void strided_copy(const Tensor& dst, const Tensor& src) {
  TNAS_CHECK(dst.shape() == src.shape(), "strided_copy: ", src.shape(), " into ", dst.shape());
  if (dst.device() != Device::cpu) {
    backend::kernel("strided_copy", dst.device(), &backend::Kernels::copy_view)(
        dst.dtype(), dst.raw(), backend::make_view(dst.shape(), dst.strides().data()), src.raw(),
        backend::make_view(src.shape(), src.strides().data()), 1.0);
    return;
  }
  dispatch(dst.dtype(), [&]<class T>() {
    T* d = static_cast<T*>(dst.impl_ptr()->storage->data);
    const T* s = static_cast<const T*>(src.impl_ptr()->storage->data);
    for_each_index<2>(dst.shape(), {dst.strides().data(), src.strides().data()},
                      {dst.offset(), src.offset()}, [&](int64_t od, int64_t os) { d[od] = s[os]; });
  });
}

// Sums `g` (of a broadcast shape) down to `shape`, the shape of an input that was broadcast.
inline Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  if (g.device() != Device::cpu) {
    // Reduce the axes of g that `shape` lacks or has as 1; the kept axes are `shape`'s order.
    Tensor out = Tensor::empty(shape, g.dtype(), g.device());
    unsigned mask = 0;
    const int off = g.rank() - shape.rank();
    for (int i = 0; i < g.rank(); ++i)
      if (g.shape()[i] != 1 && (i < off || shape[i - off] == 1)) mask |= 1u << i;
    backend::kernel("sum_to", g.device(), &backend::Kernels::reduce_sum)(
        g.dtype(), g.raw(), backend::make_view(g.shape(), g.strides().data()), mask, out.raw(),
        1.0);
    return out;
  }
  Tensor out = Tensor::zeros(shape, g.dtype(), g.device());
  Strides ost = broadcast_strides(out, g.shape());
  dispatch(g.dtype(), [&]<class T>() {
    T* o = out.data<T>();
    const T* s = static_cast<const T*>(g.impl_ptr()->storage->data);
    for_each_index<2>(g.shape(), {ost.data(), g.strides().data()}, {0, g.offset()},
                      [&](int64_t oo, int64_t os) { o[oo] += s[os]; });
  });
  return out;
}

}  // namespace tnas::ops::detail
