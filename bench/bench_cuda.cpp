// CUDA kernel benches: tnas's hand-written kernels against cuDNN (where found at configure
// time: TNAS_BENCH_CUDNN) at the DARTS search shapes (N = 64; C = 16 @ 32x32, 32 @ 16x16,
// 64 @ 8x8) and at 64x256x56x56. Each iteration is timed with CUDA events on the stream the
// kernels run on (UseManualTime), and bytes processed count the compulsory traffic (every
// input read once, every output written once), so bytes/s reads against the HBM roofline.
// Without a CUDA device every case reports an error and skips.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tnas/backend/cuda/cuda.hpp"
#include "tnas/backend/registry.hpp"
#include "tnas/tnas.hpp"

#ifdef TNAS_BENCH_CUDNN
#include <cudnn.h>
#endif

using namespace tnas;

namespace {

struct Shape4 {
  int64_t N, C, H, W;
};
const std::vector<Shape4> kShapes = {
    {64, 16, 32, 32}, {64, 32, 16, 16}, {64, 64, 8, 8}, {64, 256, 56, 56}};

cudaStream_t tnas_stream() {
  return static_cast<cudaStream_t>(cuda::stream());
}

bool skip_without_gpu(benchmark::State& st) {
  if (cuda::device_count() > 0 && cuda::available()) return false;
  st.SkipWithError("no CUDA device");
  return true;
}

// Times f (which enqueues on `s`) once per iteration with events; reports bytes per iteration.
template <class F>
void time_loop(benchmark::State& st, cudaStream_t s, double bytes, F&& f) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  f();  // warm-up (and first-use costs)
  cudaStreamSynchronize(s);
  for (auto _ : st) {
    cudaEventRecord(a, s);
    f();
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    st.SetIterationTime(double(ms) / 1e3);
  }
  st.SetBytesProcessed(int64_t(bytes * double(st.iterations())));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}

Tensor dev_randn(const tnas::Shape& s, uint64_t seed) {
  Rng rng(seed);
  return Tensor::randn(s, rng).to(Device::cuda);
}

backend::ConvShape dw_shape(const Shape4& s, int R, int stride, int dil) {
  const int64_t pad = (R - 1) * dil / 2;
  const int64_t P = (s.H + 2 * pad - dil * (R - 1) - 1) / stride + 1;
  const int64_t Q = (s.W + 2 * pad - dil * (R - 1) - 1) / stride + 1;
  return {s.N, s.C, s.H, s.W, s.C, R, R, stride, pad, dil, s.C, P, Q, false};
}

// which: 0 forward, 1 backward-input, 2 backward-weight, 3 all three (a training step's share).
// relu_x: the ReLU before the conv fused into the kernels (relu_conv2d on a device).
void dwconv(benchmark::State& st, bool relu_x) {
  if (skip_without_gpu(st)) return;
  const Shape4 s = kShapes[size_t(st.range(0))];
  const int R = int(st.range(1)), stride = int(st.range(2)), dil = int(st.range(3));
  const int which = int(st.range(4));
  backend::ConvShape p = dw_shape(s, R, stride, dil);
  p.relu_x = relu_x;
  Tensor x = dev_randn({s.N, s.C, s.H, s.W}, 1), w = dev_randn({s.C, 1, R, R}, 2);
  Tensor y = dev_randn({s.N, s.C, p.P, p.Q}, 3),
         gx = Tensor::empty(x.shape(), DType::f32, Device::cuda);
  Tensor gw = Tensor::empty(w.shape(), DType::f32, Device::cuda);
  const auto& k = backend::kernels(Device::cuda);
  const double xb = double(x.nbytes()), yb = double(y.nbytes());
  // with relu_x, backward-input also reads x (its mask)
  const double bytes = which == 3 ? (relu_x ? 4 : 3) * xb + 3 * yb : xb + yb;
  time_loop(st, tnas_stream(), bytes, [&] {
    if (which == 0 || which == 3)
      k.conv2d_forward(p, x.data<float>(), w.data<float>(), y.data<float>());
    if (which == 1 || which == 3)
      k.conv2d_backward_input(p, y.data<float>(), w.data<float>(), x.data<float>(),
                              gx.data<float>());
    if (which == 2 || which == 3)
      k.conv2d_backward_weight(p, x.data<float>(), y.data<float>(), gw.data<float>());
  });
  // snprintf, not std::string concatenation: GCC 12 reports a false -Wrestrict in the latter.
  char label[96];
  std::snprintf(label, sizeof label, "N%lld C%lld %lldx%lld k%d s%d d%d%s", (long long)s.N,
                (long long)s.C, (long long)s.H, (long long)s.W, R, stride, dil,
                relu_x ? " relu" : "");
  st.SetLabel(label);
}
void BM_cuda_dwconv(benchmark::State& st) {
  dwconv(st, false);
}
void BM_cuda_relu_dwconv(benchmark::State& st) {
  dwconv(st, true);
}

void BM_cuda_maxpool3x3(benchmark::State& st) {
  if (skip_without_gpu(st)) return;
  const Shape4 s = kShapes[size_t(st.range(0))];
  const bool bwd = st.range(1) != 0;
  const backend::PoolShape p{s.N, s.C, s.H, s.W, 3, 1, 1, s.H, s.W, false};
  Tensor x = dev_randn({s.N, s.C, s.H, s.W}, 4), y = dev_randn(x.shape(), 5);
  Tensor gx = Tensor::empty(x.shape(), DType::f32, Device::cuda);
  const auto& k = backend::kernels(Device::cuda);
  time_loop(st, tnas_stream(), double(x.nbytes()) * (bwd ? 3 : 2), [&] {
    if (bwd)
      k.max_pool2d_backward(p, x.data<float>(), y.data<float>(), gx.data<float>());
    else
      k.max_pool2d_forward(p, x.data<float>(), y.data<float>());
  });
}

void BM_cuda_weighted_sum8(benchmark::State& st) {
  if (skip_without_gpu(st)) return;
  const Shape4 s = kShapes[size_t(st.range(0))];
  const bool bwd = st.range(1) != 0;
  std::vector<Tensor> ys, gys;
  std::vector<const float*> py;
  std::vector<float*> pg;
  for (int i = 0; i < 8; ++i) {
    ys.push_back(dev_randn({s.N, s.C, s.H, s.W}, 10 + i));
    gys.push_back(Tensor::empty(ys.back().shape(), DType::f32, Device::cuda));
    py.push_back(ys.back().data<float>());
    pg.push_back(gys.back().data<float>());
  }
  Tensor w = dev_randn({8}, 30), gw = Tensor::empty({8}, DType::f32, Device::cuda);
  Tensor out = Tensor::empty(ys[0].shape(), DType::f32, Device::cuda);
  const auto& k = backend::kernels(Device::cuda);
  const double b = double(out.nbytes());
  time_loop(st, tnas_stream(), bwd ? 17 * b : 9 * b, [&] {
    if (bwd)
      k.weighted_sum_backward(8, py.data(), w.data<float>(), out.data<float>(), pg.data(),
                              gw.data<float>(), out.numel());
    else
      k.weighted_sum_forward(8, py.data(), w.data<float>(), out.data<float>(), out.numel());
  });
}

void BM_cuda_batchnorm_train(benchmark::State& st) {
  if (skip_without_gpu(st)) return;
  const Shape4 s = kShapes[size_t(st.range(0))];
  const bool bwd = st.range(1) != 0;
  Tensor x = dev_randn({s.N, s.C, s.H, s.W}, 40),
         y = Tensor::empty(x.shape(), DType::f32, Device::cuda);
  Tensor g = dev_randn({s.C}, 41), b = dev_randn({s.C}, 42);
  Tensor mean = Tensor::empty({s.C}, DType::f32, Device::cuda), inv = mean.clone();
  Tensor dg = mean.clone(), db = mean.clone();
  const auto& k = backend::kernels(Device::cuda);
  const double xb = double(x.nbytes());
  time_loop(st, tnas_stream(), bwd ? 3 * xb : 2 * xb, [&] {
    if (bwd)
      k.batch_norm_backward(s.N, s.C, s.H * s.W, x.data<float>(), x.data<float>(), g.data<float>(),
                            mean.data<float>(), inv.data<float>(), y.data<float>(),
                            dg.data<float>(), db.data<float>());
    else
      k.batch_norm_forward_train(s.N, s.C, s.H * s.W, x.data<float>(), g.data<float>(),
                                 b.data<float>(), 1e-5f, 0.1f, y.data<float>(), mean.data<float>(),
                                 inv.data<float>(), nullptr, nullptr);
  });
}

// ---- dense convolutions through each engine ----------------------------------------------
// What ConvEngine::automatic decides for shapes tnas has no tuned kernel for: tnas's direct
// kernels (native) against cuDNN through the same kernel-table entries. range(0): shape
// (0: the DARTS stem, 64x3x32x32 -> 48, 3x3; 1: a ResNet-style 64x64x32x32 -> 64, 3x3;
// 2: a reduction 64x64x32x32 -> 128, 3x3 stride 2), range(1): 0 native / 1 cudnn,
// range(2): 0 forward, 1 backward-input, 2 backward-weight, 3 all three.
void BM_cuda_dense_conv(benchmark::State& st) {
  if (skip_without_gpu(st)) return;
  const cuda::ConvEngine e = st.range(1) ? cuda::ConvEngine::cudnn : cuda::ConvEngine::native;
  if (e == cuda::ConvEngine::cudnn && !cuda::has_cudnn()) {
    st.SkipWithError("this build has no cuDNN");
    return;
  }
  const backend::ConvShape shapes[] = {{64, 3, 32, 32, 48, 3, 3, 1, 1, 1, 1, 32, 32, false},
                                       {64, 64, 32, 32, 64, 3, 3, 1, 1, 1, 1, 32, 32, false},
                                       {64, 64, 32, 32, 128, 3, 3, 2, 1, 1, 1, 16, 16, false}};
  const backend::ConvShape& p = shapes[st.range(0)];
  const int which = int(st.range(2));
  const cuda::ConvEngine saved = cuda::conv_engine();
  cuda::set_conv_engine(e);
  Tensor x = dev_randn({p.N, p.C, p.H, p.W}, 80), w = dev_randn({p.K, p.C, p.R, p.S}, 81);
  Tensor y = dev_randn({p.N, p.K, p.P, p.Q}, 82);
  Tensor gx = Tensor::empty(x.shape(), DType::f32, Device::cuda);
  Tensor gw = Tensor::empty(w.shape(), DType::f32, Device::cuda);
  const auto& k = backend::kernels(Device::cuda);
  const double xb = double(x.nbytes()), yb = double(y.nbytes()), wb = double(w.nbytes());
  const double bytes = which == 3 ? 3 * (xb + yb + wb) : xb + yb + wb;
  time_loop(st, tnas_stream(), bytes, [&] {
    if (which == 0 || which == 3)
      k.conv2d_forward(p, x.data<float>(), w.data<float>(), y.data<float>());
    if (which == 1 || which == 3)
      k.conv2d_backward_input(p, y.data<float>(), w.data<float>(), nullptr, gx.data<float>());
    if (which == 2 || which == 3)
      k.conv2d_backward_weight(p, x.data<float>(), y.data<float>(), gw.data<float>());
  });
  cuda::set_conv_engine(saved);
  st.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(p.N * p.K * p.P * p.Q * p.C * p.R * p.S) *
                             (which == 3 ? 3 : 1) * double(st.iterations()),
                         benchmark::Counter::kIsRate);
  char label[96];
  std::snprintf(label, sizeof label, "N%lld %lld->%lld %lldx%lld s%lld %s", (long long)p.N,
                (long long)p.C, (long long)p.K, (long long)p.H, (long long)p.W, (long long)p.stride,
                cuda::to_string(e));
  st.SetLabel(label);
}

// ---- binary convolution at issue #5's shape ----------------------------------------------
// N 64, 256 -> 256 channels, 28x28, 3x3, padding 1: the XNOR kernels against cuDNN's float32,
// TF32 and float16 convolutions of the same shape (BM_cudnn_conv_xnor_shape below).
const backend::ConvShape kXnorShape{64, 256, 28, 28, 256, 3, 3, 1, 1, 1, 1, 28, 28, false};

// range(0): 0 = the kernel-table entry (float x and w in, both packed every call), 1 = the
// weights packed once (xnor_pack_weights), x packed every call. range(1): TNAS_XNOR_PATH
// auto / simt / mma.
void BM_cuda_xnor_conv(benchmark::State& st) {
  if (skip_without_gpu(st)) return;
  const bool prepacked = st.range(0) != 0;
  const char* const paths[] = {"auto", "simt", "mma"};
  const char* path = paths[st.range(1)];
  setenv("TNAS_XNOR_PATH", path, 1);
  const backend::ConvShape& p = kXnorShape;
  Tensor x = dev_randn({p.N, p.C, p.H, p.W}, 70), w = dev_randn({p.K, p.C, p.R, p.S}, 71);
  Tensor y = Tensor::empty({p.N, p.K, p.P, p.Q}, DType::f32, Device::cuda);
  Tensor packed;
  if (prepacked) {
    packed = Tensor::empty({int64_t(cuda::xnor_packed_weights_bytes(p) / 4 + 1)}, DType::f32,
                           Device::cuda);
    cuda::xnor_pack_weights(p, w.data<float>(), packed.raw());
  }
  const auto& k = backend::kernels(Device::cuda);
  const double bytes = double(x.nbytes() + y.nbytes() + (prepacked ? 0 : w.nbytes()));
  time_loop(st, tnas_stream(), bytes, [&] {
    if (prepacked)
      cuda::xnor_conv2d_packed(p, x.data<float>(), packed.raw(), y.data<float>());
    else
      k.xnor_conv2d(p, x.data<float>(), w.data<float>(), y.data<float>());
  });
  unsetenv("TNAS_XNOR_PATH");
  char label[64];
  std::snprintf(label, sizeof label, "%s, %s", prepacked ? "w pre-packed" : "float x, w in", path);
  st.SetLabel(label);
}

#ifdef TNAS_BENCH_CUDNN
#define CUDNN_OK(x)                              \
  do {                                           \
    cudnnStatus_t _s = (x);                      \
    if (_s != CUDNN_STATUS_SUCCESS) {            \
      st.SkipWithError(cudnnGetErrorString(_s)); \
      return;                                    \
    }                                            \
  } while (0)

// cuDNN's depthwise convolution (group count C) on the same stream, with the algorithm its
// heuristic ranks first and the workspace that algorithm asks for.
void BM_cudnn_dwconv(benchmark::State& st) {
  if (skip_without_gpu(st)) return;
  const Shape4 s = kShapes[size_t(st.range(0))];
  const int R = int(st.range(1)), stride = int(st.range(2)), dil = int(st.range(3));
  const int which = int(st.range(4));
  const backend::ConvShape p = dw_shape(s, R, stride, dil);
  cudnnHandle_t h;
  CUDNN_OK(cudnnCreate(&h));
  CUDNN_OK(cudnnSetStream(h, tnas_stream()));
  cudnnTensorDescriptor_t xd, yd;
  cudnnFilterDescriptor_t wd;
  cudnnConvolutionDescriptor_t cd;
  cudnnCreateTensorDescriptor(&xd);
  cudnnCreateTensorDescriptor(&yd);
  cudnnCreateFilterDescriptor(&wd);
  cudnnCreateConvolutionDescriptor(&cd);
  CUDNN_OK(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, int(s.N), int(s.C),
                                      int(s.H), int(s.W)));
  CUDNN_OK(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, int(s.N), int(s.C),
                                      int(p.P), int(p.Q)));
  CUDNN_OK(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, int(s.C), 1, R, R));
  CUDNN_OK(cudnnSetConvolution2dDescriptor(cd, int(p.pad), int(p.pad), stride, stride, dil, dil,
                                           CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  CUDNN_OK(cudnnSetConvolutionGroupCount(cd, int(s.C)));
  Tensor x = dev_randn({s.N, s.C, s.H, s.W}, 1), w = dev_randn({s.C, 1, R, R}, 2);
  Tensor y = dev_randn({s.N, s.C, p.P, p.Q}, 3),
         gx = Tensor::empty(x.shape(), DType::f32, Device::cuda);
  Tensor gw = Tensor::empty(w.shape(), DType::f32, Device::cuda);
  int n = 0;
  cudnnConvolutionFwdAlgoPerf_t fa;
  cudnnConvolutionBwdDataAlgoPerf_t da;
  cudnnConvolutionBwdFilterAlgoPerf_t fa2;
  CUDNN_OK(cudnnGetConvolutionForwardAlgorithm_v7(h, xd, wd, cd, yd, 1, &n, &fa));
  CUDNN_OK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, wd, yd, cd, xd, 1, &n, &da));
  CUDNN_OK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, xd, yd, cd, wd, 1, &n, &fa2));
  size_t ws = 0, t = 0;
  cudnnGetConvolutionForwardWorkspaceSize(h, xd, wd, cd, yd, fa.algo, &t), ws = std::max(ws, t);
  cudnnGetConvolutionBackwardDataWorkspaceSize(h, wd, yd, cd, xd, da.algo, &t),
      ws = std::max(ws, t);
  cudnnGetConvolutionBackwardFilterWorkspaceSize(h, xd, yd, cd, wd, fa2.algo, &t),
      ws = std::max(ws, t);
  Tensor work = Tensor::empty({int64_t(ws / 4 + 1)}, DType::f32, Device::cuda);
  const float one = 1.f, zero = 0.f;
  const double xb = double(x.nbytes()), yb = double(y.nbytes());
  time_loop(st, tnas_stream(), which == 3 ? 3 * xb + 3 * yb : xb + yb, [&] {
    if (which == 0 || which == 3)
      cudnnConvolutionForward(h, &one, xd, x.raw(), wd, w.raw(), cd, fa.algo, work.raw(), ws, &zero,
                              yd, y.raw());
    if (which == 1 || which == 3)
      cudnnConvolutionBackwardData(h, &one, wd, w.raw(), yd, y.raw(), cd, da.algo, work.raw(), ws,
                                   &zero, xd, gx.raw());
    if (which == 2 || which == 3)
      cudnnConvolutionBackwardFilter(h, &one, xd, x.raw(), yd, y.raw(), cd, fa2.algo, work.raw(),
                                     ws, &zero, wd, gw.raw());
  });
  cudnnDestroyTensorDescriptor(xd);
  cudnnDestroyTensorDescriptor(yd);
  cudnnDestroyFilterDescriptor(wd);
  cudnnDestroyConvolutionDescriptor(cd);
  cudnnDestroy(h);
}

void BM_cudnn_maxpool3x3(benchmark::State& st) {
  if (skip_without_gpu(st)) return;
  const Shape4 s = kShapes[size_t(st.range(0))];
  const bool bwd = st.range(1) != 0;
  cudnnHandle_t h;
  CUDNN_OK(cudnnCreate(&h));
  CUDNN_OK(cudnnSetStream(h, tnas_stream()));
  cudnnTensorDescriptor_t xd;
  cudnnPoolingDescriptor_t pd;
  cudnnCreateTensorDescriptor(&xd);
  cudnnCreatePoolingDescriptor(&pd);
  CUDNN_OK(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, int(s.N), int(s.C),
                                      int(s.H), int(s.W)));
  CUDNN_OK(cudnnSetPooling2dDescriptor(pd, CUDNN_POOLING_MAX, CUDNN_NOT_PROPAGATE_NAN, 3, 3, 1, 1,
                                       1, 1));
  Tensor x = dev_randn({s.N, s.C, s.H, s.W}, 4), y = dev_randn(x.shape(), 5);
  Tensor gy = dev_randn(x.shape(), 6), gx = Tensor::empty(x.shape(), DType::f32, Device::cuda);
  const float one = 1.f, zero = 0.f;
  const double b = double(x.nbytes());
  time_loop(st, tnas_stream(), bwd ? 3 * b : 2 * b, [&] {
    if (bwd)  // cuDNN's backward also reads y (4 tensors of traffic; counted as ours: 3)
      cudnnPoolingBackward(h, pd, &one, xd, y.raw(), xd, gy.raw(), xd, x.raw(), &zero, xd,
                           gx.raw());
    else
      cudnnPoolingForward(h, pd, &one, xd, x.raw(), &zero, xd, y.raw());
  });
  cudnnDestroyTensorDescriptor(xd);
  cudnnDestroyPoolingDescriptor(pd);
  cudnnDestroy(h);
}

void BM_cudnn_batchnorm_train(benchmark::State& st) {
  if (skip_without_gpu(st)) return;
  const Shape4 s = kShapes[size_t(st.range(0))];
  const bool bwd = st.range(1) != 0;
  cudnnHandle_t h;
  CUDNN_OK(cudnnCreate(&h));
  CUDNN_OK(cudnnSetStream(h, tnas_stream()));
  cudnnTensorDescriptor_t xd, cd;
  cudnnCreateTensorDescriptor(&xd);
  cudnnCreateTensorDescriptor(&cd);
  CUDNN_OK(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, int(s.N), int(s.C),
                                      int(s.H), int(s.W)));
  CUDNN_OK(cudnnSetTensor4dDescriptor(cd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, int(s.C), 1, 1));
  Tensor x = dev_randn({s.N, s.C, s.H, s.W}, 40),
         y = Tensor::empty(x.shape(), DType::f32, Device::cuda);
  Tensor g = dev_randn({s.C}, 41), b = dev_randn({s.C}, 42);
  Tensor mean = Tensor::zeros({s.C}, DType::f32, Device::cuda), inv = mean.clone();
  Tensor dg = mean.clone(), db = mean.clone();
  const float one = 1.f, zero = 0.f;
  const double xb = double(x.nbytes());
  time_loop(st, tnas_stream(), bwd ? 3 * xb : 2 * xb, [&] {
    if (bwd)
      cudnnBatchNormalizationBackward(h, CUDNN_BATCHNORM_SPATIAL, &one, &zero, &one, &zero, xd,
                                      x.raw(), xd, x.raw(), xd, y.raw(), cd, g.raw(), dg.raw(),
                                      db.raw(), 1e-5, mean.raw(), inv.raw());
    else
      cudnnBatchNormalizationForwardTraining(h, CUDNN_BATCHNORM_SPATIAL, &one, &zero, xd, x.raw(),
                                             xd, y.raw(), cd, g.raw(), b.raw(), 0.1, nullptr,
                                             nullptr, 1e-5, mean.raw(), inv.raw());
  });
  cudnnDestroyTensorDescriptor(xd);
  cudnnDestroyTensorDescriptor(cd);
  cudnnDestroy(h);
}

// cuDNN's forward convolution at kXnorShape. range(0): 0 = float32 (CUDNN_FMA_MATH: no TF32),
// 1 = TF32 (float data, tensor-op math), 2 = float16 NHWC (tensor-op math, float accumulation).
// The algorithm is the fastest cudnnFindConvolutionForwardAlgorithm measures for that math.
void BM_cudnn_conv_xnor_shape(benchmark::State& st) {
  if (skip_without_gpu(st)) return;
  const int prec = int(st.range(0));
  const backend::ConvShape& p = kXnorShape;
  cudnnHandle_t h;
  CUDNN_OK(cudnnCreate(&h));
  CUDNN_OK(cudnnSetStream(h, tnas_stream()));
  cudnnTensorDescriptor_t xd, yd;
  cudnnFilterDescriptor_t wd;
  cudnnConvolutionDescriptor_t cd;
  cudnnCreateTensorDescriptor(&xd);
  cudnnCreateTensorDescriptor(&yd);
  cudnnCreateFilterDescriptor(&wd);
  cudnnCreateConvolutionDescriptor(&cd);
  const cudnnDataType_t dt = prec == 2 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
  const cudnnTensorFormat_t fmt = prec == 2 ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  CUDNN_OK(cudnnSetTensor4dDescriptor(xd, fmt, dt, int(p.N), int(p.C), int(p.H), int(p.W)));
  CUDNN_OK(cudnnSetTensor4dDescriptor(yd, fmt, dt, int(p.N), int(p.K), int(p.P), int(p.Q)));
  CUDNN_OK(
      cudnnSetFilter4dDescriptor(wd, dt, fmt, int(p.K), int(p.C / p.groups), int(p.R), int(p.S)));
  CUDNN_OK(cudnnSetConvolution2dDescriptor(cd, int(p.pad), int(p.pad), int(p.stride), int(p.stride),
                                           int(p.dil), int(p.dil), CUDNN_CROSS_CORRELATION,
                                           CUDNN_DATA_FLOAT));
  const cudnnMathType_t math = prec == 0 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
  CUDNN_OK(cudnnSetConvolutionMathType(cd, math));
  // Buffers as float32 tensors (float16 ones use half of them); float16 data is 0x3C3C (1.06).
  const int64_t esz = prec == 2 ? 2 : 4;
  const int64_t nx = p.N * p.C * p.H * p.W, nw = p.K * (p.C / p.groups) * p.R * p.S,
                ny = p.N * p.K * p.P * p.Q;
  auto buffer = [&](int64_t n, uint64_t seed) {
    if (prec != 2) return dev_randn({n}, seed);
    Tensor t = Tensor::empty({(n * esz + 3) / 4}, DType::f32, Device::cuda);
    cudaMemsetAsync(t.raw(), 0x3C, size_t(n * esz), tnas_stream());
    return t;
  };
  Tensor x = buffer(nx, 72), w = buffer(nw, 73), y = buffer(ny, 74);
  cudaStreamSynchronize(tnas_stream());
  cudnnConvolutionFwdAlgoPerf_t perf[16];
  int n = 0;
  CUDNN_OK(cudnnFindConvolutionForwardAlgorithm(h, xd, wd, cd, yd, 16, &n, perf));
  int best = -1;
  for (int i = 0; i < n && best < 0; ++i)  // sorted fastest first
    if (perf[i].status == CUDNN_STATUS_SUCCESS && (prec != 0 || perf[i].mathType == CUDNN_FMA_MATH))
      best = i;
  if (best < 0) {
    st.SkipWithError("cuDNN found no algorithm for this math type");
    return;
  }
  CUDNN_OK(cudnnSetConvolutionMathType(cd, perf[best].mathType));
  size_t ws = 0;
  CUDNN_OK(cudnnGetConvolutionForwardWorkspaceSize(h, xd, wd, cd, yd, perf[best].algo, &ws));
  Tensor work = Tensor::empty({int64_t(ws / 4 + 1)}, DType::f32, Device::cuda);
  const float one = 1.f, zero = 0.f;
  time_loop(st, tnas_stream(), double((nx + nw + ny) * esz), [&] {
    cudnnConvolutionForward(h, &one, xd, x.raw(), wd, w.raw(), cd, perf[best].algo, work.raw(), ws,
                            &zero, yd, y.raw());
  });
  char label[64];
  const char* const names[] = {"fp32 (FMA)", "TF32", "fp16 NHWC"};
  std::snprintf(label, sizeof label, "%s algo %d math %d", names[prec], int(perf[best].algo),
                int(perf[best].mathType));
  st.SetLabel(label);
  cudnnDestroyTensorDescriptor(xd);
  cudnnDestroyTensorDescriptor(yd);
  cudnnDestroyFilterDescriptor(wd);
  cudnnDestroyConvolutionDescriptor(cd);
  cudnnDestroy(h);
}
#endif

// (R, stride, dilation) of the DARTS ops: sep_conv 3x3 / 5x5, their stride-2 reduction form,
// dil_conv 3x3 / 5x5.
constexpr int64_t kDwConfigs[][3] = {{3, 1, 1}, {3, 2, 1}, {5, 1, 1}, {3, 1, 2}, {5, 1, 2}};

// Shapes x (R, stride, dilation) of the DARTS ops x {fwd, bwd-input, bwd-weight, all}.
void dw_args(benchmark::internal::Benchmark* b) {
  for (int64_t s = 0; s < int64_t(kShapes.size()); ++s)
    for (const auto& c : kDwConfigs)
      for (int which = 0; which < 4; ++which) b->Args({s, c[0], c[1], c[2], which});
}
// The fused-ReLU variant: the forward and the whole training-step share (the backward-input
// mask and the backward-weight ReLU read x once more; no relu(x) tensor is written or read).
void dw_relu_args(benchmark::internal::Benchmark* b) {
  for (int64_t s = 0; s < int64_t(kShapes.size()); ++s)
    for (const auto& c : kDwConfigs)
      for (int which : {0, 3}) b->Args({s, c[0], c[1], c[2], which});
}
void shape_dir_args(benchmark::internal::Benchmark* b) {
  for (int64_t s = 0; s < int64_t(kShapes.size()); ++s)
    for (int d = 0; d < 2; ++d) b->Args({s, d});
}

}  // namespace

BENCHMARK(BM_cuda_dwconv)->Apply(dw_args)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_relu_dwconv)->Apply(dw_relu_args)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_maxpool3x3)
    ->Apply(shape_dir_args)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_weighted_sum8)
    ->Apply(shape_dir_args)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_batchnorm_train)
    ->Apply(shape_dir_args)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_dense_conv)
    ->ArgsProduct({{0, 1, 2}, {0, 1}, {0, 1, 2, 3}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_xnor_conv)
    ->ArgsProduct({{0, 1}, {0, 1, 2}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
#ifdef TNAS_BENCH_CUDNN
BENCHMARK(BM_cudnn_conv_xnor_shape)
    ->DenseRange(0, 2)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cudnn_dwconv)->Apply(dw_args)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cudnn_maxpool3x3)
    ->Apply(shape_dir_args)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cudnn_batchnorm_train)
    ->Apply(shape_dir_args)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
#endif

BENCHMARK_MAIN();
