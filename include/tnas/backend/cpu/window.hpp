// Sliding-window machinery shared by the depthwise convolution (conv.hpp) and pooling
// (pool.hpp), on raw NCHW planes:
//  - Win: a window over a [H, W] plane (kernel, strides, paddings, dilations, output size);
//  - Geom / copy_geom: the zero- (or fill-) padded "polyphase" copy of a plane, one sub-plane per
//    stride phase, in which every kernel tap becomes a contiguous, branch-free row segment;
//  - tap kernels: sum / max / argmax / masked sum over the taps of a window, row by row;
//  - window plans: forward and backward (stride-phase) passes over whole planes;
//  - the unit-stride, row-blocked engine (S1Plan), which skips the padded copy.
// Everything here is an implementation detail (namespace tnas::cpu::detail).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <new>
#include <utility>
#include <vector>

#include "tnas/backend/cpu/simd.hpp"

namespace tnas::cpu::detail {

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

// w [C, RS] with each channel's kernel rotated by 180 degrees (tap t <- tap RS-1-t): the
// kernel of the correlation that gives a unit-stride convolution's input gradient.
template <class T>
std::vector<T> flipped_kernels(int64_t C, int64_t RS, const T* w) {
  std::vector<T> wf(static_cast<size_t>(C * RS));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < RS; ++t) wf[static_cast<size_t>(c * RS + t)] = w[c * RS + RS - 1 - t];
  return wf;
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

}  // namespace tnas::cpu::detail
