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
#pragma once

#include <omp.h>

#include "tnas/backend/cpu/simd.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "tnas/backend/cpu/gemm.hpp"
#include "tnas/core/error.hpp"

namespace tnas::cpu {

// Shape and hyper-parameters of a 2-D convolution. Input [N, C, H, W]; weight
// [K, C/groups, R, S]; output [N, K, P(), Q()].
struct Conv2dParams {
  int64_t N, C, H, W;  // input  [N, C, H, W]
  int64_t K;           // output channels; weight [K, C/groups, R, S]
  int64_t R, S;        // kernel height, width
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1, groups = 1;
  // Output height = (H + 2*pad_h - dil_h*(R-1) - 1)/stride_h + 1.
  int64_t P() const { return (H + 2 * pad_h - dil_h * (R - 1) - 1) / stride_h + 1; }
  // Output width = (W + 2*pad_w - dil_w*(S-1) - 1)/stride_w + 1.
  int64_t Q() const { return (W + 2 * pad_w - dil_w * (S - 1) - 1) / stride_w + 1; }
};

namespace detail {

inline int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}
inline int64_t ceil_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}
inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Per-thread, 64-byte aligned scratch memory that persists between calls (OpenMP threads are
// pooled, so steady-state training allocates nothing here). Distinct Slots never alias.
template <class T, int Slot>
T* scratch(int64_t n) {
  struct Buf {
    T* p = nullptr;
    int64_t cap = 0;
    ~Buf() { ::operator delete[](p, std::align_val_t(64)); }
  };
  thread_local Buf buf;
  if (buf.cap < n) {
    ::operator delete[](buf.p, std::align_val_t(64));
    buf.p = nullptr;
    buf.cap = 0;
    buf.p =
        static_cast<T*>(::operator new[](static_cast<size_t>(n) * sizeof(T), std::align_val_t(64)));
    buf.cap = n;
  }
  return buf.p;
}

// Run f(i) for i in [0, n) over the OpenMP team (static schedule).
template <class F>
void parallel_for(int64_t n, F&& f) {
#pragma omp parallel for schedule(static) if (n > 1)
  for (int64_t i = 0; i < n; ++i) f(i);
}

inline constexpr int64_t kSlack = 64;  // spare elements after every padded buffer

// A sliding window over a [H, W] source plane: output [P, Q], kernel [R, S], strides,
// paddings and dilations. Conv and pooling both reduce to this.
struct Win {
  int64_t H, W, R, S, sh, sw, ph, pw, dh, dw, P, Q;
};

// Geometry of a padded polyphase copy of a [H, W] plane: sub-plane (a, b), a < sh, b < sw,
// is [Hs, Ws] and holds element (i, j) = src[a + sh*i - pt][b + sw*j - pl] (or a fill value
// outside the source). A window tap at (row offset dr, column offset dc) from the top-left
// corner of output (i, j)'s window then sits at buffer[offset(dr, dc) + i*Ws + j]: contiguous
// in j whatever the stride.
struct Geom {
  int64_t H, W, sh, sw, pt, pl, Hs, Ws;
  int64_t offset(int64_t dr, int64_t dc) const {
    return (((dr % sh) * sw + dc % sw) * Hs + dr / sh) * Ws + dc / sw;
  }
  int64_t elems() const { return sh * sw * Hs * Ws + kSlack; }
};

// rows x cols outputs, taps at offsets up to (max_dr, max_dc); extra_rows of slack rows.
inline Geom make_geom(int64_t H, int64_t W, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                      int64_t rows, int64_t cols, int64_t max_dr, int64_t max_dc,
                      int64_t extra_rows) {
  return Geom{H, W, sh, sw, pt, pl, rows + max_dr / sh + extra_rows, cols + max_dc / sw};
}

// The padding of a polyphase buffer is the same for every plane: init_geom writes the fill value
// everywhere once (per thread and call), then copy_geom overwrites only the positions that come
// from the source plane.
template <class T>
void init_geom(const Geom& g, T fill, T* buf) {
  std::fill(buf, buf + g.elems(), fill);
}

// buf [g.elems()] (initialised by init_geom) <- the source part of the polyphase copy of
// src [g.H, g.W].
template <class T>
void copy_geom(const T* __restrict src, const Geom& g, T* __restrict buf) {
  for (int64_t a = 0; a < g.sh; ++a) {
    const int64_t i0 = clamp64(ceil_div(g.pt - a, g.sh), 0, g.Hs);
    const int64_t i1 = clamp64(floor_div(g.H - 1 + g.pt - a, g.sh) + 1, i0, g.Hs);
    for (int64_t b = 0; b < g.sw; ++b) {
      T* sub = buf + (a * g.sw + b) * g.Hs * g.Ws;
      const int64_t j0 = clamp64(ceil_div(g.pl - b, g.sw), 0, g.Ws);
      const int64_t j1 = clamp64(floor_div(g.W - 1 + g.pl - b, g.sw) + 1, j0, g.Ws);
      const int64_t c0 = b - g.pl;  // source column of j = 0
      for (int64_t i = i0; i < i1; ++i) {
        T* __restrict d = sub + i * g.Ws;
        const T* __restrict s = src + (a + g.sh * i - g.pt) * g.W;
        if (g.sw == 1) {
#pragma omp simd
          for (int64_t j = j0; j < j1; ++j) d[j] = s[c0 + j];
        } else {
          for (int64_t j = j0; j < j1; ++j) d[j] = s[c0 + g.sw * j];
        }
      }
    }
  }
}

// ---- tap kernels ------------------------------------------------------------------------
// For i < rows, j < cols, with s_t = src + i*srs + off[t] and a_t = s_t + aux_off:
//   Sum:       out[i*ors + j] = sum_t w[t] * s_t[j]
//   Max:       out = max_t s_t[j]                      (inputs without NaN)
//   MaxNaN:    out = max_t s_t[j], NaN if any s_t[j] is NaN
//   Argmax:    out = t of the first maximum of s_t[j]  (inputs without NaN)
//   ArgmaxNaN: the same, or the first NaN if there is one
//   MaskSum:   out = sum_t (s_t[j] == w[t] ? a_t[j] : 0)
enum class TapOp { Sum, Max, MaxNaN, Argmax, ArgmaxNaN, MaskSum };

template <class T>
struct TapArgs {
  const T* src;
  int64_t aux_off;  // MaskSum: the second operand sits at src + aux_off (same allocation)
  int64_t srs;
  const int64_t* off;
  const T* w;
  int nt;
  T* out;
  int64_t ors, rows, cols;
  bool flat = false;  // src stays readable 16 elements past the last row read (see taps_rows)
};

template <TapOp Op, class T>
inline void tap_step(T& acc, T& idx, T v, T a, T w, T t) {
  if constexpr (Op == TapOp::Sum) {
    acc += w * v;
  } else if constexpr (Op == TapOp::Max) {
    acc = v > acc ? v : acc;  // one vmaxps
  } else if constexpr (Op == TapOp::MaxNaN) {
    acc = (v > acc || v != v) ? v : acc;
  } else if constexpr (Op == TapOp::Argmax) {
    const bool take = v > acc;
    acc = take ? v : acc;
    idx = take ? t : idx;
  } else if constexpr (Op == TapOp::ArgmaxNaN) {
    const bool take = v > acc || (v != v && acc == acc);
    acc = take ? v : acc;
    idx = take ? t : idx;
  } else {
    acc += (v == w) ? a : T(0);
  }
}

template <TapOp Op, class T>
inline void tap_first(T& acc, T& idx, T v, T a, T w) {
  if constexpr (Op == TapOp::Sum) {
    acc = w * v;
  } else if constexpr (Op == TapOp::MaskSum) {
    acc = (v == w) ? a : T(0);
  } else {
    acc = v;
  }
  idx = T(0);
}

// NT taps known at compile time: the tap loop unrolls and the column loop vectorises. Sums
// use up to three partial accumulators to shorten the FMA dependency chain.
template <TapOp Op, int NT, class T>
void taps_rows_fixed(const TapArgs<T>& A) {
  constexpr bool kAux = Op == TapOp::MaskSum;
  constexpr bool kSum = Op == TapOp::Sum || Op == TapOp::MaskSum;
  constexpr int KA = !kSum ? 1 : (NT >= 6 ? 3 : (NT >= 2 ? 2 : 1));
  T wl[NT];
  for (int t = 0; t < NT; ++t) wl[t] = A.w ? A.w[t] : T(0);
  for (int64_t i = 0; i < A.rows; ++i) {
    T* __restrict o = A.out + i * A.ors;
    const T* p[NT];
    for (int t = 0; t < NT; ++t) p[t] = A.src + i * A.srs + A.off[t];
    const int64_t ao = A.aux_off;
#pragma omp simd
    for (int64_t j = 0; j < A.cols; ++j) {
      T a0, a1 = T(0), a2 = T(0), idx;
      tap_first<Op>(a0, idx, p[0][j], kAux ? p[0][j + ao] : T(0), wl[0]);
#pragma GCC unroll 32
      for (int t = 1; t < NT; ++t) {
        T& acc = (t % KA == 0) ? a0 : ((t % KA == 1) ? a1 : a2);
        tap_step<Op>(acc, idx, p[t][j], kAux ? p[t][j + ao] : T(0), wl[t], T(t));
      }
      if constexpr (Op == TapOp::Argmax || Op == TapOp::ArgmaxNaN) {
        o[j] = idx;
      } else if constexpr (KA == 3) {
        o[j] = a0 + (a1 + a2);
      } else if constexpr (KA == 2) {
        o[j] = a0 + a1;
      } else {
        o[j] = a0;
      }
    }
  }
}

// Any number of taps: column blocks, taps outer, accumulators in a local block.
template <TapOp Op, class T>
void taps_rows_any(const TapArgs<T>& A) {
  constexpr bool kAux = Op == TapOp::MaskSum;
  constexpr int64_t B = 256;
  T acc[B], idx[B];
  for (int64_t i = 0; i < A.rows; ++i) {
    T* o = A.out + i * A.ors;
    for (int64_t j0 = 0; j0 < A.cols; j0 += B) {
      const int64_t n = std::min(B, A.cols - j0);
      for (int t = 0; t < A.nt; ++t) {
        const T* s = A.src + i * A.srs + A.off[t] + j0;
        const T* a = kAux ? s + A.aux_off : s;
        const T wt = A.w ? A.w[t] : T(0);
        if (t == 0) {
#pragma omp simd
          for (int64_t j = 0; j < n; ++j)
            tap_first<Op>(acc[j], idx[j], s[j], kAux ? a[j] : T(0), wt);
        } else {
#pragma omp simd
          for (int64_t j = 0; j < n; ++j)
            tap_step<Op>(acc[j], idx[j], s[j], kAux ? a[j] : T(0), wt, T(t));
        }
      }
      const T* r = (Op == TapOp::Argmax || Op == TapOp::ArgmaxNaN) ? idx : acc;
      std::copy(r, r + n, o + j0);
    }
  }
}

template <TapOp Op, class T, int... I>
void taps_rows_dispatch(std::integer_sequence<int, I...>, const TapArgs<T>& A) {
  const bool done = ((A.nt == I && (taps_rows_fixed<Op, I>(A), true)) || ...);
  if (!done) taps_rows_any<Op>(A);
}

// Tap counts with an unrolled kernel: whole 1..5 x 1..5 windows and the stride-2 phases of
// 3x3 / 5x5 windows; anything else takes the generic loop.
using FixedTaps = std::integer_sequence<int, 1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 15, 16, 20, 25>;

// Short rows, or rows that are not a whole number of 64-byte vectors, are computed as one long
// row over the buffer's row pitch (the columns past `cols` are garbage, computed into scratch and
// dropped): whole vectors stay busy, no scalar tails, and the per-row setup is paid once. Needs
// A.flat: the source buffer readable 16 elements past its last row.
template <TapOp Op, class T>
void taps_rows(const TapArgs<T>& A) {
  if (A.rows <= 0 || A.cols <= 0) return;
  constexpr int64_t VL = 64 / sizeof(T);
  if (A.flat && A.rows > 1 && A.cols % VL != 0) {
    const int64_t L = ((A.rows - 1) * A.srs + A.cols + 15) / 16 * 16;
    T* tmp = scratch<T, 7>(L);
    TapArgs<T> F = A;
    F.out = tmp;
    F.ors = L;
    F.rows = 1;
    F.cols = L;
    taps_rows_dispatch<Op>(FixedTaps{}, F);
    for (int64_t i = 0; i < A.rows; ++i) {
      T* __restrict o = A.out + i * A.ors;
      const T* __restrict s = tmp + i * A.srs;
#pragma omp simd
      for (int64_t j = 0; j < A.cols; ++j) o[j] = s[j];
    }
    return;
  }
  taps_rows_dispatch<Op>(FixedTaps{}, A);
}

// res[t] = sum_{j < L} g[j] * src[off[t] + j] for t < nt; L is a multiple of kDotLanes<T>.
template <class T>
inline constexpr int kDotLanes = 64 / static_cast<int>(sizeof(T));

template <int NT, class T>
void taps_dot_fixed(const T* __restrict g, const T* src, const int64_t* off, int64_t L, T* res) {
  constexpr int V = kDotLanes<T>;
  T acc[NT][V];
  for (int t = 0; t < NT; ++t)
    for (int l = 0; l < V; ++l) acc[t][l] = T(0);
  const T* p[NT];
  for (int t = 0; t < NT; ++t) p[t] = src + off[t];
  for (int64_t j = 0; j < L; j += V) {
#pragma GCC unroll 32
    for (int t = 0; t < NT; ++t) {
#pragma omp simd
      for (int l = 0; l < V; ++l) acc[t][l] += g[j + l] * p[t][j + l];
    }
  }
  for (int t = 0; t < NT; ++t) {
    T s = 0;
    for (int l = 0; l < V; ++l) s += acc[t][l];
    res[t] = s;
  }
}

template <class T>
void taps_dot_any(const T* g, const T* src, const int64_t* off, int nt, int64_t L, T* res) {
  for (int t = 0; t < nt; ++t) {
    const T* s = src + off[t];
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < L; ++j) acc += g[j] * s[j];
    res[t] = acc;
  }
}

template <class T, int... I>
void taps_dot_dispatch(std::integer_sequence<int, I...>, const T* g, const T* src,
                       const int64_t* off, int nt, int64_t L, T* res) {
  const bool done = ((nt == I && (taps_dot_fixed<I>(g, src, off, L, res), true)) || ...);
  if (!done) taps_dot_any(g, src, off, nt, L, res);
}

template <class T>
void taps_dot(const T* g, const T* src, const int64_t* off, int nt, int64_t L, T* res) {
  taps_dot_dispatch(std::integer_sequence<int, 1, 4, 9, 25>{}, g, src, off, nt, L, res);
}

// ---- window plans ---------------------------------------------------------------------------
// Forward: out[p][q] = op over taps (r, s) of src[p*sh - ph + r*dh][q*sw - pw + s*dw].
struct FwdPlan {
  Geom g;
  std::vector<int64_t> off;  // [R*S], taps in row-major (r, s) order
};

inline FwdPlan make_fwd_plan(const Win& w, int64_t extra_rows) {
  FwdPlan f;
  f.g = make_geom(w.H, w.W, w.sh, w.sw, w.ph, w.pw, w.P, w.Q, (w.R - 1) * w.dh, (w.S - 1) * w.dw,
                  extra_rows);
  f.off.reserve(static_cast<size_t>(w.R * w.S));
  for (int64_t r = 0; r < w.R; ++r)
    for (int64_t s = 0; s < w.S; ++s) f.off.push_back(f.g.offset(r * w.dh, s * w.dw));
  return f;
}

// src [H, W] -> out [P, Q]; wt [R*S] (unused by Max / Argmax); buf [plan.g.elems()] set up by
// init_geom.
template <TapOp Op, class T>
void fwd_plane(const Win& w, const FwdPlan& f, const T* src, const T* wt, T* buf, T* out) {
  copy_geom(src, f.g, buf);
  taps_rows<Op>(TapArgs<T>{buf, 0, f.g.Ws, f.off.data(), wt, static_cast<int>(w.R * w.S), out, w.Q,
                           w.P, w.Q, true});
}

// Adjoint of the forward window (the scatter of out-gradients back onto the input), computed as
// a gather: input position (a + sh*i, b + sw*j) of stride phase (a, b) receives
//   sum over taps (r, s) with (a + ph - r*dh) % sh == 0 and (b + pw - s*dw) % sw == 0 of
//   wt[r*S + s] * g[i + dr][j + dc],  dr = (a + ph - r*dh)/sh, dc = (b + pw - s*dw)/sw.
struct BwdPhase {
  int64_t a, b, rows, cols;
  std::vector<int64_t> off, widx;
};
struct BwdPlan {
  Geom g;  // over the [P, Q] gradient plane
  std::vector<BwdPhase> phases;
  int64_t rows_max, cols_max;
};

inline BwdPlan make_bwd_plan(const Win& w) {
  using Taps = std::vector<std::pair<int64_t, int64_t>>;  // (kernel index, offset)
  auto axis = [](int64_t st, int64_t pad, int64_t k, int64_t dil, int64_t& lo, int64_t& hi) {
    std::vector<Taps> out(static_cast<size_t>(st));
    for (int64_t a = 0; a < st; ++a) {
      for (int64_t r = 0; r < k; ++r) {
        const int64_t num = a + pad - r * dil;
        if (num - floor_div(num, st) * st != 0) continue;
        const int64_t d = floor_div(num, st);
        out[static_cast<size_t>(a)].push_back({r, d});
        lo = std::min(lo, d);
        hi = std::max(hi, d);
      }
    }
    return out;
  };
  int64_t r_lo = INT64_MAX, r_hi = INT64_MIN, c_lo = INT64_MAX, c_hi = INT64_MIN;
  const std::vector<Taps> rt = axis(w.sh, w.ph, w.R, w.dh, r_lo, r_hi);
  const std::vector<Taps> ct = axis(w.sw, w.pw, w.S, w.dw, c_lo, c_hi);
  if (r_lo > r_hi) r_lo = r_hi = 0;
  if (c_lo > c_hi) c_lo = c_hi = 0;
  BwdPlan b;
  b.rows_max = ceil_div(w.H, w.sh);
  b.cols_max = ceil_div(w.W, w.sw);
  b.g =
      make_geom(w.P, w.Q, 1, 1, -r_lo, -c_lo, b.rows_max, b.cols_max, r_hi - r_lo, c_hi - c_lo, 1);
  for (int64_t a = 0; a < w.sh; ++a) {
    for (int64_t bb = 0; bb < w.sw; ++bb) {
      BwdPhase ph;
      ph.a = a;
      ph.b = bb;
      ph.rows = std::max<int64_t>(0, ceil_div(w.H - a, w.sh));
      ph.cols = std::max<int64_t>(0, ceil_div(w.W - bb, w.sw));
      for (auto [r, dr] : rt[static_cast<size_t>(a)]) {
        for (auto [s, dc] : ct[static_cast<size_t>(bb)]) {
          ph.off.push_back(b.g.offset(dr - r_lo, dc - c_lo));
          ph.widx.push_back(r * w.S + s);
        }
      }
      b.phases.push_back(std::move(ph));
    }
  }
  return b;
}

inline int64_t bwd_tmp_elems(const BwdPlan& b) {
  return b.rows_max * b.cols_max;
}

// Sum:     out [H, W] = adjoint of the Sum window with weights wt [R*S] applied to g [P, Q].
// MaskSum: out [H, W] = sum of g [P, Q] over the windows whose argmax (tap index r*S + s, as T)
//          is the position; the argmax plane is already in buf[e, 2e) (e = plan.g.elems(),
//          padded with -1, see bwd_idx_plane).
// buf [e] (Sum) or [2e] (MaskSum), set up by init_bwd_buf; tmp [bwd_tmp_elems(plan)]; wsel [R*S].
template <TapOp Op, class T>
void bwd_plane(const Win& w, const BwdPlan& bp, const T* g, const T* wt, T* buf, T* tmp, T* wsel,
               T* out) {
  const int64_t e = bp.g.elems();
  copy_geom(g, bp.g, buf);
  const T* src = Op == TapOp::MaskSum ? buf + e : buf;
  const int64_t aux_off = Op == TapOp::MaskSum ? -e : 0;
  for (const BwdPhase& ph : bp.phases) {
    if (ph.rows == 0 || ph.cols == 0) continue;
    const int nt = static_cast<int>(ph.off.size());
    if (nt == 0) {
      for (int64_t i = 0; i < ph.rows; ++i) {
        T* o = out + (ph.a + w.sh * i) * w.W + ph.b;
        for (int64_t j = 0; j < ph.cols; ++j) o[w.sw * j] = T(0);
      }
      continue;
    }
    for (int t = 0; t < nt; ++t) {
      const int64_t k = ph.widx[static_cast<size_t>(t)];
      wsel[t] = Op == TapOp::Sum ? wt[k] : T(k);
    }
    if (w.sw == 1) {
      taps_rows<Op>(TapArgs<T>{src, aux_off, bp.g.Ws, ph.off.data(), wsel, nt, out + ph.a * w.W,
                               w.sh * w.W, ph.rows, ph.cols, true});
    } else {
      taps_rows<Op>(TapArgs<T>{src, aux_off, bp.g.Ws, ph.off.data(), wsel, nt, tmp, ph.cols,
                               ph.rows, ph.cols, true});
      for (int64_t i = 0; i < ph.rows; ++i) {
        T* o = out + (ph.a + w.sh * i) * w.W + ph.b;
        const T* s = tmp + i * ph.cols;
        for (int64_t j = 0; j < ph.cols; ++j) o[w.sw * j] = s[j];
      }
    }
  }
}

// buf [e] (Sum) or [2e] (MaskSum): the padding of the gradient (0) and argmax (-1) buffers.
template <TapOp Op, class T>
void init_bwd_buf(const BwdPlan& bp, T* buf) {
  init_geom(bp.g, T(0), buf);
  if constexpr (Op == TapOp::MaskSum) init_geom(bp.g, T(-1), buf + bp.g.elems());
}

// Whether the argmax plane [P, Q] of a MaskSum backward can be written straight into the
// interior of its padded buffer (buf + bwd_idx_offset, row pitch plan.g.Ws) instead of being
// written elsewhere and copied in with copy_geom.
inline bool bwd_idx_direct(const Win& w, const BwdPlan& bp) {
  const Geom& g = bp.g;
  return g.pt >= 0 && g.pl >= 0 && g.pt + w.P <= g.Hs && g.pl + w.Q <= g.Ws;
}
inline int64_t bwd_idx_offset(const BwdPlan& bp) {
  return bp.g.elems() + bp.g.pt * bp.g.Ws + bp.g.pl;
}

// ---- unit-stride, row-blocked engine ----------------------------------------------------------
// out[p][q] = sum (Sum) or max (Max) over r < R, s < S of w[r*S + s] * src[p - pt + r*dh]
// [q - pl + s*dw] (the fill value outside src), for a compile-time R x S window with unit
// stride. Each pass computes NB output rows {p0, p0 + dh, ...}: they share input rows, so every
// vector loaded feeds up to R multiply-adds instead of one. The padded plane has 64-byte aligned
// rows and its source columns start on a 64-byte boundary (aligned copies in, one aligned tap).
struct S1Plan {
  Geom g;        // sh = sw = 1; g.pl is the left margin (>= the window's left padding)
  int64_t base;  // buffer offset of tap (0, 0) of output (0, 0)
  int64_t R, S, dh, dw, P, Q;
};

template <class T>
S1Plan make_s1_plan(int64_t H, int64_t W, int64_t R, int64_t S, int64_t dh, int64_t dw, int64_t pt,
                    int64_t pl, int64_t P, int64_t Q) {
  constexpr int64_t VL = 64 / static_cast<int64_t>(sizeof(T));
  const int64_t margin = std::max<int64_t>(0, (pl + VL - 1) / VL * VL);
  const int64_t need = std::max(margin + W, margin - pl + Q + (S - 1) * dw);
  const Geom g{H, W, 1, 1, pt, margin, P + (R - 1) * dh, (need + VL - 1) / VL * VL};
  return S1Plan{g, margin - pl, R, S, dh, dw, P, Q};
}

// NB output rows {p0, p0 + dh, ...} of an R x S window with column dilation DW.
template <TapOp Op, int R, int S, int NB, int DW, class T>
void s1_rows(const T* buf, int64_t ld, int64_t dh, const T* w, T* out, int64_t p0, int64_t Q) {
  static_assert(Op == TapOp::Sum || Op == TapOp::Max);
  constexpr int NK = NB + R - 1;
  T wl[R * S];
  for (int t = 0; t < R * S; ++t) wl[t] = Op == TapOp::Sum ? w[t] : T(0);
  const T* in[NK];
  for (int k = 0; k < NK; ++k) in[k] = buf + (p0 + k * dh) * ld;
  T* o[NB];
  for (int b = 0; b < NB; ++b) o[b] = out + (p0 + b * dh) * Q;
  const T init = Op == TapOp::Sum ? T(0) : -std::numeric_limits<T>::infinity();
#pragma omp simd
  for (int64_t j = 0; j < Q; ++j) {
    T acc[NB];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) acc[b] = init;
#pragma GCC unroll 16
    for (int k = 0; k < NK; ++k) {
#pragma GCC unroll 8
      for (int s = 0; s < S; ++s) {
        const T v = in[k][j + s * DW];
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) {
          const int r = k - b;
          if (r >= 0 && r < R) {
            if constexpr (Op == TapOp::Sum) {
              acc[b] += wl[r * S + s] * v;
            } else {
              acc[b] = v > acc[b] ? v : acc[b];
            }
          }
        }
      }
    }
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) o[b][j] = acc[b];
  }
}

template <TapOp Op, int R, int DW, class T>
void s1_plane_fixed(const S1Plan& s1, const T* buf, const T* w, T* out) {
  const T* b0 = buf + s1.base;
  const int64_t ld = s1.g.Ws, P = s1.P, dh = s1.dh, Q = s1.Q;
  for (int64_t p0 = 0; p0 < dh && p0 < P; ++p0) {
    // Output rows p0, p0 + dh, ... in blocks of 8, then 4, 2, 1.
    int64_t p = p0, n = (P - p0 + dh - 1) / dh;
    for (; n >= 8; n -= 8, p += 8 * dh) s1_rows<Op, R, R, 8, DW>(b0, ld, dh, w, out, p, Q);
    if (n >= 4) {
      s1_rows<Op, R, R, 4, DW>(b0, ld, dh, w, out, p, Q);
      n -= 4;
      p += 4 * dh;
    }
    if (n >= 2) {
      s1_rows<Op, R, R, 2, DW>(b0, ld, dh, w, out, p, Q);
      n -= 2;
      p += 2 * dh;
    }
    if (n == 1) s1_rows<Op, R, R, 1, DW>(b0, ld, dh, w, out, p, Q);
  }
}

// Whether the engine takes this window: unit stride, square 3x3 or 5x5 kernel, column dilation
// 1 or 2, rows of whole half-vectors. It wins for 5x5 everywhere and for 3x3 on narrow rows;
// wide 3x3 rows are faster on the generic tap kernel.
template <class T>
bool s1_supported(int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t dw, int64_t Q) {
  constexpr int64_t HV = 32 / static_cast<int64_t>(sizeof(T));
  return sh == 1 && sw == 1 && R == S && (R == 5 || (R == 3 && Q < 2 * HV)) &&
         (dw == 1 || dw == 2) && Q % HV == 0;
}

// out [P, Q] <- the window over the plane in buf (copy_geom'd with s1.g); w [R*S] (Sum only).
template <TapOp Op, class T>
void s1_plane(const S1Plan& s1, const T* buf, const T* w, T* out) {
  if (s1.R == 3) {
    if (s1.dw == 1) {
      s1_plane_fixed<Op, 3, 1>(s1, buf, w, out);
    } else {
      s1_plane_fixed<Op, 3, 2>(s1, buf, w, out);
    }
  } else if (s1.dw == 1) {
    s1_plane_fixed<Op, 5, 1>(s1, buf, w, out);
  } else {
    s1_plane_fixed<Op, 5, 2>(s1, buf, w, out);
  }
}

// ---- flat engine: small "same" planes, AVX-512 ---------------------------------------------
// A unit-stride window whose output plane has the input's size (P == H, Q == W) maps the flat
// index m = i*W + j of every output to input m + d_t for tap t, d_t = (r*dh - ph)*W + (s*dw - pw).
// So the plane is processed as flat 16-lane vectors straight from the tensor, without any padded
// copy: vector k of tap t is a masked unaligned load at 16k + d_t, its lane mask (precomputed per
// (k, t)) dropping the lanes whose input falls outside the plane's rows or columns (or past H*W);
// masked lanes are neither read nor accumulated. The same plan gives backward-input (the
// correlation of gy with the flipped kernel) and backward-weight (per-tap dot products). Several
// planes of the same channel (images n) go through each pass, so masks and weights are loaded
// once for all of them. Small planes only: larger ones reuse loaded rows better in the S1 engine.
#if defined(__AVX512F__)
// Planes up to this many elements take the flat engine (measured: it beats the padded-copy paths
// on 4x4 .. 14x14 planes; from 16 wide on, rows are long enough for the S1 engine).
inline constexpr int64_t kFlatMaxPlane = 256;

struct FlatPlan {
  int64_t HW, NV;            // plane elements; 16-lane vectors per plane
  int nt;                    // taps
  std::vector<int64_t> d;    // [nt] flat tap offsets
  std::vector<__mmask16> m;  // [NV * nt] lane masks, index k*nt + t
  __mmask16 tail;            // lanes of the last vector that lie inside the plane
};

// Window over a [H, W] plane with output [H, W] (unit stride).
inline FlatPlan make_flat_plan(int64_t H, int64_t W, int64_t R, int64_t S, int64_t dh, int64_t dw,
                               int64_t ph, int64_t pw) {
  FlatPlan f;
  f.HW = H * W;
  f.NV = (f.HW + 15) / 16;
  f.nt = static_cast<int>(R * S);
  f.tail = static_cast<__mmask16>((1u << (f.HW - (f.NV - 1) * 16)) - 1u);
  f.m.assign(static_cast<size_t>(f.NV * f.nt), 0);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t s = 0; s < S; ++s) {
      const int64_t t = r * S + s, dr = r * dh - ph, dc = s * dw - pw;
      f.d.push_back(dr * W + dc);
      for (int64_t m = 0; m < f.HW; ++m) {
        const int64_t i = m / W + dr, j = m % W + dc;
        if (i >= 0 && i < H && j >= 0 && j < W)
          f.m[static_cast<size_t>((m / 16) * f.nt + t)] |= static_cast<__mmask16>(1u << (m % 16));
      }
    }
  }
  return f;
}

// y_b [HW] <- the window over x_b [HW] with weights w [NT], for NB planes x_b = x + b*xs,
// y_b = y + b*ys.
template <int NT, int NB>
void flat_fwd_block(const FlatPlan& f, const float* x, int64_t xs, const float* w, float* y,
                    int64_t ys) {
  __m512 wv[NT];
  int64_t d[NT];
#pragma GCC unroll 32
  for (int t = 0; t < NT; ++t) {
    wv[t] = _mm512_set1_ps(w[t]);
    d[t] = f.d[static_cast<size_t>(t)];
  }
  const __mmask16* m = f.m.data();
  for (int64_t k = 0; k < f.NV; ++k, m += NT) {
    __m512 acc[NB];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_ps();
    const float* xk = x + 16 * k;
#pragma GCC unroll 32
    for (int t = 0; t < NT; ++t) {
      const __mmask16 mk = m[t];
      const float* p = xk + d[t];
#pragma GCC unroll 8
      for (int b = 0; b < NB; ++b)
        acc[b] = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(mk, p + b * xs), wv[t], acc[b], mk);
    }
    const __mmask16 st = k == f.NV - 1 ? f.tail : static_cast<__mmask16>(0xFFFF);
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) _mm512_mask_storeu_ps(y + b * ys + 16 * k, st, acc[b]);
  }
}

// Planes n0 .. n0 + cnt of one channel: blocks of 8, then 4, 2, 1.
template <int NT>
void flat_fwd_planes(const FlatPlan& f, const float* x, const float* w, float* y, int64_t stride,
                     int64_t cnt) {
  for (; cnt >= 8; cnt -= 8, x += 8 * stride, y += 8 * stride)
    flat_fwd_block<NT, 8>(f, x, stride, w, y, stride);
  if (cnt >= 4) {
    flat_fwd_block<NT, 4>(f, x, stride, w, y, stride);
    cnt -= 4, x += 4 * stride, y += 4 * stride;
  }
  if (cnt >= 2) {
    flat_fwd_block<NT, 2>(f, x, stride, w, y, stride);
    cnt -= 2, x += 2 * stride, y += 2 * stride;
  }
  if (cnt == 1) flat_fwd_block<NT, 1>(f, x, stride, w, y, stride);
}

// y [N, C, HW] <- the window over x [N, C, HW]; w [C, NT]. Work items: (channel, 8 images).
template <int NT>
void flat_fwd(const FlatPlan& f, int64_t N, int64_t C, const float* x, const float* w, float* y) {
  constexpr int64_t NB = 8;
  const int64_t nblk = (N + NB - 1) / NB, stride = C * f.HW;
  parallel_for(C * nblk, [&](int64_t it) {
    const int64_t c = it / nblk, n0 = (it % nblk) * NB;
    const int64_t off = n0 * stride + c * f.HW;
    flat_fwd_planes<NT>(f, x + off, w + c * NT, y + off, stride, std::min(NB, N - n0));
  });
}

// gw [C, NT] <- sum over n of the per-tap dot products of gy [N, C, HW] with shifted x.
// Channels in parallel; float vector partial sums over 8 images, then double.
template <int NT>
void flat_bwd_weight(const FlatPlan& f, int64_t N, int64_t C, const float* x, const float* gy,
                     float* gw) {
  const int64_t stride = C * f.HW;
  parallel_for(C, [&](int64_t c) {
    int64_t d[NT];
    for (int t = 0; t < NT; ++t) d[t] = f.d[static_cast<size_t>(t)];
    double tot[NT] = {};
    for (int64_t n0 = 0; n0 < N; n0 += 8) {
      __m512 acc[NT];
#pragma GCC unroll 32
      for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
      for (int64_t n = n0; n < std::min(N, n0 + 8); ++n) {
        const float* xp = x + n * stride + c * f.HW;
        const float* gp = gy + n * stride + c * f.HW;
        const __mmask16* m = f.m.data();
        for (int64_t k = 0; k < f.NV; ++k, m += NT) {
          const __mmask16 gm = k == f.NV - 1 ? f.tail : static_cast<__mmask16>(0xFFFF);
          const __m512 g = _mm512_maskz_loadu_ps(gm, gp + 16 * k);
          const float* xk = xp + 16 * k;
#pragma GCC unroll 32
          for (int t = 0; t < NT; ++t) {
            const __mmask16 mk = m[t];
            acc[t] = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(mk, xk + d[t]), g, acc[t], mk);
          }
        }
      }
      for (int t = 0; t < NT; ++t) tot[t] += static_cast<double>(_mm512_reduce_add_ps(acc[t]));
    }
    for (int t = 0; t < NT; ++t) gw[c * NT + t] = static_cast<float>(tot[t]);
  });
}

// ---- tiny engine: 8x8 "same" planes held in registers (AVX-512) ---------------------------
// The flat scheme above with the geometry known at compile time: the plane is loaded once (4
// aligned vectors), the vector at flat offset 16k + d_t is built from two of them with one
// valignd, shifted vectors shared between taps are computed once (CSE), and lane masks are
// immediates (all-invalid (vector, tap) pairs vanish).
template <int H, int W, int R, int DIL>
struct TinyGeom {
  static constexpr int HW = H * W, NV = (HW + 15) / 16, NT = R * R, PAD = DIL * (R - 1) / 2;
  static constexpr int off(int t) { return ((t / R) * DIL - PAD) * W + (t % R) * DIL - PAD; }
  static constexpr unsigned tail() { return HW % 16 == 0 ? 0xFFFFu : (1u << (HW % 16)) - 1u; }
  static constexpr unsigned mask(int k, int t) {
    unsigned m = 0;
    for (int l = 0; l < 16 && 16 * k + l < HW; ++l) {
      const int p = 16 * k + l;
      const int i = p / W + (t / R) * DIL - PAD, j = p % W + (t % R) * DIL - PAD;
      if (i >= 0 && i < H && j >= 0 && j < W) m |= 1u << l;
    }
    return m;
  }
};

template <int N, class F>
[[gnu::always_inline]] inline void static_for(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f.template operator()<I>(), ...);
  }
  (std::make_integer_sequence<int, N>{});
}

// Elements [O, O + 16) of the plane v[NV] (zero outside it); O is a compile-time constant.
template <int NV, int O>
[[gnu::always_inline]] inline __m512 tiny_shift(const __m512 (&v)[NV]) {
  constexpr int q = O >= 0 ? O / 16 : -((-O + 15) / 16), rem = O - 16 * q;
  const __m512 lo = (q >= 0 && q < NV) ? v[q >= 0 && q < NV ? q : 0] : _mm512_setzero_ps();
  if constexpr (rem == 0) {
    return lo;
  } else {
    constexpr int q1 = q + 1;
    const __m512 hi = (q1 >= 0 && q1 < NV) ? v[q1 >= 0 && q1 < NV ? q1 : 0] : _mm512_setzero_ps();
    // (The zero-masked form with a full mask is plain valignd; GCC 12 warns about the undefined
    // pass-through operand of the unmasked intrinsic.)
    return _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(
        static_cast<__mmask16>(0xFFFF), _mm512_castps_si512(hi), _mm512_castps_si512(lo), rem));
  }
}

template <class G>
[[gnu::always_inline]] inline void tiny_load(const float* p, __m512 (&v)[G::NV]) {
  static_for<G::NV>([&]<int K>() {
    if constexpr (K == G::NV - 1 && G::tail() != 0xFFFFu) {
      v[K] = _mm512_maskz_loadu_ps(static_cast<__mmask16>(G::tail()), p + 16 * K);
    } else {
      v[K] = _mm512_loadu_ps(p + 16 * K);
    }
  });
}

// NB planes x_b = x + b*xs -> y_b = y + b*ys; weights w [NT].
template <class G, int NB>
void tiny_fwd_block(const float* x, int64_t xs, const float* w, float* y, int64_t ys) {
  constexpr int NV = G::NV;
  __m512 v[NB][NV], acc[NB][NV];
  static_for<NB>([&]<int B>() {
    tiny_load<G>(x + B * xs, v[B]);
    static_for<NV>([&]<int K>() { acc[B][K] = _mm512_setzero_ps(); });
  });
  static_for<G::NT>([&]<int T>() {
    const __m512 wt = _mm512_set1_ps(w[T]);
    static_for<NV>([&]<int K>() {
      constexpr unsigned m = G::mask(K, T);
      if constexpr (m != 0) {
        static_for<NB>([&]<int B>() {
          acc[B][K] = _mm512_mask3_fmadd_ps(tiny_shift<NV, 16 * K + G::off(T)>(v[B]), wt, acc[B][K],
                                            static_cast<__mmask16>(m));
        });
      }
    });
  });
  static_for<NB>([&]<int B>() {
    static_for<NV>([&]<int K>() {
      if constexpr (K == NV - 1 && G::tail() != 0xFFFFu) {
        _mm512_mask_storeu_ps(y + B * ys + 16 * K, static_cast<__mmask16>(G::tail()), acc[B][K]);
      } else {
        _mm512_storeu_ps(y + B * ys + 16 * K, acc[B][K]);
      }
    });
  });
}

// y [N, C, HW] <- the window over x [N, C, HW]; w [C, NT]. Work items: (channel, 8 images).
template <class G>
void tiny_fwd(int64_t N, int64_t C, const float* x, const float* w, float* y) {
  constexpr int64_t NB = 8;
  const int64_t nblk = (N + NB - 1) / NB, stride = C * G::HW;
  parallel_for(C * nblk, [&](int64_t it) {
    const int64_t c = it / nblk, n0 = (it % nblk) * NB, n1 = std::min(N, n0 + NB);
    const float* wc = w + c * G::NT;
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) {
      const int64_t o = n * stride + c * G::HW;
      tiny_fwd_block<G, 2>(x + o, stride, wc, y + o, stride);
    }
    if (n < n1) {
      const int64_t o = n * stride + c * G::HW;
      tiny_fwd_block<G, 1>(x + o, stride, wc, y + o, stride);
    }
  });
}

// gw [C, NT] <- sum over n of the per-tap dot products of gy [N, C, HW] with shifted x.
template <class G>
void tiny_bwd_weight(int64_t N, int64_t C, const float* x, const float* gy, float* gw) {
  constexpr int NV = G::NV, NT = G::NT;
  const int64_t stride = C * G::HW;
  parallel_for(C, [&](int64_t c) {
    double tot[NT] = {};
    for (int64_t n0 = 0; n0 < N; n0 += 8) {
      __m512 acc[NT];
      static_for<NT>([&]<int T>() { acc[T] = _mm512_setzero_ps(); });
      for (int64_t n = n0; n < std::min(N, n0 + 8); ++n) {
        __m512 v[NV], g[NV];
        tiny_load<G>(x + n * stride + c * G::HW, v);
        tiny_load<G>(gy + n * stride + c * G::HW, g);
        static_for<NT>([&]<int T>() {
          static_for<NV>([&]<int K>() {
            constexpr unsigned m = G::mask(K, T);
            if constexpr (m != 0) {
              acc[T] = _mm512_mask3_fmadd_ps(tiny_shift<NV, 16 * K + G::off(T)>(v), g[K], acc[T],
                                             static_cast<__mmask16>(m));
            }
          });
        });
      }
      for (int t = 0; t < NT; ++t) tot[t] += static_cast<double>(_mm512_reduce_add_ps(acc[t]));
    }
    for (int t = 0; t < NT; ++t) gw[c * NT + t] = static_cast<float>(tot[t]);
  });
}

// Calls f.template operator()<TinyGeom<...>>() for the compiled geometries (8x8 planes, 3x3 or
// 5x5 kernels, dilation 1 or 2, "same" padding); false where none fits.
template <class F>
bool tiny_dispatch(const Conv2dParams& p, F&& f) {
  if (p.H != 8 || p.W != 8 || p.dil_h != p.dil_w || p.pad_h != p.pad_w) return false;
  const int64_t k = p.R, d = p.dil_h;
  if (k == 3 && d == 1) return f.template operator()<TinyGeom<8, 8, 3, 1>>(), true;
  if (k == 3 && d == 2) return f.template operator()<TinyGeom<8, 8, 3, 2>>(), true;
  if (k == 5 && d == 1) return f.template operator()<TinyGeom<8, 8, 5, 1>>(), true;
  if (k == 5 && d == 2) return f.template operator()<TinyGeom<8, 8, 5, 2>>(), true;
  return false;
}

// Whether the flat / tiny engines take a depthwise convolution: unit stride, output the input's
// size, square 3x3 or 5x5 kernel, and a plane that is 8x8 (tiny engine) or small and not a
// whole number of half-vectors wide (the S1 engine's rows: it is faster on those).
inline bool flat_supported(const Conv2dParams& p) {
  return p.stride_h == 1 && p.stride_w == 1 && p.P() == p.H && p.Q() == p.W && p.R == p.S &&
         (p.R == 3 || p.R == 5) &&
         ((p.H == 8 && p.W == 8) || (p.H * p.W <= kFlatMaxPlane && p.W % 8 != 0));
}
#endif

// The depthwise passes on the flat engine; false (nothing done) where it does not apply.
template <class T>
bool flat_dw_forward(const Conv2dParams& p, const T* x, const T* w, T* y) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (!flat_supported(p)) return false;
    if (tiny_dispatch(p, [&]<class G>() { tiny_fwd<G>(p.N, p.C, x, w, y); })) return true;
    const FlatPlan f = make_flat_plan(p.H, p.W, p.R, p.S, p.dil_h, p.dil_w, p.pad_h, p.pad_w);
    if (p.R == 3) {
      flat_fwd<9>(f, p.N, p.C, x, w, y);
    } else {
      flat_fwd<25>(f, p.N, p.C, x, w, y);
    }
    return true;
  }
#endif
  (void)p, (void)x, (void)w, (void)y;
  return false;
}

// Backward-input: the correlation of gy with the flipped kernel, padded by (R-1)*dh - pad_h.
template <class T>
bool flat_dw_backward_input(const Conv2dParams& p, const T* gy, const T* w, T* gx) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (!flat_supported(p)) return false;
    const int64_t RS = p.R * p.S;
    std::vector<float> wf(static_cast<size_t>(p.C * RS));
    for (int64_t c = 0; c < p.C; ++c)
      for (int64_t t = 0; t < RS; ++t) wf[static_cast<size_t>(c * RS + t)] = w[c * RS + RS - 1 - t];
    // Same-size output: the padding (R-1)*dh - pad_h equals pad_h, so the tiny geometry is the
    // forward one.
    if (tiny_dispatch(p, [&]<class G>() { tiny_fwd<G>(p.N, p.C, gy, wf.data(), gx); })) return true;
    const FlatPlan f = make_flat_plan(p.H, p.W, p.R, p.S, p.dil_h, p.dil_w,
                                      (p.R - 1) * p.dil_h - p.pad_h, (p.S - 1) * p.dil_w - p.pad_w);
    if (p.R == 3) {
      flat_fwd<9>(f, p.N, p.C, gy, wf.data(), gx);
    } else {
      flat_fwd<25>(f, p.N, p.C, gy, wf.data(), gx);
    }
    return true;
  }
#endif
  (void)p, (void)gy, (void)w, (void)gx;
  return false;
}

template <class T>
bool flat_dw_backward_weight(const Conv2dParams& p, const T* x, const T* gy, T* gw) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (!flat_supported(p)) return false;
    if (tiny_dispatch(p, [&]<class G>() { tiny_bwd_weight<G>(p.N, p.C, x, gy, gw); })) return true;
    const FlatPlan f = make_flat_plan(p.H, p.W, p.R, p.S, p.dil_h, p.dil_w, p.pad_h, p.pad_w);
    if (p.R == 3) {
      flat_bwd_weight<9>(f, p.N, p.C, x, gy, gw);
    } else {
      flat_bwd_weight<25>(f, p.N, p.C, x, gy, gw);
    }
    return true;
  }
#endif
  (void)p, (void)x, (void)gy, (void)gw;
  return false;
}

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
    std::vector<T> wf(static_cast<size_t>(p.C * RS));
    for (int64_t c = 0; c < p.C; ++c)
      for (int64_t t = 0; t < RS; ++t) wf[static_cast<size_t>(c * RS + t)] = w[c * RS + RS - 1 - t];
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
