// XNOR / popcount convolution and GEMM against tnas's own float32 kernels at the same shapes,
// in one run (issue: the XNOR 3x3 conv at 64 -> 64 channels, 32x32, batch 64 must be >= 4x
// faster than the float32 conv on 2 cores).
//
//   BM_conv3x3_f32/C/HW         conv2d forward, float32 (tnas's CPU kernel), no autograd
//   BM_conv3x3_xnor/C/HW        xnor_conv2d from float tensors: binarises and packs the input
//                               AND the weight every call
//   BM_conv3x3_xnor_packed_w/C/HW  the inference form of a binary layer: the weight is packed
//                               once, the input is binarised and packed every call
//   BM_gemm_f32/M/N/K, BM_gemm_xnor/M/N/K  the same for GEMM
// Batch 64, stride 1, padding 1; a `path` label names the XNOR kernel (avx512 / avx2 /
// portable). Run with OMP_NUM_THREADS=2 for the 2-core numbers.
#include <benchmark/benchmark.h>

#include "tnas/tnas.hpp"

using namespace tnas;

namespace {

constexpr int64_t kBatch = 64;

void shapes(benchmark::internal::Benchmark* b) {
  b->Args({64, 32})->Args({128, 16})->Args({256, 8})->Unit(benchmark::kMicrosecond);
}

void BM_conv3x3_f32(benchmark::State& st) {
  const int64_t C = st.range(0), HW = st.range(1);
  Rng rng(1);
  Tensor x = Tensor::randn({kBatch, C, HW, HW}, rng, 1.0, DType::f32);
  Tensor w = Tensor::randn({C, C, 3, 3}, rng, 1.0, DType::f32);
  NoGrad ng;
  for (auto _ : st) benchmark::DoNotOptimize(conv2d(x, w, {1, 1}).raw());
  st.counters["GMAC/s"] = benchmark::Counter(double(kBatch * HW * HW * C * C * 9) * 1e-9,
                                             benchmark::Counter::kIsIterationInvariantRate);
}

void BM_conv3x3_xnor(benchmark::State& st) {
  const int64_t C = st.range(0), HW = st.range(1);
  Rng rng(1);
  Tensor x = Tensor::randn({kBatch, C, HW, HW}, rng, 1.0, DType::f32);
  Tensor w = Tensor::randn({C, C, 3, 3}, rng, 1.0, DType::f32);
  for (auto _ : st) benchmark::DoNotOptimize(xnor_conv2d(x, w, {1, 1}).raw());
  st.SetLabel(cpu::xnor::name(cpu::xnor::best_path()));
  st.counters["GMAC/s"] = benchmark::Counter(double(kBatch * HW * HW * C * C * 9) * 1e-9,
                                             benchmark::Counter::kIsIterationInvariantRate);
}

void BM_conv3x3_xnor_packed_w(benchmark::State& st) {
  const int64_t C = st.range(0), HW = st.range(1);
  Rng rng(1);
  Tensor x = Tensor::randn({kBatch, C, HW, HW}, rng, 1.0, DType::f32);
  Tensor w = Tensor::randn({C, C, 3, 3}, rng, 1.0, DType::f32);
  const cpu::xnor::Shape s{kBatch, C, HW, HW, C, 3, 3, 1, 1, 1, 1};
  const cpu::xnor::PackedWeight pw = cpu::xnor::pack_weight(s, w.data<float>());
  Tensor y = Tensor::empty({kBatch, C, HW, HW});
  std::vector<uint64_t> scratch;
  for (auto _ : st) {
    cpu::xnor::conv2d(s, x.data<float>(), pw, y.data<float>(), scratch);
    benchmark::DoNotOptimize(y.raw());
  }
  st.SetLabel(cpu::xnor::name(cpu::xnor::best_path()));
  st.counters["GMAC/s"] = benchmark::Counter(double(kBatch * HW * HW * C * C * 9) * 1e-9,
                                             benchmark::Counter::kIsIterationInvariantRate);
}

void gemm_shapes(benchmark::internal::Benchmark* b) {
  b->Args({1024, 1024, 1024})->Args({4096, 256, 2304})->Unit(benchmark::kMicrosecond);
}

void BM_gemm_f32(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  Rng rng(2);
  Tensor a = Tensor::randn({M, K}, rng, 1.0, DType::f32);
  Tensor b = Tensor::randn({N, K}, rng, 1.0, DType::f32);
  NoGrad ng;
  for (auto _ : st) benchmark::DoNotOptimize(ops::detail::mm(a, false, b, true).raw());
}

void BM_gemm_xnor(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  Rng rng(2);
  Tensor a = Tensor::randn({M, K}, rng, 1.0, DType::f32);
  Tensor b = Tensor::randn({N, K}, rng, 1.0, DType::f32);
  for (auto _ : st) benchmark::DoNotOptimize(xnor_matmul(a, b).raw());
  st.SetLabel(cpu::xnor::name(cpu::xnor::best_path()));
}

}  // namespace

BENCHMARK(BM_conv3x3_f32)->Apply(shapes);
BENCHMARK(BM_conv3x3_xnor)->Apply(shapes);
BENCHMARK(BM_conv3x3_xnor_packed_w)->Apply(shapes);
BENCHMARK(BM_gemm_f32)->Apply(gemm_shapes);
BENCHMARK(BM_gemm_xnor)->Apply(gemm_shapes);

BENCHMARK_MAIN();
