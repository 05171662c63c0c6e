// cudasim's internals shared by the scheduler (cudasim.cpp), the runtime API (cuda_api.cpp)
// and cuBLAS (cublas.cpp). Not part of what the translated kernels see.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "include/cuda_runtime.h"
#include "tnas/core/error.hpp"

namespace cudasim {

constexpr size_t kDefaultSmem = 48 << 10, kOptinSmem = 232448;  // H100: 227 KiB opt-in
constexpr int kSms = 132;

[[noreturn]] inline void fail(const std::string& what) {
  throw tnas::Error("cudasim: " + what);
}

// Device memory (cuda_api.cpp): whether p lies in (or one past the end of) a cudaMalloc
// block, and whether all of [p, p + bytes) does.
bool in_device_memory(const void* p);
// The cudaMalloc block p lies in: its start and size.
bool device_allocation(const void* p, uintptr_t& lo, size_t& bytes);
bool is_device(const void* p, size_t bytes);
// Sets the last error (cudaGetLastError) when e is one; returns e.
cudaError_t record(cudaError_t e);
// The dynamic shared memory a launch of fn may ask for (48 KiB unless raised by
// cudaFuncSetAttribute).
size_t smem_limit(const void* fn);
// The grid limit along y and z: 65535, or CUDASIM_MAX_GRID_YZ (read at every call) to test
// launches that split their work to fit it.
unsigned max_grid_yz();

// The function and source location (file:line) of a code address in the program, from its
// symbol table and debug information (addr2line, from binutils; racecheck.cpp); false when
// they cannot be found.
bool symbolize(const void* code, std::string& function, std::string& location);

// ---- the race checker (racecheck.cpp) ----------------------------------------------------------
// Off unless the kernels were built with the compiler's ThreadSanitizer instrumentation
// (tnas_cudasim_race: its __tsan_init calls enable()) and CUDASIM_RACECHECK is not 0. The
// scheduler tells it what runs: the launch's shared memory, blocks, barriers, the warps'
// collective operations and the running thread; every call returns at once when it is off.
namespace race {
enum class Kind { read, write, atomic };
enum class Tag { ldmatrix, cp_async };
extern bool g_enabled;
extern bool g_active;       // enabled, and a simulated thread runs
extern bool g_check;        // races checked (false: accesses only profiled)
extern uint64_t g_checked;  // accesses checked (CUDASIM_STATS)
extern uint64_t g_pages;    // pages of device memory with a shadow (CUDASIM_STATS)
void enable();
// The launch's dynamic shared memory: `bytes`, then `slack` bytes of the simulator's own.
void launch_begin(unsigned char* dynamic, size_t bytes, size_t slack, const Config& c);
void use_static(void* p, size_t bytes);  // a static __shared__ array the launch uses
void block_begin(unsigned bx, unsigned by, unsigned bz, size_t warps);
void barrier();                            // a __syncthreads completed
void collective(int warp, unsigned mask);  // a warp-collective operation completed
// The thread that runs now (-1: none) and its stack (whose accesses are its own).
void running(int tid, const void* stack = nullptr, size_t stack_bytes = 0);
void block_end();  // throws the block's first hazard, if any
void launch_end();
// An access by the running thread; `pc` is the code address that made it, `aligned` whether
// the compiler took it to be aligned to its size (a misaligned one is an error).
void access(const void* p, size_t n, Kind k, const void* pc, bool aligned = false);
// An access the simulator makes for thread `tid` (ldmatrix, cp.async).
void note(const void* p, size_t n, Kind k, int tid, Tag tag);
}  // namespace race

// ---- the memory-traffic profile (profile.cpp, profile.hpp) -------------------------------------
// Fed by the race checker with the accesses it checks; off unless profile_enable or
// CUDASIM_PROFILE turned it on (race::enable calls from_env).
namespace prof {
extern bool g_on;
void from_env();
void launch_begin(const Config& c);
// An access by thread `tid` of the running block, to shared or device memory.
void access(const void* p, size_t n, bool write, bool shared, const void* pc, int tid);
void block_end();
void launch_end();
}  // namespace prof

// ---- streams and graphs ----------------------------------------------------------------------
// Work on a stream runs at once, or is recorded (an OpList) while the stream is captured.
struct Op {
  void (*run)(void*);
  void* state;
  void (*destroy)(void*);
};
struct OpList {
  std::vector<Op> ops;
  ~OpList() {
    for (auto& o : ops)
      if (o.destroy) o.destroy(o.state);
  }
};

}  // namespace cudasim

struct CUstream_st {
  bool capturing = false;
  std::unique_ptr<cudasim::OpList> capture;
};

namespace cudasim {
// The stream s (nullptr: the default stream).
CUstream_st& stream_of(void* s);
}  // namespace cudasim
