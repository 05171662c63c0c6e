// 2-D convolution kernels on raw NCHW buffers.
//
// Four paths, picked from the parameters:
//  - depthwise, small "same" planes (float on AVX-512 builds; unit stride, output the input's
//    size, 3x3 / 5x5): the flat engine reads each plane straight from the tensor as flat 16-lane
//    vectors, one masked load per (vector, tap), and 8x8 planes take the tiny engine, which holds
//    the plane in four registers and builds every shifted view with one valignd. Forward,
//    backward-input and backward-weight, several images of a channel per pass, no padded copies.
//  - depthwise (groups == C == K, any kernel size, stride, padding, dilation): direct loops over
//    each (n, c) plane. The plane is first copied into a zero-padded "polyphase" buffer (one
//    sub-plane per stride phase), so every kernel tap becomes a contiguous, branch-free row
//    segment and the inner loop over the output width vectorises. Backward-input is a
//    correlation of the padded output gradient with the flipped kernel, split into stride phases;
//    backward-weight is a per-tap dot product of gy with shifted x rows.
//  - pointwise (1x1, stride 1, no padding): per image y[n] = W * x[n] as one GEMM, no copies.
//  - everything else (dense or grouped KxK): im2col + GEMM per image and group.
// Every kernel overwrites its output; none reads it first.
//
// The sliding-window machinery (polyphase copies, tap kernels, the row-blocked engine) is in
// window.hpp and the AVX-512 flat / tiny depthwise engines in depthwise_flat.hpp.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tnas/backend/cpu/conv_params.hpp"
#include "tnas/backend/cpu/depthwise_flat.hpp"
#include "tnas/backend/cpu/gemm.hpp"
#include "tnas/backend/cpu/window.hpp"
#include "tnas/core/error.hpp"

namespace tnas::cpu {

namespace detail {

// ---- convolution paths ----------------------------------------------------------------------
inline void check_conv(const Conv2dParams& p, const char* who) {
  TNAS_CHECK(p.N >= 0 && p.C > 0 && p.H > 0 && p.W > 0 && p.K > 0 && p.R > 0 && p.S > 0, who,
             ": bad sizes N=", p.N, " C=", p.C, " H=", p.H, " W=", p.W, " K=", p.K, " R=", p.R,
             " S=", p.S);
  TNAS_CHECK(p.stride_h > 0 && p.stride_w > 0 && p.dil_h > 0 && p.dil_w > 0 && p.pad_h >= 0 &&
                 p.pad_w >= 0,
             who, ": bad stride (", p.stride_h, ",", p.stride_w, "), dilation (", p.dil_h, ",",
             p.dil_w, ") or padding (", p.pad_h, ",", p.pad_w, ")");
  TNAS_CHECK(p.groups > 0 && p.C % p.groups == 0 && p.K % p.groups == 0, who, ": groups=", p.groups,
             " must divide C=", p.C, " and K=", p.K);
  TNAS_CHECK(
      p.H + 2 * p.pad_h >= p.dil_h * (p.R - 1) + 1 && p.W + 2 * p.pad_w >= p.dil_w * (p.S - 1) + 1,
      who, ": kernel ", p.R, "x", p.S, " (dilation ", p.dil_h, ",", p.dil_w,
      ") larger than padded input ", p.H + 2 * p.pad_h, "x", p.W + 2 * p.pad_w);
}

inline Win conv_win(const Conv2dParams& p) {
  return Win{p.H,     p.W,     p.R,     p.S,     p.stride_h, p.stride_w,
             p.pad_h, p.pad_w, p.dil_h, p.dil_w, p.P(),      p.Q()};
}

inline bool is_depthwise(const Conv2dParams& p) {
  return p.groups == p.C && p.K == p.C;
}

// 1x1, stride 1, no padding: the input plane block is already the im2col matrix.
inline bool is_pointwise(const Conv2dParams& p) {
  return p.R == 1 && p.S == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0;
}

template <class T>
void dw_forward(const Conv2dParams& p, const T* x, const T* w, T* y) {
  if (flat_dw_forward(p, x, w, y)) return;
  const Win win = conv_win(p);
  const int64_t RS = p.R * p.S, HW = p.H * p.W, PQ = win.P * win.Q;
  if (s1_supported<T>(p.R, p.S, p.stride_h, p.stride_w, p.dil_w, win.Q)) {
    const S1Plan s1 =
        make_s1_plan<T>(p.H, p.W, p.R, p.S, p.dil_h, p.dil_w, p.pad_h, p.pad_w, win.P, win.Q);
#pragma omp parallel if (p.N * p.C > 1)
    {
      T* buf = scratch<T, 0>(s1.g.elems());
      init_geom(s1.g, T(0), buf);
#pragma omp for schedule(static)
      for (int64_t nc = 0; nc < p.N * p.C; ++nc) {
        copy_geom(x + nc * HW, s1.g, buf);
        s1_plane<TapOp::Sum>(s1, buf, w + (nc % p.C) * RS, y + nc * PQ);
      }
    }
    return;
  }
  const FwdPlan f = make_fwd_plan(win, 1);
#pragma omp parallel if (p.N * p.C > 1)
  {
    T* buf = scratch<T, 0>(f.g.elems());
    init_geom(f.g, T(0), buf);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < p.N * p.C; ++nc) {
      const int64_t c = nc % p.C;
      fwd_plane<TapOp::Sum>(win, f, x + nc * HW, w + c * RS, buf, y + nc * PQ);
    }
  }
}

template <class T>
void dw_backward_input(const Conv2dParams& p, const T* gy, const T* w, T* gx) {
  if (flat_dw_backward_input(p, gy, w, gx)) return;
  const Win win = conv_win(p);
  const int64_t RS = p.R * p.S, HW = p.H * p.W, PQ = win.P * win.Q;
  if (s1_supported<T>(p.R, p.S, p.stride_h, p.stride_w, p.dil_w, p.W)) {
    // Unit stride: a correlation of gy with the flipped kernel, padded by (R-1)*dh - pad_h.
    const S1Plan s1 =
        make_s1_plan<T>(win.P, win.Q, p.R, p.S, p.dil_h, p.dil_w, (p.R - 1) * p.dil_h - p.pad_h,
                        (p.S - 1) * p.dil_w - p.pad_w, p.H, p.W);
    const std::vector<T> wf = flipped_kernels(p.C, RS, w);
#pragma omp parallel if (p.N * p.C > 1)
    {
      T* buf = scratch<T, 1>(s1.g.elems());
      init_geom(s1.g, T(0), buf);
#pragma omp for schedule(static)
      for (int64_t nc = 0; nc < p.N * p.C; ++nc) {
        copy_geom(gy + nc * PQ, s1.g, buf);
        s1_plane<TapOp::Sum>(s1, buf, wf.data() + (nc % p.C) * RS, gx + nc * HW);
      }
    }
    return;
  }
  const BwdPlan b = make_bwd_plan(win);
#pragma omp parallel if (p.N * p.C > 1)
  {
    T* gbuf = scratch<T, 1>(b.g.elems());
    T* tmp = scratch<T, 2>(bwd_tmp_elems(b));
    T* wsel = scratch<T, 3>(RS);
    init_bwd_buf<TapOp::Sum>(b, gbuf);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < p.N * p.C; ++nc) {
      const int64_t c = nc % p.C;
      bwd_plane<TapOp::Sum>(win, b, gy + nc * PQ, w + c * RS, gbuf, tmp, wsel, gx + nc * HW);
    }
  }
}

template <class T>
void dw_backward_weight(const Conv2dParams& p, const T* x, const T* gy, T* gw) {
  if (flat_dw_backward_weight(p, x, gy, gw)) return;
  const Win win = conv_win(p);
  const FwdPlan f = make_fwd_plan(win, 1);
  const int64_t RS = p.R * p.S, HW = p.H * p.W, PQ = win.P * win.Q, C = p.C;
  constexpr int64_t V = kDotLanes<T>;
  const int64_t Ws = f.g.Ws;
  const int64_t L = (win.P * Ws + V - 1) / V * V;
  const int nthreads = p.N * C > 1 ? omp_get_max_threads() : 1;
  std::vector<double> acc(static_cast<size_t>(nthreads * C * RS), 0.0);
#pragma omp parallel num_threads(nthreads)
  {
    double* my = acc.data() + omp_get_thread_num() * C * RS;
    T* buf = scratch<T, 0>(f.g.elems());
    T* gflat = scratch<T, 1>(L);
    T* res = scratch<T, 3>(RS);
    init_geom(f.g, T(0), buf);
    std::fill(gflat, gflat + L, T(0));  // columns [Q, Ws) and the tail stay zero
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < p.N * C; ++nc) {
      const int64_t c = nc % C;
      copy_geom(x + nc * HW, f.g, buf);
      const T* g = gy + nc * PQ;
      for (int64_t i = 0; i < win.P; ++i) {
        T* __restrict d = gflat + i * Ws;
        const T* __restrict s = g + i * win.Q;
#pragma omp simd
        for (int64_t j = 0; j < win.Q; ++j) d[j] = s[j];
      }
      taps_dot(gflat, buf, f.off.data(), static_cast<int>(RS), L, res);
      for (int64_t t = 0; t < RS; ++t) my[c * RS + t] += static_cast<double>(res[t]);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < C * RS; ++i) {
      double s = 0;
      for (int th = 0; th < nthreads; ++th) s += acc[static_cast<size_t>(th * C * RS + i)];
      gw[i] = static_cast<T>(s);
    }
  }
}

// col [Cg*R*S, P*Q] <- windows of x [Cg, H, W] (zeros where the window leaves the input).
template <class T>
void im2col(const Conv2dParams& p, int64_t Cg, const T* x, T* col) {
  const int64_t P = p.P(), Q = p.Q(), PQ = P * Q;
  for (int64_t c = 0; c < Cg; ++c) {
    const T* xc = x + c * p.H * p.W;
    for (int64_t r = 0; r < p.R; ++r) {
      for (int64_t s = 0; s < p.S; ++s) {
        T* row = col + ((c * p.R + r) * p.S + s) * PQ;
        const int64_t c0 = s * p.dil_w - p.pad_w;  // input column of q = 0
        const int64_t q0 = clamp64(ceil_div(-c0, p.stride_w), 0, Q);
        const int64_t q1 = clamp64(floor_div(p.W - 1 - c0, p.stride_w) + 1, q0, Q);
        for (int64_t i = 0; i < P; ++i) {
          T* d = row + i * Q;
          const int64_t ih = i * p.stride_h - p.pad_h + r * p.dil_h;
          if (ih < 0 || ih >= p.H) {
            std::fill(d, d + Q, T(0));
            continue;
          }
          const T* xr = xc + ih * p.W + c0;
          std::fill(d, d + q0, T(0));
          if (p.stride_w == 1) {
            std::copy(xr + q0, xr + q1, d + q0);
          } else {
            for (int64_t q = q0; q < q1; ++q) d[q] = xr[q * p.stride_w];
          }
          std::fill(d + q1, d + Q, T(0));
        }
      }
    }
  }
}

// gx [Cg, H, W] <- scatter-add of col [Cg*R*S, P*Q] (the adjoint of im2col); overwrites gx.
template <class T>
void col2im(const Conv2dParams& p, int64_t Cg, const T* col, T* gx) {
  const int64_t P = p.P(), Q = p.Q(), PQ = P * Q;
  std::fill(gx, gx + Cg * p.H * p.W, T(0));
  for (int64_t c = 0; c < Cg; ++c) {
    T* gc = gx + c * p.H * p.W;
    for (int64_t r = 0; r < p.R; ++r) {
      for (int64_t s = 0; s < p.S; ++s) {
        const T* row = col + ((c * p.R + r) * p.S + s) * PQ;
        const int64_t c0 = s * p.dil_w - p.pad_w;
        const int64_t q0 = clamp64(ceil_div(-c0, p.stride_w), 0, Q);
        const int64_t q1 = clamp64(floor_div(p.W - 1 - c0, p.stride_w) + 1, q0, Q);
        for (int64_t i = 0; i < P; ++i) {
          const int64_t ih = i * p.stride_h - p.pad_h + r * p.dil_h;
          if (ih < 0 || ih >= p.H) continue;
          const T* d = row + i * Q;
          T* gr = gc + ih * p.W + c0;
          if (p.stride_w == 1) {
#pragma omp simd
            for (int64_t q = q0; q < q1; ++q) gr[q] += d[q];
          } else {
            for (int64_t q = q0; q < q1; ++q) gr[q * p.stride_w] += d[q];
          }
        }
      }
    }
  }
}

// Batch loop of the GEMM paths: images in parallel (single-threaded GEMMs) when there are at
// least as many images as threads, else images in turn with multi-threaded GEMMs.
inline bool batch_parallel(int64_t N) {
  return N > 1 && N >= omp_get_max_threads();
}

template <class T>
void gemm_forward(const Conv2dParams& p, const T* x, const T* w, T* y) {
  const int64_t G = p.groups, Cg = p.C / G, Kg = p.K / G, CRS = Cg * p.R * p.S;
  const int64_t HW = p.H * p.W, PQ = p.P() * p.Q();
  const bool direct = is_pointwise(p);
  auto image = [&](int64_t n) {
    T* col = direct ? nullptr : scratch<T, 4>(CRS * PQ);
    for (int64_t g = 0; g < G; ++g) {
      const T* xg = x + (n * p.C + g * Cg) * HW;
      if (!direct) im2col(p, Cg, xg, col);
      gemm(false, false, Kg, PQ, CRS, T(1), w + g * Kg * CRS, CRS, direct ? xg : col, PQ, T(0),
           y + (n * p.K + g * Kg) * PQ, PQ);
    }
  };
  if (batch_parallel(p.N)) {
    parallel_for(p.N, image);
  } else {
    for (int64_t n = 0; n < p.N; ++n) image(n);
  }
}

template <class T>
void gemm_backward_input(const Conv2dParams& p, const T* gy, const T* w, T* gx) {
  const int64_t G = p.groups, Cg = p.C / G, Kg = p.K / G, CRS = Cg * p.R * p.S;
  const int64_t HW = p.H * p.W, PQ = p.P() * p.Q();
  const bool direct = is_pointwise(p);
  auto image = [&](int64_t n) {
    T* col = direct ? nullptr : scratch<T, 4>(CRS * PQ);
    for (int64_t g = 0; g < G; ++g) {
      const T* gyg = gy + (n * p.K + g * Kg) * PQ;
      T* gxg = gx + (n * p.C + g * Cg) * HW;
      gemm(true, false, CRS, PQ, Kg, T(1), w + g * Kg * CRS, CRS, gyg, PQ, T(0), direct ? gxg : col,
           PQ);
      if (!direct) col2im(p, Cg, col, gxg);
    }
  };
  if (batch_parallel(p.N)) {
    parallel_for(p.N, image);
  } else {
    for (int64_t n = 0; n < p.N; ++n) image(n);
  }
}

template <class T>
void gemm_backward_weight(const Conv2dParams& p, const T* x, const T* gy, T* gw) {
  const int64_t G = p.groups, Cg = p.C / G, Kg = p.K / G, CRS = Cg * p.R * p.S;
  const int64_t HW = p.H * p.W, PQ = p.P() * p.Q(), WS = p.K * CRS;
  const bool direct = is_pointwise(p);
  // gw_acc [K, CRS] (+)= gy[n] * col(x[n])^T, group by group.
  auto image = [&](int64_t n, T* gw_acc, bool first) {
    T* col = direct ? nullptr : scratch<T, 4>(CRS * PQ);
    for (int64_t g = 0; g < G; ++g) {
      const T* xg = x + (n * p.C + g * Cg) * HW;
      if (!direct) im2col(p, Cg, xg, col);
      gemm(false, true, Kg, CRS, PQ, T(1), gy + (n * p.K + g * Kg) * PQ, PQ, direct ? xg : col, PQ,
           first ? T(0) : T(1), gw_acc + g * Kg * CRS, CRS);
    }
  };
  if (p.N == 0) {
    std::fill(gw, gw + WS, T(0));
  } else if (!batch_parallel(p.N)) {
    for (int64_t n = 0; n < p.N; ++n) image(n, gw, n == 0);
  } else {
    const int nthreads = omp_get_max_threads();
    std::vector<T> acc(static_cast<size_t>(nthreads * WS));
#pragma omp parallel num_threads(nthreads)
    {
      const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
      T* my = acc.data() + tid * WS;
      const int64_t n0 = p.N * tid / nth, n1 = p.N * (tid + 1) / nth;
      if (n1 == n0) std::fill(my, my + WS, T(0));
      for (int64_t n = n0; n < n1; ++n) image(n, my, n == n0);
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t i = 0; i < WS; ++i) {
        T s = 0;
        for (int th = 0; th < nth; ++th) s += acc[static_cast<size_t>(th * WS + i)];
        gw[i] = s;
      }
    }
  }
}

}  // namespace detail

// y [N, K, P, Q] <- conv(x [N, C, H, W], w [K, C/groups, R, S]). No bias (the caller adds it).
template <class T>
void conv2d_forward(const Conv2dParams& p, const T* x, const T* w, T* y) {
  detail::check_conv(p, "conv2d_forward");
  if (detail::is_depthwise(p)) {
    detail::dw_forward(p, x, w, y);
  } else {
    detail::gemm_forward(p, x, w, y);
  }
}

// gx [N, C, H, W] <- dL/dx from gy [N, K, P, Q] and w [K, C/groups, R, S].
template <class T>
void conv2d_backward_input(const Conv2dParams& p, const T* gy, const T* w, T* gx) {
  detail::check_conv(p, "conv2d_backward_input");
  if (detail::is_depthwise(p)) {
    detail::dw_backward_input(p, gy, w, gx);
  } else {
    detail::gemm_backward_input(p, gy, w, gx);
  }
}

// gw [K, C/groups, R, S] <- dL/dw from x [N, C, H, W] and gy [N, K, P, Q].
template <class T>
void conv2d_backward_weight(const Conv2dParams& p, const T* x, const T* gy, T* gw) {
  detail::check_conv(p, "conv2d_backward_weight");
  if (detail::is_depthwise(p)) {
    detail::dw_backward_weight(p, x, gy, gw);
  } else {
    detail::gemm_backward_weight(p, x, gy, gw);
  }
}

}  // namespace tnas::cpu
