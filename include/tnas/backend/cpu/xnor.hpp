// XNOR / popcount convolution and GEMM on the CPU: binarise, bit-pack along channels, and
// replace multiply-adds of +/-1 values by XOR and popcount on 64-bit words.
//
// represents: for sgn(v) = (v >= 0 ? +1 : -1) and the code bit b(v) = (v >= 0), the dot product
//   of two +/-1 vectors of n entries is n - 2 * popcount(a XOR b). A convolution over C/groups
//   channels and R x S taps is a sum of such dots, one per tap.
// requires: float NCHW input, [K, C/groups, R, S] weight, any channel count (the bits past the
//   last channel of a group are 0 in both operands, so XOR leaves them 0 and only the valid
//   count enters the formula).
// ensures: the result is the exact integer a float convolution of sgn(x) and sgn(w) with zero
//   padding gives. A zero-padded tap contributes 0 there, but the packed buffer can only hold
//   +/-1, so padded pixels are stored as code 0 (-1) and their contribution, which is
//   -(sum over channels of sgn(w)) = Cg - 2 * popcount(w_tap), is subtracted again for the
//   output pixels whose window leaves the image (the border only).
//
// Layouts (all uint64 words, WG = ceil((C / groups) / 64) words per pixel per group):
//   packed input  [N][H + 2 pad][W + 2 pad][groups][WG], spatial padding included (code 0);
//   packed weight [groups][R * S][WG][Kp], Kp = K / groups rounded up to a multiple of 8, so
//   the 8 output channels of a vector lane block are contiguous (the padded ones are 0 and
//   never stored).
// Kernels: a portable one (std::popcount, which GCC vectorises where it can), AVX2 (nibble
//   lookup with vpshufb + vpsadbw) and AVX-512 VPOPCNTDQ, each compiled when the target has the
//   instructions (-march=native in Release builds); best_xnor_path() picks the fastest compiled
//   one, and tests run every compiled path against the float convolution.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "tnas/backend/cpu/simd.hpp"

#include "tnas/core/error.hpp"

namespace tnas::cpu::xnor {

enum class Path { portable, avx2, avx512 };

inline const char* name(Path p) {
  return p == Path::portable ? "portable" : p == Path::avx2 ? "avx2" : "avx512";
}

inline constexpr bool has_avx2 =
#if defined(__AVX2__)
    true;
#else
    false;
#endif
inline constexpr bool has_avx512 =
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
    true;
#else
    false;
#endif

// The compiled paths, fastest last.
inline std::vector<Path> compiled_paths() {
  std::vector<Path> v{Path::portable};
  if (has_avx2) v.push_back(Path::avx2);
  if (has_avx512) v.push_back(Path::avx512);
  return v;
}
inline Path best_path() {
  return compiled_paths().back();
}

struct Shape {
  int64_t N, C, H, W, K, R, S, stride, pad, dil, groups;
  int64_t P() const { return (H + 2 * pad - dil * (R - 1) - 1) / stride + 1; }
  int64_t Q() const { return (W + 2 * pad - dil * (S - 1) - 1) / stride + 1; }
  int64_t Cg() const { return C / groups; }
  int64_t Kg() const { return K / groups; }
  int64_t WG() const { return (Cg() + 63) / 64; }
  int64_t Kp() const { return (Kg() + 7) / 8 * 8; }
  int64_t Hp() const { return H + 2 * pad; }
  int64_t Wp() const { return W + 2 * pad; }
  int64_t packed_input_words() const { return N * Hp() * Wp() * groups * WG(); }
  int64_t packed_weight_words() const { return groups * R * S * WG() * Kp(); }
};

inline void check(const Shape& s) {
  TNAS_CHECK(s.N >= 1 && s.C >= 1 && s.H >= 1 && s.W >= 1 && s.K >= 1 && s.R >= 1 && s.S >= 1 &&
                 s.stride >= 1 && s.pad >= 0 && s.dil >= 1 && s.groups >= 1 &&
                 s.C % s.groups == 0 && s.K % s.groups == 0 && s.P() >= 1 && s.Q() >= 1,
             "xnor_conv2d: invalid shape: input [", s.N, ", ", s.C, ", ", s.H, ", ", s.W,
             "], weight [", s.K, ", ", s.C / std::max<int64_t>(1, s.groups), ", ", s.R, ", ", s.S,
             "], stride ", s.stride, ", padding ", s.pad, ", dilation ", s.dil, ", groups ",
             s.groups);
}

// One word per pixel of row xr (W pixels) for channels c0..c1 (at most 64, channel c's row at
// xr + (c - c0) * plane): bit (c - c0) of row[w] is x >= 0.
inline void pack_row_bits(const float* xr, int64_t plane, int64_t W, int64_t nc, uint64_t* row) {
  int64_t w0 = 0;
#if defined(__AVX512F__)
  // 16 pixels at a time, channels innermost: each channel's 16 floats are one cache line and
  // one compare; the 16 words stay in two registers.
  for (; w0 < W; w0 += 16) {
    const int64_t n = std::min<int64_t>(16, W - w0);
    const __mmask16 valid = __mmask16((uint32_t(1) << n) - 1);
    __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
    for (int64_t c = 0; c < nc; ++c) {
      const __m512 v = _mm512_maskz_loadu_ps(valid, xr + c * plane + w0);
      const __mmask16 m = _mm512_mask_cmp_ps_mask(valid, v, _mm512_setzero_ps(), _CMP_GE_OQ);
      const __m512i bit = _mm512_set1_epi64(int64_t(uint64_t(1) << c));
      lo = _mm512_mask_or_epi64(lo, __mmask8(m), lo, bit);
      hi = _mm512_mask_or_epi64(hi, __mmask8(m >> 8), hi, bit);
    }
    _mm512_mask_storeu_epi64(row + w0, __mmask8(valid), lo);
    if (n > 8) _mm512_mask_storeu_epi64(row + w0 + 8, __mmask8(valid >> 8), hi);
  }
#endif
  for (; w0 < W; ++w0) {
    uint64_t word = 0;
    for (int64_t c = 0; c < nc; ++c) word |= uint64_t(xr[c * plane + w0] >= 0.0f) << c;
    row[w0] = word;
  }
}

// Packs x [N, C, H, W] into [N][Hp][Wp][groups][WG] (see the top of the file).
inline void pack_input(const Shape& s, const float* x, uint64_t* out) {
  const int64_t WG = s.WG(), G = s.groups, Cg = s.Cg(), Hp = s.Hp(), Wp = s.Wp();
  const int64_t pix_words = G * WG, plane = s.H * s.W;
#pragma omp parallel for schedule(static) if (s.N * s.C * s.H * s.W > 65536)
  for (int64_t n = 0; n < s.N; ++n) {
    uint64_t* on = out + n * Hp * Wp * pix_words;
    std::fill(on, on + Hp * Wp * pix_words, uint64_t(0));
    std::vector<uint64_t> row(size_t(s.W));
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < WG; ++j) {
        const int64_t c0 = g * Cg + j * 64, c1 = std::min(c0 + 64, (g + 1) * Cg);
        for (int64_t h = 0; h < s.H; ++h) {
          uint64_t* dst = on + ((h + s.pad) * Wp + s.pad) * pix_words + g * WG + j;
          const float* xr = x + ((n * s.C + c0) * s.H + h) * s.W;
          if (pix_words == 1) {
            pack_row_bits(xr, plane, s.W, c1 - c0, dst);  // the padded row is contiguous
            continue;
          }
          pack_row_bits(xr, plane, s.W, c1 - c0, row.data());
          for (int64_t w = 0; w < s.W; ++w) dst[w * pix_words] = row[size_t(w)];
        }
      }
  }
}

// The inverse of pack_input for tests: x [N, C, H, W] as +/-1, and whether every padding
// position and every pad bit is 0 (the invariants the kernels rely on).
inline bool unpack_input(const Shape& s, const uint64_t* packed, float* x) {
  const int64_t WG = s.WG(), G = s.groups, Cg = s.Cg(), Hp = s.Hp(), Wp = s.Wp();
  bool clean = true;
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t h = 0; h < Hp; ++h)
      for (int64_t w = 0; w < Wp; ++w)
        for (int64_t g = 0; g < G; ++g)
          for (int64_t j = 0; j < WG; ++j) {
            const uint64_t word = packed[(((n * Hp + h) * Wp + w) * G + g) * WG + j];
            const bool inside = h >= s.pad && h < s.pad + s.H && w >= s.pad && w < s.pad + s.W;
            const int64_t bits = std::min<int64_t>(64, Cg - j * 64);
            const uint64_t valid = bits == 64 ? ~uint64_t(0) : (uint64_t(1) << bits) - 1;
            if (!inside) {
              clean &= word == 0;
              continue;
            }
            clean &= (word & ~valid) == 0;
            for (int64_t b = 0; b < bits; ++b) {
              const int64_t c = g * Cg + j * 64 + b;
              x[((n * s.C + c) * s.H + h - s.pad) * s.W + w - s.pad] = (word >> b) & 1 ? 1.f : -1.f;
            }
          }
  return clean;
}

// Packs w [K, Cg, R, S] into [groups][R*S][WG][Kp], and popw[k * R*S + t] = popcount of the
// code bits of output channel k at tap t (for the border correction).
inline void pack_weight(const Shape& s, const float* w, uint64_t* out, int32_t* popw) {
  const int64_t WG = s.WG(), Cg = s.Cg(), Kg = s.Kg(), Kp = s.Kp(), T = s.R * s.S;
  std::fill(out, out + s.packed_weight_words(), uint64_t(0));
  for (int64_t k = 0; k < s.K; ++k) {
    const int64_t g = k / Kg, kk = k % Kg;
    for (int64_t t = 0; t < T; ++t) {
      int32_t pc = 0;
      for (int64_t c = 0; c < Cg; ++c) {
        const bool bit = w[(k * Cg + c) * T + t] >= 0.0f;
        pc += bit;
        out[((g * T + t) * WG + c / 64) * Kp + kk] |= uint64_t(bit) << (c % 64);
      }
      popw[k * T + t] = pc;
    }
  }
}

namespace detail {

// acc[l] += popcount(x ^ w[l]) for the 8 output channels of a lane block.
struct Portable {
  static constexpr int kPB = 4;  // output pixels per register block
  using V = std::array<uint64_t, 8>;
  static V zero() { return V{}; }
  static V load(const uint64_t* p) {
    V v;
    std::memcpy(v.data(), p, sizeof(V));
    return v;
  }
  static void xor_pop_add(V& acc, uint64_t x, const V& w) {
    for (int l = 0; l < 8; ++l) acc[l] += uint64_t(std::popcount(x ^ w[l]));
  }
  static void store(const V& v, uint64_t* p) { std::memcpy(p, v.data(), sizeof(V)); }
  static void add_block(const V (&a)[kPB], int nq, int32_t* cnt, int64_t Q);
};

#if defined(__AVX2__)
struct Avx2 {
  static constexpr int kPB = 4;  // 8 accumulators + weights fill the 16 ymm registers
  struct V {
    __m256i a, b;
  };
  static V zero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
  static V load(const uint64_t* p) {
    return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 4))};
  }
  // Per-64-bit-lane popcount: nibble lookup (vpshufb), then vpsadbw sums the 8 bytes of a lane.
  static __m256i popcnt64(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                         1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
  }
  static void xor_pop_add(V& acc, uint64_t x, const V& w) {
    const __m256i xv = _mm256_set1_epi64x(int64_t(x));
    acc.a = _mm256_add_epi64(acc.a, popcnt64(_mm256_xor_si256(xv, w.a)));
    acc.b = _mm256_add_epi64(acc.b, popcnt64(_mm256_xor_si256(xv, w.b)));
  }
  static void store(const V& v, uint64_t* p) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v.a);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 4), v.b);
  }
  static void add_block(const V (&a)[kPB], int nq, int32_t* cnt, int64_t Q);
};
#endif

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
struct Avx512 {
  static constexpr int kPB = 8;  // 8 accumulators of the 32 zmm registers
  using V = __m512i;
  static V zero() { return _mm512_setzero_si512(); }
  static V load(const uint64_t* p) { return _mm512_loadu_si512(p); }
  static void xor_pop_add(V& acc, uint64_t x, const V& w) {
    acc = _mm512_add_epi64(acc,
                           _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_set1_epi64(int64_t(x)), w)));
  }
  static void store(const V& v, uint64_t* p) { _mm512_storeu_si512(p, v); }
  // cnt[l * Q + i] += 2 * acc[i][l], i < nq: the 8 x 8 block transposed in registers (three
  // rounds of two-source permutes), so each channel's row of 8 pixels is one vector add and
  // store (scalar stores of 64 counts cost as much as the popcounts of a 3 x 3 tap block).
  static void add_block(const V (&a)[kPB], int nq, int32_t* cnt, int64_t Q) {
    const __m512i lo2 = _mm512_setr_epi64(0, 8, 2, 10, 4, 12, 6, 14);
    const __m512i hi2 = _mm512_setr_epi64(1, 9, 3, 11, 5, 13, 7, 15);
    const __m512i lo4 = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i hi4 = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    const __m512i lo8 = _mm512_setr_epi64(0, 1, 2, 3, 8, 9, 10, 11);
    const __m512i hi8 = _mm512_setr_epi64(4, 5, 6, 7, 12, 13, 14, 15);
    // t[2m + e]: pixels 2m, 2m+1 interleaved, channels of parity e.
    V t[8], u[8];
    for (int m = 0; m < 4; ++m) {
      t[2 * m] = _mm512_permutex2var_epi64(a[2 * m], lo2, a[2 * m + 1]);
      t[2 * m + 1] = _mm512_permutex2var_epi64(a[2 * m], hi2, a[2 * m + 1]);
    }
    // u[4h + 2e + f]: pixels 4h..4h+3, channels l with l % 4 = e + 2f.
    for (int h = 0; h < 2; ++h)
      for (int e = 0; e < 2; ++e) {
        u[4 * h + e] = _mm512_permutex2var_epi64(t[4 * h + e], lo4, t[4 * h + 2 + e]);
        u[4 * h + 2 + e] = _mm512_permutex2var_epi64(t[4 * h + e], hi4, t[4 * h + 2 + e]);
      }
    const __mmask8 m = __mmask8((1u << nq) - 1);
    for (int c = 0; c < 4; ++c) {  // c = e + 2f: channels c and c + 4
      const V row_c = _mm512_permutex2var_epi64(u[c], lo8, u[4 + c]);
      const V row_c4 = _mm512_permutex2var_epi64(u[c], hi8, u[4 + c]);
      for (const auto& [l, v] : {std::pair{c, row_c}, std::pair{c + 4, row_c4}}) {
        int32_t* dst = cnt + l * Q;
        const __m256i add = _mm512_cvtepi64_epi32(_mm512_slli_epi64(v, 1));
        const __m256i cur = _mm256_maskz_loadu_epi32(m, dst);
        _mm256_mask_storeu_epi32(dst, m, _mm256_add_epi32(cur, add));
      }
    }
  }
};
#endif

// cnt[l * Q + i] += 2 * (lane l of acc[i]) for the nq pixels i of a block and its 8 channels l.
template <class Isa, int PB>
void add_block_scalar(const typename Isa::V (&acc)[PB], int nq, int32_t* cnt, int64_t Q) {
  alignas(64) uint64_t lanes[PB][8];
  for (int i = 0; i < PB; ++i) Isa::store(acc[i], lanes[i]);
  for (int l = 0; l < 8; ++l)
    for (int i = 0; i < nq; ++i) cnt[l * Q + i] += int32_t(2 * lanes[i][l]);
}
inline void Portable::add_block(const V (&a)[kPB], int nq, int32_t* cnt, int64_t Q) {
  add_block_scalar<Portable, kPB>(a, nq, cnt, Q);
}
#if defined(__AVX2__)
inline void Avx2::add_block(const V (&a)[kPB], int nq, int32_t* cnt, int64_t Q) {
  add_block_scalar<Avx2, kPB>(a, nq, cnt, Q);
}
#endif

// One output row p of image n, group g: y[n, g*Kg + k, p, q] for all k < Kg, q < Q, through a
// small row buffer cnt[k][q] (L1-resident) of T * Cg - y in integers: it starts with the
// contribution of the padded taps of the few pixels whose window leaves the image (the border
// correction), the main loop adds twice the popcount sums, and the row is then written per
// output channel as contiguous floats. (Correcting afterwards, just before or after the vector
// conversion, made each corrected pixel a vector load of a just-stored scalar or the other way
// round: a store-forwarding stall that took a fifth to a third of the time at 64 channels.)
template <class Isa>
void conv_row(const Shape& s, const uint64_t* xp, const uint64_t* wp, const int32_t* popw, float* y,
              int64_t n, int64_t p, int64_t g, std::vector<int32_t>& cnt) {
  constexpr int kPB = Isa::kPB;  // pixels per register block, 8 output channels each
  const int64_t WG = s.WG(), Kg = s.Kg(), Kp = s.Kp(), T = s.R * s.S, Q = s.Q(), P = s.P();
  const int64_t Wp = s.Wp(), pix_words = s.groups * WG, Cg = s.Cg();
  const int64_t h0 = p * s.stride;  // padded row of tap r = 0
  cnt.assign(size_t(Kp * Q), 0);
  // The contribution a padded tap would have, -(sum over channels of sgn(w)) = Cg - 2 popcount(w
  // at that tap), for each pixel whose window leaves the image, with each one's padded taps
  // listed once.
  std::vector<int64_t> taps;
  const bool rows_inside = h0 >= s.pad && h0 + (s.R - 1) * s.dil < s.pad + s.H;
  for (int64_t q = 0; q < Q; ++q) {
    const int64_t w0 = q * s.stride;
    if (rows_inside && w0 >= s.pad && w0 + (s.S - 1) * s.dil < s.pad + s.W) continue;
    taps.clear();
    for (int64_t r = 0; r < s.R; ++r) {
      const int64_t hh = h0 + r * s.dil;
      const bool row_in = hh >= s.pad && hh < s.pad + s.H;
      for (int64_t c = 0; c < s.S; ++c) {
        const int64_t ww = w0 + c * s.dil;
        if (!(row_in && ww >= s.pad && ww < s.pad + s.W)) taps.push_back(r * s.S + c);
      }
    }
    for (int64_t kk = 0; kk < Kg; ++kk) {
      const int32_t* pk = popw + (g * Kg + kk) * T;
      int32_t corr = 0;
      for (const int64_t t : taps) corr += int32_t(Cg) - 2 * pk[t];
      cnt[size_t(kk * Q + q)] = corr;
    }
  }
  const uint64_t* wg = wp + g * T * WG * Kp;
  const uint64_t* xrow = xp + (n * s.Hp() * Wp) * pix_words + g * WG;
  for (int64_t q0 = 0; q0 < Q; q0 += kPB) {
    int64_t col[kPB];  // padded column of tap s = 0 for each pixel of the block
    for (int i = 0; i < kPB; ++i) col[i] = std::min(q0 + i, Q - 1) * s.stride;
    for (int64_t kb = 0; kb < Kp; kb += 8) {
      typename Isa::V acc[kPB];
      for (int i = 0; i < kPB; ++i) acc[i] = Isa::zero();
      for (int64_t r = 0; r < s.R; ++r) {
        const uint64_t* xr = xrow + (h0 + r * s.dil) * Wp * pix_words;
        for (int64_t c = 0; c < s.S; ++c) {
          const int64_t t = r * s.S + c;
          const uint64_t* xt = xr + c * s.dil * pix_words;
          for (int64_t j = 0; j < WG; ++j) {
            const typename Isa::V wv = Isa::load(wg + (t * WG + j) * Kp + kb);
            for (int i = 0; i < kPB; ++i) Isa::xor_pop_add(acc[i], xt[col[i] * pix_words + j], wv);
          }
        }
      }
      Isa::add_block(acc, int(std::min<int64_t>(kPB, Q - q0)), cnt.data() + kb * Q + q0, Q);
    }
  }
  const float base = float(T * Cg);
  for (int64_t kk = 0; kk < Kg; ++kk) {
    const int32_t* cr = cnt.data() + kk * Q;
    float* yr = y + ((n * s.K + g * Kg + kk) * P + p) * Q;
    for (int64_t q = 0; q < Q; ++q) yr[q] = base - float(cr[q]);
  }
}

template <class Isa>
void conv(const Shape& s, const uint64_t* xp, const uint64_t* wp, const int32_t* popw, float* y) {
  const int64_t P = s.P(), rows = s.N * P * s.groups;
#pragma omp parallel if (rows > 1)
  {
    std::vector<int32_t> cnt;  // per thread
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t g = i % s.groups, np = i / s.groups;
      conv_row<Isa>(s, xp, wp, popw, y, np / P, np % P, g, cnt);
    }
  }
}

}  // namespace detail

// y [N, K, P, Q] from packed operands (pack_input / pack_weight) with the given kernel path.
inline void conv_packed(const Shape& s, const uint64_t* xp, const uint64_t* wp, const int32_t* popw,
                        float* y, Path path = best_path()) {
  switch (path) {
    case Path::avx512:
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
      return detail::conv<detail::Avx512>(s, xp, wp, popw, y);
#else
      break;
#endif
    case Path::avx2:
#if defined(__AVX2__)
      return detail::conv<detail::Avx2>(s, xp, wp, popw, y);
#else
      break;
#endif
    case Path::portable:
      return detail::conv<detail::Portable>(s, xp, wp, popw, y);
  }
  TNAS_CHECK(false, "xnor_conv2d: the ", name(path), " kernel is not compiled in this build");
}

// Weights packed once (inference of a fixed binary layer): the packed bits and the per-tap
// popcounts.
struct PackedWeight {
  Shape shape{};
  std::vector<uint64_t> bits;
  std::vector<int32_t> popw;
};
inline PackedWeight pack_weight(const Shape& s, const float* w) {
  PackedWeight pw;
  pw.shape = s;
  pw.bits.resize(size_t(s.packed_weight_words()));
  pw.popw.resize(size_t(s.K * s.R * s.S));
  pack_weight(s, w, pw.bits.data(), pw.popw.data());
  return pw;
}

// y = xnor conv of x with weights packed beforehand; `scratch` holds the packed input
// (resized as needed and kept by the caller between calls).
inline void conv2d(const Shape& s, const float* x, const PackedWeight& pw, float* y,
                   std::vector<uint64_t>& scratch, Path path = best_path()) {
  check(s);
  scratch.resize(size_t(s.packed_input_words()));
  pack_input(s, x, scratch.data());
  conv_packed(s, scratch.data(), pw.bits.data(), pw.popw.data(), y, path);
}

// y = xnor conv of float x and w (both binarised and packed here).
inline void conv2d(const Shape& s, const float* x, const float* w, float* y,
                   Path path = best_path()) {
  check(s);
  PackedWeight pw = pack_weight(s, w);
  std::vector<uint64_t> xp;
  conv2d(s, x, pw, y, xp, path);
}

// Packs the rows of a row-major [rows, K] matrix: out[r * WG + j] holds the code bits of
// elements j*64 .. j*64+63 of row r (WG = ceil(K / 64), bits past K are 0).
inline void pack_rows(int64_t rows, int64_t K, const float* a, uint64_t* out) {
  const int64_t WG = (K + 63) / 64;
#pragma omp parallel for schedule(static) if (rows * K > 65536)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < WG; ++j) {
      const float* ar = a + r * K + j * 64;
      const int64_t n = std::min<int64_t>(64, K - j * 64);
      uint64_t word = 0;
      for (int64_t b = 0; b < n; ++b) word |= uint64_t(ar[b] >= 0.0f) << b;
      out[r * WG + j] = word;
    }
}

namespace detail {
// C[M, N] = sum_k sgn(A[m, k]) * sgn(B[n, k]) as a 1 x 1 convolution whose pixels are the N
// rows of B and whose output channels are the M rows of A: its [M, N] output is C itself and
// both operands pack straight from their rows.
inline void gemm_rows(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C,
                      Path path) {
  // The N pixels as an H x W image with W a divisor of N (up to 64), so there are many rows
  // (the kernel runs rows in parallel) and each row fills the pixel blocks.
  int64_t W = 1;
  for (int64_t d = std::min<int64_t>(64, N); d >= 1; --d)
    if (N % d == 0) {
      W = d;
      break;
    }
  const Shape s{1, K, N / W, W, M, 1, 1, 1, 0, 1, 1};
  check(s);
  std::vector<uint64_t> xp(size_t(s.packed_input_words()));
  pack_rows(N, K, B, xp.data());              // no padding: pixel n's words are at n * WG
  const PackedWeight pw = pack_weight(s, A);  // A [M, K] is a [M, K, 1, 1] weight
  conv_packed(s, xp.data(), pw.bits.data(), pw.popw.data(), C, path);
}
}  // namespace detail

// C[M, N] = sum_k sgn(A[m, k]) * sgn(B[n, k]). The larger of M and N goes on the pixel side
// (rows run in parallel; the output channels of one row share its counts buffer), so for
// M > N it computes C^T and transposes it.
inline void gemm(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C,
                 Path path = best_path()) {
  TNAS_CHECK(M >= 1 && N >= 1 && K >= 1, "xnor_gemm: need M, N, K >= 1, got ", M, ", ", N, ", ", K);
  if (M <= N) return detail::gemm_rows(M, N, K, A, B, C, path);
  std::vector<float> Ct(size_t(N * M));
  detail::gemm_rows(N, M, K, B, A, Ct.data(), path);
  constexpr int64_t kT = 32;  // blocked transpose
#pragma omp parallel for schedule(static) if (M * N > 65536)
  for (int64_t m0 = 0; m0 < M; m0 += kT)
    for (int64_t n0 = 0; n0 < N; n0 += kT)
      for (int64_t m = m0; m < std::min(M, m0 + kT); ++m)
        for (int64_t n = n0; n < std::min(N, n0 + kT); ++n) C[m * N + n] = Ct[size_t(n * M + m)];
}

}  // namespace tnas::cpu::xnor
