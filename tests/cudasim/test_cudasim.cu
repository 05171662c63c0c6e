// Tests of the simulator itself (tests/cudasim): that kernels written in CUDA C++ see the
// thread hierarchy, shared memory, barriers and warp operations a GPU gives them, and that
// what a GPU refuses or leaves undefined is reported. Translated by translate.cmake and built
// for the host like cuda/*.cu.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "profile.hpp"
#include "tnas/core/error.hpp"

namespace {

template <class T>
T* dev_alloc(size_t n) {
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess);
  return static_cast<T*>(p);
}
template <class T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  REQUIRE(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}
// Whether f throws a tnas::Error whose message has every one of `parts`.
template <class... Parts>
bool throws_with(const std::function<void()>& f, const Parts&... parts) {
  try {
    f();
  } catch (const tnas::Error& e) {
    const std::string m = e.what();
    for (const std::string& part : {std::string(parts)...})
      if (m.find(part) == std::string::npos) {
        std::fprintf(stderr, "error message '%s' lacks '%s'\n", m.c_str(), part.c_str());
        return false;
      }
    return true;
  }
  return false;
}

__global__ void index_kernel(int* out) {
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int nt = blockDim.x * blockDim.y * blockDim.z;
  out[b * nt + t] = b * 1000 + t;
}

template <bool SYNC>
__global__ void reverse_kernel(const float* in, float* out) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * 64 + t];
  if (SYNC) __syncthreads();
  out[blockIdx.x * 64 + t] = s[63 - t];
}

__global__ void read_shared_first_kernel(float* out) {
  __shared__ float s[4];
  out[blockIdx.x * 4 + threadIdx.x] = s[threadIdx.x];  // never written in this block
  __syncthreads();
  s[threadIdx.x] = 1.f;
}

__global__ void shuffle_kernel(int* sum_xor, int* sum_down, unsigned* ballot) {
  const int lane = threadIdx.x & 31;
  int v = lane, d = lane;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
  sum_xor[threadIdx.x] = v;
  sum_down[threadIdx.x] = d;
  ballot[threadIdx.x] = __ballot_sync(0xffffffffu, lane % 3 == 0);
}

__global__ void full_mask_kernel(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}
__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}
__global__ void deadlock_kernel(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    __syncthreads();
  out[threadIdx.x] = v;
}
__global__ void smem_kernel(float* out) {
  extern __shared__ __align__(16) float dyn[];
  dyn[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = dyn[blockDim.x - 1 - threadIdx.x];
}
__global__ void static_and_dynamic_kernel(float* out) {
  extern __shared__ __align__(16) float dyn2[];
  __shared__ float fixed[256];
  fixed[threadIdx.x] = 1.f;
  dyn2[threadIdx.x] = 2.f;
  __syncthreads();
  out[threadIdx.x] = fixed[255 - threadIdx.x] + dyn2[threadIdx.x];
}
__global__ void misaligned_cp_async_kernel(const float* src) {
  extern __shared__ __align__(16) unsigned char buf2[];
  cudasim::cp_async16(uint32_t(__cvta_generic_to_shared(buf2)), src + 1, 12);
  cudasim::cp_async_commit();
  cudasim::cp_async_wait(0);
}
__global__ void __launch_bounds__(64) bounded_kernel(float* p) {
  p[threadIdx.x] = 1.f;
}
__global__ void touch_kernel(float* p) {  // (grids of one block, or of 1 x 1 x up to 4)
  p[blockIdx.z * blockDim.x + threadIdx.x] = 1.f;
}

// The race checker's cases (each a block of 64 threads, two warps, over s[64]; block b writes
// out[64 b + t], and the cp.async cases copy from out[128, 132)).
enum class Race {
  raw,           // thread t writes s[t] and reads s[t - 1]: read-after-write
  waw,           // every thread writes s[0]
  warp_unsync,   // lanes write s[lane], then read s[lane ^ 1], with no warp operation between
  warp_shfl,     // the same, with a shuffle between: ordered within the warp
  warp_sync,     // the same, with __syncwarp between
  cross_warp,    // warp 1 reads what warp 0 wrote, with only a (warp 0) shuffle between
  atomics,       // every thread atomicAdds to s[0]; a barrier; every thread reads it
  atomic_read,   // the same without the barrier: a plain read of what other threads update
  barrier,       // thread t writes s[t], a barrier, reads s[63 - t]
  cp_async,      // thread 0's cp.async lands in s[0..3]; thread 1 reads s[0] (no barrier)
  cp_async_bar,  // the same with a barrier between
  ldmatrix,      // warp 0 ldmatrix-reads s[0, 128); thread 32 writes s[0] (no barrier)
  partial_warp,  // (48 threads) warp 1's 16 lanes read s[0], shuffle, then lane 0 writes it
  blocks         // device memory: both blocks write out[t]
};
template <Race R>
__global__ void race_kernel(float* out) {
  extern __shared__ __align__(16) float s[];
  const int t = threadIdx.x, lane = t & 31;
  float v = 0.f;
  if (R == Race::raw) {
    s[t] = float(t);
    v = s[t > 0 ? t - 1 : 0];
  } else if (R == Race::waw) {
    s[0] = float(t);
  } else if (R == Race::warp_unsync || R == Race::warp_shfl || R == Race::warp_sync) {
    s[t] = float(t);
    if (R == Race::warp_shfl) v = float(__shfl_xor_sync(0xffffffffu, t, 1));
    if (R == Race::warp_sync) __syncwarp();
    v += s[(t & ~31) | (lane ^ 1)];
  } else if (R == Race::cross_warp) {
    if (t == 0) s[0] = 1.f;
    if (t < 32) v = float(__shfl_xor_sync(0xffffffffu, t, 1));
    if (t == 32) v += s[0];
  } else if (R == Race::atomics || R == Race::atomic_read) {
    if (t == 0) s[0] = 0.f;
    __syncthreads();
    atomicAdd(&s[0], 1.f);
    if (R == Race::atomics) __syncthreads();
    v = s[0];
  } else if (R == Race::barrier) {
    s[t] = float(t);
    __syncthreads();
    v = s[63 - t];
  } else if (R == Race::blocks) {
    v = 1.f;
  } else if (R == Race::partial_warp) {
    if (t == 0) s[0] = 1.f;
    __syncthreads();
    if (t >= 32) {
      v = s[0];
      v += __shfl_xor_sync(0xffffu, v, 1);
      if (t == 32) s[0] = 2.f;
    }
  } else if (R == Race::ldmatrix) {
    s[t] = 0.f;
    __syncthreads();
    if (t < 32) {
      uint32_t r[4];
      cudasim::ldmatrix_x4(uint32_t(__cvta_generic_to_shared(s)) + 16 * (t & 7), r[0], r[1], r[2],
                           r[3]);
      v = float(r[0]);
    }
    if (t == 32) s[0] = 1.f;
  } else {
    if (t == 0) {
      cudasim::cp_async16(uint32_t(__cvta_generic_to_shared(s)), out + 128, 16);
      cudasim::cp_async_commit();
      cudasim::cp_async_wait(0);
    }
    if (R == Race::cp_async_bar) __syncthreads();
    if (t == 1) v = s[0];
  }
  out[(R == Race::blocks ? 0 : 64 * blockIdx.x) + t] = v;
}

// What the race-checking build also finds, as compute-sanitizer's memcheck would on a GPU
// (thread 0 only; p holds 62 floats, the dynamic shared memory 64).
enum class Bad { past_end, straddle, misaligned, shared_past_end };
__global__ void float4_kernel(const float* p, float* out) {  // any build
  *reinterpret_cast<float4*>(out) = *reinterpret_cast<const float4*>(p + 1);
}
constexpr int float4_line = __LINE__ - 2;
template <Bad B>
__global__ void bad_kernel(const float* p, float* out) {
  extern __shared__ __align__(16) float sm[];
  if (threadIdx.x != 0) return;
  if (B == Bad::past_end) out[0] = p[62];
  if (B == Bad::straddle)  // an aligned float4 whose last 8 bytes are past the end
    *reinterpret_cast<float4*>(out) = *reinterpret_cast<const float4*>(p + 60);
  // 8 bytes at a 4-byte boundary
  if (B == Bad::misaligned) out[0] = float(*reinterpret_cast<const long long*>(p + 1));
  if (B == Bad::shared_past_end) sm[64] = 1.f;
}

// cp.async: a copy lands at the wait that covers its group, not before.
__global__ void cp_async_kernel(const float* src, float* before, float* after) {
  extern __shared__ __align__(16) unsigned char buf[];
  const uint32_t a = uint32_t(__cvta_generic_to_shared(buf));
  cudasim::cp_async16(a, src, 16);
  cudasim::cp_async_commit();
  cudasim::cp_async16(a + 16, src + 4, 8);  // 8 bytes, then 8 zero bytes
  cudasim::cp_async_commit();
  const float* f = reinterpret_cast<const float*>(buf);
  before[0] = f[0];
  cudasim::cp_async_wait(1);  // the first group only
  after[0] = f[0];
  after[1] = f[4];
  cudasim::cp_async_wait(0);
  for (int i = 0; i < 4; ++i) after[2 + i] = f[4 + i];
}

// A 16 x 256-bit A and an 8 x 256-bit B (rows of 32 bytes in shared memory, as the XNOR
// kernel stages them), loaded with ldmatrix.x4 and multiplied with mma.b1 (AND + popc).
__global__ void mma_kernel(const uint32_t* A, const uint32_t* B, const int* C, int* D,
                           uint32_t* frag) {
  extern __shared__ __align__(16) unsigned char sm[];
  const int lane = threadIdx.x;
  uint32_t* s = reinterpret_cast<uint32_t*>(sm);
  for (int i = lane; i < 16 * 8; i += 32) s[i] = A[i];
  for (int i = lane; i < 8 * 8; i += 32) s[128 + i] = B[i];
  __syncthreads();
  const uint32_t base = uint32_t(__cvta_generic_to_shared(sm));
  // A: matrices (rows 0-7 | 8-15) x (bytes 0-15 | 16-31) in the order a0..a3
  const int arow = (lane & 7) + ((lane >> 3) & 1) * 8, achunk = lane >> 4;
  uint32_t a[4];
  cudasim::ldmatrix_x4(base + arow * 32 + achunk * 16, a[0], a[1], a[2], a[3]);
  // B (rows are the 8 columns n): (bytes 0-15, bytes 16-31) twice; b0, b1 from the first two
  const int brow = lane & 7, bchunk = (lane >> 3) & 1;
  uint32_t b[4];
  cudasim::ldmatrix_x4(base + 512 + brow * 32 + bchunk * 16, b[0], b[1], b[2], b[3]);
  int c[4];
  const int g = lane >> 2, t = lane & 3;
  c[0] = C[g * 8 + 2 * t], c[1] = C[g * 8 + 2 * t + 1];
  c[2] = C[(g + 8) * 8 + 2 * t], c[3] = C[(g + 8) * 8 + 2 * t + 1];
  cudasim::mma_b1_and_popc(c, a, b[0], b[1]);
  D[g * 8 + 2 * t] = c[0], D[g * 8 + 2 * t + 1] = c[1];
  D[(g + 8) * 8 + 2 * t] = c[2], D[(g + 8) * 8 + 2 * t + 1] = c[3];
  for (int i = 0; i < 4; ++i) frag[lane * 4 + i] = a[i];
}

__global__ void add_one_kernel(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] + 1.f;
}

}  // namespace

TEST_CASE("cudasim: thread and block indices cover the grid") {
  const dim3 grid(2, 1, 3), block(2, 3, 4);
  int* d = dev_alloc<int>(6 * 24);
  index_kernel<<<grid, block>>>(d);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  const auto h = to_host(d, 6 * 24);
  for (int b = 0; b < 6; ++b)
    for (int t = 0; t < 24; ++t) CHECK(h[size_t(b * 24 + t)] == b * 1000 + t);
  cudaFree(d);
}

TEST_CASE("cudasim: shared memory, barriers, and memory that nobody wrote") {
  float* in = dev_alloc<float>(128);
  float* out = dev_alloc<float>(128);
  std::vector<float> h(128);
  for (int i = 0; i < 128; ++i) h[size_t(i)] = float(i);
  cudaMemcpy(in, h.data(), 128 * sizeof(float), cudaMemcpyHostToDevice);
  reverse_kernel<true><<<2, 64>>>(in, out);
  auto r = to_host(out, 128);
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 64; ++t) CHECK(r[size_t(b * 64 + t)] == float(b * 64 + 63 - t));
  // Without the barrier, the first threads read slots later threads have not written yet:
  // NaN, since shared memory starts every block as NaN bytes (and the race checker, where it
  // is built, reports the hazard).
  if (cudasim::racecheck_enabled()) {
    CHECK(throws_with([&] { reverse_kernel<false><<<2, 64>>>(in, out); }, "write-after-read"));
  } else {
    reverse_kernel<false><<<2, 64>>>(in, out);
    r = to_host(out, 128);
    CHECK(std::isnan(r[0]));
    CHECK(std::isnan(r[64]));
  }
  // ... also in a later block, after an earlier block wrote the same array.
  read_shared_first_kernel<<<3, 4>>>(out);
  r = to_host(out, 12);
  for (float v : r) CHECK(std::isnan(v));
  // fresh device memory is NaN too
  float* fresh = dev_alloc<float>(4);
  for (float v : to_host(fresh, 4)) CHECK(std::isnan(v));
  cudaFree(in), cudaFree(out), cudaFree(fresh);
}

TEST_CASE("cudasim: warp shuffles and ballots") {
  int* sx = dev_alloc<int>(64);
  int* sd = dev_alloc<int>(64);
  unsigned* bal = dev_alloc<unsigned>(64);
  shuffle_kernel<<<1, 64>>>(sx, sd, bal);
  const auto hx = to_host(sx, 64), hd = to_host(sd, 64);
  const auto hb = to_host(bal, 64);
  unsigned want = 0;
  for (int l = 0; l < 32; l += 3) want |= 1u << l;
  for (int i = 0; i < 64; ++i) {
    CHECK(hx[size_t(i)] == 496);  // 0 + 1 + ... + 31, in every lane
    CHECK(hb[size_t(i)] == want);
  }
  CHECK(hd[0] == 496);  // shfl_down: lane 0 has the total
  CHECK(hd[32] == 496);
  CHECK(hd[31] == 31 * 32);  // lane + o >= 32: the lane's own value, added five times
  cudaFree(sx), cudaFree(sd), cudaFree(bal);
}

TEST_CASE("cudasim: what a GPU leaves undefined or refuses is reported") {
  int* d = dev_alloc<int>(64);
  // a full-mask shuffle in a block of 48 threads names 16 lanes that do not exist
  CHECK(throws_with([&] { full_mask_kernel<<<1, 48>>>(d); }, "do not exist"));
  CHECK(throws_with([&] { exited_lane_kernel<<<1, 32>>>(d); }, "exited"));
  CHECK(throws_with([&] { deadlock_kernel<<<1, 32>>>(d); }, "deadlock"));
  // a host pointer as a kernel argument
  std::vector<int> host(64);
  CHECK(throws_with([&] { full_mask_kernel<<<1, 32>>>(host.data()); }, "not device memory"));
  // a copy whose kind does not match its pointers
  CHECK(throws_with([&] { cudaMemcpy(d, host.data(), 4, cudaMemcpyDeviceToHost); }, "cudaMemcpy"));
  cudaFree(d);
}

TEST_CASE("cudasim: launch limits") {
  float* d = dev_alloc<float>(2048);
  (void)cudaGetLastError();
  touch_kernel<<<1, 1025>>>(d);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  touch_kernel<<<1, dim3(1, 1, 65)>>>(d);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  touch_kernel<<<dim3(1, 65536), 1>>>(d);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  touch_kernel<<<1, 1024>>>(d);
  CHECK(cudaGetLastError() == cudaSuccess);
  // dynamic shared memory above 48 KiB needs the function's opt-in, at most 227 KiB
  const int big = 64 << 10;
  smem_kernel<<<1, 256, big>>>(d);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK(cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, big) ==
        cudaSuccess);
  smem_kernel<<<1, 256, big>>>(d);
  CHECK(cudaGetLastError() == cudaSuccess);
  const auto h = to_host(d, 256);
  CHECK(h[0] == 255.f);
  CHECK(h[255] == 0.f);
  CHECK(cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             232448 + 1) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  // static shared arrays count with the dynamic bytes: 1 KiB + 47 KiB fits, 4 bytes more
  // do not without the opt-in
  static_and_dynamic_kernel<<<1, 256, 47 << 10>>>(d);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(to_host(d, 256)[7] == 3.f);
  CHECK(throws_with([&] { static_and_dynamic_kernel<<<1, 256, (47 << 10) + 4>>>(d); },
                    "without opting in"));
  CHECK(cudaFuncSetAttribute(static_and_dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             64 << 10) == cudaSuccess);
  static_and_dynamic_kernel<<<1, 256, (47 << 10) + 4>>>(d);
  CHECK(cudaGetLastError() == cudaSuccess);
  // the grid's y and z limit, lowered by CUDASIM_MAX_GRID_YZ for tests of split launches
  int lim = 0;
  CHECK(cudaDeviceGetAttribute(&lim, cudaDevAttrMaxGridDimZ, 0) == cudaSuccess);
  CHECK(lim == 65535);
  setenv("CUDASIM_MAX_GRID_YZ", "4", 1);
  CHECK(cudaDeviceGetAttribute(&lim, cudaDevAttrMaxGridDimY, 0) == cudaSuccess);
  CHECK(lim == 4);
  touch_kernel<<<dim3(1, 1, 4), 1>>>(d);
  CHECK(cudaGetLastError() == cudaSuccess);
  touch_kernel<<<dim3(1, 5, 1), 1>>>(d);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  unsetenv("CUDASIM_MAX_GRID_YZ");
  // a block larger than the kernel's __launch_bounds__
  bounded_kernel<<<1, 64>>>(d);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(throws_with([&] { bounded_kernel<<<1, dim3(8, 4, 3)>>>(d); },
                    "threads for a kernel declared"));
  cudaFree(d);
}

TEST_CASE("cudasim: the race checker reports shared-memory hazards, not ordered accesses") {
  if (!cudasim::racecheck_enabled()) {
    MESSAGE(
        "skipped: this build of the simulator has no race checker (the compiler cannot "
        "instrument the kernels, or CUDASIM_RACECHECK=0)");
    return;
  }
  float* out = dev_alloc<float>(128 + 4);
  const std::vector<float> zeros(128 + 4, 0.f);
  cudaMemcpy(out, zeros.data(), zeros.size() * sizeof(float), cudaMemcpyHostToDevice);
  const size_t smem = 64 * sizeof(float);
  auto ok = [&](auto kernel) {
    kernel<<<2, 64, smem>>>(out);
    return cudaGetLastError() == cudaSuccess;
  };
  CHECK(throws_with([&] { race_kernel<Race::raw><<<2, 64, smem>>>(out); },
                    "read-after-write hazard on byte 0 of the dynamic shared memory, block (0, 0, "
                    "0) of a launch of grid 2x1x1, block 64x1x1: thread 0 (warp 0, lane 0) wrote "
                    "it at ",
                    "then thread 1 (warp 0, lane 1) read it at"));
  CHECK(throws_with([&] { race_kernel<Race::waw><<<2, 64, smem>>>(out); },
                    "write-after-write hazard"));
  CHECK(throws_with([&] { race_kernel<Race::warp_unsync><<<2, 64, smem>>>(out); }, "hazard"));
  CHECK(ok(race_kernel<Race::warp_shfl>));
  CHECK(ok(race_kernel<Race::warp_sync>));
  CHECK(throws_with([&] { race_kernel<Race::cross_warp><<<2, 64, smem>>>(out); },
                    "read-after-write hazard"));
  CHECK(ok(race_kernel<Race::atomics>));
  CHECK(to_host(out, 64)[5] == 64.f);
  CHECK(throws_with([&] { race_kernel<Race::atomic_read><<<2, 64, smem>>>(out); },
                    "updated (atomically) it at"));
  CHECK(ok(race_kernel<Race::barrier>));
  CHECK(throws_with([&] { race_kernel<Race::cp_async><<<2, 64, smem>>>(out); },
                    "thread 0 (warp 0, lane 0) wrote it at a cp.async copy, then thread 1"));
  CHECK(ok(race_kernel<Race::cp_async_bar>));
  // a shuffle of all 16 lanes of a partial warp orders their reads before lane 0's write
  race_kernel<Race::partial_warp><<<2, 48, smem>>>(out);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(throws_with([&] { race_kernel<Race::ldmatrix><<<2, 64, smem>>>(out); },
                    "write-after-read hazard on byte 0 of the dynamic shared memory",
                    "read it at ldmatrix, then thread 32 (warp 1, lane 0) wrote it at"));
  // Device memory: accesses by different blocks of a launch are never ordered.
  CHECK(throws_with([&] { race_kernel<Race::blocks><<<2, 64, smem>>>(out); },
                    "write-after-write hazard on device memory (address",
                    "thread 0 (warp 0, lane 0) of block (0, 0, 0) wrote it at",
                    "in the same launch (blocks are not ordered)"));
  // Every hazard is counted, the first one described.
  CHECK(throws_with([&] { race_kernel<Race::waw><<<2, 64, smem>>>(out); },
                    "more accesses with an error in the block)"));
  cudaFree(out);
}

// Loads x[t * stride] (a warp of 32 lanes), stores it to shared memory at word t * stride
// (mod 1056) and reads word t back, then stores a float4 per lane.
__global__ void traffic_kernel(const float* x, float4* y, int stride) {
  __shared__ float s[1056];
  const int t = threadIdx.x;
  s[t * stride % 1056] = x[t * stride];
  __syncthreads();
  const float v = s[t];
  y[t] = make_float4(v, v, v, v);
}

TEST_CASE("cudasim: the profile counts sectors, DRAM bytes and bank conflicts") {
  if (!cudasim::profile_enable(true)) {
    MESSAGE("skipped: profiling needs the race-checking build of the simulator");
    return;
  }
  float* x = dev_alloc<float>(32 * 32);
  float4* y = dev_alloc<float4>(32);
  const std::vector<float> zeros(32 * 32, 0.f);
  cudaMemcpy(x, zeros.data(), zeros.size() * sizeof(float), cudaMemcpyHostToDevice);
  cudasim::profile_take();
  traffic_kernel<<<1, 32>>>(x, y, 1);  // coalesced, no conflicts
  traffic_kernel<<<1, 32>>>(x, y, 1);
  auto ps = cudasim::profile_take();
  REQUIRE(ps.size() == 1);
  const cudasim::KernelProfile& a = ps[0];
  CHECK(cudasim::short_name(a.name) == "traffic_kernel");
  CHECK(a.launches == 2);
  CHECK(a.ld_requests == 2);
  CHECK(a.ld_sectors == 8);  // 128 bytes: 4 sectors each
  CHECK(a.ld_bytes == 256);
  CHECK(a.dram_ld_bytes == 256);
  CHECK(a.st_requests == 2);  // the float4 stores, counted once each though the host splits them
  CHECK(a.st_sectors == 32);
  CHECK(a.st_efficiency() == 1.0);
  CHECK(a.smem_requests == 4);
  CHECK(a.smem_wavefronts == 4);
  CHECK(a.smem_conflict_factor() == 1.0);
  traffic_kernel<<<1, 32>>>(x, y, 32);  // one sector per lane; every store to bank 0
  ps = cudasim::profile_take();
  REQUIRE(ps.size() == 1);
  const cudasim::KernelProfile& b = ps[0];
  CHECK(b.ld_sectors == 32);
  CHECK(b.ld_bytes == 128);
  CHECK(b.l2_ld_bytes == 32 * 32);
  CHECK(b.smem_wavefronts == 32 + 1);
  CHECK(b.smem_ideal == 2);
  cudasim::profile_enable(false);
  cudaFree(x), cudaFree(y);
}

TEST_CASE("cudasim: a float4 load or store through a misaligned pointer is an error") {
  float* p = dev_alloc<float>(8);
  float* out = dev_alloc<float>(4);
  CHECK(throws_with(
      [&] { float4_kernel<<<1, 1>>>(p, out); },
      "to a pointer to a 16-byte vector (float4, uint4, int4) it is not aligned "
      "for, at ",
      "test_cudasim.cu:" + std::to_string(float4_line) + ": a GPU faults (misaligned address)"));
  cudaFree(p), cudaFree(out);
}

TEST_CASE("cudasim: the race checker's build reports out-of-bounds and misaligned accesses") {
  if (!cudasim::racecheck_enabled()) {
    MESSAGE("skipped: this build of the simulator has no race checker");
    return;
  }
  float* p = dev_alloc<float>(62);
  float* out = dev_alloc<float>(4);
  CHECK(throws_with([&] { bad_kernel<Bad::past_end><<<1, 32, 256>>>(p, out); },
                    "memcheck: thread 0 (warp 0, lane 0) of block (0, 0, 0) of a launch of grid "
                    "1x1x1, block 32x1x1 read 4 bytes at address ",
                    "which is outside every device allocation, at "));
  CHECK(throws_with([&] { bad_kernel<Bad::straddle><<<1, 32, 256>>>(p, out); },
                    "read 16 bytes at address"));
  CHECK(throws_with([&] { bad_kernel<Bad::misaligned><<<1, 32, 256>>>(p, out); },
                    "is not aligned to its size: a GPU faults (misaligned address)"));
  CHECK(throws_with([&] { bad_kernel<Bad::shared_past_end><<<1, 32, 256>>>(p, out); },
                    "wrote 4 bytes at address",
                    "which runs past the end of the dynamic shared memory"));
  cudaFree(p), cudaFree(out);
}

TEST_CASE("cudasim: cp.async lands at its wait; 8 bytes zero-fill the rest") {
  float* src = dev_alloc<float>(8);
  const std::vector<float> h{1, 2, 3, 4, 5, 6, 7, 8};
  cudaMemcpy(src, h.data(), 8 * sizeof(float), cudaMemcpyHostToDevice);
  float* before = dev_alloc<float>(1);
  float* after = dev_alloc<float>(6);
  cp_async_kernel<<<1, 1, 32>>>(src, before, after);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  CHECK(std::isnan(to_host(before, 1)[0]));
  const auto a = to_host(after, 6);
  CHECK(a[0] == 1.f);
  CHECK(std::isnan(a[1]));  // the second group had not landed yet
  CHECK(a[2] == 5.f);
  CHECK(a[3] == 6.f);
  CHECK(a[4] == 0.f);
  CHECK(a[5] == 0.f);
  // the global source of a 16-byte cp.async must be 16-byte aligned, whatever it copies
  CHECK(throws_with([&] { misaligned_cp_async_kernel<<<1, 1, 16>>>(src); }, "16-byte aligned"));
  cudaFree(src), cudaFree(before), cudaFree(after);
}

TEST_CASE("cudasim: ldmatrix.x4 then mma.m16n8k256.b1 is C + popc(A & B)") {
  std::mt19937 gen(3);
  std::vector<uint32_t> A(16 * 8), B(8 * 8);
  std::vector<int> C(16 * 8);
  for (auto& v : A) v = gen();
  for (auto& v : B) v = gen();
  for (auto& v : C) v = int(gen() % 100);
  uint32_t* dA = dev_alloc<uint32_t>(A.size());
  uint32_t* dB = dev_alloc<uint32_t>(B.size());
  int* dC = dev_alloc<int>(C.size());
  int* dD = dev_alloc<int>(C.size());
  uint32_t* frag = dev_alloc<uint32_t>(128);
  cudaMemcpy(dA, A.data(), A.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, B.data(), B.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dC, C.data(), C.size() * 4, cudaMemcpyHostToDevice);
  mma_kernel<<<1, 32, 1024>>>(dA, dB, dC, dD, frag);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  const auto D = to_host(dD, C.size());
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      int want = C[size_t(m * 8 + n)];
      for (int k = 0; k < 8; ++k)
        want += __builtin_popcount(A[size_t(m * 8 + k)] & B[size_t(n * 8 + k)]);
      CHECK(D[size_t(m * 8 + n)] == want);
    }
  // ldmatrix: lane l gets word (l & 3) of row (l >> 2) of each 8 x 16-byte matrix
  const auto F = to_host(frag, 128);
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    CHECK(F[size_t(l * 4 + 0)] == A[size_t(g * 8 + t)]);
    CHECK(F[size_t(l * 4 + 1)] == A[size_t((g + 8) * 8 + t)]);
    CHECK(F[size_t(l * 4 + 2)] == A[size_t(g * 8 + 4 + t)]);
    CHECK(F[size_t(l * 4 + 3)] == A[size_t((g + 8) * 8 + 4 + t)]);
  }
  cudaFree(dA), cudaFree(dB), cudaFree(dC), cudaFree(dD), cudaFree(frag);
}

TEST_CASE("cudasim: a captured stream replays its launches, copies and GEMMs") {
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  cublasHandle_t h = nullptr;
  REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  cublasSetStream(h, s);
  const int n = 5;
  float* x = dev_alloc<float>(n);
  float* y = dev_alloc<float>(n);
  float* z = dev_alloc<float>(n);
  float* dot = dev_alloc<float>(1);
  std::vector<float> hx{1, 2, 3, 4, 5};
  cudaMemcpy(x, hx.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess);
  add_one_kernel<<<1, 32, 0, s>>>(x, y, n);
  cudaMemcpyAsync(z, y, n * sizeof(float), cudaMemcpyDeviceToDevice, s);
  const float one = 1.f, zero = 0.f;  // dot = z^T x (1 x n times n x 1)
  REQUIRE(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 1, 1, n, &one, z, n, x, n, &zero, dot, 1) ==
          CUBLAS_STATUS_SUCCESS);
  CHECK(cudaStreamSynchronize(s) != cudaSuccess);  // not allowed while capturing
  cudaGraph_t g = nullptr;
  REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
  CHECK(std::isnan(to_host(z, n)[0]));  // nothing ran during the capture
  cudaGraphExec_t e = nullptr;
  REQUIRE(cudaGraphInstantiate(&e, g, 0) == cudaSuccess);
  cudaGraphDestroy(g);
  for (float base : {0.f, 10.f}) {
    for (int i = 0; i < n; ++i) hx[size_t(i)] = base + float(i);
    cudaMemcpy(x, hx.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    REQUIRE(cudaGraphLaunch(e, s) == cudaSuccess);
    const auto hz = to_host(z, n);
    float want = 0;
    for (int i = 0; i < n; ++i) {
      CHECK(hz[size_t(i)] == base + float(i) + 1.f);
      want += (base + float(i) + 1.f) * (base + float(i));
    }
    CHECK(to_host(dot, 1)[0] == want);
  }
  cudaGraphExecDestroy(e);
  cublasDestroy(h);
  cudaStreamDestroy(s);
  cudaFree(x), cudaFree(y), cudaFree(z), cudaFree(dot);
}

TEST_CASE("cudasim: CUDASIM_DEVICES=0 is a machine without a GPU") {
  setenv("CUDASIM_DEVICES", "0", 1);
  int n = -1;
  CHECK(cudaGetDeviceCount(&n) == cudaErrorNoDevice);
  CHECK(n == 0);
  unsetenv("CUDASIM_DEVICES");
  CHECK(cudaGetDeviceCount(&n) == cudaSuccess);
  CHECK(n == 1);
  (void)cudaGetLastError();
}
