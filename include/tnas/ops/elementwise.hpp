// Elementwise ops: arithmetic with NumPy broadcasting, activations, sign with a
// straight-through estimator, dropout, and the zero op. Forward and backward side by side.
#pragma once

#include <cmath>

#include "tnas/ops/common.hpp"

namespace tnas {

namespace ops::detail {

// out = f(a, b) elementwise with broadcasting. f is called with T values on the CPU; `bop`
// names the same function for the other devices' kernels.
template <class F>
Tensor binary_map(const char* op, backend::BinaryOp bop, const Tensor& a, const Tensor& b, F f) {
  require_same(op, a, b);
  Shape s = broadcast_shape(op, a.shape(), b.shape());
  Tensor out = Tensor::empty(s, a.dtype(), a.device());
  if (a.device() != Device::cpu) {
    Strides sa = broadcast_strides(a, s), sb = broadcast_strides(b, s);
    backend::kernel(op, a.device(), &backend::Kernels::binary)(
        bop, a.dtype(), a.raw(), backend::make_view(s, sa.data()), b.raw(),
        backend::make_view(s, sb.data()), out.raw());
    return out;
  }
  dispatch(a.dtype(), [&]<class T>() {
    T* o = out.data<T>();
    const int64_t n = out.numel();
    if (a.shape() == s && b.shape() == s && a.is_contiguous() && b.is_contiguous()) {
      const T* pa = a.data<T>();
      const T* pb = b.data<T>();
#pragma omp parallel for simd if (n > 65536)
      for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], pb[i]);
      return;
    }
    if (b.numel() == 1 && a.shape() == s && a.is_contiguous()) {
      const T* pa = a.data<T>();
      const T vb = *b.data<T>();
#pragma omp parallel for simd if (n > 65536)
      for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], vb);
      return;
    }
    Strides sa = broadcast_strides(a, s), sb = broadcast_strides(b, s);
    Strides so = contiguous_strides(s);
    const T* pa = static_cast<const T*>(a.impl_ptr()->storage->data);
    const T* pb = static_cast<const T*>(b.impl_ptr()->storage->data);
    for_each_index<3>(s, {so.data(), sa.data(), sb.data()}, {0, a.offset(), b.offset()},
                      [&](int64_t oo, int64_t oa, int64_t ob) { o[oo] = f(pa[oa], pb[ob]); });
  });
  return out;
}

// out = f(x) elementwise; `uop` (with the constant `s` of scale / add_scalar) names f for the
// other devices' kernels.
template <class F>
Tensor unary_map(const char* op, backend::UnaryOp uop, double s, const Tensor& x0, F f) {
  Tensor x = x0.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device() != Device::cpu) {
    backend::kernel(op, x.device(), &backend::Kernels::unary)(uop, x.dtype(), x.raw(), out.raw(),
                                                              x.numel(), s);
    return out;
  }
  dispatch(x.dtype(), [&]<class T>() {
    const T* px = x.data<T>();
    T* o = out.data<T>();
    const int64_t n = x.numel();
    // GCC vectorises the map only when asked (`simd`). Clang vectorises the simple ones (relu,
    // abs) by itself, and where asked for one it cannot vectorise (a libm call: exp, tanh, log)
    // it warns that it could not (-Wpass-failed), in the user's build.
#if defined(__clang__)
#pragma omp parallel for if (n > 65536)
#else
#pragma omp parallel for simd if (n > 65536)
#endif
    for (int64_t i = 0; i < n; ++i) o[i] = f(px[i]);
  });
  return out;
}

}  // namespace ops::detail

// ---- arithmetic --------------------------------------------------------------------------

inline Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = ops::detail::binary_map("add", backend::BinaryOp::add, a, b,
                                       [](auto x, auto y) { return x + y; });
  Shape sa = a.shape(), sb = b.shape();
  autograd::record("add", out, {&a, &b}, [sa, sb](const Tensor& g) {
    return std::vector<Tensor>{ops::detail::sum_to(g, sa), ops::detail::sum_to(g, sb)};
  });
  return out;
}

inline Tensor neg(const Tensor& x);

inline Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = ops::detail::binary_map("sub", backend::BinaryOp::sub, a, b,
                                       [](auto x, auto y) { return x - y; });
  Shape sa = a.shape(), sb = b.shape();
  autograd::record("sub", out, {&a, &b}, [sa, sb](const Tensor& g) {
    Tensor ng =
        ops::detail::unary_map("sub", backend::UnaryOp::scale, -1.0, g, [](auto v) { return -v; });
    return std::vector<Tensor>{ops::detail::sum_to(g, sa), ops::detail::sum_to(ng, sb)};
  });
  return out;
}

inline Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = ops::detail::binary_map("mul", backend::BinaryOp::mul, a, b,
                                       [](auto x, auto y) { return x * y; });
  if (autograd::needs_grad({&a, &b})) {
    Tensor ad = a.detach(), bd = b.detach();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    autograd::record("mul", out, {&a, &b}, [ad, bd, ga, gb](const Tensor& g) {
      auto m = [](auto x, auto y) { return x * y; };
      return std::vector<Tensor>{
          ga ? ops::detail::sum_to(ops::detail::binary_map("mul", backend::BinaryOp::mul, g, bd, m),
                                   ad.shape())
             : Tensor(),
          gb ? ops::detail::sum_to(ops::detail::binary_map("mul", backend::BinaryOp::mul, g, ad, m),
                                   bd.shape())
             : Tensor()};
    });
  }
  return out;
}

inline Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = ops::detail::binary_map("div", backend::BinaryOp::div, a, b,
                                       [](auto x, auto y) { return x / y; });
  if (autograd::needs_grad({&a, &b})) {
    Tensor ad = a.detach(), bd = b.detach(), od = out.detach();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    autograd::record("div", out, {&a, &b}, [ad, bd, od, ga, gb](const Tensor& g) {
      Tensor da, db;
      if (ga)
        da = ops::detail::sum_to(ops::detail::binary_map("div", backend::BinaryOp::div, g, bd,
                                                         [](auto x, auto y) { return x / y; }),
                                 ad.shape());
      if (gb) {
        // d(a/b)/db = -out / b
        Tensor t = ops::detail::binary_map("div", backend::BinaryOp::neg_div, od, bd,
                                           [](auto x, auto y) { return -x / y; });
        db = ops::detail::sum_to(ops::detail::binary_map("mul", backend::BinaryOp::mul, g, t,
                                                         [](auto x, auto y) { return x * y; }),
                                 bd.shape());
      }
      return std::vector<Tensor>{da, db};
    });
  }
  return out;
}

// x * s for a constant s.
inline Tensor scale(const Tensor& x, double s) {
  Tensor out = ops::detail::unary_map("scale", backend::UnaryOp::scale, s, x,
                                      [s](auto v) { return v * decltype(v)(s); });
  autograd::record("scale", out, {&x}, [s](const Tensor& g) {
    return std::vector<Tensor>{ops::detail::unary_map("scale", backend::UnaryOp::scale, s, g,
                                                      [s](auto v) { return v * decltype(v)(s); })};
  });
  return out;
}
inline Tensor neg(const Tensor& x) {
  return scale(x, -1.0);
}

// x + s for a constant s.
inline Tensor add_scalar(const Tensor& x, double s) {
  Tensor out = ops::detail::unary_map("add_scalar", backend::UnaryOp::add_scalar, s, x,
                                      [s](auto v) { return v + decltype(v)(s); });
  autograd::record("add_scalar", out, {&x}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  return out;
}

inline Tensor operator+(const Tensor& a, const Tensor& b) {
  return add(a, b);
}
inline Tensor operator-(const Tensor& a, const Tensor& b) {
  return sub(a, b);
}
inline Tensor operator*(const Tensor& a, const Tensor& b) {
  return mul(a, b);
}
inline Tensor operator/(const Tensor& a, const Tensor& b) {
  return div(a, b);
}
inline Tensor operator-(const Tensor& x) {
  return neg(x);
}
inline Tensor operator*(const Tensor& x, double s) {
  return scale(x, s);
}
inline Tensor operator*(double s, const Tensor& x) {
  return scale(x, s);
}
inline Tensor operator+(const Tensor& x, double s) {
  return add_scalar(x, s);
}
inline Tensor operator-(const Tensor& x, double s) {
  return add_scalar(x, -s);
}

// ---- activations -------------------------------------------------------------------------

namespace ops::detail {
// Unary op whose backward is g * dfdy(x, y). dfdy reads only one of its arguments: the output y
// when kFromOutput (relu, sigmoid, tanh, exp), else the input x; only that one is saved, and it
// is passed for both, so the tape never keeps the other alive.
template <bool kFromOutput, class F, class D>
Tensor unary_op(const char* name, backend::UnaryOp uop, const Tensor& x, F f, D dfdy) {
  Tensor out = unary_map(name, uop, 0.0, x, f);
  if (needs_grad({&x})) {
    Tensor saved = kFromOutput ? out.detach() : x.contiguous().detach();
    record(name, out, {&x}, [=](const Tensor& g0) {
      Tensor g = g0.contiguous();
      Tensor gx = Tensor::empty(g.shape(), g.dtype(), g.device());
      if (g.device() != Device::cpu) {
        backend::kernel(name, g.device(), &backend::Kernels::unary_backward)(
            uop, g.dtype(), g.raw(), saved.raw(), saved.raw(), gx.raw(), g.numel());
        return std::vector<Tensor>{gx};
      }
      dispatch(g.dtype(), [&]<class T>() {
        const T* pg = g.template data<T>();
        const T* ps = saved.template data<T>();
        T* o = gx.template data<T>();
        const int64_t n = g.numel();
#pragma omp parallel for simd if (n > 65536)
        for (int64_t i = 0; i < n; ++i) o[i] = pg[i] * dfdy(ps[i], ps[i]);
      });
      return std::vector<Tensor>{gx};
    });
  }
  return out;
}
}  // namespace ops::detail

inline Tensor relu(const Tensor& x) {
  return ops::detail::unary_op<true>(
      "relu", backend::UnaryOp::relu, x, [](auto v) { return v > 0 ? v : decltype(v)(0); },
      [](auto, auto y) { return y > 0 ? decltype(y)(1) : decltype(y)(0); });
}
inline Tensor sigmoid(const Tensor& x) {
  return ops::detail::unary_op<true>(
      "sigmoid", backend::UnaryOp::sigmoid, x,
      [](auto v) { return decltype(v)(1) / (decltype(v)(1) + std::exp(-v)); },
      [](auto, auto y) { return y * (decltype(y)(1) - y); });
}
inline Tensor tanh(const Tensor& x) {
  return ops::detail::unary_op<true>(
      "tanh", backend::UnaryOp::tanh, x, [](auto v) { return std::tanh(v); },
      [](auto, auto y) { return decltype(y)(1) - y * y; });
}
inline Tensor exp(const Tensor& x) {
  return ops::detail::unary_op<true>(
      "exp", backend::UnaryOp::exp, x, [](auto v) { return std::exp(v); },
      [](auto, auto y) { return y; });
}
inline Tensor log(const Tensor& x) {
  return ops::detail::unary_op<false>(
      "log", backend::UnaryOp::log, x, [](auto v) { return std::log(v); },
      [](auto v, auto) { return decltype(v)(1) / v; });
}
inline Tensor square(const Tensor& x) {
  return ops::detail::unary_op<false>(
      "square", backend::UnaryOp::square, x, [](auto v) { return v * v; },
      [](auto v, auto) { return 2 * v; });
}

// sign(x) in {-1, +1} (sign(0) = +1, so the result is always a valid binary code), with the
// straight-through estimator of BinaryNet: the gradient passes unchanged where |x| <= 1 and
// is cut elsewhere.
inline Tensor sign_ste(const Tensor& x) {
  return ops::detail::unary_op<false>(
      "sign_ste", backend::UnaryOp::sign_ste, x,
      [](auto v) { return v >= 0 ? decltype(v)(1) : decltype(v)(-1); },
      [](auto v, auto) { return std::abs(v) <= 1 ? decltype(v)(1) : decltype(v)(0); });
}

// Inverted dropout: in training, zeroes each element with probability p and scales the rest by
// 1/(1-p); in evaluation (training == false) or with p == 0 it is the identity.
inline Tensor dropout(const Tensor& x, double p, bool training, Rng& rng = default_rng()) {
  TNAS_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got ", p);
  if (!training || p == 0) return x;
  // The mask is drawn on the host (tnas's seeded Rng) and moved to x's device.
  Tensor mask = Tensor::empty(x.shape(), x.dtype());
  dispatch(x.dtype(), [&]<class T>() {
    T* m = mask.data<T>();
    const T keep = T(1 / (1 - p));
    for (int64_t i = 0; i < x.numel(); ++i) m[i] = rng.uniform() < p ? T(0) : keep;
  });
  return mul(x, mask.to(x.device()));
}

// The `none` op of NAS spaces: zeros of the given shape, connected to nothing.
inline Tensor zeros_like(const Tensor& x) {
  return Tensor::zeros(x.shape(), x.dtype(), x.device());
}

}  // namespace tnas
