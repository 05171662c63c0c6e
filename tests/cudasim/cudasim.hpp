// cudasim: runs the CUDA backend's own sources (cuda/*.cu) on the host, so that the kernels and
// the host code around them are tested on machines without a GPU.
//
// How: tests/cudasim/translate.cmake rewrites each .cu file into C++ (kernel launches
// `k<<<grid, block, smem, stream>>>(args)` become `k | config(...) | args(...)`, __shared__
// arrays become per-block storage), and the headers here stand in for cuda_runtime.h and
// cublas_v2.h. A launch runs its blocks one after another; the threads of a block are fibers
// that switch at __syncthreads and at warp-collective operations (__shfl_xor_sync,
// __ballot_sync, ldmatrix, mma), so the kernels' cooperation is simulated, not assumed.
//
// What it checks beyond the results (each failure is a tnas::Error or a CUDA error code, as a
// real launch would give): launch configurations (block size, grid size, dynamic shared
// memory against the function's opt-in), kernel pointer arguments that are not device memory,
// copies whose direction does not match their pointers, threads that deadlock at a barrier or
// a warp-collective whose mask names an exited lane, cp.async data read before it was waited
// for (copies land at the latest moment the PTX rules allow), and uninitialised device or
// shared memory (both are filled with NaN bytes). In its race-checking build
// (tnas_cudasim_race, racecheck.cpp), data races: two accesses to one byte, at least one a
// write, by threads of a block with no barrier (or, in one warp, no warp operation) between,
// in shared or device memory, or by two blocks of a launch in device memory. What it cannot
// check: timing, memory coalescing, and floating-point contraction.
//
// Environment: CUDASIM_ORDER=reverse (the threads of every barrier interval run in the
// opposite order); CUDASIM_RACECHECK=0 (no race checking) or =shared (shared memory only);
// CUDASIM_DEVICES=0 (a machine without a GPU); CUDASIM_VERBOSE=1 (why a launch was refused, on
// stderr); CUDASIM_STATS=1 (launch, block, thread, thread-switch and checked-access counts on
// stderr); CUDASIM_NO_CUDNN=1 (cudnnCreate fails, as a cuDNN that cannot start).
#pragma once

// <math.h>, not <cmath>: CUDA puts the float and double overloads of exp, log, ... in the
// global namespace, and libstdc++'s math.h does the same.
#include <math.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) {
  return {x, y, z, w};
}
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
  return {x, y, z, w};
}

namespace cudasim {

// ---- the thread that runs now ----------------------------------------------------------------
struct ThreadState {
  uint3 threadIdx, blockIdx;
  dim3 blockDim, gridDim;
};
ThreadState& cur();
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
// Code of the simulator's own that runs in the kernels' files (the copy of a launch's
// arguments for each thread): between these, its accesses are not the kernel's.
void internal_begin();
void internal_end();
struct Internal {
  Internal() { internal_begin(); }
  ~Internal() { internal_end(); }
  Internal(const Internal&) = delete;
  Internal& operator=(const Internal&) = delete;
};

// ---- launches --------------------------------------------------------------------------------
struct Config {
  dim3 grid, block;
  size_t smem = 0;
  void* stream = nullptr;
  size_t smem_attr = 0;      // set by launch(): the function's dynamic shared memory limit
  const void* fn = nullptr;  // set by launch(): the kernel
};
template <class G, class B>
Config config(G grid, B block, size_t smem = 0, void* stream = nullptr) {
  return {dim3(grid), dim3(block), smem, stream};
}
template <class... A>
std::tuple<std::decay_t<A>...> args(A&&... a) {
  return std::tuple<std::decay_t<A>...>(std::forward<A>(a)...);
}

// One launch: checks the configuration, then runs `body` for every thread of the grid (or,
// inside a stream capture, records the launch for replay). `pointers` are the kernel's pointer
// arguments, checked against device memory.
struct LaunchOps {
  void (*run)(const void* state);    // runs one thread's kernel call
  void* (*copy)(const void* state);  // a heap copy, for a captured launch
  void (*destroy)(void* state);      // frees such a copy
};
void launch(const void* fn, const Config& c, const void* const* pointers, int npointers,
            const LaunchOps& ops, const void* state);

template <class... P>
struct Bound {
  void (*fn)(P...);
  Config cfg;
};
template <class... P>
Bound<P...> operator|(void (*fn)(P...), const Config& c) {
  return {fn, c};
}

namespace detail {
template <class T>
void collect_pointer(const T& v, const void** out, int& n) {
  if constexpr (std::is_pointer_v<T>) out[n++] = static_cast<const void*>(v);
}
template <class... P>
struct Launch {
  void (*fn)(P...);
  std::tuple<std::decay_t<P>...> a;
};
template <class... P>
void run_launch(const void* s) {
  const auto* l = static_cast<const Launch<P...>*>(s);
  internal_begin();
  auto copy = l->a;  // every thread gets its own copy of the arguments, as on the device
  auto* fn = l->fn;
  internal_end();
  std::apply(fn, copy);
}
template <class... P>
void* copy_launch(const void* s) {
  return new Launch<P...>(*static_cast<const Launch<P...>*>(s));
}
template <class... P>
void destroy_launch(void* s) {
  delete static_cast<Launch<P...>*>(s);
}
}  // namespace detail

template <class... P, class... A>
void operator|(const Bound<P...>& b, std::tuple<A...>&& a) {
  static_assert(sizeof...(P) == sizeof...(A),
                "cudasim: kernel launched with the wrong number "
                "of arguments");
  detail::Launch<P...> l{b.fn, std::make_from_tuple<std::tuple<std::decay_t<P>...>>(std::move(a))};
  const void* ptrs[sizeof...(P) + 1];
  int n = 0;
  std::apply([&](const auto&... v) { (detail::collect_pointer(v, ptrs, n), ...); }, l.a);
  static constexpr LaunchOps ops{detail::run_launch<P...>, detail::copy_launch<P...>,
                                 detail::destroy_launch<P...>};
  launch(reinterpret_cast<const void*>(b.fn), b.cfg, ptrs, n, ops, &l);
}

// ---- shared memory ---------------------------------------------------------------------------
// The block's dynamic shared memory (extern __shared__), filled with NaN bytes at every block.
unsigned char* dynamic_shared_base();
template <class T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(dynamic_shared_base());
}
// A static __shared__ array: one object per declaration, filled with NaN bytes at every block.
// Its size counts, once per launch (`seen` holds the last launch that counted it), against
// the shared memory the launch may use with its dynamic shared memory.
void register_shared(void* p, size_t bytes);
void count_static_shared(unsigned& seen, void* p, size_t bytes);
template <class A, int Line>
A& block_shared() {
  alignas(16) static A a;
  const Internal internal;  // (count_static_shared may throw)
  static const bool registered = (register_shared(&a, sizeof a), true);
  (void)registered;
  static unsigned seen = 0;
  count_static_shared(seen, &a, sizeof a);
  return a;
}

// ---- vector loads and stores ------------------------------------------------------------------
// translate.cmake turns reinterpret_cast<float4*>(p) (uint4, int4; const or not) into this: a
// device loads and stores such a vector with one 16-byte instruction, which faults (misaligned
// address) unless p is 16-byte aligned; the host would split it into four accesses that work.
[[noreturn]] void misaligned_vector(const char* file, int line, const void* p, size_t align);
template <class P, class Q>
P vector_cast(const char* file, int line, Q* q) {
  constexpr size_t align = alignof(std::remove_cv_t<std::remove_pointer_t<P>>);
  if (reinterpret_cast<uintptr_t>(q) % align) misaligned_vector(file, line, q, align);
  return reinterpret_cast<P>(q);
}

// ---- synchronisation ------------------------------------------------------------------------
void syncthreads();
// A warp-collective operation: every lane named in `mask` must call it with the same `op`;
// when the last one arrives, op(in, out, mask) computes every lane's result from every lane's
// input (32 slots of kSlot bytes each).
constexpr int kSlot = 48;
using Collective = void (*)(const unsigned char (*in)[kSlot], unsigned char (*out)[kSlot],
                            unsigned mask);
void warp_collective(unsigned mask, Collective op, const void* in, size_t in_bytes, void* out,
                     size_t out_bytes);
[[noreturn]] void trap();
// __launch_bounds__(max_threads[, min_blocks]), which translate.cmake moves into the kernel's
// body: a block of more than max_threads threads is a launch a device refuses.
void launch_bounds(int max_threads, int min_blocks = 0);

// ---- PTX instructions the XNOR kernel uses (cuda/xnor.cu) --------------------------------------
uint32_t cvta_shared(const void* p);
void cp_async16(uint32_t smem_addr, const void* gmem, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);
void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3);
void mma_b1_and_popc(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

}  // namespace cudasim

// ---- the CUDA C++ vocabulary, for host compilation -------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)  // (translate.cmake moves it into the body: launch_bounds)
#define __align__(n) alignas(n)
// Values, not references into the simulator's own state: a kernel's reads of them are not
// memory accesses of the kernel (which the race checker would see).
#define threadIdx (::cudasim::thread_idx())
#define blockIdx (::cudasim::block_idx())
#define blockDim (::cudasim::block_dim())
#define gridDim (::cudasim::grid_dim())
constexpr int warpSize = 32;

inline void __syncthreads() {
  ::cudasim::syncthreads();
}
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline int __popc(unsigned v) {
  return __builtin_popcount(v);
}
inline int __popcll(unsigned long long v) {
  return __builtin_popcountll(v);
}
[[noreturn]] inline void __trap() {
  ::cudasim::trap();
}
inline size_t __cvta_generic_to_shared(const void* p) {
  return ::cudasim::cvta_shared(p);
}
// CUDA's integer and floating-point min / max overloads.
#define TNAS_CUDASIM_MINMAX(T) \
  inline T min(T a, T b) {     \
    return b < a ? b : a;      \
  }                            \
  inline T max(T a, T b) {     \
    return a < b ? b : a;      \
  }
TNAS_CUDASIM_MINMAX(int)
TNAS_CUDASIM_MINMAX(unsigned)
TNAS_CUDASIM_MINMAX(long)
TNAS_CUDASIM_MINMAX(unsigned long)
TNAS_CUDASIM_MINMAX(long long)
TNAS_CUDASIM_MINMAX(unsigned long long)
TNAS_CUDASIM_MINMAX(float)
TNAS_CUDASIM_MINMAX(double)
#undef TNAS_CUDASIM_MINMAX
inline float rsqrtf(float v) {
  return 1.0f / __builtin_sqrtf(v);
}

namespace cudasim::detail {
// __shfl_xor_sync (DOWN = false) and __shfl_down_sync (DOWN = true): every lane's input is its
// value and then an int (the lane mask or the delta). A source lane outside the mask (or the
// warp) leaves the caller's own value, as on the device.
template <class T, bool DOWN>
void shfl_op(const unsigned char (*in)[kSlot], unsigned char (*out)[kSlot], unsigned mask) {
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    int arg;
    std::memcpy(&arg, in[l] + sizeof(T), sizeof arg);
    const int src = DOWN ? l + arg : l ^ arg;
    std::memcpy(out[l], in[(src < 32 && (mask >> src & 1)) ? src : l], sizeof(T));
  }
}
// The five shuffle-and-add steps of a warp reduction as ONE collective (one thread switch
// instead of five), in the order the device adds: DOWN = false, v += shfl_xor(v, o) for
// o = 16, 8, 4, 2, 1 (every lane gets the total); DOWN = true, v += shfl_down(v, o) where
// lane + o < lanes (lane 0 gets the total of lanes [0, lanes)).
template <class T, bool DOWN>
void warp_reduce_op(const unsigned char (*in)[kSlot], unsigned char (*out)[kSlot], unsigned mask) {
  // Zero-filled: only the lanes in mask are read, but GCC 12 cannot see that through the
  // vectorised loops below and warns (-Wmaybe-uninitialized).
  T v[32] = {};
  int lanes = 32;
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1) {
      std::memcpy(&v[l], in[l], sizeof(T));
      if (DOWN) std::memcpy(&lanes, in[l] + sizeof(T), sizeof lanes);
    }
  for (int o = 16; o > 0; o >>= 1) {
    T u[32] = {};
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1)) continue;
      const int src = DOWN ? l + o : l ^ o;
      u[l] = (src < 32 && (mask >> src & 1)) ? v[src] : v[l];
    }
    for (int l = 0; l < 32; ++l)
      if ((mask >> l & 1) && (!DOWN || l + o < lanes)) v[l] += u[l];
  }
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1) std::memcpy(out[l], &v[l], sizeof(T));
}
inline void ballot_op(const unsigned char (*in)[kSlot], unsigned char (*out)[kSlot],
                      unsigned mask) {
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1) && in[l][0]) bits |= 1u << l;
  for (int l = 0; l < 32; ++l) std::memcpy(out[l], &bits, sizeof bits);
}
}  // namespace cudasim::detail

namespace cudasim {
// A warp-collective operation whose input per lane is a value of T and an int, and whose
// result is a T.
template <class T>
T collective(unsigned mask, Collective op, T v, int arg) {
  static_assert(sizeof(T) + sizeof(int) <= size_t(kSlot), "cudasim: value too large");
  unsigned char in[kSlot];
  std::memcpy(in, &v, sizeof(T));
  std::memcpy(in + sizeof(T), &arg, sizeof arg);
  T r;
  warp_collective(mask, op, in, sizeof(T) + sizeof arg, &r, sizeof(T));
  return r;
}
template <class T, bool DOWN>
T warp_reduce(unsigned mask, T v, int lanes) {
  return collective(mask, detail::warp_reduce_op<T, DOWN>, v, lanes);
}
}  // namespace cudasim
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int /*width*/ = 32) {
  return ::cudasim::collective(mask, ::cudasim::detail::shfl_op<T, false>, v, lane_mask);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int /*width*/ = 32) {
  return ::cudasim::collective(mask, ::cudasim::detail::shfl_op<T, true>, v, int(delta));
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  const unsigned char in = 0;
  unsigned char out;
  ::cudasim::warp_collective(
      mask,
      [](const unsigned char(*)[::cudasim::kSlot], unsigned char(*)[::cudasim::kSlot], unsigned) {},
      &in, 1, &out, 1);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  const unsigned char in = pred != 0;
  unsigned r;
  ::cudasim::warp_collective(mask, ::cudasim::detail::ballot_op, &in, 1, &r, sizeof r);
  return r;
}
namespace cudasim {
// The race checker (racecheck.cpp) counts what lies between these as one atomic access, not
// as the read and the write it is made of. Whether it runs: racecheck_enabled().
void atomic_begin(const void* p, size_t bytes);
void atomic_end();
bool racecheck_enabled();
unsigned long long racecheck_checked();  // the accesses it has checked
}  // namespace cudasim
// One fiber runs at a time, so atomics are plain read-modify-writes.
template <class T>
inline T atomicAdd(T* p, T v) {
  ::cudasim::atomic_begin(p, sizeof(T));
  const T old = *p;
  *p = old + v;
  ::cudasim::atomic_end();
  return old;
}
