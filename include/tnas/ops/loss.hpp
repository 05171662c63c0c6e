// Softmax, log-softmax and cross-entropy with integer labels.
#pragma once

#include <cmath>
#include <span>
#include <vector>

#include "tnas/ops/common.hpp"
#include "tnas/ops/elementwise.hpp"

namespace tnas {

namespace ops::detail {
// Row-wise log-softmax of a [rows, cols] contiguous array.
template <class T>
void log_softmax_rows(const T* x, T* y, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T m = xr[0];
    for (int64_t c = 1; c < cols; ++c) m = std::max(m, xr[c]);
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) s += std::exp(double(xr[c] - m));
    const T lse = m + T(std::log(s));
    for (int64_t c = 0; c < cols; ++c) yr[c] = xr[c] - lse;
  }
}
inline void require_last_axis(const char* op, const Tensor& x, int axis) {
  TNAS_CHECK(x.rank() >= 1, op, ": needs rank >= 1");
  TNAS_CHECK(x.shape().axis(axis) == x.rank() - 1, op, ": only the last axis is supported, got ",
             "axis ", axis, " for shape ", x.shape());
}
}  // namespace ops::detail

// log(softmax(x)) along the last axis, computed stably.
inline Tensor log_softmax(const Tensor& x0, int axis = -1) {
  ops::detail::require_last_axis("log_softmax", x0, axis);
  Tensor x = x0.contiguous();
  const int64_t cols = x.dim(-1), rows = x.numel() / std::max<int64_t>(1, cols);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  using K = backend::Kernels;
  if (x.device() != Device::cpu)
    backend::kernel_f32("log_softmax", x.device(), x.dtype(), &K::log_softmax_forward)(
        rows, cols, x.data<float>(), out.data<float>());
  else
    dispatch(x.dtype(), [&]<class T>() {
      ops::detail::log_softmax_rows(x.data<T>(), out.data<T>(), rows, cols);
    });
  if (autograd::needs_grad({&x0})) {
    Tensor yd = out.detach();
    autograd::record("log_softmax", out, {&x0}, [yd, rows, cols](const Tensor& g0) {
      Tensor g = g0.contiguous();
      Tensor gx = Tensor::empty(g.shape(), g.dtype(), g.device());
      if (g.device() != Device::cpu) {
        backend::kernel_f32("log_softmax backward", g.device(), g.dtype(),
                            &K::log_softmax_backward)(rows, cols, g.data<float>(), yd.data<float>(),
                                                      gx.data<float>());
        return std::vector<Tensor>{gx};
      }
      dispatch(g.dtype(), [&]<class T>() {
        const T* pg = g.data<T>();
        const T* py = yd.data<T>();
        T* o = gx.data<T>();
        for (int64_t r = 0; r < rows; ++r) {
          T s = 0;
          for (int64_t c = 0; c < cols; ++c) s += pg[r * cols + c];
          for (int64_t c = 0; c < cols; ++c)
            o[r * cols + c] = pg[r * cols + c] - std::exp(py[r * cols + c]) * s;
        }
      });
      return std::vector<Tensor>{gx};
    });
  }
  return out;
}

// softmax(x) along the last axis.
inline Tensor softmax(const Tensor& x0, int axis = -1) {
  ops::detail::require_last_axis("softmax", x0, axis);
  Tensor x = x0.contiguous();
  const int64_t cols = x.dim(-1), rows = x.numel() / std::max<int64_t>(1, cols);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  using K = backend::Kernels;
  if (x.device() != Device::cpu)
    backend::kernel_f32("softmax", x.device(), x.dtype(), &K::softmax_forward)(
        rows, cols, x.data<float>(), out.data<float>());
  else
    dispatch(x.dtype(), [&]<class T>() {
      T* o = out.data<T>();
      ops::detail::log_softmax_rows(x.data<T>(), o, rows, cols);
      for (int64_t i = 0; i < x.numel(); ++i) o[i] = std::exp(o[i]);
    });
  if (autograd::needs_grad({&x0})) {
    Tensor yd = out.detach();
    autograd::record("softmax", out, {&x0}, [yd, rows, cols](const Tensor& g0) {
      Tensor g = g0.contiguous();
      Tensor gx = Tensor::empty(g.shape(), g.dtype(), g.device());
      if (g.device() != Device::cpu) {
        backend::kernel_f32("softmax backward", g.device(), g.dtype(), &K::softmax_backward)(
            rows, cols, g.data<float>(), yd.data<float>(), gx.data<float>());
        return std::vector<Tensor>{gx};
      }
      dispatch(g.dtype(), [&]<class T>() {
        const T* pg = g.data<T>();
        const T* py = yd.data<T>();
        T* o = gx.data<T>();
        for (int64_t r = 0; r < rows; ++r) {
          T s = 0;
          for (int64_t c = 0; c < cols; ++c) s += pg[r * cols + c] * py[r * cols + c];
          for (int64_t c = 0; c < cols; ++c)
            o[r * cols + c] = py[r * cols + c] * (pg[r * cols + c] - s);
        }
      });
      return std::vector<Tensor>{gx};
    });
  }
  return out;
}

namespace ops::detail {
// The device path of cross_entropy: labels is a float32 tensor of class indices on x's device.
// The kernel leaves dlogits = (softmax(x) - onehot) / B behind, so backward is one broadcast
// multiply by the incoming scalar, with no host synchronisation.
inline Tensor cross_entropy_device(const Tensor& logits0, const Tensor& x, const Tensor& labels) {
  const int64_t B = x.dim(0), K = x.dim(1);
  Tensor lab = labels.contiguous();
  Tensor out = Tensor::empty(Shape{}, x.dtype(), x.device());
  Tensor dl = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend::kernel_f32("cross_entropy", x.device(), x.dtype(),
                      &backend::Kernels::cross_entropy_forward)(
      B, K, x.data<float>(), lab.data<float>(), out.data<float>(), dl.data<float>());
  autograd::record("cross_entropy", out, {&logits0}, [dl](const Tensor& g) {
    return std::vector<Tensor>{ops::detail::binary_map("cross_entropy backward",
                                                       backend::BinaryOp::mul, dl, g,
                                                       [](auto a, auto b) { return a * b; })};
  });
  return out;
}
}  // namespace ops::detail

// Integer labels as the float32 CPU tensor [B] of class indices that cross_entropy takes on a
// device (copy it there, or into a tensor a device graph reads).
inline Tensor label_tensor(std::span<const int32_t> labels) {
  Tensor t = Tensor::empty({int64_t(labels.size())}, DType::f32);
  float* p = t.data<float>();
  for (size_t i = 0; i < labels.size(); ++i) p[i] = float(labels[i]);
  return t;
}

// Mean cross-entropy of logits [B, K] against integer labels in [0, K).
inline Tensor cross_entropy(const Tensor& logits0, std::span<const int32_t> labels) {
  ops::detail::require_rank("cross_entropy", logits0, 2, "logits");
  const int64_t B = logits0.dim(0), K = logits0.dim(1);
  TNAS_CHECK(int64_t(labels.size()) == B, "cross_entropy: ", labels.size(), " labels for ", B,
             " rows of logits ", logits0.shape());
  TNAS_CHECK(B > 0, "cross_entropy: empty batch");
  for (size_t i = 0; i < labels.size(); ++i)
    TNAS_CHECK(labels[i] >= 0 && labels[i] < K, "cross_entropy: label ", labels[i], " at row ", i,
               " is outside [0, ", K, ")");
  Tensor x = logits0.contiguous();
  if (x.device() != Device::cpu) {
    return ops::detail::cross_entropy_device(logits0, x, label_tensor(labels).to(x.device()));
  }
  Tensor logp = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor out = Tensor::empty(Shape{}, x.dtype(), x.device());
  dispatch(x.dtype(), [&]<class T>() {
    T* lp = logp.data<T>();
    ops::detail::log_softmax_rows(x.data<T>(), lp, B, K);
    double s = 0;
    for (int64_t i = 0; i < B; ++i) s -= lp[i * K + labels[i]];
    *out.data<T>() = T(s / double(B));
  });
  if (autograd::needs_grad({&logits0})) {
    std::vector<int32_t> lab(labels.begin(), labels.end());
    Tensor lpd = logp;
    autograd::record("cross_entropy", out, {&logits0}, [lpd, lab, B, K](const Tensor& g) {
      Tensor gx = Tensor::empty(lpd.shape(), lpd.dtype(), lpd.device());
      const double gs = g.item() / double(B);
      dispatch(lpd.dtype(), [&]<class T>() {
        const T* lp = lpd.data<T>();
        T* o = gx.data<T>();
        for (int64_t i = 0; i < B; ++i)
          for (int64_t k = 0; k < K; ++k)
            o[i * K + k] = T((std::exp(double(lp[i * K + k])) - (k == lab[i] ? 1.0 : 0.0)) * gs);
      });
      return std::vector<Tensor>{gx};
    });
  }
  return out;
}

// The same with the labels as a tensor [B] of class indices (float32; integer values): on the
// CPU they are checked and converted; on the logits' device they are used where they are, with
// nothing read back (so a step can be captured as a device graph), and a label outside [0, K)
// makes the loss NaN instead of raising an error.
inline Tensor cross_entropy(const Tensor& logits0, const Tensor& labels) {
  ops::detail::require_rank("cross_entropy", logits0, 2, "logits");
  TNAS_CHECK(labels.defined() && labels.rank() == 1 && labels.dim(0) == logits0.dim(0),
             "cross_entropy: labels of shape ", labels.defined() ? labels.shape().str() : "none",
             " for logits ", logits0.shape(), " (want [", logits0.dim(0), "])");
  if (labels.device() == Device::cpu) {
    std::vector<int32_t> lab;
    for (double v : labels.to_vector()) {
      TNAS_CHECK(v == std::floor(v) && std::abs(v) < 2e9, "cross_entropy: label ", v,
                 " is not an integer");
      lab.push_back(int32_t(v));
    }
    return cross_entropy(logits0, std::span<const int32_t>(lab));
  }
  TNAS_CHECK(labels.device() == logits0.device() && labels.dtype() == DType::f32,
             "cross_entropy: labels are ", labels.dtype(), " on ", labels.device(), ", logits on ",
             logits0.device(), "; device labels must be float32 on the same device");
  TNAS_CHECK(logits0.dim(0) > 0, "cross_entropy: empty batch");
  return ops::detail::cross_entropy_device(logits0, logits0.contiguous(), labels);
}

// Index of the largest logit in each row of [B, K] (ties: the first).
inline std::vector<int32_t> argmax_rows(const Tensor& logits) {
  ops::detail::require_rank("argmax_rows", logits, 2, "logits");
  Tensor x = logits.to(Device::cpu).contiguous();
  std::vector<int32_t> out(x.dim(0));
  dispatch(x.dtype(), [&]<class T>() {
    const T* p = x.data<T>();
    const int64_t K = x.dim(1);
    for (int64_t i = 0; i < x.dim(0); ++i) {
      int64_t best = 0;
      for (int64_t k = 1; k < K; ++k)
        if (p[i * K + k] > p[i * K + best]) best = k;
      out[i] = int32_t(best);
    }
  });
  return out;
}

}  // namespace tnas
