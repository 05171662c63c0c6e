// Convolutions on the GPU (float32, NCHW).
//
// Three paths, picked from the shape:
//  - depthwise (groups == C == K), 3x3 or 5x5, stride 1 or 2, dilation 1 or 2: tiled kernels.
//    A block owns a tile of output rows of one or more (n, c) planes; the input tile with its
//    halo is staged in shared memory (zero outside the image, so the inner loops have no
//    bounds checks), each thread computes V = 4 consecutive outputs along W from a register
//    window read with 16-byte shared loads, and stores them with one 16-byte store where the
//    row allows. Backward-input at stride 1 is the same kernel run as a correlation of gy
//    with the flipped kernel; at stride 2 a kernel of the same tiling keeps only the taps
//    whose source row/column is a multiple of the stride. Backward-weight reuses the forward
//    tiling: each thread accumulates its outputs' contribution to all R*S taps in registers,
//    the block reduces them once and writes one partial per (channel, block); a second kernel
//    sums the partials of each channel in a fixed order (deterministic, no atomics).
//  - pointwise (1x1, stride 1, no padding, groups 1): cuBLAS strided-batched GEMMs.
//  - anything else (dense or grouped KxK, 1x1 with stride, other depthwise sizes): cuDNN where
//    the build has it (cudnn.cu; ConvEngine::automatic), else direct kernels, one thread per
//    output (forward / backward-input) or one block per weight (backward-weight): correct for
//    every shape, not tuned. ConvEngine::native / cudnn force one side for every shape.
// The ReLU before a conv (ConvShape::relu_x) is fused: the depthwise and direct kernels apply
// it as they stage or read x, and backward-input zeroes gx where x <= 0 as it stores; the
// cuBLAS paths read a ReLU'd scratch copy of x and mask gx in one extra elementwise pass.
// Every kernel overwrites its output.
#include <algorithm>

#include "common.cuh"

namespace tnas::cuda::detail {
namespace {

constexpr int kV = 4;  // outputs per thread along W in the tiled depthwise kernels
// Rows of the depthwise weight gradient's block reduction: one per warp of a block of at most
// 256 threads (its __launch_bounds__), after the input tiles in dynamic shared memory.
constexpr int kRedRows = 256 / 32;

__host__ __device__ inline int floor_div(int a, int b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Tiling of an output plane set: blockDim = (tx, ty, tz); the block computes rows
// [oh0, oh0 + ty) and columns [ow0, ow0 + tx * kV) of tz consecutive planes. The input tile
// is ih x iw_pad floats per plane (iw_pad a multiple of 4, plus 4 floats of slack so a
// thread's 16-byte window reads never leave the tile).
struct Tiling {
  int tx, ty, tz;
  int ih, iw, iw_pad;
  unsigned gx, gy, gz;
  size_t smem_bytes;
};
Tiling make_tiling(int P, int Q, int planes, int R, int S, int st, int dil) {
  Tiling t{};
  t.tx = std::min(16, (Q + kV - 1) / kV);
  t.ty = std::min(P, std::max(1, 256 / t.tx));
  t.tz = std::max(1, std::min({planes, 256 / (t.tx * t.ty), 64}));  // blockDim.z <= 64
  t.ih = (t.ty - 1) * st + (R - 1) * dil + 1;
  t.iw = (t.tx * kV - 1) * st + (S - 1) * dil + 1;
  t.iw_pad = (t.iw + 3) / 4 * 4 + 4;
  t.gx = unsigned((Q + t.tx * kV - 1) / (t.tx * kV));
  t.gy = unsigned((P + t.ty - 1) / t.ty);
  t.gz = unsigned((planes + t.tz - 1) / t.tz);
  t.smem_bytes = size_t(t.tz) * t.ih * t.iw_pad * sizeof(float);
  return t;
}

__device__ __forceinline__ float relu(float v) {  // NaN -> 0, as the elementwise relu
  return v > 0.f ? v : 0.f;
}

// Stages rows [ih0, ih0 + ih) x columns [iw0, iw0 + iw_pad) of plane `src` (H x W) into `tile`,
// zero outside the image; RELU: max(v, 0) of each value. All threads of the block take part.
template <bool RELU>
__device__ __forceinline__ void stage_tile(const float* __restrict__ src, int H, int W, int ih0,
                                           int iw0, int ih, int iw_pad, float* __restrict__ tile,
                                           int tid, int nthreads) {
  const int n = ih * iw_pad;
  for (int i = tid; i < n; i += nthreads) {
    const int r = i / iw_pad, c = i - r * iw_pad;
    const int h = ih0 + r, w = iw0 + c;
    const float v = (h >= 0 && h < H && w >= 0 && w < W) ? __ldg(src + h * W + w) : 0.f;
    tile[i] = RELU ? relu(v) : v;
  }
}

// Reads the NW floats of a thread's window starting at `p` (16-byte aligned) into `win`.
template <int NW>
__device__ __forceinline__ void load_window(const float* p, float (&win)[NW]) {
  static_assert(NW % 4 == 0);
#pragma unroll
  for (int i = 0; i < NW / 4; ++i) {
    const float4 v = reinterpret_cast<const float4*>(p)[i];
    win[4 * i] = v.x, win[4 * i + 1] = v.y, win[4 * i + 2] = v.z, win[4 * i + 3] = v.w;
  }
}

// Zeroes the outputs acc[v] (columns ow + v of a row of width Q) whose `m` (the same row of the
// mask tensor) is not > 0: the ReLU's backward fused into backward-input.
__device__ __forceinline__ void mask_outputs(const float* __restrict__ m, int ow, int Q,
                                             float (&acc)[kV]) {
#pragma unroll
  for (int v = 0; v < kV; ++v)
    if (ow + v < Q && !(__ldg(m + ow + v) > 0.f)) acc[v] = 0.f;
}

// Stores V outputs at `y` (row of width Q starting at column ow); one 16-byte store when the
// whole group is inside the row and aligned.
__device__ __forceinline__ void store_outputs(float* y, int ow, int Q, const float (&acc)[kV]) {
  if (ow + kV <= Q && (reinterpret_cast<uintptr_t>(y + ow) & 15) == 0) {
    *reinterpret_cast<float4*>(y + ow) = make_float4(acc[0], acc[1], acc[2], acc[3]);
  } else {
#pragma unroll
    for (int v = 0; v < kV; ++v)
      if (ow + v < Q) y[ow + v] = acc[v];
  }
}

// Blocks of 256 threads per SM the depthwise forward kernel is compiled for. Left to itself,
// ptxas holds the 5x5 kernels to 32 registers (full occupancy) and spills a few bytes for it,
// where their 25 weights, the input window and 4 accumulators want about 40: six blocks (1,536
// threads, 40 registers each) keep 75% occupancy without spilling, five (48 registers) with
// the ReLU mask of backward-input. 3x3 kernels fit in 32 (1: no constraint).
template <int R, int S, bool MASK>
constexpr int kMinBlocks = R* S <= 9 ? 1
                           : MASK    ? 5
                                     : 6;

// y[plane] = depthwise correlation of x[plane] (H x W) with w[plane % C] (R x S), output
// P x Q, stride ST, dilation D, padding `pad` (any sign). FLIP: use w rotated by 180 degrees
// (backward-input at stride 1). RELU: read max(x, 0). MASK: zero y where `mask` (of y's
// shape) is not > 0.
template <int R, int S, int ST, int D, bool FLIP, bool RELU, bool MASK>
__global__ void __launch_bounds__(256, kMinBlocks<R, S, MASK>)
    dw_forward_kernel(const float* __restrict__ x, const float* __restrict__ w,
                      const float* __restrict__ mask, float* __restrict__ y, int planes, int C,
                      int H, int W, int P, int Q, int pad, int ih, int iw_pad) {
  extern __shared__ __align__(16) float smem[];
  constexpr int NW = ((kV - 1) * ST + (S - 1) * D + 1 + 3) / 4 * 4;
  const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int nthreads = blockDim.x * blockDim.y * blockDim.z;
  const int oh0 = blockIdx.y * blockDim.y, ow0 = blockIdx.x * blockDim.x * kV;
  const int plane0 = blockIdx.z * blockDim.z;
  const int ih0 = oh0 * ST - pad, iw0 = ow0 * ST - pad;
  for (int z = 0; z < int(blockDim.z); ++z) {
    const int pl = plane0 + z;
    if (pl >= planes) break;
    stage_tile<RELU>(x + size_t(pl) * H * W, H, W, ih0, iw0, ih, iw_pad, smem + z * ih * iw_pad,
                     tid, nthreads);
  }
  __syncthreads();
  const int plane = plane0 + threadIdx.z;
  const int oh = oh0 + threadIdx.y, ow = ow0 + threadIdx.x * kV;
  if (plane >= planes || oh >= P || ow >= Q) return;
  const int c = plane % C;
  float wr[R * S];
#pragma unroll
  for (int i = 0; i < R * S; ++i) wr[i] = __ldg(w + c * R * S + (FLIP ? R * S - 1 - i : i));
  float acc[kV] = {};
  const float* t =
      smem + threadIdx.z * ih * iw_pad + threadIdx.y * ST * iw_pad + threadIdx.x * kV * ST;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float win[NW];
    load_window<NW>(t + r * D * iw_pad, win);
#pragma unroll
    for (int s = 0; s < S; ++s)
#pragma unroll
      for (int v = 0; v < kV; ++v) acc[v] = fmaf(wr[r * S + s], win[v * ST + s * D], acc[v]);
  }
  if constexpr (MASK) mask_outputs(mask + (size_t(plane) * P + oh) * Q, ow, Q, acc);
  store_outputs(y + (size_t(plane) * P + oh) * Q, ow, Q, acc);
}

// gx[plane] (H x W) from gy[plane] (P x Q) at stride ST > 1: gx[h][w] = sum over taps (r, s)
// with (h + pad - r*D) and (w + pad - s*D) multiples of ST of w[r][s] * gy[(h+pad-r*D)/ST]
// [(w+pad-s*D)/ST]. The gy tile (zero outside) starts at row floor((h0 + pad - (R-1)*D)/ST).
// MASK: zero gx where `mask` (x, of gx's shape) is not > 0.
template <int R, int S, int ST, int D, bool MASK>
__global__ void __launch_bounds__(256)
    dw_dgrad_strided_kernel(const float* __restrict__ gy, const float* __restrict__ w,
                            const float* __restrict__ mask, float* __restrict__ gx, int planes,
                            int C, int H, int W, int P, int Q, int pad, int ih, int iw_pad) {
  extern __shared__ __align__(16) float smem[];
  const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int nthreads = blockDim.x * blockDim.y * blockDim.z;
  const int h0 = blockIdx.y * blockDim.y, w0 = blockIdx.x * blockDim.x * kV;
  const int plane0 = blockIdx.z * blockDim.z;
  const int p0 = floor_div(h0 + pad - (R - 1) * D, ST);
  const int q0 = floor_div(w0 + pad - (S - 1) * D, ST);
  for (int z = 0; z < int(blockDim.z); ++z) {
    const int pl = plane0 + z;
    if (pl >= planes) break;
    stage_tile<false>(gy + size_t(pl) * P * Q, P, Q, p0, q0, ih, iw_pad, smem + z * ih * iw_pad,
                      tid, nthreads);
  }
  __syncthreads();
  const int plane = plane0 + threadIdx.z;
  const int h = h0 + threadIdx.y, wq = w0 + threadIdx.x * kV;
  if (plane >= planes || h >= H || wq >= W) return;
  const int c = plane % C;
  float wr[R * S];
#pragma unroll
  for (int i = 0; i < R * S; ++i) wr[i] = __ldg(w + c * R * S + i);
  const float* t = smem + threadIdx.z * ih * iw_pad;
  float acc[kV] = {};
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int hr = h + pad - r * D;
    if (hr % ST != 0) continue;  // sign of hr does not matter for divisibility
    const float* row = t + (floor_div(hr, ST) - p0) * iw_pad;
#pragma unroll
    for (int v = 0; v < kV; ++v) {
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int wc = wq + v + pad - s * D;
        if (wc % ST == 0) acc[v] = fmaf(wr[r * S + s], row[floor_div(wc, ST) - q0], acc[v]);
      }
    }
  }
  if constexpr (MASK) mask_outputs(mask + (size_t(plane) * H + h) * W, wq, W, acc);
  store_outputs(gx + (size_t(plane) * H + h) * W, wq, W, acc);
}

// Partial weight gradients: for channel c = blockIdx.y, the block covers tz planes of images
// n = blockIdx.z * tz + z and one output tile; it writes sum over its outputs of
// gy[n,c,p,q] * x[n,c,p*ST-pad+r*D, q*ST-pad+s*D] for every tap to
// partial[(c * gridDim.z * gridDim.x... )]: index ((c * nblk) + blk) * R*S + tap, where
// blk = blockIdx.z * gridDim.x * gridDim_y_tiles + tile. RELU: read max(x, 0).
template <int R, int S, int ST, int D, bool RELU>
__global__ void __launch_bounds__(256)
    dw_wgrad_partial_kernel(const float* __restrict__ x, const float* __restrict__ gy,
                            float* __restrict__ partial, int N, int C, int H, int W, int P, int Q,
                            int pad, int ih, int iw_pad, int tiles_x, int tiles_y) {
  // The input tiles, then kRedRows rows of R*S sums for the block reduction (ih * iw_pad is a
  // multiple of 4). All of the block's shared memory is dynamic: a static array would count
  // against the 48 KB a launch may use without opting in, which allow_smem() (common.cuh)
  // compares the dynamic bytes alone with.
  extern __shared__ __align__(16) float smem[];
  float* red = smem + int(blockDim.z) * ih * iw_pad;  // [kRedRows][R * S]
  constexpr int NW = ((kV - 1) * ST + (S - 1) * D + 1 + 3) / 4 * 4;
  const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int nthreads = blockDim.x * blockDim.y * blockDim.z;
  const int c = blockIdx.y;
  const int tile = blockIdx.x;  // tiles_x * tiles_y tiles per plane, then image groups
  const int tile_x = tile % tiles_x, tile_y = (tile / tiles_x) % tiles_y;
  const int ngroup = tile / (tiles_x * tiles_y);
  const int oh0 = tile_y * blockDim.y, ow0 = tile_x * blockDim.x * kV;
  const int ih0 = oh0 * ST - pad, iw0 = ow0 * ST - pad;
  const int n0 = ngroup * blockDim.z;
  for (int z = 0; z < int(blockDim.z); ++z) {
    const int n = n0 + z;
    if (n >= N) break;
    stage_tile<RELU>(x + (size_t(n) * C + c) * H * W, H, W, ih0, iw0, ih, iw_pad,
                     smem + z * ih * iw_pad, tid, nthreads);
  }
  __syncthreads();
  float acc[R * S] = {};
  const int n = n0 + threadIdx.z;
  const int oh = oh0 + threadIdx.y, ow = ow0 + threadIdx.x * kV;
  if (n < N && oh < P && ow < Q) {
    const float* g = gy + ((size_t(n) * C + c) * P + oh) * Q;
    float gv[kV];
#pragma unroll
    for (int v = 0; v < kV; ++v) gv[v] = ow + v < Q ? __ldg(g + ow + v) : 0.f;
    const float* t =
        smem + threadIdx.z * ih * iw_pad + threadIdx.y * ST * iw_pad + threadIdx.x * kV * ST;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float win[NW];
      load_window<NW>(t + r * D * iw_pad, win);
#pragma unroll
      for (int s = 0; s < S; ++s)
#pragma unroll
        for (int v = 0; v < kV; ++v)
          acc[r * S + s] = fmaf(gv[v], win[v * ST + s * D], acc[r * S + s]);
    }
  }
  // Block reduction of the R*S sums: warp shuffles, then one row per warp in shared memory.
  // The block need not be a whole number of warps (tx * ty * tz follows the shape).
  const int lane = tid & 31, warp = tid >> 5, nwarps = (nthreads + 31) >> 5;
  const int lanes = min(32, nthreads - warp * 32);
#pragma unroll
  for (int i = 0; i < R * S; ++i) {
    const float s = warp_sum_lane0(acc[i], lanes);
    if (lane == 0) red[warp * (R * S) + i] = s;
  }
  __syncthreads();
  // A small block (a 2 x 4 x 3 tile is 24 threads) can have fewer threads than taps (25).
  for (int i = tid; i < R * S; i += nthreads) {
    float s = 0.f;
    for (int k = 0; k < nwarps; ++k) s += red[k * (R * S) + i];
    partial[(size_t(c) * gridDim.x + blockIdx.x) * (R * S) + i] = s;
  }
}

// out[i] = sum over b < batches of partial[b * n + i], in b order (deterministic).
__global__ void sum_batches_kernel(const float* __restrict__ partial, int batches, int64_t n,
                                   float* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int b = 0; b < batches; ++b) s += partial[b * n + i];
    out[i] = s;
  }
}

// g[i] = 0 where x[i] is not > 0 (the ReLU's backward after a cuBLAS backward-input).
__global__ void relu_mask_kernel(const float* __restrict__ x, float* __restrict__ g, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    if (!(__ldg(x + i) > 0.f)) g[i] = 0.f;
}

// gw[c][tap] = sum over blocks of partial[c][block][tap], in block order.
__global__ void sum_blocks_kernel(const float* __restrict__ partial, int C, int blocks, int RS,
                                  float* __restrict__ gw) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= C * RS) return;
  const int c = i / RS, tap = i - c * RS;
  float s = 0.f;
  for (int b = 0; b < blocks; ++b) s += partial[(size_t(c) * blocks + b) * RS + tap];
  gw[i] = s;
}

// ---- direct kernels for every other shape ---------------------------------------------------
struct DConv {
  int N, C, H, W, K, R, S, st, pad, dil, G, P, Q;
  bool relu;  // ConvShape::relu_x
};
DConv dconv(const ConvShape& p) {
  return DConv{int(p.N),      int(p.C),   int(p.H),   int(p.W),      int(p.K), int(p.R), int(p.S),
               int(p.stride), int(p.pad), int(p.dil), int(p.groups), int(p.P), int(p.Q), p.relu_x};
}

__global__ void direct_forward_kernel(DConv d, const float* __restrict__ x,
                                      const float* __restrict__ w, float* __restrict__ y,
                                      int64_t total) {
  const int Cg = d.C / d.G, Kg = d.K / d.G;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int q = int(i % d.Q), p = int((i / d.Q) % d.P), k = int((i / (d.Q * d.P)) % d.K);
    const int n = int(i / (int64_t(d.Q) * d.P * d.K));
    const int g = k / Kg;
    float acc = 0.f;
    for (int cc = 0; cc < Cg; ++cc) {
      const float* xp = x + (size_t(n) * d.C + g * Cg + cc) * d.H * d.W;
      const float* wp = w + (size_t(k) * Cg + cc) * d.R * d.S;
      for (int r = 0; r < d.R; ++r) {
        const int h = p * d.st - d.pad + r * d.dil;
        if (h < 0 || h >= d.H) continue;
        for (int s = 0; s < d.S; ++s) {
          const int ww = q * d.st - d.pad + s * d.dil;
          if (ww >= 0 && ww < d.W) {
            const float xv = __ldg(xp + h * d.W + ww);
            acc = fmaf(__ldg(wp + r * d.S + s), d.relu ? relu(xv) : xv, acc);
          }
        }
      }
    }
    y[i] = acc;
  }
}

// d.relu: gx is zeroed where x (the forward's input) is not > 0.
__global__ void direct_dgrad_kernel(DConv d, const float* __restrict__ gy,
                                    const float* __restrict__ w, const float* __restrict__ x,
                                    float* __restrict__ gx, int64_t total) {
  const int Cg = d.C / d.G, Kg = d.K / d.G;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int ww = int(i % d.W), h = int((i / d.W) % d.H), c = int((i / (d.W * d.H)) % d.C);
    const int n = int(i / (int64_t(d.W) * d.H * d.C));
    const int g = c / Cg, cc = c - g * Cg;
    float acc = 0.f;
    for (int r = 0; r < d.R; ++r) {
      const int hp = h + d.pad - r * d.dil;
      if (hp < 0 || hp % d.st != 0 || hp / d.st >= d.P) continue;
      const int p = hp / d.st;
      for (int s = 0; s < d.S; ++s) {
        const int wq = ww + d.pad - s * d.dil;
        if (wq < 0 || wq % d.st != 0 || wq / d.st >= d.Q) continue;
        const int q = wq / d.st;
        for (int kk = 0; kk < Kg; ++kk) {
          const int k = g * Kg + kk;
          acc = fmaf(__ldg(w + ((size_t(k) * Cg + cc) * d.R + r) * d.S + s),
                     __ldg(gy + ((size_t(n) * d.K + k) * d.P + p) * d.Q + q), acc);
        }
      }
    }
    gx[i] = d.relu && !(__ldg(x + i) > 0.f) ? 0.f : acc;
  }
}

// One block per weight element (k, cc, r, s), reducing over n, p, q.
__global__ void direct_wgrad_kernel(DConv d, const float* __restrict__ x,
                                    const float* __restrict__ gy, float* __restrict__ gw) {
  __shared__ float smem[32];
  const int Cg = d.C / d.G, Kg = d.K / d.G;
  const int i = blockIdx.x;
  const int s = i % d.S, r = (i / d.S) % d.R, cc = (i / (d.S * d.R)) % Cg, k = i / (d.S * d.R * Cg);
  const int c = (k / Kg) * Cg + cc;
  const int PQ = d.P * d.Q;
  float acc = 0.f;
  for (int64_t j = threadIdx.x; j < int64_t(d.N) * PQ; j += blockDim.x) {
    const int n = int(j / PQ), pq = int(j % PQ), p = pq / d.Q, q = pq - p * d.Q;
    const int h = p * d.st - d.pad + r * d.dil, ww = q * d.st - d.pad + s * d.dil;
    if (h < 0 || h >= d.H || ww < 0 || ww >= d.W) continue;
    const float xv = __ldg(x + ((size_t(n) * d.C + c) * d.H + h) * d.W + ww);
    acc = fmaf(__ldg(gy + (size_t(n) * d.K + k) * PQ + pq), d.relu ? relu(xv) : xv, acc);
  }
  acc = block_sum(acc, smem);
  if (threadIdx.x == 0) gw[i] = acc;
}

// ---- path selection -------------------------------------------------------------------------
bool fits_int32(const ConvShape& p) {
  const int64_t lim = int64_t(1) << 31;
  return p.N * p.C * p.H * p.W < lim && p.N * p.K * p.P * p.Q < lim;
}
bool is_depthwise(const ConvShape& p) {
  return p.groups == p.C && p.K == p.C;
}
bool is_tiled_depthwise(const ConvShape& p) {
  return is_depthwise(p) && p.R == p.S && (p.R == 3 || p.R == 5) &&
         (p.stride == 1 || p.stride == 2) && (p.dil == 1 || p.dil == 2) && fits_int32(p);
}
bool is_pointwise(const ConvShape& p) {
  return p.R == 1 && p.S == 1 && p.stride == 1 && p.pad == 0 && p.groups == 1;
}

// Calls f.template operator()<R, ST, D>() for the run-time (R, stride, dilation) of a tiled
// depthwise shape.
template <class F>
void by_dw_shape(const ConvShape& p, F&& f) {
  const int key = int(p.R) * 100 + int(p.stride) * 10 + int(p.dil);
  switch (key) {
    case 311:
      return f.template operator()<3, 1, 1>();
    case 312:
      return f.template operator()<3, 1, 2>();
    case 321:
      return f.template operator()<3, 2, 1>();
    case 322:
      return f.template operator()<3, 2, 2>();
    case 511:
      return f.template operator()<5, 1, 1>();
    case 512:
      return f.template operator()<5, 1, 2>();
    case 521:
      return f.template operator()<5, 2, 1>();
    case 522:
      return f.template operator()<5, 2, 2>();
  }
  TNAS_CHECK(false, "conv2d (cuda): no tiled depthwise kernel for R=", p.R, " stride=", p.stride,
             " dilation=", p.dil);
}

// Calls f.template operator()<b>() for a run-time flag.
template <class F>
void by_flag(bool b, F&& f) {
  if (b)
    f.template operator()<true>();
  else
    f.template operator()<false>();
}

// Calls f(first, count) for consecutive runs of `items` that each fit one launch whose grid
// has one entry per `per_block` units along an axis limited to `limit` entries, `unit` units to
// an item (images of C planes; channels). Every run but the last has the same count.
template <class F>
void in_grid_chunks(int64_t items, int64_t unit, int per_block, unsigned limit, const char* what,
                    F&& f) {
  const int64_t per_launch = int64_t(limit) * per_block / unit;
  TNAS_CHECK(per_launch >= 1, "conv2d (cuda): ", what, " does not fit the grid (", unit,
             " units at ", per_block, " per block, at most ", limit, " blocks)");
  for (int64_t first = 0; first < items; first += per_launch)
    f(first, std::min(per_launch, items - first));
}

// The tiled depthwise kernels take N*C planes along grid z, t.tz to a block: calls
// f(first image, planes, gridDim.z) for runs of whole images (so plane % C stays the channel)
// that fit the device's z limit (65535 blocks: 256 images of 288 channels at 32x32 need more).
template <class F>
void by_images(const ConvShape& p, const Tiling& t, F&& f) {
  in_grid_chunks(p.N, p.C, t.tz, max_grid(2), "a depthwise image's planes",
                 [&](int64_t n0, int64_t images) {
                   const int planes = int(images * p.C);
                   f(n0, planes, unsigned((planes + t.tz - 1) / t.tz));
                 });
}

// Row-major strided-batched C_b = alpha op(A_b) op(B_b) + beta C_b through column-major cuBLAS
// (a row-major matrix is its transpose in column-major: C^T = op(B)^T op(A)^T).
void gemm_batched(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta,
                  float* C, int64_t ldc, int64_t sc, int64_t batch) {
  TNAS_CUBLAS_CHECK(cublasSgemmStridedBatched(
      cublas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M),
      int(K), &alpha, B, int(ldb), sb, A, int(lda), sa, &beta, C, int(ldc), sc, int(batch)));
}

}  // namespace

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  TNAS_CUBLAS_CHECK(cublasSgemm(cublas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M), int(K), &alpha, B,
                                int(ldb), A, int(lda), &beta, C, int(ldc)));
}

// A ReLU'd copy of x [N, C, H, W] in scratch memory (the cuBLAS and cuDNN paths with relu_x),
// or x.
class ReluCopy {
 public:
  ReluCopy(const ConvShape& p, const float* x) : x_(x) {
    const int64_t n = p.N * p.C * p.H * p.W;
    if (!p.relu_x || n == 0) return;
    bytes_ = size_t(n) * sizeof(float);
    copy_ = static_cast<float*>(scratch_alloc(bytes_));
    unary(backend::UnaryOp::relu, DType::f32, x, copy_, n, 0.0);
  }
  ~ReluCopy() {
    if (copy_) scratch_free(copy_, bytes_);  // stream-ordered: the GEMM enqueued before is safe
  }
  ReluCopy(const ReluCopy&) = delete;
  ReluCopy& operator=(const ReluCopy&) = delete;
  const float* get() const { return copy_ ? copy_ : x_; }

 private:
  const float* x_;
  float* copy_ = nullptr;
  size_t bytes_ = 0;
};

// Whether tnas has a kernel written for p's shape (ConvEngine::automatic keeps these).
bool native_kernel_for(const ConvShape& p) {
  return is_tiled_depthwise(p) || is_pointwise(p);
}

void conv2d_forward(const ConvShape& p, const float* x, const float* w, float* y) {
  if (p.N * p.K * p.P * p.Q == 0) return;  // no output (a zero-sized grid is no launch)
  if (const CudnnPlan* cp = cudnn_plan(p, native_kernel_for(p))) {
    const ReluCopy xin(p, x);
    cudnn_conv2d_forward(*cp, xin.get(), w, y);
  } else if (is_tiled_depthwise(p)) {
    by_dw_shape(p, [&]<int R, int ST, int D>() {
      by_flag(p.relu_x, [&]<bool RELU>() {
        const Tiling t = make_tiling(int(p.P), int(p.Q), int(p.N * p.C), R, R, ST, D);
        constexpr auto k = dw_forward_kernel<R, R, ST, D, false, RELU, false>;
        allow_smem<k>(t.smem_bytes, "conv2d");
        by_images(p, t, [&](int64_t n0, int planes, unsigned gz) {
          k<<<dim3(t.gx, t.gy, gz), dim3(t.tx, t.ty, t.tz), t.smem_bytes, stream()>>>(
              x + n0 * p.C * p.H * p.W, w, nullptr, y + n0 * p.C * p.P * p.Q, planes, int(p.C),
              int(p.H), int(p.W), int(p.P), int(p.Q), int(p.pad), t.ih, t.iw_pad);
          TNAS_CUDA_LAUNCHED();
        });
      });
    });
  } else if (is_pointwise(p)) {
    // y[n] (K x HW) = W (K x C) x[n] (C x HW)
    const int64_t HW = p.H * p.W;
    const ReluCopy xin(p, x);
    gemm_batched(false, false, p.K, HW, p.C, 1.f, w, p.C, 0, xin.get(), HW, p.C * HW, 0.f, y, HW,
                 p.K * HW, p.N);
  } else {
    const int64_t total = p.N * p.K * p.P * p.Q;
    direct_forward_kernel<<<blocks_for(total, 256), 256, 0, stream()>>>(dconv(p), x, w, y, total);
  }
  TNAS_CUDA_LAUNCHED();
}

void conv2d_backward_input(const ConvShape& p, const float* gy, const float* w, const float* x,
                           float* gx) {
  TNAS_CHECK(!p.relu_x || x, "conv2d backward-input (cuda): relu_x needs the forward's input");
  if (p.N * p.C * p.H * p.W == 0) return;
  if (p.K * p.P * p.Q == 0) {  // nothing flows back: a zero gradient
    TNAS_CUDA_CHECK(
        cudaMemsetAsync(gx, 0, size_t(p.N * p.C * p.H * p.W) * sizeof(float), stream()));
    return;
  }
  if (const CudnnPlan* cp = cudnn_plan(p, native_kernel_for(p))) {
    cudnn_conv2d_backward_input(*cp, gy, w, gx);
    if (p.relu_x) {
      const int64_t n = p.N * p.C * p.H * p.W;
      relu_mask_kernel<<<blocks_for(n, 256), 256, 0, stream()>>>(x, gx, n);
    }
  } else if (is_tiled_depthwise(p)) {
    by_dw_shape(p, [&]<int R, int ST, int D>() {
      by_flag(p.relu_x, [&]<bool MASK>() {
        const int planes = int(p.N * p.C);
        if constexpr (ST == 1) {
          // A correlation of gy (P x Q) with the flipped kernel, padding (R-1)*D - pad.
          const int pad2 = (R - 1) * D - int(p.pad);
          const Tiling t = make_tiling(int(p.H), int(p.W), planes, R, R, 1, D);
          constexpr auto k = dw_forward_kernel<R, R, 1, D, true, false, MASK>;
          allow_smem<k>(t.smem_bytes, "conv2d backward-input");
          by_images(p, t, [&](int64_t n0, int chunk, unsigned gz) {
            const int64_t in = n0 * p.C * p.H * p.W;
            k<<<dim3(t.gx, t.gy, gz), dim3(t.tx, t.ty, t.tz), t.smem_bytes, stream()>>>(
                gy + n0 * p.C * p.P * p.Q, w, x ? x + in : nullptr, gx + in, chunk, int(p.C),
                int(p.P), int(p.Q), int(p.H), int(p.W), pad2, t.ih, t.iw_pad);
            TNAS_CUDA_LAUNCHED();
          });
        } else {
          Tiling t = make_tiling(int(p.H), int(p.W), planes, R, R, 1, D);
          // gy rows / columns a tile of ty x (tx*kV) inputs needs: ceil spans over the stride.
          t.ih = (t.ty - 1 + (R - 1) * D) / ST + 2;
          t.iw = (t.tx * kV - 1 + (R - 1) * D) / ST + 2;
          t.iw_pad = (t.iw + 3) / 4 * 4;
          t.smem_bytes = size_t(t.tz) * t.ih * t.iw_pad * sizeof(float);
          constexpr auto k = dw_dgrad_strided_kernel<R, R, ST, D, MASK>;
          allow_smem<k>(t.smem_bytes, "conv2d backward-input");
          by_images(p, t, [&](int64_t n0, int chunk, unsigned gz) {
            const int64_t in = n0 * p.C * p.H * p.W;
            k<<<dim3(t.gx, t.gy, gz), dim3(t.tx, t.ty, t.tz), t.smem_bytes, stream()>>>(
                gy + n0 * p.C * p.P * p.Q, w, x ? x + in : nullptr, gx + in, chunk, int(p.C),
                int(p.H), int(p.W), int(p.P), int(p.Q), int(p.pad), t.ih, t.iw_pad);
            TNAS_CUDA_LAUNCHED();
          });
        }
      });
    });
  } else if (is_pointwise(p)) {
    // gx[n] (C x HW) = W^T (C x K) gy[n] (K x HW), then the ReLU's mask
    const int64_t HW = p.H * p.W;
    gemm_batched(true, false, p.C, HW, p.K, 1.f, w, p.C, 0, gy, HW, p.K * HW, 0.f, gx, HW, p.C * HW,
                 p.N);
    if (p.relu_x) {
      const int64_t n = p.N * p.C * HW;
      relu_mask_kernel<<<blocks_for(n, 256), 256, 0, stream()>>>(x, gx, n);
    }
  } else {
    const int64_t total = p.N * p.C * p.H * p.W;
    direct_dgrad_kernel<<<blocks_for(total, 256), 256, 0, stream()>>>(dconv(p), gy, w, x, gx,
                                                                      total);
  }
  TNAS_CUDA_LAUNCHED();
}

void conv2d_backward_weight(const ConvShape& p, const float* x, const float* gy, float* gw) {
  const int64_t nw = p.K * (p.C / p.groups) * p.R * p.S;
  if (nw == 0) return;
  if (p.N * p.P * p.Q == 0) {  // no outputs to take a gradient from: zero
    TNAS_CUDA_CHECK(cudaMemsetAsync(gw, 0, size_t(nw) * sizeof(float), stream()));
    return;
  }
  if (const CudnnPlan* cp = cudnn_plan(p, native_kernel_for(p))) {
    const ReluCopy xin(p, x);
    cudnn_conv2d_backward_weight(*cp, xin.get(), gy, gw);
  } else if (is_tiled_depthwise(p)) {
    by_dw_shape(p, [&]<int R, int ST, int D>() {
      by_flag(p.relu_x, [&]<bool RELU>() {
        const Tiling t = make_tiling(int(p.P), int(p.Q), int(p.N), R, R, ST, D);
        const int tiles = int(t.gx * t.gy), blocks = tiles * int(t.gz);
        const size_t pbytes = size_t(p.C) * blocks * R * R * sizeof(float);
        float* partial = static_cast<float*>(scratch_alloc(pbytes));
        constexpr auto k = dw_wgrad_partial_kernel<R, R, ST, D, RELU>;
        const size_t smem = t.smem_bytes + size_t(kRedRows) * R * R * sizeof(float);
        allow_smem<k>(smem, "conv2d backward-weight");
        // One grid row per channel, in launches of at most max_grid(1) channels.
        in_grid_chunks(p.C, 1, 1, max_grid(1), "the depthwise weight gradient's channels",
                       [&](int64_t c0, int64_t nc) {
                         k<<<dim3(unsigned(blocks), unsigned(nc), 1), dim3(t.tx, t.ty, t.tz), smem,
                             stream()>>>(x + c0 * p.H * p.W, gy + c0 * p.P * p.Q,
                                         partial + c0 * blocks * R * R, int(p.N), int(p.C),
                                         int(p.H), int(p.W), int(p.P), int(p.Q), int(p.pad), t.ih,
                                         t.iw_pad, int(t.gx), int(t.gy));
                         TNAS_CUDA_LAUNCHED();
                       });
        const int outs = int(p.C) * R * R;
        sum_blocks_kernel<<<blocks_for(outs, 128), 128, 0, stream()>>>(partial, int(p.C), blocks,
                                                                       R * R, gw);
        scratch_free(partial, pbytes);
      });
    });
  } else if (is_pointwise(p)) {
    // gw (K x C) = sum_n gy[n] (K x HW) x[n]^T (HW x C): one strided-batched GEMM into
    // per-image partials, summed over the images in a fixed order (two launches for any N,
    // where a GEMM per image accumulating into gw costs N launches).
    const int64_t HW = p.H * p.W, KC = p.K * p.C;
    const ReluCopy xin(p, x);
    if (p.N == 1) {
      gemm(false, true, p.K, p.C, HW, 1.f, gy, HW, xin.get(), HW, 0.f, gw, p.C);
    } else {
      const size_t pbytes = size_t(p.N * KC) * sizeof(float);
      float* partial = static_cast<float*>(scratch_alloc(pbytes));
      gemm_batched(false, true, p.K, p.C, HW, 1.f, gy, HW, p.K * HW, xin.get(), HW, p.C * HW, 0.f,
                   partial, p.C, KC, p.N);
      sum_batches_kernel<<<blocks_for(KC, 256), 256, 0, stream()>>>(partial, int(p.N), KC, gw);
      scratch_free(partial, pbytes);
    }
  } else {
    direct_wgrad_kernel<<<unsigned(nw), 256, 0, stream()>>>(dconv(p), x, gy, gw);
  }
  TNAS_CUDA_LAUNCHED();
}

}  // namespace tnas::cuda::detail
