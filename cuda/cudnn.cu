// The convolution-engine switch of the CUDA backend (cuda.hpp's ConvEngine) and cuDNN as an
// engine. This file is always part of tnas::cuda; the cuDNN calls are compiled only where
// CMake found cuDNN (TNAS_HAVE_CUDNN), so a build without it still answers has_cudnn() and
// refuses ConvEngine::cudnn with a message.
//
// cuDNN's convolutions go through its legacy descriptor API (cudnn_cnn.h; deprecated in
// cuDNN 9 in favour of the graph API, but complete for what tnas needs, and the API that
// bench_cuda's yardstick already uses). Per shape one CudnnPlan is made, once, under a lock: the
// tensor, filter and convolution descriptors and, for each direction, the algorithm and its
// workspace. Algorithms come from cuDNN's heuristics (cudnnGet*Algorithm_v7: host-side
// queries; cudnnFind* would run and time every candidate, which synchronises and cannot
// happen inside a graph capture), keeping the first one that is deterministic, runs in FMA
// math (no TF32) and needs at most kMaxWorkspace bytes. Workspaces are scratch blocks of the
// caching allocator, freed in stream order like every other scratch buffer.
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common.cuh"
#include "tnas/backend/cuda/cuda.hpp"

#ifdef TNAS_HAVE_CUDNN
#include <cudnn.h>

#define TNAS_CUDNN_CHECK(expr)                                                                     \
  do {                                                                                             \
    cudnnStatus_t _s = (expr);                                                                     \
    TNAS_CHECK(_s == CUDNN_STATUS_SUCCESS, "cuDNN error ", cudnnGetErrorString(_s), " in ", #expr, \
               " at ", __FILE__, ":", __LINE__);                                                   \
  } while (0)
#endif

namespace tnas::cuda {
namespace detail {
namespace {

constexpr int kUnset = -1;
std::atomic<int> g_engine{kUnset};

constexpr const char* kEngineNames = "(expected auto, native or cudnn)";
constexpr const char* kNoCudnn =
    "this build of tnas::cuda has no cuDNN (configure with -DTNAS_CUDNN=ON where cuDNN 9 is "
    "installed)";

std::optional<ConvEngine> engine_named(std::string_view name) {
  for (ConvEngine e : {ConvEngine::automatic, ConvEngine::native, ConvEngine::cudnn})
    if (name == to_string(e)) return e;
  return std::nullopt;
}

#ifdef TNAS_HAVE_CUDNN
std::string shape_str(const ConvShape& p) {
  return "x [" + std::to_string(p.N) + ", " + std::to_string(p.C) + ", " + std::to_string(p.H) +
         ", " + std::to_string(p.W) + "], w [" + std::to_string(p.K) + ", " +
         std::to_string(p.groups > 0 ? p.C / p.groups : p.C) + ", " + std::to_string(p.R) + ", " +
         std::to_string(p.S) + "], stride " + std::to_string(p.stride) + ", padding " +
         std::to_string(p.pad) + ", dilation " + std::to_string(p.dil) + ", groups " +
         std::to_string(p.groups);
}

constexpr size_t kMaxWorkspace = size_t(256) << 20;
constexpr float kOne = 1.f, kZero = 0.f;  // alpha and beta: outputs overwritten

}  // namespace

// Declared in common.cuh: cuDNN's setup for one convolution shape, made once and kept.
struct CudnnPlan {
  cudnnHandle_t h = nullptr;
  cudnnTensorDescriptor_t xd = nullptr, yd = nullptr;
  cudnnFilterDescriptor_t wd = nullptr;
  cudnnConvolutionDescriptor_t cd = nullptr;
  cudnnConvolutionFwdAlgo_t fwd{};
  cudnnConvolutionBwdDataAlgo_t bwd_data{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
  size_t ws_fwd = 0, ws_data = 0, ws_filter = 0;

  CudnnPlan() = default;
  CudnnPlan(const CudnnPlan&) = delete;
  CudnnPlan& operator=(const CudnnPlan&) = delete;
  ~CudnnPlan() {
    if (cd) (void)cudnnDestroyConvolutionDescriptor(cd);
    if (wd) (void)cudnnDestroyFilterDescriptor(wd);
    if (yd) (void)cudnnDestroyTensorDescriptor(yd);
    if (xd) (void)cudnnDestroyTensorDescriptor(xd);
  }
};

namespace {

std::mutex g_mu;                   // guards the handle, its failure and g_plans
cudnnHandle_t g_handle = nullptr;  // never destroyed, as the cuBLAS handle
std::string g_init_error;          // why the handle could not be made (not retried)
// Plans live for the program (a search sees a few dozen shapes); their addresses are stable.
// A null plan: cuDNN cannot take the shape (tnas's kernels run it).
std::map<std::array<int64_t, 11>, std::unique_ptr<CudnnPlan>> g_plans;

// The handle, made on first use. A cuDNN that cannot start (a library missing at run time, a
// driver it does not support) fails the same way on every later call, without retrying.
cudnnHandle_t handle_locked() {
  if (g_handle) return g_handle;
  TNAS_CHECK(g_init_error.empty(), g_init_error);
  cudnnHandle_t h = nullptr;
  cudnnStatus_t s = cudnnCreate(&h);
  if (s == CUDNN_STATUS_SUCCESS) {
    s = cudnnSetStream(h, stream());
    if (s != CUDNN_STATUS_SUCCESS) (void)cudnnDestroy(h);
  }
  if (s != CUDNN_STATUS_SUCCESS) {
    g_init_error = std::string("cuDNN could not be initialised (") + cudnnGetErrorString(s) +
                   " from cudnnCreate / cudnnSetStream)";
    TNAS_CHECK(false, g_init_error);
  }
  g_handle = h;
  return h;
}

// For ConvEngine::automatic: whether cuDNN can be used at all. Where it cannot, automatic
// runs tnas's kernels for every shape, and says so once on stderr; ConvEngine::cudnn fails.
bool usable_locked() {
  if (g_handle) return true;
  if (g_init_error.empty()) {
    try {
      (void)handle_locked();
      return true;
    } catch (const Error&) {  // g_init_error says why
    }
  }
  static bool said = false;
  if (!said) {
    said = true;
    std::fprintf(stderr,
                 "tnas: %s; ConvEngine::automatic runs tnas's kernels for every convolution\n",
                 g_init_error.c_str());
  }
  return false;
}
// Shapes cuDNN's 4-d int descriptors can describe; others stay on tnas's kernels.
bool describable(const ConvShape& p) {
  const int64_t lim = int64_t(1) << 31;
  for (int64_t v : {p.N, p.C, p.H, p.W, p.K, p.R, p.S, p.stride, p.dil, p.groups, p.P, p.Q})
    if (v < 1 || v >= lim) return false;
  return p.pad >= 0 && p.C % p.groups == 0 && p.K % p.groups == 0 && p.N * p.C * p.H * p.W < lim &&
         p.N * p.K * p.P * p.Q < lim && p.K * (p.C / p.groups) * p.R * p.S < lim;
}

// The first of cuDNN's ranked candidates that tnas accepts (see the file comment).
template <class Perf>
const Perf* pick(const Perf* perf, int n) {
  for (int i = 0; i < n; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC &&
        perf[i].memory <= kMaxWorkspace && perf[i].mathType != CUDNN_TENSOR_OP_MATH &&
        perf[i].mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
      return &perf[i];
  return nullptr;
}

// The plan for p, or null where cuDNN cannot take it. Under g_mu.
std::unique_ptr<CudnnPlan> make_plan(const ConvShape& p) {
  if (!describable(p)) return nullptr;
  auto pl = std::make_unique<CudnnPlan>();
  const cudnnHandle_t h = pl->h = handle_locked();
  TNAS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&pl->xd));
  TNAS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&pl->yd));
  TNAS_CUDNN_CHECK(cudnnCreateFilterDescriptor(&pl->wd));
  TNAS_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&pl->cd));
  TNAS_CUDNN_CHECK(cudnnSetTensor4dDescriptor(pl->xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, int(p.N),
                                              int(p.C), int(p.H), int(p.W)));
  TNAS_CUDNN_CHECK(cudnnSetTensor4dDescriptor(pl->yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, int(p.N),
                                              int(p.K), int(p.P), int(p.Q)));
  TNAS_CUDNN_CHECK(cudnnSetFilter4dDescriptor(pl->wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, int(p.K),
                                              int(p.C / p.groups), int(p.R), int(p.S)));
  TNAS_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(pl->cd, int(p.pad), int(p.pad), int(p.stride),
                                                   int(p.stride), int(p.dil), int(p.dil),
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  TNAS_CUDNN_CHECK(cudnnSetConvolutionGroupCount(pl->cd, int(p.groups)));
  TNAS_CUDNN_CHECK(cudnnSetConvolutionMathType(pl->cd, CUDNN_FMA_MATH));

  int n = 0, k = 0, hh = 0, ww = 0;
  TNAS_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(pl->cd, pl->xd, pl->wd, &n, &k, &hh, &ww));
  TNAS_CHECK(n == p.N && k == p.K && hh == p.P && ww == p.Q,
             "conv2d (cudnn): cuDNN's output shape [", n, ", ", k, ", ", hh, ", ", ww,
             "] differs from tnas's [", p.N, ", ", p.K, ", ", p.P, ", ", p.Q, "] for ",
             shape_str(p));

  int found = 0;
  cudnnConvolutionFwdAlgoPerf_t fp[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  TNAS_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(
      h, pl->xd, pl->wd, pl->cd, pl->yd, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &found, fp));
  const auto* f = pick(fp, found);
  cudnnConvolutionBwdDataAlgoPerf_t dp[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  TNAS_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
      h, pl->wd, pl->yd, pl->cd, pl->xd, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &found, dp));
  const auto* d = pick(dp, found);
  cudnnConvolutionBwdFilterAlgoPerf_t wp[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  TNAS_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
      h, pl->xd, pl->yd, pl->cd, pl->wd, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &found, wp));
  const auto* w = pick(wp, found);
  if (!f || !d || !w) return nullptr;  // a direction without an acceptable algorithm

  pl->fwd = f->algo;
  pl->bwd_data = d->algo;
  pl->bwd_filter = w->algo;
  // The sizes the calls themselves ask for (the heuristics' estimates may be lower).
  TNAS_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, pl->xd, pl->wd, pl->cd, pl->yd,
                                                           pl->fwd, &pl->ws_fwd));
  TNAS_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, pl->wd, pl->yd, pl->cd, pl->xd,
                                                                pl->bwd_data, &pl->ws_data));
  TNAS_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, pl->xd, pl->yd, pl->cd, pl->wd,
                                                                  pl->bwd_filter, &pl->ws_filter));
  return pl;
}

// A scratch workspace for one call (none for 0 bytes).
class Workspace {
 public:
  explicit Workspace(size_t bytes) : bytes_(bytes) {
    if (bytes_) p_ = scratch_alloc(bytes_);
  }
  ~Workspace() {
    if (p_) scratch_free(p_, bytes_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  void* get() const { return p_; }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_;
  void* p_ = nullptr;
};
#endif  // TNAS_HAVE_CUDNN

}  // namespace

const CudnnPlan* cudnn_plan(const ConvShape& p, bool native_kernel_for_shape) {
  const ConvEngine e = conv_engine();
  if (e == ConvEngine::native || (e == ConvEngine::automatic && native_kernel_for_shape))
    return nullptr;
#ifdef TNAS_HAVE_CUDNN
  const std::array<int64_t, 11> key{p.N, p.C,      p.H,   p.W,   p.K,     p.R,
                                    p.S, p.stride, p.pad, p.dil, p.groups};
  std::lock_guard<std::mutex> lock(g_mu);
  if (e == ConvEngine::automatic && !usable_locked()) return nullptr;
  auto it = g_plans.find(key);
  if (it == g_plans.end()) it = g_plans.emplace(key, make_plan(p)).first;  // nothing on a throw
  return it->second.get();
#else
  (void)p;
  return nullptr;
#endif
}

void cudnn_prepare() {
#ifdef TNAS_HAVE_CUDNN
  const ConvEngine e = conv_engine();
  if (e == ConvEngine::native) return;
  std::lock_guard<std::mutex> lock(g_mu);
  if (e == ConvEngine::automatic)
    (void)usable_locked();
  else
    (void)handle_locked();
#endif
}

#ifdef TNAS_HAVE_CUDNN
void cudnn_conv2d_forward(const CudnnPlan& pl, const float* x, const float* w, float* y) {
  const Workspace ws(pl.ws_fwd);
  TNAS_CUDNN_CHECK(cudnnConvolutionForward(pl.h, &kOne, pl.xd, x, pl.wd, w, pl.cd, pl.fwd, ws.get(),
                                           ws.bytes(), &kZero, pl.yd, y));
}
void cudnn_conv2d_backward_input(const CudnnPlan& pl, const float* gy, const float* w, float* gx) {
  const Workspace ws(pl.ws_data);
  TNAS_CUDNN_CHECK(cudnnConvolutionBackwardData(pl.h, &kOne, pl.wd, w, pl.yd, gy, pl.cd,
                                                pl.bwd_data, ws.get(), ws.bytes(), &kZero, pl.xd,
                                                gx));
}
void cudnn_conv2d_backward_weight(const CudnnPlan& pl, const float* x, const float* gy, float* gw) {
  const Workspace ws(pl.ws_filter);
  TNAS_CUDNN_CHECK(cudnnConvolutionBackwardFilter(pl.h, &kOne, pl.xd, x, pl.yd, gy, pl.cd,
                                                  pl.bwd_filter, ws.get(), ws.bytes(), &kZero,
                                                  pl.wd, gw));
}
#else
// Without cuDNN, cudnn_plan() returns no plan, so none of these can be reached.
struct CudnnPlan {};
void cudnn_conv2d_forward(const CudnnPlan&, const float*, const float*, float*) {}
void cudnn_conv2d_backward_input(const CudnnPlan&, const float*, const float*, float*) {}
void cudnn_conv2d_backward_weight(const CudnnPlan&, const float*, const float*, float*) {}
#endif

}  // namespace detail

ConvEngine parse_conv_engine(std::string_view name) {
  const std::optional<ConvEngine> e = detail::engine_named(name);
  TNAS_CHECK(e.has_value(), "unknown convolution engine '", std::string(name), "' ",
             detail::kEngineNames);
  return *e;
}

const char* to_string(ConvEngine e) {
  switch (e) {
    case ConvEngine::automatic:
      return "auto";
    case ConvEngine::native:
      return "native";
    case ConvEngine::cudnn:
      return "cudnn";
  }
  return "?";
}

bool has_cudnn() {
#ifdef TNAS_HAVE_CUDNN
  return true;
#else
  return false;
#endif
}

ConvEngine conv_engine() {
  int e = detail::g_engine.load(std::memory_order_relaxed);
  if (e != detail::kUnset) return ConvEngine(e);
  ConvEngine from_env = ConvEngine::automatic;
  if (const char* v = std::getenv("TNAS_CUDA_CONV"); v && *v) {
    const std::optional<ConvEngine> named = detail::engine_named(v);
    TNAS_CHECK(named.has_value(),
               "environment variable TNAS_CUDA_CONV: unknown convolution engine '", v, "' ",
               detail::kEngineNames);
    from_env = *named;
    TNAS_CHECK(from_env != ConvEngine::cudnn || has_cudnn(),
               "environment variable TNAS_CUDA_CONV=cudnn: ", detail::kNoCudnn);
  }
  // The first caller decides; a concurrent set_conv_engine() wins over the environment.
  detail::g_engine.compare_exchange_strong(e, int(from_env));
  return ConvEngine(detail::g_engine.load());
}

void set_conv_engine(ConvEngine e) {
  TNAS_CHECK(e == ConvEngine::automatic || e == ConvEngine::native || e == ConvEngine::cudnn,
             "set_conv_engine: not a ConvEngine (", int(e), ")");
  TNAS_CHECK(e != ConvEngine::cudnn || has_cudnn(), "set_conv_engine(cudnn): ", detail::kNoCudnn);
  detail::g_engine.store(int(e));
}

}  // namespace tnas::cuda
