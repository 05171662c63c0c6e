// cudasim's cuDNN (include/cudnn.h): grouped, strided, dilated NCHW float cross-correlation
// and its two gradients, computed on the host and enqueued on the handle's stream (so captured
// like kernels).
//
// What it checks, as cuDNN would refuse or misbehave: descriptors set and consistent with each
// other (channels = filter channels x groups, output dims as cudnnGetConvolution2dForwardOutputDim
// says), every operand device memory of its full size, a workspace of at least the algorithm's
// size (which it then overwrites with NaN bytes, as a real algorithm scribbles on it), beta = 0
// not reading the output (it may hold NaN).
//
// Its algorithm menu is made to test the caller's choice, not to be fast: the heuristics rank
// first an unsupported algorithm, then (unless the descriptor asks for FMA math) a TF32
// tensor-op one that really rounds its inputs to TF32, then non-deterministic ones that sum in
// float in an order that changes from call to call (as atomics do), and a deterministic one
// asking for 1 TiB of workspace, before the deterministic FMA algorithms that sum in double.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "include/cudnn.h"
#include "internal.hpp"

struct cudnnContext {
  cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
  bool set = false;
  int n = 0, c = 0, h = 0, w = 0;
};
struct cudnnFilterStruct {
  bool set = false;
  int k = 0, c = 0, h = 0, w = 0;
};
struct cudnnConvolutionStruct {
  bool set = false;
  int pad = 0, stride = 1, dil = 1, groups = 1;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

namespace {

struct Geometry {
  int N, C, H, W, K, Cg, Kg, R, S, pad, st, dil, P, Q;
  size_t x_elems() const { return size_t(N) * C * H * W; }
  size_t y_elems() const { return size_t(N) * K * P * Q; }
  size_t w_elems() const { return size_t(K) * Cg * R * S; }
};

cudnnStatus_t geometry(const cudnnTensorStruct* x, const cudnnFilterStruct* w,
                       const cudnnConvolutionStruct* c, const cudnnTensorStruct* y, Geometry* g) {
  if (!x || !w || !c || !x->set || !w->set || !c->set) return CUDNN_STATUS_BAD_PARAM;
  if (x->c != w->c * c->groups || w->k % c->groups != 0) return CUDNN_STATUS_BAD_PARAM;
  const int eh = c->dil * (w->h - 1) + 1, ew = c->dil * (w->w - 1) + 1;
  const int P = (x->h + 2 * c->pad - eh) / c->stride + 1;
  const int Q = (x->w + 2 * c->pad - ew) / c->stride + 1;
  if (x->h + 2 * c->pad < eh || x->w + 2 * c->pad < ew) return CUDNN_STATUS_BAD_PARAM;
  if (y && (!y->set || y->n != x->n || y->c != w->k || y->h != P || y->w != Q))
    return CUDNN_STATUS_BAD_PARAM;
  *g = {x->n, x->c, x->h,   x->w,      w->k,   w->c, w->k / c->groups,
        w->h, w->w, c->pad, c->stride, c->dil, P,    Q};
  return CUDNN_STATUS_SUCCESS;
}

// ---- the algorithm menu -------------------------------------------------------------------
struct Algo {
  int id;
  cudnnStatus_t status;
  cudnnDeterminism_t det;
  cudnnMathType_t math;  // CUDNN_TENSOR_OP_MATH: rounds inputs to TF32
  size_t ws;
};
constexpr size_t kHugeWorkspace = size_t(1) << 40;

std::vector<Algo> menu(int dir, const Geometry& g, cudnnMathType_t math) {
  const cudnnMathType_t m = math == CUDNN_FMA_MATH ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
  std::vector<Algo> v;
  const size_t small = 64 + sizeof(float) * size_t(g.Cg) * g.R * g.S;
  if (dir == 0) {
    v.push_back(
        {CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_STATUS_NOT_SUPPORTED, CUDNN_DETERMINISTIC, m, 0});
    if (math != CUDNN_FMA_MATH)
      v.push_back({CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, CUDNN_STATUS_SUCCESS,
                   CUDNN_DETERMINISTIC, CUDNN_TENSOR_OP_MATH, 0});
    v.push_back({CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_STATUS_SUCCESS,
                 CUDNN_DETERMINISTIC, m, small});
    v.push_back({CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_STATUS_SUCCESS,
                 CUDNN_DETERMINISTIC, m, 0});
  } else if (dir == 1) {
    if (math != CUDNN_FMA_MATH)
      v.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED, CUDNN_STATUS_SUCCESS,
                   CUDNN_DETERMINISTIC, CUDNN_TENSOR_OP_MATH, 0});
    v.push_back(
        {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, CUDNN_STATUS_SUCCESS, CUDNN_NON_DETERMINISTIC, m, 0});
    v.push_back(
        {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC, m, small});
  } else {
    v.push_back(
        {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, CUDNN_STATUS_SUCCESS, CUDNN_NON_DETERMINISTIC, m, 0});
    v.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC, m,
                 kHugeWorkspace});
    v.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC, m,
                 small + sizeof(float) * size_t(g.K)});
  }
  return v;
}
std::optional<Algo> find_algo(int dir, const Geometry& g, cudnnMathType_t math, int id) {
  for (const Algo& a : menu(dir, g, math))
    if (a.id == id && a.status == CUDNN_STATUS_SUCCESS) return a;
  return std::nullopt;
}

template <class Perf, class Id>
cudnnStatus_t heuristics(cudnnHandle_t h, int dir, const Geometry& g, cudnnMathType_t math,
                         int requested, int* returned, Perf* perf) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  if (requested < 1 || !returned || !perf) return CUDNN_STATUS_BAD_PARAM;
  const std::vector<Algo> v = menu(dir, g, math);
  int n = 0;
  for (const Algo& a : v) {
    if (n == requested) break;
    Perf p{};
    p.algo = Id(a.id);
    p.status = a.status;
    p.time = -1.f;
    p.memory = a.ws;
    p.determinism = a.det;
    p.mathType = a.math;
    perf[n++] = p;
  }
  *returned = n;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t workspace_size(cudnnHandle_t h, int dir, const Geometry& g, cudnnMathType_t math,
                             int id, size_t* bytes) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  const std::optional<Algo> a = find_algo(dir, g, math, id);
  if (!a) return CUDNN_STATUS_NOT_SUPPORTED;
  *bytes = a->ws;
  return CUDNN_STATUS_SUCCESS;
}

// ---- the computation ----------------------------------------------------------------------
float tf32(float v) {  // round to nearest, 10 mantissa bits
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & ~0x1fffu;
  std::memcpy(&v, &u, 4);
  return v;
}

struct Job {
  int dir;  // 0 forward (y from x, w), 1 backward data (dx from dy, w), 2 backward filter
  Geometry g;
  float alpha, beta;
  const float* a;  // x (0, 2) or dy (1)
  const float* b;  // w (0, 1) or dy (2)
  float* out;
  void* ws;  // algo.ws bytes
  Algo algo;
  unsigned order;  // call number, for the non-deterministic algorithms' summation order
};

// Sums terms(i, add) over one output's taps, in double (deterministic algorithms) or in float
// in an order that depends on the call (non-deterministic ones).
template <class F>
float reduce(const Job& j, int taps, F&& term) {
  if (j.algo.det == CUDNN_DETERMINISTIC) {
    double acc = 0;
    for (int t = 0; t < taps; ++t) acc += term(t);
    return float(acc);
  }
  float acc = 0.f;
  const bool rev = (j.order & 1u) != 0;
  for (int t = 0; t < taps; ++t) acc += float(term(rev ? taps - 1 - t : t));
  return acc;
}

void run_job(void* state) {
  const Job& j = *static_cast<Job*>(state);
  const Geometry& g = j.g;
  if (j.algo.ws) std::memset(j.ws, 0xff, j.algo.ws);
  const bool t32 = j.algo.math == CUDNN_TENSOR_OP_MATH;
  const auto rd = [&](const float* p, size_t i) { return double(t32 ? tf32(p[i]) : p[i]); };
  const auto store = [&](size_t i, float v) {
    j.out[i] = float(double(j.alpha) * v + (j.beta == 0.f ? 0.0 : double(j.beta) * j.out[i]));
  };
  const auto x_at = [&](int n, int c, int h, int w) {
    return ((size_t(n) * g.C + c) * g.H + h) * g.W + w;
  };
  const auto y_at = [&](int n, int k, int p, int q) {
    return ((size_t(n) * g.K + k) * g.P + p) * g.Q + q;
  };
  const auto w_at = [&](int k, int cg, int r, int s) {
    return ((size_t(k) * g.Cg + cg) * g.R + r) * g.S + s;
  };
  if (j.dir == 0) {
    for (int n = 0; n < g.N; ++n)
      for (int k = 0; k < g.K; ++k)
        for (int p = 0; p < g.P; ++p)
          for (int q = 0; q < g.Q; ++q) {
            const int c0 = (k / g.Kg) * g.Cg;
            const float v = reduce(j, g.Cg * g.R * g.S, [&](int t) {
              const int s = t % g.S, r = (t / g.S) % g.R, cg = t / (g.S * g.R);
              const int h = p * g.st - g.pad + r * g.dil, w = q * g.st - g.pad + s * g.dil;
              if (h < 0 || h >= g.H || w < 0 || w >= g.W) return 0.0;
              return rd(j.a, x_at(n, c0 + cg, h, w)) * rd(j.b, w_at(k, cg, r, s));
            });
            store(y_at(n, k, p, q), v);
          }
  } else if (j.dir == 1) {
    for (int n = 0; n < g.N; ++n)
      for (int c = 0; c < g.C; ++c)
        for (int h = 0; h < g.H; ++h)
          for (int w = 0; w < g.W; ++w) {
            const int grp = c / g.Cg, cg = c % g.Cg;
            const float v = reduce(j, g.Kg * g.R * g.S, [&](int t) {
              const int s = t % g.S, r = (t / g.S) % g.R, k = grp * g.Kg + t / (g.S * g.R);
              const int hp = h + g.pad - r * g.dil, wq = w + g.pad - s * g.dil;
              if (hp < 0 || wq < 0 || hp % g.st || wq % g.st) return 0.0;
              const int p = hp / g.st, q = wq / g.st;
              if (p >= g.P || q >= g.Q) return 0.0;
              return rd(j.a, y_at(n, k, p, q)) * rd(j.b, w_at(k, cg, r, s));
            });
            store(x_at(n, c, h, w), v);
          }
  } else {
    for (int k = 0; k < g.K; ++k)
      for (int cg = 0; cg < g.Cg; ++cg)
        for (int r = 0; r < g.R; ++r)
          for (int s = 0; s < g.S; ++s) {
            const int c = (k / g.Kg) * g.Cg + cg;
            const float v = reduce(j, g.N * g.P * g.Q, [&](int t) {
              const int q = t % g.Q, p = (t / g.Q) % g.P, n = t / (g.Q * g.P);
              const int h = p * g.st - g.pad + r * g.dil, w = q * g.st - g.pad + s * g.dil;
              if (h < 0 || h >= g.H || w < 0 || w >= g.W) return 0.0;
              return rd(j.a, x_at(n, c, h, w)) * rd(j.b, y_at(n, k, p, q));
            });
            store(w_at(k, cg, r, s), v);
          }
  }
}

unsigned g_calls = 0;

cudnnStatus_t submit(cudnnHandle_t h, int dir, const Geometry& g, cudnnMathType_t math, int algo,
                     const void* alpha, const void* beta, const void* a, size_t a_elems,
                     const void* b, size_t b_elems, void* out, size_t out_elems, void* ws,
                     size_t ws_bytes) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  if (!alpha || !beta) return CUDNN_STATUS_BAD_PARAM;
  const std::optional<Algo> al = find_algo(dir, g, math, algo);
  if (!al) return CUDNN_STATUS_NOT_SUPPORTED;
  if (ws_bytes < al->ws || (al->ws && !cudasim::is_device(ws, al->ws)))
    cudasim::fail("cudnn: algorithm " + std::to_string(algo) + " needs a device workspace of " +
                  std::to_string(al->ws) + " bytes, got " + std::to_string(ws_bytes));
  if (!cudasim::is_device(a, a_elems * sizeof(float)) ||
      !cudasim::is_device(b, b_elems * sizeof(float)) ||
      !cudasim::is_device(out, out_elems * sizeof(float)))
    cudasim::fail("cudnn: a convolution operand is not (all) device memory");
  auto* j = new Job{dir,
                    g,
                    *static_cast<const float*>(alpha),
                    *static_cast<const float*>(beta),
                    static_cast<const float*>(a),
                    static_cast<const float*>(b),
                    static_cast<float*>(out),
                    ws,
                    *al,
                    g_calls++};
  cudasim::enqueue(h->stream, run_job, j, [](void* p) { delete static_cast<Job*>(p); });
  return CUDNN_STATUS_SUCCESS;
}

template <class T>
cudnnStatus_t create(T** d) {
  if (!d) return CUDNN_STATUS_BAD_PARAM;
  *d = new T;
  return CUDNN_STATUS_SUCCESS;
}

}  // namespace

const char* cudnnGetErrorString(cudnnStatus_t s) {
  switch (s) {
    case CUDNN_STATUS_SUCCESS:
      return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED:
      return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_BAD_PARAM:
      return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED:
      return "CUDNN_STATUS_NOT_SUPPORTED";
    case CUDNN_STATUS_EXECUTION_FAILED:
      return "CUDNN_STATUS_EXECUTION_FAILED";
  }
  return "CUDNN_STATUS_UNKNOWN";
}
size_t cudnnGetVersion() {
  return 91900;
}
cudnnStatus_t cudnnCreate(cudnnHandle_t* h) {
  // CUDASIM_NO_CUDNN=1: a cuDNN that cannot start (as with a sub-library missing at run time).
  if (const char* v = std::getenv("CUDASIM_NO_CUDNN"); v && *v && std::strcmp(v, "0") != 0)
    return CUDNN_STATUS_NOT_INITIALIZED;
  return create(h);
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t h) {
  delete h;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  h->stream = s;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* d) {
  return create(d);
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t f,
                                         cudnnDataType_t t, int n, int c, int h, int w) {
  if (!d || n < 1 || c < 1 || h < 1 || w < 1) return CUDNN_STATUS_BAD_PARAM;
  if (f != CUDNN_TENSOR_NCHW || t != CUDNN_DATA_FLOAT) return CUDNN_STATUS_NOT_SUPPORTED;
  *d = {true, n, c, h, w};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* d) {
  return create(d);
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t t,
                                         cudnnTensorFormat_t f, int k, int c, int h, int w) {
  if (!d || k < 1 || c < 1 || h < 1 || w < 1) return CUDNN_STATUS_BAD_PARAM;
  if (f != CUDNN_TENSOR_NCHW || t != CUDNN_DATA_FLOAT) return CUDNN_STATUS_NOT_SUPPORTED;
  *d = {true, k, c, h, w};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* d) {
  return create(d);
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w,
                                              int u, int v, int dilation_h, int dilation_w,
                                              cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute_type) {
  if (!d || pad_h < 0 || u < 1 || dilation_h < 1) return CUDNN_STATUS_BAD_PARAM;
  // The simulation keeps square geometry (all tnas asks for) and cross-correlation.
  if (pad_w != pad_h || v != u || dilation_w != dilation_h || mode != CUDNN_CROSS_CORRELATION ||
      compute_type != CUDNN_DATA_FLOAT)
    return CUDNN_STATUS_NOT_SUPPORTED;
  d->set = true;
  d->pad = pad_h;
  d->stride = u;
  d->dil = dilation_h;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int groups) {
  if (!d || groups < 1) return CUDNN_STATUS_BAD_PARAM;
  d->groups = groups;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m) {
  if (!d) return CUDNN_STATUS_BAD_PARAM;
  d->math = m;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t cd,
                                                    const cudnnTensorDescriptor_t xd,
                                                    const cudnnFilterDescriptor_t wd, int* n,
                                                    int* c, int* h, int* w) {
  Geometry g{};
  if (const cudnnStatus_t s = geometry(xd, wd, cd, nullptr, &g); s != CUDNN_STATUS_SUCCESS)
    return s;
  *n = g.N;
  *c = g.K;
  *h = g.P;
  *w = g.Q;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t h, const cudnnTensorDescriptor_t xd, const cudnnFilterDescriptor_t wd,
    const cudnnConvolutionDescriptor_t cd, const cudnnTensorDescriptor_t yd, int requested,
    int* returned, cudnnConvolutionFwdAlgoPerf_t* perf) {
  Geometry g{};
  if (const cudnnStatus_t s = geometry(xd, wd, cd, yd, &g); s != CUDNN_STATUS_SUCCESS) return s;
  return heuristics<cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionFwdAlgo_t>(
      h, 0, g, cd->math, requested, returned, perf);
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t h, const cudnnFilterDescriptor_t wd, const cudnnTensorDescriptor_t dyd,
    const cudnnConvolutionDescriptor_t cd, const cudnnTensorDescriptor_t dxd, int requested,
    int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
  Geometry g{};
  if (const cudnnStatus_t s = geometry(dxd, wd, cd, dyd, &g); s != CUDNN_STATUS_SUCCESS) return s;
  return heuristics<cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionBwdDataAlgo_t>(
      h, 1, g, cd->math, requested, returned, perf);
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t h, const cudnnTensorDescriptor_t xd, const cudnnTensorDescriptor_t dyd,
    const cudnnConvolutionDescriptor_t cd, const cudnnFilterDescriptor_t dwd, int requested,
    int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
  Geometry g{};
  if (const cudnnStatus_t s = geometry(xd, dwd, cd, dyd, &g); s != CUDNN_STATUS_SUCCESS) return s;
  return heuristics<cudnnConvolutionBwdFilterAlgoPerf_t, cudnnConvolutionBwdFilterAlgo_t>(
      h, 2, g, cd->math, requested, returned, perf);
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(
    cudnnHandle_t h, const cudnnTensorDescriptor_t xd, const cudnnFilterDescriptor_t wd,
    const cudnnConvolutionDescriptor_t cd, const cudnnTensorDescriptor_t yd,
    cudnnConvolutionFwdAlgo_t algo, size_t* bytes) {
  Geometry g{};
  if (const cudnnStatus_t s = geometry(xd, wd, cd, yd, &g); s != CUDNN_STATUS_SUCCESS) return s;
  return workspace_size(h, 0, g, cd->math, algo, bytes);
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t h, const cudnnFilterDescriptor_t wd, const cudnnTensorDescriptor_t dyd,
    const cudnnConvolutionDescriptor_t cd, const cudnnTensorDescriptor_t dxd,
    cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
  Geometry g{};
  if (const cudnnStatus_t s = geometry(dxd, wd, cd, dyd, &g); s != CUDNN_STATUS_SUCCESS) return s;
  return workspace_size(h, 1, g, cd->math, algo, bytes);
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t h, const cudnnTensorDescriptor_t xd, const cudnnTensorDescriptor_t dyd,
    const cudnnConvolutionDescriptor_t cd, const cudnnFilterDescriptor_t dwd,
    cudnnConvolutionBwdFilterAlgo_t algo, size_t* bytes) {
  Geometry g{};
  if (const cudnnStatus_t s = geometry(xd, dwd, cd, dyd, &g); s != CUDNN_STATUS_SUCCESS) return s;
  return workspace_size(h, 2, g, cd->math, algo, bytes);
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void* alpha,
                                      const cudnnTensorDescriptor_t xd, const void* x,
                                      const cudnnFilterDescriptor_t wd, const void* w,
                                      const cudnnConvolutionDescriptor_t cd,
                                      cudnnConvolutionFwdAlgo_t algo, void* ws, size_t ws_bytes,
                                      const void* beta, const cudnnTensorDescriptor_t yd, void* y) {
  Geometry g{};
  if (const cudnnStatus_t s = geometry(xd, wd, cd, yd, &g); s != CUDNN_STATUS_SUCCESS) return s;
  return submit(h, 0, g, cd->math, algo, alpha, beta, x, g.x_elems(), w, g.w_elems(), y,
                g.y_elems(), ws, ws_bytes);
}
cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void* alpha,
                                           const cudnnFilterDescriptor_t wd, const void* w,
                                           const cudnnTensorDescriptor_t dyd, const void* dy,
                                           const cudnnConvolutionDescriptor_t cd,
                                           cudnnConvolutionBwdDataAlgo_t algo, void* ws,
                                           size_t ws_bytes, const void* beta,
                                           const cudnnTensorDescriptor_t dxd, void* dx) {
  Geometry g{};
  if (const cudnnStatus_t s = geometry(dxd, wd, cd, dyd, &g); s != CUDNN_STATUS_SUCCESS) return s;
  return submit(h, 1, g, cd->math, algo, alpha, beta, dy, g.y_elems(), w, g.w_elems(), dx,
                g.x_elems(), ws, ws_bytes);
}
cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void* alpha,
                                             const cudnnTensorDescriptor_t xd, const void* x,
                                             const cudnnTensorDescriptor_t dyd, const void* dy,
                                             const cudnnConvolutionDescriptor_t cd,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void* ws,
                                             size_t ws_bytes, const void* beta,
                                             const cudnnFilterDescriptor_t dwd, void* dw) {
  Geometry g{};
  if (const cudnnStatus_t s = geometry(xd, dwd, cd, dyd, &g); s != CUDNN_STATUS_SUCCESS) return s;
  return submit(h, 2, g, cd->math, algo, alpha, beta, x, g.x_elems(), dy, g.y_elems(), dw,
                g.w_elems(), ws, ws_bytes);
}
