// CPU kernel benches at the DARTS search shapes: N = 64 and (C, H=W) in {(16, 32), (32, 16),
// (64, 8)}. Names read BM_kernel_<op>_<fwd|fwdbwd>/C/H. Bytes processed: fwd counts x read + y
// written; fwdbwd counts every tensor each kernel reads or writes (conv: x,y + gy,gx + x,gy; pool:
// x,y + x,gy,gx). Run with OMP_NUM_THREADS=2 --benchmark_min_time=0.2.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "tnas/backend/cpu/conv.hpp"
#include "tnas/backend/cpu/gemm.hpp"
#include "tnas/backend/cpu/norm.hpp"
#include "tnas/backend/cpu/pool.hpp"
#include "tnas/core/rng.hpp"

namespace {

constexpr int64_t kN = 64;

// 64-byte aligned float buffer (tensor storage is 64-byte aligned too).
struct Buf {
  explicit Buf(int64_t n, uint64_t seed = 1)
      : n(n),
        p(static_cast<float*>(
            ::operator new[](static_cast<size_t>(n) * sizeof(float), std::align_val_t(64)))) {
    tnas::Rng rng(seed);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(rng.normal());
  }
  ~Buf() { ::operator delete[](p, std::align_val_t(64)); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  int64_t n;
  float* p;
};

tnas::cpu::Conv2dParams conv_params(const benchmark::State& st, int64_t k, int64_t dil,
                                    bool depthwise) {
  const int64_t C = st.range(0), H = st.range(1);
  const int64_t pad = dil * (k - 1) / 2;
  return tnas::cpu::Conv2dParams{.N = kN,
                                 .C = C,
                                 .H = H,
                                 .W = H,
                                 .K = C,
                                 .R = k,
                                 .S = k,
                                 .stride_h = 1,
                                 .stride_w = 1,
                                 .pad_h = pad,
                                 .pad_w = pad,
                                 .dil_h = dil,
                                 .dil_w = dil,
                                 .groups = depthwise ? C : 1};
}

void run_conv(benchmark::State& st, int64_t k, int64_t dil, bool depthwise, bool bwd) {
  const auto p = conv_params(st, k, dil, depthwise);
  const int64_t xs = p.N * p.C * p.H * p.W, ys = p.N * p.K * p.P() * p.Q();
  Buf x(xs, 1), w(p.K * (p.C / p.groups) * p.R * p.S, 2), y(ys, 3), gy(ys, 4), gx(xs, 5),
      gw(w.n, 6);
  for (auto _ : st) {
    tnas::cpu::conv2d_forward(p, x.p, w.p, y.p);
    if (bwd) {
      tnas::cpu::conv2d_backward_input(p, gy.p, w.p, gx.p);
      tnas::cpu::conv2d_backward_weight(p, x.p, gy.p, gw.p);
    }
    benchmark::DoNotOptimize(y.p);
    benchmark::DoNotOptimize(gx.p);
    benchmark::ClobberMemory();
  }
  const int64_t elems = bwd ? 3 * (xs + ys) : xs + ys;
  st.SetBytesProcessed(st.iterations() * elems * int64_t(sizeof(float)));
}

void run_pool(benchmark::State& st, bool max, bool bwd) {
  const int64_t C = st.range(0), H = st.range(1);
  const tnas::cpu::Pool2dParams p{.N = kN,
                                  .C = C,
                                  .H = H,
                                  .W = H,
                                  .kh = 3,
                                  .kw = 3,
                                  .stride_h = 1,
                                  .stride_w = 1,
                                  .pad_h = 1,
                                  .pad_w = 1,
                                  .count_include_pad = false};
  const int64_t xs = p.N * p.C * p.H * p.W, ys = p.N * p.C * p.P() * p.Q();
  Buf x(xs, 1), y(ys, 2), gy(ys, 3), gx(xs, 4);
  for (auto _ : st) {
    if (max) {
      tnas::cpu::max_pool2d_forward(p, x.p, y.p);
      if (bwd) tnas::cpu::max_pool2d_backward(p, x.p, gy.p, gx.p);
    } else {
      tnas::cpu::avg_pool2d_forward(p, x.p, y.p);
      if (bwd) tnas::cpu::avg_pool2d_backward(p, gy.p, gx.p);
    }
    benchmark::DoNotOptimize(y.p);
    benchmark::DoNotOptimize(gx.p);
    benchmark::ClobberMemory();
  }
  const int64_t elems = (xs + ys) + (bwd ? (max ? 2 * xs + ys : xs + ys) : 0);
  st.SetBytesProcessed(st.iterations() * elems * int64_t(sizeof(float)));
}

void run_bn(benchmark::State& st, bool bwd) {
  const int64_t C = st.range(0), H = st.range(1), HW = H * H, n = kN * C * HW;
  Buf x(n, 1), y(n, 2), gy(n, 3), gx(n, 4), gamma(C, 5), beta(C, 6), mean(C, 7), invstd(C, 8),
      gg(C, 9), gb(C, 10);
  for (auto _ : st) {
    tnas::cpu::batch_norm_forward_train(kN, C, HW, x.p, gamma.p, beta.p, 1e-5f, y.p, mean.p,
                                        invstd.p);
    if (bwd) {
      tnas::cpu::batch_norm_backward(kN, C, HW, x.p, gy.p, gamma.p, mean.p, invstd.p, gx.p, gg.p,
                                     gb.p);
    }
    benchmark::DoNotOptimize(y.p);
    benchmark::ClobberMemory();
  }
  const int64_t elems = bwd ? 7 * n : 3 * n;  // fwd: x twice (two stat passes) + x,y
  st.SetBytesProcessed(st.iterations() * elems * int64_t(sizeof(float)));
}

// Pointwise forward the other way: images in turn, each GEMM multi-threaded by Eigen (the
// library parallelises over the batch instead; this is here to compare).
void BM_kernel_pw1x1_fwd_eigen_mt(benchmark::State& st) {
  const auto p = conv_params(st, 1, 1, false);
  const int64_t HW = p.H * p.W, xs = p.N * p.C * HW, ys = p.N * p.K * HW;
  Buf x(xs, 1), w(p.K * p.C, 2), y(ys, 3);
  for (auto _ : st) {
    for (int64_t n = 0; n < p.N; ++n)
      tnas::cpu::gemm(false, false, p.K, HW, p.C, 1.0f, w.p, p.C, x.p + n * p.C * HW, HW, 0.0f,
                      y.p + n * p.K * HW, HW);
    benchmark::DoNotOptimize(y.p);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * (xs + ys) * int64_t(sizeof(float)));
}

void BM_kernel_dw3x3_fwd(benchmark::State& st) {
  run_conv(st, 3, 1, true, false);
}
void BM_kernel_dw3x3_fwdbwd(benchmark::State& st) {
  run_conv(st, 3, 1, true, true);
}
void BM_kernel_dw5x5_fwd(benchmark::State& st) {
  run_conv(st, 5, 1, true, false);
}
void BM_kernel_dw5x5_fwdbwd(benchmark::State& st) {
  run_conv(st, 5, 1, true, true);
}
void BM_kernel_dil3x3_fwd(benchmark::State& st) {
  run_conv(st, 3, 2, true, false);
}
void BM_kernel_dil3x3_fwdbwd(benchmark::State& st) {
  run_conv(st, 3, 2, true, true);
}
void BM_kernel_dil5x5_fwd(benchmark::State& st) {
  run_conv(st, 5, 2, true, false);
}
void BM_kernel_dil5x5_fwdbwd(benchmark::State& st) {
  run_conv(st, 5, 2, true, true);
}
void BM_kernel_pw1x1_fwd(benchmark::State& st) {
  run_conv(st, 1, 1, false, false);
}
void BM_kernel_pw1x1_fwdbwd(benchmark::State& st) {
  run_conv(st, 1, 1, false, true);
}
void BM_kernel_maxpool3x3_fwd(benchmark::State& st) {
  run_pool(st, true, false);
}
void BM_kernel_maxpool3x3_fwdbwd(benchmark::State& st) {
  run_pool(st, true, true);
}
void BM_kernel_avgpool3x3_fwd(benchmark::State& st) {
  run_pool(st, false, false);
}
void BM_kernel_avgpool3x3_fwdbwd(benchmark::State& st) {
  run_pool(st, false, true);
}
void BM_kernel_bn_fwd(benchmark::State& st) {
  run_bn(st, false);
}
void BM_kernel_bn_fwdbwd(benchmark::State& st) {
  run_bn(st, true);
}

void darts_shapes(benchmark::internal::Benchmark* b) {
  b->Args({16, 32})->Args({32, 16})->Args({64, 8})->Unit(benchmark::kMicrosecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_kernel_dw3x3_fwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_dw3x3_fwdbwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_dw5x5_fwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_dw5x5_fwdbwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_dil3x3_fwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_dil3x3_fwdbwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_dil5x5_fwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_dil5x5_fwdbwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_pw1x1_fwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_pw1x1_fwd_eigen_mt)->Apply(darts_shapes);
BENCHMARK(BM_kernel_pw1x1_fwdbwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_maxpool3x3_fwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_maxpool3x3_fwdbwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_avgpool3x3_fwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_avgpool3x3_fwdbwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_bn_fwd)->Apply(darts_shapes);
BENCHMARK(BM_kernel_bn_fwdbwd)->Apply(darts_shapes);

BENCHMARK_MAIN();
