// Binary (XNOR / popcount) convolution and GEMM: float32 in, exact integer dot products of the
// signs out (see Kernels::xnor_conv2d in backend/registry.hpp for the contract).
//
// Data layout. Each call bit-packs its operands (bit = 1 for v >= 0, i.e. sgn(v) = +1):
//  - activations: x [N, C, H, W] float -> xb [N][G][H][W][CW] uint32 (channels of one group of
//    one pixel are contiguous bits, channel c of the group at bit c % 32 of word c / 32; the bits
//    past C/G are 0);
//  - weights: w [K, C/G, R, S] float -> wb [K][R*S][CWw] uint32 (the same bit order, per tap),
//    plus wpre [K][(R+1)*(S+1)]: 2-D prefix sums over the taps of popc(weight bits of tap), i.e.
//    wpre[k][i][j] = sum over r < i, s < j of popc(wb[k][r][s][*]).
// CWw is a multiple of 4 words (128 bits) so one 16-byte unit never spans two taps; CW = CWw on
// the tensor-core path, ceil(Cg / 32) on the bit-wise path.
//
// Two kernels, both exact for every shape:
//  - simt: one thread per output; for each in-bounds tap adds Cg - 2 * popc(a ^ b) over the
//    words of the group (pad bits are 0 in both operands, so they never differ). Out-of-bounds
//    taps are skipped, which is zero padding.
//  - mma (sm_80+): an implicit GEMM, rows = output pixels (n, p, q) of one group, columns = the
//    group's output channels, reduction = (tap, 128-bit unit) pairs taken two units (256 bits)
//    per mma.sync.m16n8k256.b1 AND-popc step. Block tile 128 x 128, 8 warps of 64 x 32, a
//    4-stage cp.async pipeline; an out-of-bounds tap (or the zero unit that pads the reduction
//    to an even count) is zero-filled by cp.async, so it adds 0 to popc(a & b). With the bits of
//    the in-bounds taps only, dot = n_valid - 2 * (popc(a) + popc(b) - 2 * popc(a & b)), where
//      n_valid = Cg * (#valid rows of taps) * (#valid columns of taps) (the valid taps of a
//                pixel are a rectangle [r0, r1) x [s0, s1)),
//      popc(a) = the popcount of the zero-filled A tiles of the row, summed in the main loop by
//                the thread that loaded each 16-byte unit,
//      popc(b) = wpre[r1][s1] - wpre[r0][s1] - wpre[r1][s0] + wpre[r0][s0] (the block's columns
//                of wpre are staged in shared memory),
//      popc(a & b) = the accumulator.
//    Every term is an exact integer (|dot| <= R*S*Cg), written as float.
// The path is chosen from the shape (mma when the device is sm_80+ and the group is wide
// enough for tensor cores: Cg >= 32, K/G >= 16), or forced by the environment variable
// TNAS_XNOR_PATH=simt|mma (read at every call, so tests and benches can switch it).
//
// xnor_gemm(M, N, K, A, B, C) is the 1 x 1 convolution of A as [M, K, 1, 1] with B as
// [N, K, 1, 1]; its output [M, N, 1, 1] is C.
#include <cstdlib>
#include <string>

#include "common.cuh"
#include "tnas/backend/cuda/cuda.hpp"  // the pre-packed entry points

namespace tnas::cuda::detail {
namespace {

// ---- geometry ----------------------------------------------------------------------------
struct XGeom {
  int N, H, W, P, Q, R, S, st, pad, dil, G, Cg, Kg, K;
  int CW;     // words per pixel per group in the packed activations
  int CWw;    // words per tap per output channel in the packed weights (multiple of 4)
  int nw;     // words that carry channel bits: ceil(Cg / 32)
  int T;      // (R + 1) * (S + 1), entries of a prefix table
  int64_t M;  // N * P * Q output pixels per group
};

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

XGeom make_geom(const ConvShape& p, bool mma) {
  XGeom g{};
  g.N = int(p.N), g.H = int(p.H), g.W = int(p.W), g.P = int(p.P), g.Q = int(p.Q);
  g.R = int(p.R), g.S = int(p.S), g.st = int(p.stride), g.pad = int(p.pad), g.dil = int(p.dil);
  g.G = int(p.groups), g.Cg = int(p.C / p.groups), g.Kg = int(p.K / p.groups), g.K = int(p.K);
  g.nw = int(ceil_div(g.Cg, 32));
  g.CWw = int(ceil_div(g.Cg, 128)) * 4;
  g.CW = mma ? g.CWw : g.nw;
  g.T = (g.R + 1) * (g.S + 1);
  g.M = p.N * p.P * p.Q;
  return g;
}

// The valid taps of output pixel (p, q): rows [r0, r1), columns [s0, s1) (empty if r1 <= r0).
__device__ __forceinline__ void tap_range(int o, int st, int pad, int dil, int extent, int taps,
                                          int& t0, int& t1) {
  const int base = o * st - pad;  // input coordinate of tap 0
  // first tap with base + t * dil >= 0
  t0 = base >= 0 ? 0 : (-base + dil - 1) / dil;
  // one past the last tap with base + t * dil <= extent - 1
  t1 = base > extent - 1 ? 0 : (extent - 1 - base) / dil + 1;
  t0 = min(t0, taps);
  t1 = min(t1, taps);
  if (t1 < t0) t1 = t0;
}

// ---- packing -------------------------------------------------------------------------------
// 32 sign bits of channels [c0, c0 + 32) of a pixel (channel stride `cs` floats), channels at
// or past `cg` give 0.
__device__ __forceinline__ uint32_t sign_bits(const float* __restrict__ src, int64_t cs, int c0,
                                              int cg) {
  uint32_t bits = 0;
  if (c0 + 32 <= cg) {
#pragma unroll
    for (int b = 0; b < 32; ++b) bits |= uint32_t(__ldg(src + (c0 + b) * cs) >= 0.f) << b;
  } else {
    for (int b = 0; c0 + b < cg; ++b) bits |= uint32_t(__ldg(src + (c0 + b) * cs) >= 0.f) << b;
  }
  return bits;
}

// Activations, pixel-fastest threads (coalesced float reads): thread i packs WPT consecutive
// words of one pixel of one (n, group). total = N*G * (CW/WPT) * HW.
template <int WPT>
__global__ void pack_x_kernel(const float* __restrict__ x, uint32_t* __restrict__ xb, int Cg,
                              int HW, int CW, int64_t total) {
  const int units = CW / WPT;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int pix = int(i % HW);
    const int64_t t = i / HW;
    const int u = int(t % units);
    const int64_t ng = t / units;  // n * G + group: its channels start at ng * Cg
    const float* src = x + ng * Cg * int64_t(HW) + pix;
    uint32_t w[WPT];
#pragma unroll
    for (int k = 0; k < WPT; ++k) w[k] = sign_bits(src, HW, (u * WPT + k) * 32, Cg);
    uint32_t* dst = xb + (ng * HW + pix) * int64_t(CW) + u * WPT;
    if constexpr (WPT == 4) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
#pragma unroll
      for (int k = 0; k < WPT; ++k) dst[k] = w[k];
    }
  }
}

// Activations of small images (HW < 16, e.g. the GEMM's HW = 1), channel-fastest: one warp per
// output word, lane = channel, a ballot makes the word. total_words = N*G*HW*CW.
__global__ void pack_x_ballot_kernel(const float* __restrict__ x, uint32_t* __restrict__ xb, int Cg,
                                     int HW, int CW, int64_t total_words) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t wi = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; wi < total_words;
       wi += warps) {
    const int word = int(wi % CW);
    const int64_t np = wi / CW;  // (n * G + group) * HW + pix
    const int pix = int(np % HW);
    const int64_t ng = np / HW;
    const int c = word * 32 + lane;
    bool bit = false;
    if (c < Cg) bit = __ldg(x + (ng * Cg + c) * int64_t(HW) + pix) >= 0.f;
    const uint32_t bits = __ballot_sync(0xffffffffu, bit);
    if (lane == 0) xb[wi] = bits;
  }
}

// Weights: one block per output channel k. wb[k][tap][CWw] and (if wpre) the prefix table.
__global__ void pack_w_kernel(const float* __restrict__ w, uint32_t* __restrict__ wb,
                              int* __restrict__ wpre, int Cg, int R, int S, int CWw) {
  extern __shared__ int wpc[];  // [R*S] popcounts per tap
  const int k = blockIdx.x, RS = R * S;
  for (int t = threadIdx.x; t < RS; t += blockDim.x) wpc[t] = 0;
  __syncthreads();
  const float* wk = w + int64_t(k) * Cg * RS;
  for (int idx = threadIdx.x; idx < RS * CWw; idx += blockDim.x) {
    const int tap = idx % RS, word = idx / RS;  // tap fastest: neighbouring floats
    const uint32_t bits = sign_bits(wk + tap, RS, word * 32, Cg);
    wb[(int64_t(k) * RS + tap) * CWw + word] = bits;
    if (bits) atomicAdd(&wpc[tap], __popc(bits));
  }
  if (!wpre) return;
  __syncthreads();
  const int T = (R + 1) * (S + 1);
  for (int e = threadIdx.x; e < T; e += blockDim.x) {
    const int i = e / (S + 1), j = e % (S + 1);
    int sum = 0;
    for (int r = 0; r < i; ++r)
      for (int s = 0; s < j; ++s) sum += wpc[r * S + s];
    wpre[int64_t(k) * T + e] = sum;
  }
}

// ---- bit-wise kernel -----------------------------------------------------------------------
__global__ void xnor_conv_simt_kernel(XGeom g, const uint32_t* __restrict__ xb,
                                      const uint32_t* __restrict__ wb, float* __restrict__ y,
                                      int64_t total) {
  const int RS = g.R * g.S;
  const int64_t HW = int64_t(g.H) * g.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int q = int(i % g.Q);
    const int p = int((i / g.Q) % g.P);
    const int k = int((i / (int64_t(g.Q) * g.P)) % g.K);
    const int64_t n = i / (int64_t(g.Q) * g.P * g.K);
    const int grp = k / g.Kg;
    const uint32_t* xp = xb + (n * g.G + grp) * HW * g.CW;
    const uint32_t* wp = wb + int64_t(k) * RS * g.CWw;
    int acc = 0;
    for (int r = 0; r < g.R; ++r) {
      const int h = p * g.st - g.pad + r * g.dil;
      if (h < 0 || h >= g.H) continue;
      for (int s = 0; s < g.S; ++s) {
        const int ww = q * g.st - g.pad + s * g.dil;
        if (ww < 0 || ww >= g.W) continue;
        const uint32_t* a = xp + (int64_t(h) * g.W + ww) * g.CW;
        const uint32_t* b = wp + (r * g.S + s) * g.CWw;
        int d = 0;
        for (int j = 0; j < g.nw; ++j) d += __popc(__ldg(a + j) ^ __ldg(b + j));
        acc += g.Cg - 2 * d;
      }
    }
    y[i] = float(acc);
  }
}

// ---- tensor-core kernel --------------------------------------------------------------------
constexpr int kBM = 128, kBN = 128, kStages = 4, kThreads = 256;
constexpr int kStageBytes = (kBM + kBN) * 32;  // 256 bits per row per stage, A then B

#ifdef TNAS_CUDASIM
// tests/cudasim: the same instructions, simulated on the host with their PTX semantics.
__device__ __forceinline__ void cp_async16(uint32_t smem_addr, const void* gmem, int src_bytes) {
  cudasim::cp_async16(smem_addr, gmem, src_bytes);
}
__device__ __forceinline__ void cp_async_commit() {
  cudasim::cp_async_commit();
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  cudasim::cp_async_wait(N);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                            uint32_t& r3) {
  cudasim::ldmatrix_x4(addr, r0, r1, r2, r3);
}
__device__ __forceinline__ void mma_b1(int (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
  cudasim::mma_b1_and_popc(c, a, b0, b1);
}
#else
__device__ __forceinline__ void cp_async16(uint32_t smem_addr, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                            uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr)
               : "memory");
}
// c += popc(a & b) over k for a 16 x 256 A tile and a 256 x 8 B tile (b1, AND + popc).
__device__ __forceinline__ void mma_b1(int (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  (void)c, (void)a, (void)b0, (void)b1;
  __trap();
#endif
}
#endif

// Byte offset of 16-byte chunk `c` (0 or 1) of row `row` in a tile of 32-byte rows. The chunk
// index is XOR-swizzled with bit 2 of the row so that the 8 rows an ldmatrix phase reads (and
// the rows cp.async writes) fall in 8 different bank groups.
__device__ __forceinline__ uint32_t tile_off(int row, int c) {
  return uint32_t(row * 32 + ((c ^ ((row >> 2) & 1)) << 4));
}

// Shared memory: kStages x [A: kBM x 32 B | B: kBN x 32 B], then the block's prefix tables
// (kBN x Tp ints, Tp = T rounded up to odd against bank conflicts), then popc(a) per row.
__global__ void __launch_bounds__(kThreads, 2)
    xnor_conv_mma_kernel(XGeom g, const uint32_t* __restrict__ xb, const uint32_t* __restrict__ wb,
                         const int* __restrict__ wpre, float* __restrict__ y) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int Tp = g.T | 1;
  int* s_tab = reinterpret_cast<int*>(smem + kStages * kStageBytes);
  int* s_a1 = s_tab + kBN * Tp;
  const uint32_t s_base = uint32_t(__cvta_generic_to_shared(smem));

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int grp = blockIdx.z;
  const int64_t m0 = int64_t(blockIdx.x) * kBM;
  const int n0 = blockIdx.y * kBN;
  const int RS = g.R * g.S, UPT = g.CWw / 4;
  const int U = RS * UPT;          // 128-bit units along the reduction
  const int ksteps = (U + 1) / 2;  // 256-bit mma steps
  const int64_t HW = int64_t(g.H) * g.W, PQ = int64_t(g.P) * g.Q;

  // Stage the block's prefix tables (overlaps with the pipeline's first loads).
  for (int e = tid; e < kBN * g.T; e += kThreads) {
    const int c = e / g.T, t = e - c * g.T;
    const int k = n0 + c;
    s_tab[c * Tp + t] = k < g.Kg ? __ldg(wpre + (int64_t(grp) * g.Kg + k) * g.T + t) : 0;
  }

  // Loader: thread tid moves unit (tid & 1) of A row (tid >> 1) and of B row (tid >> 1).
  const int lrow = tid >> 1, lunit = tid & 1;
  const uint32_t loff = tile_off(lrow, lunit);
  const int64_t am = m0 + lrow;
  const bool a_ok = am < g.M;
  int h0 = 0, w0 = 0;
  const uint32_t* a_plane = xb;
  if (a_ok) {
    const int64_t nimg = am / PQ;
    const int pq = int(am - nimg * PQ);
    const int p = pq / g.Q, q = pq - p * g.Q;
    h0 = p * g.st - g.pad;
    w0 = q * g.st - g.pad;
    a_plane = xb + (nimg * g.G + grp) * HW * g.CW;
  }
  const bool b_ok = n0 + lrow < g.Kg;
  const uint32_t* b_row = wb + (int64_t(grp) * g.Kg + (b_ok ? n0 + lrow : 0)) * int64_t(RS) * g.CWw;

  auto load_stage = [&](int ks, int stage) {
    const int u = 2 * ks + lunit;
    const uint32_t sa = s_base + stage * kStageBytes + loff;
    const uint32_t sb = sa + kBM * 32;
    const void* src = xb;
    int bytes = 0;
    if (a_ok && u < U) {
      const int tap = u / UPT, j = u - tap * UPT;
      const int r = tap / g.S, s = tap - r * g.S;
      const int h = h0 + r * g.dil, w = w0 + s * g.dil;
      if (h >= 0 && h < g.H && w >= 0 && w < g.W) {
        src = a_plane + (int64_t(h) * g.W + w) * g.CW + j * 4;
        bytes = 16;
      }
    }
    cp_async16(sa, src, bytes);  // bytes == 0: zero fill (padding tap / pad unit)
    const bool bu = b_ok && u < U;
    cp_async16(sb, bu ? static_cast<const void*>(b_row + u * 4) : static_cast<const void*>(wb),
               bu ? 16 : 0);
  };

  // Warp tile: rows [wm * 64, +64), columns [wn * 32, +32): 4 x 4 mma tiles of 16 x 8.
  const int wm = warp >> 2, wn = warp & 3;
  int acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;
  int a1 = 0;  // popc of the A units this thread loaded

  // ldmatrix source rows of this lane. A (x4 per m16 tile): matrices = (rows 0-7 | 8-15) x
  // (chunk 0 | 1) in the order a0..a3. B (x4 per two n8 tiles): (tile j chunk 0, chunk 1,
  // tile j+1 chunk 0, chunk 1) = (b0, b1) of tile j, then of tile j+1.
  const int a_lrow = wm * 64 + (lane & 7) + ((lane >> 3) & 1) * 8, a_lchunk = lane >> 4;
  const int b_lrow = wn * 32 + (lane & 7) + (lane >> 4) * 8, b_lchunk = (lane >> 3) & 1;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ksteps) load_stage(s, s);
    cp_async_commit();
  }
  for (int ks = 0; ks < ksteps; ++ks) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int nxt = ks + kStages - 1;
    if (nxt < ksteps) load_stage(nxt, nxt % kStages);
    cp_async_commit();

    const int stage = ks % kStages;
    const uint32_t sa = s_base + stage * kStageBytes, sb = sa + kBM * 32;
    {
      const uint4 v = *reinterpret_cast<const uint4*>(smem + stage * kStageBytes + loff);
      a1 += __popc(v.x) + __popc(v.y) + __popc(v.z) + __popc(v.w);
    }
    uint32_t bf[4][2];
#pragma unroll
    for (int j = 0; j < 4; j += 2)
      ldmatrix_x4(sb + tile_off(b_lrow + j * 8, b_lchunk), bf[j][0], bf[j][1], bf[j + 1][0],
                  bf[j + 1][1]);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t af[4];
      ldmatrix_x4(sa + tile_off(a_lrow + i * 16, a_lchunk), af[0], af[1], af[2], af[3]);
#pragma unroll
      for (int j = 0; j < 4; ++j) mma_b1(acc[i][j], af, bf[j][0], bf[j][1]);
    }
  }
  cp_async_wait<0>();

  // popc(a) per row: the two threads of a row hold the two units of every step.
  a1 += __shfl_xor_sync(0xffffffffu, a1, 1);
  if (lunit == 0) s_a1[lrow] = a1;
  __syncthreads();

  // Epilogue: dot = nv * Cg - 2 * popc(a) - 2 * popc(b) + 4 * popc(a & b).
  const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = wm * 64 + i * 16 + half * 8 + gid;
      const int64_t m = m0 + row;
      if (m >= g.M) continue;
      const int64_t nimg = m / PQ;
      const int pq = int(m - nimg * PQ);
      const int p = pq / g.Q, q = pq - p * g.Q;
      int r0, r1, c0, c1;
      tap_range(p, g.st, g.pad, g.dil, g.H, g.R, r0, r1);
      tap_range(q, g.st, g.pad, g.dil, g.W, g.S, c0, c1);
      const int base = (r1 - r0) * (c1 - c0) * g.Cg - 2 * s_a1[row];
      const int i11 = r1 * (g.S + 1) + c1, i01 = r0 * (g.S + 1) + c1;
      const int i10 = r1 * (g.S + 1) + c0, i00 = r0 * (g.S + 1) + c0;
      float* yp = y + (nimg * g.K + int64_t(grp) * g.Kg) * PQ + pq;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = wn * 32 + j * 8 + tig * 2 + e;
          const int k = n0 + col;
          if (k >= g.Kg) continue;
          const int* tab = s_tab + col * Tp;
          const int b1 = tab[i11] - tab[i01] - tab[i10] + tab[i00];
          yp[int64_t(k) * PQ] = float(base - 2 * b1 + 4 * acc[i][j][half * 2 + e]);
        }
    }
}

// ---- dispatch ------------------------------------------------------------------------------
enum class Path { simt, mma };

int device_cc_major() {
  static const int major = [] {
    int dev = 0, v = 0;
    TNAS_CUDA_CHECK(cudaGetDevice(&dev));
    TNAS_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev));
    return v;
  }();
  return major;
}

// Whether the tensor-core kernel this device runs was compiled with its mma path: the device
// being sm_80+ is not enough, as a build for older architectures only (CMAKE_CUDA_ARCHITECTURES
// below 80) runs on it by JIT-compiling PTX in which mma_b1 is a trap.
bool mma_compiled() {
  static const bool yes = [] {
    if (device_cc_major() < 8) return false;
    cudaFuncAttributes a{};
    if (cudaFuncGetAttributes(&a, xnor_conv_mma_kernel) != cudaSuccess) {
      (void)cudaGetLastError();  // no image of the kernel for this device: the SIMT path
      return false;
    }
    return a.ptxVersion >= 80;
  }();
  return yes;
}

size_t mma_smem_bytes(const XGeom& g) {
  return size_t(kStages) * kStageBytes + size_t(kBN) * (g.T | 1) * 4 + size_t(kBM) * 4;
}

bool mma_possible(const ConvShape& p) {
  const XGeom g = make_geom(p, true);
  return mma_compiled() && p.groups <= 65535 && ceil_div(g.Kg, kBN) <= 65535 &&
         ceil_div(g.M, kBM) < (int64_t(1) << 31) && mma_smem_bytes(g) <= smem_optin();
}

Path choose_path(const ConvShape& p) {
  const char* env = std::getenv("TNAS_XNOR_PATH");
  const std::string v = env ? env : "";
  if (v == "simt") return Path::simt;
  if (v == "mma") {
    TNAS_CHECK(
        mma_possible(p), "xnor_conv2d (cuda): TNAS_XNOR_PATH=mma, but the tensor-core ",
        "path cannot run this shape on this device (needs sm_80+ and a build for it, groups <= ",
        "65535, and ", "(R+1)*(S+1) small enough for shared memory)");
    return Path::mma;
  }
  TNAS_CHECK(v.empty() || v == "auto", "TNAS_XNOR_PATH: expected simt, mma or auto, got '", v, "'");
  const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
  return Cg >= 32 && Kg >= 16 && mma_possible(p) ? Path::mma : Path::simt;
}

bool fits_int32(const ConvShape& p) {
  const int64_t lim = int64_t(1) << 31;
  return p.N * p.C * p.H * p.W < lim && p.N * p.K * p.P * p.Q < lim && p.K * p.C * p.R * p.S < lim;
}

size_t align256(size_t b) {
  return (b + 255) / 256 * 256;
}

// Packed-weight buffer: wb (K * R*S * CWw words), then wpre (K * T ints) at a 256-byte offset.
size_t wbits_bytes(const XGeom& g) {
  return align256(size_t(g.K) * g.R * g.S * g.CWw * 4);
}
size_t packed_w_bytes(const XGeom& g) {
  return wbits_bytes(g) + align256(size_t(g.K) * g.T * 4);
}

void pack_weights(const XGeom& g, const float* w, uint32_t* wb, int* wpre) {
  const size_t smem = size_t(g.R) * g.S * 4;
  pack_w_kernel<<<unsigned(g.K), 128, smem, stream()>>>(w, wb, wpre, g.Cg, g.R, g.S, g.CWw);
  TNAS_CUDA_LAUNCHED();
}

void pack_activations(const XGeom& g, const float* x, uint32_t* xb) {
  const int HW = g.H * g.W;
  if (HW < 16) {
    const int64_t words = int64_t(g.N) * g.G * HW * g.CW;
    pack_x_ballot_kernel<<<blocks_for(words * 32, 256), 256, 0, stream()>>>(x, xb, g.Cg, HW, g.CW,
                                                                            words);
  } else if (g.CW % 4 == 0) {
    const int64_t total = int64_t(g.N) * g.G * (g.CW / 4) * HW;
    pack_x_kernel<4><<<blocks_for(total, 128), 128, 0, stream()>>>(x, xb, g.Cg, HW, g.CW, total);
  } else {
    const int64_t total = int64_t(g.N) * g.G * g.CW * HW;
    pack_x_kernel<1><<<blocks_for(total, 128), 128, 0, stream()>>>(x, xb, g.Cg, HW, g.CW, total);
  }
  TNAS_CUDA_LAUNCHED();
}

void run_conv(const ConvShape& p, Path path, const float* x, const uint32_t* wb, const int* wpre,
              float* y) {
  const XGeom g = make_geom(p, path == Path::mma);
  const size_t xbytes = align256(size_t(g.N) * g.G * g.H * g.W * g.CW * 4);
  uint32_t* xb = static_cast<uint32_t*>(scratch_alloc(xbytes));
  pack_activations(g, x, xb);
  if (path == Path::mma) {
    const size_t smem = mma_smem_bytes(g);
    allow_smem<xnor_conv_mma_kernel>(smem, "xnor_conv2d");
    const dim3 grid(unsigned(ceil_div(g.M, kBM)), unsigned(ceil_div(g.Kg, kBN)), unsigned(g.G));
    xnor_conv_mma_kernel<<<grid, kThreads, smem, stream()>>>(g, xb, wb, wpre, y);
  } else {
    const int64_t total = int64_t(g.N) * g.K * g.P * g.Q;
    xnor_conv_simt_kernel<<<blocks_for(total, 256), 256, 0, stream()>>>(g, xb, wb, y, total);
  }
  TNAS_CUDA_LAUNCHED();
  scratch_free(xb, xbytes);
}

void check_shape(const ConvShape& p) {
  TNAS_CHECK(p.groups >= 1 && p.C % p.groups == 0 && p.K % p.groups == 0 && p.stride >= 1 &&
                 p.dil >= 1 && p.pad >= 0,
             "xnor_conv2d (cuda): bad shape");
  TNAS_CHECK(!p.relu_x, "xnor_conv2d (cuda): relu_x is for the float conv kernels");
  TNAS_CHECK(fits_int32(p), "xnor_conv2d (cuda): tensors of 2^31 or more elements");
}

// Packed weights are read by 16-byte cp.async copies, whose global address must be 16-byte
// aligned (a misaligned one is a sticky fault that ends the CUDA context): a tensor's raw()
// is, unless it is a view at an offset.
void check_packed_alignment(const void* packed, const char* what) {
  TNAS_CHECK(reinterpret_cast<uintptr_t>(packed) % 16 == 0, what, " (cuda): the packed weights at ",
             packed, " are not 16-byte aligned (pass a tensor's own storage, not a view at an ",
             "offset)");
}

// True (and y zeroed where needed) when there is nothing to compute.
bool trivial(const ConvShape& p, float* y) {
  const int64_t ny = p.N * p.K * p.P * p.Q;
  if (ny == 0) return true;
  if (p.C == 0 || p.R == 0 || p.S == 0) {  // empty reduction: every output is 0
    TNAS_CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(ny) * sizeof(float), stream()));
    return true;
  }
  return false;
}

}  // namespace

void xnor_conv2d(const ConvShape& p, const float* x, const float* w, float* y) {
  check_shape(p);
  if (trivial(p, y)) return;
  const Path path = choose_path(p);
  const XGeom g = make_geom(p, path == Path::mma);
  const size_t wbytes = packed_w_bytes(g);
  unsigned char* wbuf = static_cast<unsigned char*>(scratch_alloc(wbytes));
  uint32_t* wb = reinterpret_cast<uint32_t*>(wbuf);
  int* wpre = reinterpret_cast<int*>(wbuf + wbits_bytes(g));
  pack_weights(g, w, wb, path == Path::mma ? wpre : nullptr);
  run_conv(p, path, x, wb, wpre, y);
  scratch_free(wbuf, wbytes);
}

void xnor_gemm(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C) {
  // A as x [M, K, 1, 1], B as w [N, K, 1, 1]: y [M, N, 1, 1] is C.
  const ConvShape p{M, K, 1, 1, N, 1, 1, 1, 0, 1, 1, 1, 1, false};
  xnor_conv2d(p, A, B, C);
}

}  // namespace tnas::cuda::detail

namespace tnas::cuda {

size_t xnor_packed_weights_bytes(const backend::ConvShape& p) {
  return detail::packed_w_bytes(detail::make_geom(p, true));
}

void xnor_pack_weights(const backend::ConvShape& p, const float* w, void* packed) {
  detail::check_shape(p);
  detail::check_packed_alignment(packed, "xnor_pack_weights");
  if (p.K == 0 || p.C == 0 || p.R == 0 || p.S == 0) return;
  const detail::XGeom g = detail::make_geom(p, true);
  unsigned char* buf = static_cast<unsigned char*>(packed);
  detail::pack_weights(g, w, reinterpret_cast<uint32_t*>(buf),
                       reinterpret_cast<int*>(buf + detail::wbits_bytes(g)));
}

void xnor_conv2d_packed(const backend::ConvShape& p, const float* x, const void* packed_w,
                        float* y) {
  detail::check_shape(p);
  detail::check_packed_alignment(packed_w, "xnor_conv2d_packed");
  if (detail::trivial(p, y)) return;
  const detail::XGeom g = detail::make_geom(p, true);
  const unsigned char* buf = static_cast<const unsigned char*>(packed_w);
  detail::run_conv(p, detail::choose_path(p), x, reinterpret_cast<const uint32_t*>(buf),
                   reinterpret_cast<const int*>(buf + detail::wbits_bytes(g)), y);
}

}  // namespace tnas::cuda
