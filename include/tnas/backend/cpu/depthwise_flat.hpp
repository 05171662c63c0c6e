// Depthwise convolution on small "same" planes with AVX-512 (float): the flat engine, which
// reads each plane straight from the tensor as flat 16-lane vectors, and the tiny engine, which
// holds an 8x8 plane in four registers. Forward, backward-input and backward-weight; the entry
// points flat_dw_*() return false (and do nothing) where the engines do not apply, including
// builds without AVX-512, and conv.hpp then takes its general depthwise path.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "tnas/backend/cpu/conv_params.hpp"
#include "tnas/backend/cpu/simd.hpp"
#include "tnas/backend/cpu/window.hpp"

namespace tnas::cpu::detail {

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

// One depthwise pass: tiny.template operator()<G>() where a tiny geometry fits, else
// flat.template operator()<taps>(plan) with the flat plan for padding (ph, pw).
template <class Tiny, class Flat>
void flat_run(const Conv2dParams& p, int64_t ph, int64_t pw, Tiny&& tiny, Flat&& flat) {
  if (tiny_dispatch(p, tiny)) return;
  const FlatPlan f = make_flat_plan(p.H, p.W, p.R, p.S, p.dil_h, p.dil_w, ph, pw);
  if (p.R == 3) {
    flat.template operator()<9>(f);
  } else {
    flat.template operator()<25>(f);
  }
}
#endif

// The depthwise passes on the flat engine; false (nothing done) where it does not apply.
template <class T>
bool flat_dw_forward(const Conv2dParams& p, const T* x, const T* w, T* y) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (!flat_supported(p)) return false;
    flat_run(
        p, p.pad_h, p.pad_w, [&]<class G>() { tiny_fwd<G>(p.N, p.C, x, w, y); },
        [&]<int NT>(const FlatPlan& f) { flat_fwd<NT>(f, p.N, p.C, x, w, y); });
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
    const std::vector<float> wf = flipped_kernels(p.C, p.R * p.S, w);
    // Same-size output: the padding (R-1)*dh - pad_h equals pad_h, so the tiny geometry is the
    // forward one.
    flat_run(
        p, (p.R - 1) * p.dil_h - p.pad_h, (p.S - 1) * p.dil_w - p.pad_w,
        [&]<class G>() { tiny_fwd<G>(p.N, p.C, gy, wf.data(), gx); },
        [&]<int NT>(const FlatPlan& f) { flat_fwd<NT>(f, p.N, p.C, gy, wf.data(), gx); });
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
    flat_run(
        p, p.pad_h, p.pad_w, [&]<class G>() { tiny_bwd_weight<G>(p.N, p.C, x, gy, gw); },
        [&]<int NT>(const FlatPlan& f) { flat_bwd_weight<NT>(f, p.N, p.C, x, gy, gw); });
    return true;
  }
#endif
  (void)p, (void)x, (void)gy, (void)gw;
  return false;
}

}  // namespace tnas::cpu::detail
