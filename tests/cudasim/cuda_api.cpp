// cudasim's CUDA runtime API: device memory (host memory, registered and NaN-filled), the last
// error, device attributes (an H100), streams, capture into graphs and their replay. See
// cudasim.hpp.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "include/cuda_runtime.h"
#include "internal.hpp"

namespace cudasim {

// ---- device memory -----------------------------------------------------------------------------
namespace {
std::map<uintptr_t, size_t>& allocations() {
  static std::map<uintptr_t, size_t> m;
  return m;
}
// The allocation p lies in (or one past the end of), or nullptr.
const std::pair<const uintptr_t, size_t>* find_allocation(const void* p) {
  auto& m = allocations();
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = m.upper_bound(a);
  if (it == m.begin()) return nullptr;
  --it;
  if (a > it->first + it->second) return nullptr;  // one past the end is a valid pointer
  return &*it;
}
std::map<const void*, int>& smem_optin() {
  static std::map<const void*, int> m;
  return m;
}
cudaError_t g_last = cudaSuccess;
}  // namespace

bool in_device_memory(const void* p) {
  return find_allocation(p) != nullptr;
}
bool device_allocation(const void* p, uintptr_t& lo, size_t& bytes) {
  const auto* a = find_allocation(p);
  if (!a || reinterpret_cast<uintptr_t>(p) == a->first + a->second) return false;
  lo = a->first, bytes = a->second;
  return true;
}
bool is_device(const void* p, size_t bytes) {
  const auto* a = find_allocation(p);
  return a && reinterpret_cast<uintptr_t>(p) + bytes <= a->first + a->second;
}
cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) g_last = e;
  return e;
}
unsigned max_grid_yz() {
  const char* e = std::getenv("CUDASIM_MAX_GRID_YZ");
  return e && *e ? unsigned(std::strtoul(e, nullptr, 10)) : 65535u;
}
size_t smem_limit(const void* fn) {
  auto it = smem_optin().find(fn);
  return it == smem_optin().end() ? kDefaultSmem : size_t(it->second);
}

cudaError_t func_set_attribute(const void* fn, cudaFuncAttribute a, int v) {
  if (a != cudaFuncAttributeMaxDynamicSharedMemorySize || v < 0 || size_t(v) > kOptinSmem)
    return record(cudaErrorInvalidValue);
  smem_optin()[fn] = v;
  return cudaSuccess;
}

// ---- streams and graphs ------------------------------------------------------------------------
CUstream_st& stream_of(void* s) {
  static CUstream_st default_stream;
  return s ? *static_cast<CUstream_st*>(s) : default_stream;
}

void enqueue(cudaStream_t s, void (*op)(void*), void* state, void (*destroy)(void*)) {
  CUstream_st& st = stream_of(s);
  if (st.capturing) {
    st.capture->ops.push_back({op, state, destroy});
    return;
  }
  struct Guard {
    void* p;
    void (*d)(void*);
    ~Guard() {
      if (d) d(p);
    }
  } guard{state, destroy};
  op(state);
}

}  // namespace cudasim

struct CUgraph_st {
  std::shared_ptr<cudasim::OpList> ops;
};
struct CUgraphExec_st {
  std::shared_ptr<cudasim::OpList> ops;
};

// ---- the runtime API ---------------------------------------------------------------------------
using cudasim::record;

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection:
      return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState:
      return "cudaErrorIllegalState";
    case cudaErrorIllegalAddress:
      return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported:
      return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated:
      return "cudaErrorStreamCaptureInvalidated";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  return cudaGetErrorName(e);
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = cudasim::g_last;
  cudasim::g_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  return cudasim::g_last;
}
cudaError_t cudaGetDeviceCount(int* n) {
  // CUDASIM_DEVICES=0 simulates a machine without a GPU.
  const char* e = std::getenv("CUDASIM_DEVICES");
  *n = e ? std::atoi(e) : 1;
  return *n > 0 ? cudaSuccess : record(cudaErrorNoDevice);
}
cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  switch (a) {
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *v = int(cudasim::kDefaultSmem);
      break;
    case cudaDevAttrMultiProcessorCount:
      *v = cudasim::kSms;
      break;
    case cudaDevAttrComputeCapabilityMajor:
      *v = 9;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *v = 0;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *v = int(cudasim::kOptinSmem);
      break;
    case cudaDevAttrMaxGridDimY:
    case cudaDevAttrMaxGridDimZ:
      *v = int(cudasim::max_grid_yz());
      break;
    default:
      return record(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  // Device memory starts as NaN bytes: a kernel that reads what nobody wrote gets NaN.
  const size_t n = std::max<size_t>(bytes, 1);
  void* q = std::aligned_alloc(256, (n + 255) / 256 * 256);
  if (!q) {
    *p = nullptr;
    return record(cudaErrorMemoryAllocation);
  }
  std::memset(q, 0xff, n);
  cudasim::allocations()[reinterpret_cast<uintptr_t>(q)] = n;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  auto& m = cudasim::allocations();
  auto it = m.find(reinterpret_cast<uintptr_t>(p));
  if (it == m.end()) return record(cudaErrorInvalidDevicePointer);
  m.erase(it);
  std::free(p);
  return cudaSuccess;
}

namespace {
struct MemOp {
  void* dst;
  const void* src;
  size_t bytes;
  int value;
};
// Refuses a copy whose kind does not match where its pointers are.
void check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const bool dd = cudasim::is_device(dst, bytes), sd = cudasim::is_device(src, bytes);
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      ok = dd && !sd;
      break;
    case cudaMemcpyDeviceToHost:
      ok = !dd && sd;
      break;
    case cudaMemcpyDeviceToDevice:
      ok = dd && sd;
      break;
    case cudaMemcpyHostToHost:
      ok = !dd && !sd;
      break;
    case cudaMemcpyDefault:
      break;
  }
  if (!ok && bytes > 0) {
    std::ostringstream os;
    os << "cudaMemcpy of " << bytes << " bytes, kind " << int(kind) << ": destination is "
       << (dd ? "" : "not ") << "device memory, source is " << (sd ? "" : "not ")
       << "device memory";
    cudasim::fail(os.str());
  }
}
}  // namespace

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s) {
  check_copy(dst, src, bytes, kind);
  if (bytes == 0) return cudaSuccess;
  cudasim::enqueue(
      s,
      [](void* p) {
        auto* m = static_cast<MemOp*>(p);
        std::memmove(m->dst, m->src, m->bytes);
      },
      new MemOp{dst, src, bytes, 0}, [](void* p) { delete static_cast<MemOp*>(p); });
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  if (bytes && !cudasim::is_device(p, bytes))
    cudasim::fail("cudaMemsetAsync of memory that is not device memory");
  if (bytes == 0) return cudaSuccess;
  cudasim::enqueue(
      s,
      [](void* q) {
        auto* m = static_cast<MemOp*>(q);
        std::memset(m->dst, m->value, m->bytes);
      },
      new MemOp{p, nullptr, bytes, value}, [](void* q) { delete static_cast<MemOp*>(q); });
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = new CUstream_st;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (cudasim::stream_of(s).capturing) return record(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  auto& st = cudasim::stream_of(s);
  if (st.capturing) return record(cudaErrorIllegalState);
  st.capturing = true;
  st.capture = std::make_unique<cudasim::OpList>();
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  auto& st = cudasim::stream_of(s);
  if (!st.capturing) return record(cudaErrorIllegalState);
  st.capturing = false;
  *g = new CUgraph_st{std::shared_ptr<cudasim::OpList>(std::move(st.capture))};
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long) {
  if (!g) return record(cudaErrorInvalidValue);
  *e = new CUgraphExec_st{g->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete g;
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
  if (!e) return record(cudaErrorInvalidResourceHandle);
  if (cudasim::stream_of(s).capturing) return record(cudaErrorStreamCaptureUnsupported);
  for (auto& o : e->ops->ops) o.run(o.state);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
  delete e;
  return cudaSuccess;
}
