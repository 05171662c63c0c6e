// Tensor: a shaped, strided view of a Storage, plus the autograd state of the value.
//
// represents: an n-dimensional array of float or double on a Device. Copying a Tensor copies a
//   handle (both copies name the same value); clone() copies the data.
// requires: ops on two tensors need the same dtype and device (a tnas::Error otherwise).
// ensures: views (slice, view, detach) share storage with their base; contiguous() returns the
//   tensor itself when it is already contiguous.
// Autograd state: a leaf created with requires_grad accumulates .grad(); a result of an op on a
//   tensor that requires grad remembers its grad_fn (autograd/node.hpp).
#pragma once

#include <cmath>
#include <cstring>
#include <iomanip>
#include <memory>
#include <ostream>
#include <span>
#include <sstream>
#include <vector>

#include "tnas/core/allocator.hpp"
#include "tnas/core/dtype.hpp"
#include "tnas/core/error.hpp"
#include "tnas/core/rng.hpp"
#include "tnas/core/shape.hpp"

namespace tnas {

namespace autograd {
struct Node;
}

// Copies between devices and fills on devices other than the CPU come through these hooks, set
// by the CUDA backend when it is linked. Core code never calls a device API directly.
struct DeviceHooks {
  void (*copy)(void* dst, Device dd, const void* src, Device sd, size_t bytes) = nullptr;
  void (*fill)(void* dst, Device d, DType t, double value, size_t count) = nullptr;
  // Copies a strided view into a contiguous buffer on the same device.
  void (*gather)(void* dst, const void* src, DType t, const int64_t* shape, const int64_t* strides,
                 int rank) = nullptr;
  void (*convert)(void* dst, DType dt, const void* src, DType st, size_t count) = nullptr;
  // dst[i] += src[i] for i < count, both contiguous on the same device (gradient accumulation).
  void (*accumulate)(void* dst, const void* src, DType t, size_t count) = nullptr;
  // Graph capture (core/graph.hpp): between capture_begin and capture_end the device's work is
  // recorded, not run; capture_end returns the graph (null when abort is set: the capture is
  // dropped), graph_replay runs it, graph_destroy frees it.
  void (*capture_begin)(Device d) = nullptr;
  void* (*capture_end)(Device d, bool abort) = nullptr;
  void (*graph_replay)(void* graph) = nullptr;
  void (*graph_destroy)(void* graph) = nullptr;
};
inline DeviceHooks& device_hooks() {
  static DeviceHooks h;
  return h;
}

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Strides strides{};
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  Device device = Device::cpu;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;             // leaves only
  std::shared_ptr<autograd::Node> grad_fn;      // results of ops that need a gradient
  std::shared_ptr<autograd::Node> accumulator;  // leaves that require grad (made on first use)
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories -------------------------------------------------------------------------
  static Tensor empty(const Shape& s, DType t = DType::f32, Device d = Device::cpu) {
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = std::make_shared<Storage>(std::max<size_t>(1, s.numel()) * size_of(t), d);
    impl->shape = s;
    impl->strides = contiguous_strides(s);
    impl->dtype = t;
    impl->device = d;
    return Tensor(std::move(impl));
  }
  static Tensor full(const Shape& s, double v, DType t = DType::f32, Device d = Device::cpu) {
    Tensor r = empty(s, t, d);
    r.fill_(v);
    return r;
  }
  static Tensor zeros(const Shape& s, DType t = DType::f32, Device d = Device::cpu) {
    return full(s, 0.0, t, d);
  }
  static Tensor ones(const Shape& s, DType t = DType::f32, Device d = Device::cpu) {
    return full(s, 1.0, t, d);
  }
  template <class T>
  static Tensor from(std::span<const T> values, const Shape& s, DType t = dtype_of<T>()) {
    TNAS_CHECK(int64_t(values.size()) == s.numel(), "Tensor::from: ", values.size(),
               " values for shape ", s, " (", s.numel(), " elements)");
    Tensor r = empty(s, t);
    dispatch(t, [&]<class U>() {
      U* p = r.data<U>();
      for (size_t i = 0; i < values.size(); ++i) p[i] = static_cast<U>(values[i]);
    });
    return r;
  }
  static Tensor from(std::initializer_list<double> values, const Shape& s, DType t = DType::f32) {
    return from(std::span<const double>(values.begin(), values.size()), s, t);
  }
  static Tensor scalar(double v, DType t = DType::f32, Device d = Device::cpu) {
    return full(Shape{}, v, t, d);
  }
  static Tensor randn(const Shape& s, Rng& rng, double stddev = 1.0, DType t = DType::f32) {
    Tensor r = empty(s, t);
    dispatch(t, [&]<class U>() {
      U* p = r.data<U>();
      for (int64_t i = 0; i < s.numel(); ++i) p[i] = static_cast<U>(rng.normal() * stddev);
    });
    return r;
  }
  static Tensor uniform(const Shape& s, Rng& rng, double lo, double hi, DType t = DType::f32) {
    Tensor r = empty(s, t);
    dispatch(t, [&]<class U>() {
      U* p = r.data<U>();
      for (int64_t i = 0; i < s.numel(); ++i) p[i] = static_cast<U>(rng.uniform(lo, hi));
    });
    return r;
  }

  // ---- properties ------------------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  int rank() const { return shape().rank(); }
  int64_t dim(int i) const { return shape().dim(i); }
  int64_t numel() const { return shape().numel(); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().device; }
  const Strides& strides() const { return impl().strides; }
  int64_t stride(int i) const { return impl().strides[shape().axis(i)]; }
  int64_t offset() const { return impl().offset; }
  bool is_contiguous() const {
    int64_t acc = 1;
    for (int i = rank() - 1; i >= 0; --i) {
      if (shape()[i] != 1 && strides()[i] != acc) return false;
      acc *= shape()[i];
    }
    return true;
  }
  size_t nbytes() const { return size_t(numel()) * size_of(dtype()); }
  TensorImpl* impl_ptr() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_shared() const { return impl_; }
  // True when this handle is the only one to its TensorImpl and no other TensorImpl views its
  // storage: nothing else can see a change to its data (the autograd engine then adds into a
  // gradient in place instead of copying it first).
  bool sole_owner() const {
    return impl_ && impl_.use_count() == 1 && impl_->storage.use_count() == 1;
  }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }
  // True when the two share a storage block (one may be a view of the other).
  bool shares_storage(const Tensor& o) const { return impl().storage == o.impl().storage; }

  template <class T>
  T* data() const {
    TNAS_CHECK(dtype() == dtype_of<T>(), "Tensor::data: tensor holds ", dtype(), ", asked for ",
               name(dtype_of<T>()));
    return static_cast<T*>(impl().storage->data) + impl().offset;
  }
  void* raw() const {
    return static_cast<char*>(impl().storage->data) + impl().offset * size_of(dtype());
  }

  // The value of a one-element tensor, as double.
  double item() const {
    TNAS_CHECK(numel() == 1, "Tensor::item: tensor of shape ", shape(), " is not one element");
    Tensor c = to(Device::cpu);
    return dispatch(dtype(), [&]<class T>() { return double(*c.data<T>()); });
  }
  // Element at a multi-index (tests and printing; slow).
  double at(std::initializer_list<int64_t> idx) const {
    TNAS_CHECK(int(idx.size()) == rank(), "Tensor::at: ", idx.size(), " indices for rank ", rank());
    TNAS_CHECK(device() == Device::cpu, "Tensor::at needs a CPU tensor");
    int64_t off = 0;
    int i = 0;
    for (auto v : idx) {
      TNAS_CHECK(v >= 0 && v < shape()[i], "Tensor::at: index ", v, " out of range in axis ", i,
                 " of shape ", shape());
      off += v * strides()[i++];
    }
    return dispatch(dtype(), [&]<class T>() { return double(data<T>()[off]); });
  }
  // All elements in row-major order, as double (tests).
  std::vector<double> to_vector() const {
    Tensor c = to(Device::cpu).contiguous();
    std::vector<double> v(numel());
    dispatch(dtype(), [&]<class T>() {
      const T* p = c.data<T>();
      for (int64_t i = 0; i < numel(); ++i) v[i] = double(p[i]);
    });
    return v;
  }

  // ---- autograd state --------------------------------------------------------------------
  bool requires_grad() const { return impl().requires_grad; }
  // Marks a leaf as a parameter whose gradient is accumulated into grad().
  Tensor& set_requires_grad(bool r = true) {
    TNAS_CHECK(!impl().grad_fn, "set_requires_grad: only leaves can be marked; this tensor is ",
               "the result of an op");
    impl().requires_grad = r;
    return *this;
  }
  bool is_leaf() const { return !impl().grad_fn; }
  Tensor grad() const { return Tensor(impl().grad); }
  void set_grad(const Tensor& g) { impl().grad = g.impl_; }
  void zero_grad() { impl().grad.reset(); }
  const std::shared_ptr<autograd::Node>& grad_fn() const { return impl().grad_fn; }

  // The same data with no autograd history (shares storage).
  Tensor detach() const {
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = impl_->storage;
    impl->shape = impl_->shape;
    impl->strides = impl_->strides;
    impl->offset = impl_->offset;
    impl->dtype = impl_->dtype;
    impl->device = impl_->device;
    return Tensor(std::move(impl));
  }
  // A view with another shape and strides over the same storage (no autograd; ops/shape.hpp
  // has the differentiable views).
  Tensor as_strided(const Shape& s, const Strides& st, int64_t offset) const {
    Tensor r = detach();
    r.impl().shape = s;
    r.impl().strides = st;
    r.impl().offset = offset;
    return r;
  }

  // ---- copies ----------------------------------------------------------------------------
  // A contiguous copy, or this tensor when it is already contiguous. No autograd.
  Tensor contiguous() const {
    if (is_contiguous()) return *this;
    Tensor r = empty(shape(), dtype(), device());
    gather_into(r);
    return r;
  }
  Tensor clone() const {
    Tensor r = empty(shape(), dtype(), device());
    if (is_contiguous()) {
      copy_bytes(r.raw(), device(), raw(), device(), nbytes());
    } else {
      gather_into(r);
    }
    return r;
  }
  Tensor to(Device d) const {
    if (d == device()) return *this;
    Tensor src = contiguous();
    Tensor r = empty(shape(), dtype(), d);
    copy_bytes(r.raw(), d, src.raw(), device(), nbytes());
    return r;
  }
  Tensor cpu() const { return to(Device::cpu); }
  Tensor cuda() const { return to(Device::cuda); }
  Tensor to(DType t) const {
    if (t == dtype()) return *this;
    Tensor src = contiguous();
    Tensor r = empty(shape(), t, device());
    if (device() == Device::cpu) {
      dispatch(t, [&]<class D>() {
        dispatch(dtype(), [&]<class S>() {
          const S* s = src.data<S>();
          D* p = r.data<D>();
          for (int64_t i = 0; i < numel(); ++i) p[i] = static_cast<D>(s[i]);
        });
      });
    } else {
      TNAS_CHECK(device_hooks().convert, "Tensor::to(dtype): no converter for ", device());
      device_hooks().convert(r.raw(), t, src.raw(), dtype(), size_t(numel()));
    }
    return r;
  }
  // Copies src's values into this tensor (same shape; any devices, same dtype). No autograd.
  void copy_(const Tensor& src) const {
    TNAS_CHECK(src.shape() == shape(), "Tensor::copy_: shape ", src.shape(), " into ", shape());
    Tensor s = src.dtype() == dtype() ? src.contiguous() : src.to(dtype()).contiguous();
    TNAS_CHECK(is_contiguous(), "Tensor::copy_: destination must be contiguous");
    copy_bytes(raw(), device(), s.raw(), s.device(), nbytes());
  }
  // Sets every element to v. No autograd.
  const Tensor& fill_(double v) const {
    TNAS_CHECK(is_contiguous(), "Tensor::fill_: tensor must be contiguous");
    if (device() == Device::cpu) {
      dispatch(dtype(), [&]<class T>() { std::fill_n(data<T>(), numel(), static_cast<T>(v)); });
    } else {
      TNAS_CHECK(device_hooks().fill, "Tensor::fill_: no fill for ", device());
      device_hooks().fill(raw(), device(), dtype(), v, size_t(numel()));
    }
    return *this;
  }

  std::string str(int max_elems = 64) const {
    std::ostringstream os;
    os << "Tensor(" << shape() << ", " << dtype() << ", " << device();
    if (requires_grad()) os << ", requires_grad";
    os << ")";
    auto v = to_vector();
    os << " [" << std::setprecision(5);
    for (size_t i = 0; i < v.size() && int(i) < max_elems; ++i) os << (i ? " " : "") << v[i];
    if (int(v.size()) > max_elems) os << " ...";
    os << "]";
    return os.str();
  }
  friend std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

 private:
  TensorImpl& impl() const {
    TNAS_CHECK(impl_, "use of an undefined Tensor");
    return *impl_;
  }
  static void copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t n) {
    if (n == 0) return;
    if (dd == Device::cpu && sd == Device::cpu) {
      std::memcpy(dst, src, n);
      return;
    }
    TNAS_CHECK(device_hooks().copy, "no copy between ", sd, " and ", dd,
               ": this build has no CUDA backend");
    device_hooks().copy(dst, dd, src, sd, n);
  }
  void gather_into(const Tensor& r) const {
    if (device() != Device::cpu) {
      TNAS_CHECK(device_hooks().gather, "Tensor::contiguous: no gather for ", device());
      device_hooks().gather(r.raw(), raw(), dtype(), shape().begin(), strides().data(), rank());
      return;
    }
    // Merge dimensions that are contiguous with each other (and drop size-1 ones), then copy
    // row by row along the innermost merged dimension: a channel slice of an NCHW tensor
    // becomes N rows of C'*H*W elements, each one memcpy.
    const int64_t total = numel();
    if (total == 0) return;
    int64_t sh[kMaxDims], st[kMaxDims];
    int n = 0;
    for (int k = 0; k < rank(); ++k) {
      if (shape()[k] == 1) continue;
      if (n > 0 && st[n - 1] == strides()[k] * shape()[k]) {
        sh[n - 1] *= shape()[k];
        st[n - 1] = strides()[k];
      } else {
        sh[n] = shape()[k], st[n] = strides()[k], ++n;
      }
    }
    if (n == 0) sh[0] = 1, st[0] = 1, n = 1;
    const int64_t inner = sh[n - 1], istride = st[n - 1], rows = total / inner;
    dispatch(dtype(), [&]<class T>() {
      const T* s = data<T>();
      T* d = r.data<T>();
      for (int64_t row = 0; row < rows; ++row) {
        int64_t off = 0;
        for (int64_t k = n - 2, rem = row; k >= 0; --k) {
          off += (rem % sh[k]) * st[k];
          rem /= sh[k];
        }
        T* dr = d + row * inner;
        const T* sr = s + off;
        if (istride == 1) {
          std::memcpy(static_cast<void*>(dr), static_cast<const void*>(sr),
                      size_t(inner) * sizeof(T));
        } else {
          for (int64_t i = 0; i < inner; ++i) dr[i] = sr[i * istride];
        }
      }
    });
  }

  std::shared_ptr<TensorImpl> impl_;
};

// Test helpers ---------------------------------------------------------------------------------

// max |a - b| over all elements; shapes must match.
inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  TNAS_CHECK(a.shape() == b.shape(), "max_abs_diff: shapes ", a.shape(), " and ", b.shape());
  auto va = a.to_vector(), vb = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    double d = std::abs(va[i] - vb[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}
// |a - b| <= atol + rtol * |b| elementwise (NaN never passes).
inline bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-6) {
  if (!(a.shape() == b.shape())) return false;
  auto va = a.to_vector(), vb = b.to_vector();
  for (size_t i = 0; i < va.size(); ++i)
    if (!(std::abs(va[i] - vb[i]) <= atol + rtol * std::abs(vb[i]))) return false;
  return true;
}

}  // namespace tnas
