// 2-D max / average pooling on raw NCHW buffers. Direct loops over each (n, c) plane, built on
// the same padded polyphase window machinery as the depthwise convolution (window.hpp): the
// inner loop over the output width is contiguous and branch-free for every stride.
// Every kernel overwrites its output; none reads it first.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "tnas/backend/cpu/window.hpp"
#include "tnas/core/error.hpp"

namespace tnas::cpu {

// Shape and hyper-parameters of a 2-D pooling window. Input [N, C, H, W]; output
// [N, C, P(), Q()].
struct Pool2dParams {
  int64_t N, C, H, W, kh, kw, stride_h, stride_w, pad_h, pad_w;
  bool count_include_pad = false;  // avg pool divisor: false => number of in-bounds elements
  int64_t P() const { return (H + 2 * pad_h - kh) / stride_h + 1; }  // (H + 2*pad - k)/stride + 1
  int64_t Q() const { return (W + 2 * pad_w - kw) / stride_w + 1; }
};

namespace detail {

template <class T>
bool has_nan(const T* x, int64_t n) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) bad |= x[i] != x[i];
  return bad != 0;
}

inline void check_pool(const Pool2dParams& p, const char* who) {
  TNAS_CHECK(p.N >= 0 && p.C >= 0 && p.H > 0 && p.W > 0 && p.kh > 0 && p.kw > 0, who,
             ": bad sizes N=", p.N, " C=", p.C, " H=", p.H, " W=", p.W, " kernel ", p.kh, "x",
             p.kw);
  TNAS_CHECK(p.stride_h > 0 && p.stride_w > 0 && p.pad_h >= 0 && p.pad_w >= 0, who,
             ": bad stride (", p.stride_h, ",", p.stride_w, ") or padding (", p.pad_h, ",", p.pad_w,
             ")");
  TNAS_CHECK(2 * p.pad_h <= p.kh && 2 * p.pad_w <= p.kw, who, ": padding (", p.pad_h, ",", p.pad_w,
             ") must be at most half the kernel ", p.kh, "x", p.kw);
  TNAS_CHECK(p.H + 2 * p.pad_h >= p.kh && p.W + 2 * p.pad_w >= p.kw, who, ": kernel ", p.kh, "x",
             p.kw, " larger than padded input ", p.H + 2 * p.pad_h, "x", p.W + 2 * p.pad_w);
}

inline Win pool_win(const Pool2dParams& p) {
  return Win{p.H, p.W, p.kh, p.kw, p.stride_h, p.stride_w, p.pad_h, p.pad_w, 1, 1, p.P(), p.Q()};
}

// [P*Q] reciprocal of the average-pool divisor of each output.
template <class T>
std::vector<T> avg_pool_scale(const Pool2dParams& p) {
  const int64_t P = p.P(), Q = p.Q();
  auto count = [&](int64_t o, int64_t st, int64_t pad, int64_t k, int64_t n) {
    const int64_t lo = o * st - pad, hi = lo + k;
    if (p.count_include_pad) return std::min(hi, n + pad) - lo;
    return std::min(hi, n) - std::max<int64_t>(lo, 0);
  };
  std::vector<T> s(static_cast<size_t>(P * Q));
  for (int64_t i = 0; i < P; ++i) {
    const int64_t ch = count(i, p.stride_h, p.pad_h, p.kh, p.H);
    for (int64_t j = 0; j < Q; ++j)
      s[static_cast<size_t>(i * Q + j)] =
          T(1) / static_cast<T>(ch * count(j, p.stride_w, p.pad_w, p.kw, p.W));
  }
  return s;
}

}  // namespace detail

// y [N, C, P, Q] <- max over each window of x [N, C, H, W]; padding counts as -infinity and a
// NaN in a window gives NaN.
template <class T>
void max_pool2d_forward(const Pool2dParams& p, const T* x, T* y) {
  using namespace detail;
  check_pool(p, "max_pool2d_forward");
  const Win win = pool_win(p);
  const FwdPlan f = make_fwd_plan(win, 1);
  const int64_t HW = p.H * p.W, PQ = win.P * win.Q;
  const T ninf = -std::numeric_limits<T>::infinity();
  const bool s1 = s1_supported<T>(p.kh, p.kw, p.stride_h, p.stride_w, 1, win.Q);
  const S1Plan sp = make_s1_plan<T>(p.H, p.W, p.kh, p.kw, 1, 1, p.pad_h, p.pad_w, win.P, win.Q);
#pragma omp parallel if (p.N * p.C > 1)
  {
    T* buf = scratch<T, 0>(f.g.elems());
    T* sbuf = s1 ? scratch<T, 1>(sp.g.elems()) : nullptr;
    init_geom(f.g, ninf, buf);
    if (s1) init_geom(sp.g, ninf, sbuf);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < p.N * p.C; ++nc) {
      const T* xp = x + nc * HW;
      T* yp = y + nc * PQ;
      if (has_nan(xp, HW)) {
        fwd_plane<TapOp::MaxNaN>(win, f, xp, static_cast<const T*>(nullptr), buf, yp);
      } else if (s1) {
        copy_geom(xp, sp.g, sbuf);
        s1_plane<TapOp::Max>(sp, sbuf, static_cast<const T*>(nullptr), yp);
      } else {
        fwd_plane<TapOp::Max>(win, f, xp, static_cast<const T*>(nullptr), buf, yp);
      }
    }
  }
}

// gx [N, C, H, W] <- gradient of max_pool2d_forward from x [N, C, H, W] and gy [N, C, P, Q].
// The argmax is recomputed from x: each window's gradient goes to its first maximum in
// row-major order (its first NaN if it has one). A window whose in-bounds values are all
// -infinity passes no gradient.
template <class T>
void max_pool2d_backward(const Pool2dParams& p, const T* x, const T* gy, T* gx) {
  using namespace detail;
  check_pool(p, "max_pool2d_backward");
  const Win win = pool_win(p);
  const FwdPlan f = make_fwd_plan(win, 1);
  const BwdPlan b = make_bwd_plan(win);
  const int64_t HW = p.H * p.W, PQ = win.P * win.Q, RS = p.kh * p.kw;
  const T ninf = -std::numeric_limits<T>::infinity();
#pragma omp parallel if (p.N * p.C > 1)
  {
    T* xbuf = scratch<T, 0>(f.g.elems());
    T* buf = scratch<T, 1>(2 * b.g.elems());
    T* tmp = scratch<T, 2>(bwd_tmp_elems(b));
    T* wsel = scratch<T, 3>(RS);
    T* idx = scratch<T, 5>(PQ);
    init_geom(f.g, ninf, xbuf);
    init_bwd_buf<TapOp::MaskSum>(b, buf);
    const bool direct = bwd_idx_direct(win, b);
    T* iplane = direct ? buf + bwd_idx_offset(b) : idx;
    const int64_t ld = direct ? b.g.Ws : win.Q;
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < p.N * p.C; ++nc) {
      const T* xp = x + nc * HW;
      copy_geom(xp, f.g, xbuf);
      const TapArgs<T> A{xbuf,   0,  f.g.Ws, f.off.data(), nullptr, static_cast<int>(RS),
                         iplane, ld, win.P,  win.Q,        true};
      if (has_nan(xp, HW)) {
        taps_rows<TapOp::ArgmaxNaN>(A);
      } else {
        taps_rows<TapOp::Argmax>(A);
      }
      if (!direct) copy_geom(idx, b.g, buf + b.g.elems());
      bwd_plane<TapOp::MaskSum>(win, b, gy + nc * PQ, static_cast<const T*>(nullptr), buf, tmp,
                                wsel, gx + nc * HW);
    }
  }
}

// y [N, C, P, Q] <- mean over each window of x [N, C, H, W]; the divisor is kh*kw with
// count_include_pad, else the number of in-bounds elements of the window.
template <class T>
void avg_pool2d_forward(const Pool2dParams& p, const T* x, T* y) {
  using namespace detail;
  check_pool(p, "avg_pool2d_forward");
  const Win win = pool_win(p);
  const FwdPlan f = make_fwd_plan(win, 1);
  const int64_t HW = p.H * p.W, PQ = win.P * win.Q, RS = p.kh * p.kw;
  const std::vector<T> scale = avg_pool_scale<T>(p);
  const std::vector<T> ones(static_cast<size_t>(RS), T(1));
  const T* sc = scale.data();
  const bool s1 = s1_supported<T>(p.kh, p.kw, p.stride_h, p.stride_w, 1, win.Q);
  const S1Plan sp = make_s1_plan<T>(p.H, p.W, p.kh, p.kw, 1, 1, p.pad_h, p.pad_w, win.P, win.Q);
#pragma omp parallel if (p.N * p.C > 1)
  {
    T* buf = s1 ? scratch<T, 1>(sp.g.elems()) : scratch<T, 0>(f.g.elems());
    init_geom(s1 ? sp.g : f.g, T(0), buf);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < p.N * p.C; ++nc) {
      T* o = y + nc * PQ;
      if (s1) {
        copy_geom(x + nc * HW, sp.g, buf);
        s1_plane<TapOp::Sum>(sp, buf, ones.data(), o);
      } else {
        fwd_plane<TapOp::Sum>(win, f, x + nc * HW, ones.data(), buf, o);
      }
#pragma omp simd
      for (int64_t i = 0; i < PQ; ++i) o[i] *= sc[i];
    }
  }
}

// gx [N, C, H, W] <- gradient of avg_pool2d_forward from gy [N, C, P, Q].
template <class T>
void avg_pool2d_backward(const Pool2dParams& p, const T* gy, T* gx) {
  using namespace detail;
  check_pool(p, "avg_pool2d_backward");
  const Win win = pool_win(p);
  const BwdPlan b = make_bwd_plan(win);
  const int64_t HW = p.H * p.W, PQ = win.P * win.Q, RS = p.kh * p.kw;
  const std::vector<T> scale = avg_pool_scale<T>(p);
  const std::vector<T> ones(static_cast<size_t>(RS), T(1));
  const T* sc = scale.data();
  // Unit stride: a correlation of the scaled gy with the (flipped, all-ones) window.
  const bool s1 = s1_supported<T>(p.kh, p.kw, p.stride_h, p.stride_w, 1, p.W);
  const S1Plan sp = make_s1_plan<T>(win.P, win.Q, p.kh, p.kw, 1, 1, p.kh - 1 - p.pad_h,
                                    p.kw - 1 - p.pad_w, p.H, p.W);
#pragma omp parallel if (p.N * p.C > 1)
  {
    T* gbuf = s1 ? scratch<T, 1>(sp.g.elems()) : scratch<T, 1>(b.g.elems());
    T* tmp = scratch<T, 2>(bwd_tmp_elems(b));
    T* wsel = scratch<T, 3>(RS);
    T* gs = scratch<T, 5>(PQ);
    if (s1) {
      init_geom(sp.g, T(0), gbuf);
    } else {
      init_bwd_buf<TapOp::Sum>(b, gbuf);
    }
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < p.N * p.C; ++nc) {
      const T* g = gy + nc * PQ;
#pragma omp simd
      for (int64_t i = 0; i < PQ; ++i) gs[i] = g[i] * sc[i];
      if (s1) {
        copy_geom(gs, sp.g, gbuf);
        s1_plane<TapOp::Sum>(sp, gbuf, ones.data(), gx + nc * HW);
      } else {
        bwd_plane<TapOp::Sum>(win, b, gs, ones.data(), gbuf, tmp, wsel, gx + nc * HW);
      }
    }
  }
}

}  // namespace tnas::cpu
