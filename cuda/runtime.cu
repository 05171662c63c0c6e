// The CUDA backend's runtime: its stream, cuBLAS handle, caching device allocator, the device
// hooks of core/tensor.hpp (copies, fill, gather, convert, accumulate) and the registration of
// the kernel table.
#include <mutex>

#include "common.cuh"
#include "tnas/backend/cuda/cuda.hpp"
#include "tnas/core/allocator.hpp"
#include "tnas/core/tensor.hpp"

namespace tnas::cuda {
namespace detail {
namespace {
cudaStream_t g_stream = nullptr;
cublasHandle_t g_cublas = nullptr;
int g_sms = 0;
size_t g_smem_optin = 0;
unsigned g_max_grid[2] = {65535, 65535};  // y, z

// cudaMalloc / cudaFree for the core's CachingAllocator: blocks are cached by size class and
// handed out again in host order, which is the stream's order since all tnas work is on one
// stream; no block is freed to the driver inside a step (only when the cache is released,
// where cudaFree's implicit synchronisation makes it safe).
void* sys_alloc(size_t n) {
  void* p = nullptr;
  if (cudaMalloc(&p, n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so the retry can succeed
    return nullptr;
  }
  return p;
}
void sys_free(void* p) {
  (void)cudaFree(p);
}

bool g_capturing = false;

void copy(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  TNAS_CHECK(!g_capturing || (dd == Device::cuda && sd == Device::cuda),
             "a copy between host and device during a CUDA graph capture: copy the inputs into "
             "device tensors before the capture and read the results after replay() "
             "(core/graph.hpp)");
  cudaMemcpyKind kind =
      dd == Device::cuda ? (sd == Device::cuda ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                         : cudaMemcpyDeviceToHost;
  TNAS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, g_stream));
  // The host reads its copy as soon as this returns; device-side copies stay asynchronous.
  if (kind == cudaMemcpyDeviceToHost) TNAS_CUDA_CHECK(cudaStreamSynchronize(g_stream));
}
void fill_hook(void* dst, Device, DType t, double v, size_t count) {
  fill(dst, t, v, count);
}

// Graphs: relaxed capture mode, since the caching allocator may cudaMalloc a new block for the
// graph's private pool during capture (a call that the global mode forbids).
void capture_begin(Device) {
  TNAS_CHECK(!g_capturing, "CUDA graph capture: already capturing");
  cudnn_prepare();  // cudnnCreate allocates and synchronises: not inside the capture
  TNAS_CUDA_CHECK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeRelaxed));
  g_capturing = true;
}
void* capture_end(Device, bool abort) {
  g_capturing = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t e = cudaStreamEndCapture(g_stream, &graph);
  if (abort) {
    if (graph) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    return nullptr;
  }
  TNAS_CUDA_CHECK(e);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t ie = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  TNAS_CUDA_CHECK(ie);
  return exec;
}
void graph_replay(void* g) {
  TNAS_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(g), g_stream));
}
void graph_destroy(void* g) {
  (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(g));
}
// The device's grid limit along y (axis 1) or z (axis 2).
unsigned query_max_grid(int axis) {
  int dev = 0, v = 0;
  TNAS_CUDA_CHECK(cudaGetDevice(&dev));
  TNAS_CUDA_CHECK(
      cudaDeviceGetAttribute(&v, axis == 1 ? cudaDevAttrMaxGridDimY : cudaDevAttrMaxGridDimZ, dev));
  return unsigned(v);
}
}  // namespace

cudaStream_t stream() {
  return g_stream;
}
cublasHandle_t cublas() {
  return g_cublas;
}
int sm_count() {
  return g_sms;
}
size_t smem_optin() {
  return g_smem_optin;
}
unsigned max_grid(int axis) {
  TNAS_CHECK(axis == 1 || axis == 2, "max_grid: axis 1 (y) or 2 (z), not ", axis);
#ifdef TNAS_CUDASIM
  return query_max_grid(axis);  // the simulator's limit may change (CUDASIM_MAX_GRID_YZ)
#else
  return g_max_grid[axis - 1];
#endif
}
void* scratch_alloc(size_t bytes) {
  return allocator(Device::cuda).allocate(bytes);
}
void scratch_free(void* p, size_t bytes) {
  allocator(Device::cuda).deallocate(p, bytes);
}

// xnor.cu (binary convolution and GEMM; declared here rather than in common.cuh)
void xnor_conv2d(const ConvShape& p, const float* x, const float* w, float* y);
void xnor_gemm(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C);

}  // namespace detail

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}
bool available() {
  tnas::detail::load_device_backends();
  return detail::g_stream != nullptr;
}
void synchronize() {
  TNAS_CHECK(!detail::g_capturing, "cuda::synchronize during a CUDA graph capture");
  if (detail::g_stream) TNAS_CUDA_CHECK(cudaStreamSynchronize(detail::g_stream));
}
void* stream() {
  tnas::detail::load_device_backends();
  return detail::g_stream;
}

}  // namespace tnas::cuda

extern "C" void tnas_cuda_register() {
  using namespace tnas;
  using namespace tnas::cuda::detail;
  if (tnas::cuda::device_count() == 0) return;  // no GPU: Device::cuda reports "no allocator"
  TNAS_CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  TNAS_CUBLAS_CHECK(cublasCreate(&g_cublas));
  TNAS_CUBLAS_CHECK(cublasSetStream(g_cublas, g_stream));
  // A workspace of our own (32 MiB, as cuBLAS advises for Hopper), so that cuBLAS never
  // allocates inside a CUDA graph capture.
  constexpr size_t kCublasWorkspace = size_t(32) << 20;
  void* ws = nullptr;
  TNAS_CUDA_CHECK(cudaMalloc(&ws, kCublasWorkspace));
  TNAS_CUBLAS_CHECK(cublasSetWorkspace(g_cublas, ws, kCublasWorkspace));
  int dev = 0;
  TNAS_CUDA_CHECK(cudaGetDevice(&dev));
  TNAS_CUDA_CHECK(cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, dev));
  int optin = 0;
  TNAS_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  g_smem_optin = size_t(optin);
  g_max_grid[0] = query_max_grid(1);
  g_max_grid[1] = query_max_grid(2);

  // Never destroyed: tensors with static storage may outlive the CUDA context's users, and
  // cudaFree after the runtime has shut down would only report errors.
  static auto* alloc = new CachingAllocator(sys_alloc, sys_free);
  set_allocator(Device::cuda, alloc);

  DeviceHooks& h = device_hooks();
  h.copy = copy;
  h.fill = fill_hook;
  h.gather = gather;
  h.convert = convert;
  h.accumulate = accumulate;
  h.capture_begin = capture_begin;
  h.capture_end = capture_end;
  h.graph_replay = graph_replay;
  h.graph_destroy = graph_destroy;

  static_assert(backend::kKernelCount == 31,
                "backend::Kernels changed: register the new kernels here");
  backend::Kernels& k = backend::kernels(Device::cuda);
  k.unary = unary;
  k.unary_backward = unary_backward;
  k.binary = binary;
  k.copy_view = copy_view;
  k.reduce_sum = reduce_sum;
  k.conv2d_forward = conv2d_forward;
  k.conv2d_backward_input = conv2d_backward_input;
  k.conv2d_backward_weight = conv2d_backward_weight;
  k.gemm = gemm;
  k.max_pool2d_forward = max_pool2d_forward;
  k.max_pool2d_backward = max_pool2d_backward;
  k.avg_pool2d_forward = avg_pool2d_forward;
  k.avg_pool2d_backward = avg_pool2d_backward;
  k.batch_norm_forward_train = batch_norm_forward_train;
  k.batch_norm_forward_eval = batch_norm_forward_eval;
  k.batch_norm_backward = batch_norm_backward;
  k.batch_norm_backward_from_output = batch_norm_backward_from_output;
  k.batch_norm_backward_eval = batch_norm_backward_eval;
  k.weighted_sum_forward = weighted_sum_forward;
  k.weighted_sum_backward = weighted_sum_backward;
  k.log_softmax_forward = log_softmax_forward;
  k.log_softmax_backward = log_softmax_backward;
  k.softmax_forward = softmax_forward;
  k.softmax_backward = softmax_backward;
  k.cross_entropy_forward = cross_entropy_forward;
  k.xnor_conv2d = xnor_conv2d;
  k.xnor_gemm = xnor_gemm;
  k.sgd_step = sgd_step;
  k.adam_step = adam_step;
  k.sum_squares = sum_squares;
  k.clip_scale = clip_scale;
}
