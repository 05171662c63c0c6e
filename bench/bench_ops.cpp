// Operator benches through tnas's public op API (autograd included), at the DARTS search
// shapes: N = 64 with (C, HW) in {(16, 32), (32, 16), (64, 8)}. "fwd" runs the forward under
// NoGrad; "fwdbwd" runs the forward with the tape on and backward() to the input and weight.
// Names match bench/libtorch/bench_libtorch_ops.cpp so bench/libtorch/run_compare.sh can put
// the two side by side.
#include <benchmark/benchmark.h>

#include "tnas/tnas.hpp"

using namespace tnas;

namespace {

enum class Kind { dw3, dw5, dil3, dil5, pw, maxpool, avgpool };

struct Case {
  Tensor x, w, gy;
  Conv2dOptions conv;
  bool is_pool = false, is_max = false;
};

Case make_case(Kind k, int64_t C, int64_t HW) {
  Rng rng(1);
  Case c;
  c.x = Tensor::randn({64, C, HW, HW}, rng);
  int ks = 3;
  switch (k) {
    case Kind::dw3:
      c.conv = {1, 1, 1, int(C)};
      break;
    case Kind::dw5:
      ks = 5, c.conv = {1, 2, 1, int(C)};
      break;
    case Kind::dil3:
      c.conv = {1, 2, 2, int(C)};
      break;
    case Kind::dil5:
      ks = 5, c.conv = {1, 4, 2, int(C)};
      break;
    case Kind::pw:
      ks = 1, c.conv = {1, 0, 1, 1};
      break;
    case Kind::maxpool:
      c.is_pool = c.is_max = true;
      break;
    case Kind::avgpool:
      c.is_pool = true;
      break;
  }
  if (!c.is_pool) {
    int64_t cin = c.conv.groups == 1 ? C : 1;
    c.w = Tensor::randn({C, cin, ks, ks}, rng, 0.1);
  }
  c.gy = Tensor::randn({64, C, HW, HW}, rng);
  return c;
}

Tensor run(const Case& c, const Tensor& x, const Tensor& w) {
  if (c.is_pool) {
    return c.is_max ? max_pool2d(x, {3, 1, 1}) : avg_pool2d(x, {3, 1, 1, false});
  }
  return conv2d(x, w, c.conv);
}

void bench(benchmark::State& st, Kind k, bool with_backward) {
  const int64_t C = st.range(0), HW = st.range(1);
  Case c = make_case(k, C, HW);
  for (auto _ : st) {
    if (!with_backward) {
      NoGrad ng;
      Tensor y = run(c, c.x, c.w);
      benchmark::DoNotOptimize(y.raw());
    } else {
      Tensor x = c.x.detach().set_requires_grad();
      Tensor w = c.w.defined() ? c.w.detach().set_requires_grad() : Tensor();
      Tensor y = run(c, x, w);
      backward(y, c.gy);
      benchmark::DoNotOptimize(x.grad().raw());
    }
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * 2 * c.x.nbytes());
}

void shapes(benchmark::internal::Benchmark* b) {
  b->Args({16, 32})->Args({32, 16})->Args({64, 8})->Unit(benchmark::kMicrosecond)->UseRealTime();
}

#define TNAS_BENCH_OP(NAME, KIND)                 \
  void BM_##NAME##_fwd(benchmark::State& st) {    \
    bench(st, Kind::KIND, false);                 \
  }                                               \
  void BM_##NAME##_fwdbwd(benchmark::State& st) { \
    bench(st, Kind::KIND, true);                  \
  }                                               \
  BENCHMARK(BM_##NAME##_fwd)->Apply(shapes);      \
  BENCHMARK(BM_##NAME##_fwdbwd)->Apply(shapes);

TNAS_BENCH_OP(dw3x3, dw3)
TNAS_BENCH_OP(dw5x5, dw5)
TNAS_BENCH_OP(dil3x3, dil3)
TNAS_BENCH_OP(dil5x5, dil5)
TNAS_BENCH_OP(pw1x1, pw)
TNAS_BENCH_OP(maxpool3x3, maxpool)
TNAS_BENCH_OP(avgpool3x3, avgpool)

}  // namespace

BENCHMARK_MAIN();
