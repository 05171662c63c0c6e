// cudasim's internals shared by the scheduler (cudasim.cpp), the runtime API (cuda_api.cpp)
// and cuBLAS (cublas.cpp). Not part of what the translated kernels see.
#pragma once

#include <cstddef>
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
bool is_device(const void* p, size_t bytes);
// Sets the last error (cudaGetLastError) when e is one; returns e.
cudaError_t record(cudaError_t e);
// The dynamic shared memory a launch of fn may ask for (48 KiB unless raised by
// cudaFuncSetAttribute).
size_t smem_limit(const void* fn);
// The grid limit along y and z: 65535, or CUDASIM_MAX_GRID_YZ (read at every call) to test
// launches that split their work to fit it.
unsigned max_grid_yz();

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
