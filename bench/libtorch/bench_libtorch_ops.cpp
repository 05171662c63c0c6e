// libtorch (CPU) peer timings for the single operators of a DARTS cell, at the
// DARTS search shapes, so they can be set beside tnas's own bench_* cases.
//
// Every case is registered as BM_<op>_<mode>/<C>/<HW> with N = 64, float32,
// contiguous NCHW:
//   op   dw3x3, dw5x5          depthwise conv (groups = C, pad k/2, no bias)
//        dil3x3, dil5x5        depthwise conv, dilation 2 (pad 2 / 4, no bias)
//        pw1x1                 1x1 conv C -> C, no bias
//        maxpool3x3            max_pool2d 3x3, stride 1, pad 1
//        avgpool3x3            avg_pool2d 3x3, stride 1, pad 1, count_include_pad = false
//   mode fwd                   forward under torch::NoGradGuard
//        fwdbwd                x (and the weight) require grad; forward, then
//                              y.backward(gy) with a fixed gy; grads set to none
//                              every iteration
// (C, HW) in {(16, 32), (32, 16), (64, 8)}.
//
// Threads: torch::set_num_threads(OMP_NUM_THREADS if set, else 2).
// Bytes processed: fwd = bytes(x) + bytes(y); fwdbwd = bytes(x, y, gy, gx).
// Allocator: see keep_heap_from_env() (LIBTORCH_BENCH_KEEP_HEAP, default on).
#include <benchmark/benchmark.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <malloc.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

constexpr int64_t kBatch = 64;
constexpr int kWarmupIters = 3;

enum class Kind { Conv, MaxPool, AvgPool };

struct OpSpec {
  const char* name;  // tnas bench name stem, e.g. "dw3x3"
  Kind kind;
  int64_t k = 3;
  int64_t pad = 0;
  int64_t dil = 1;
  bool depthwise = true;
};

const OpSpec kOps[] = {
    {"dw3x3", Kind::Conv, 3, 1, 1, true},          {"dw5x5", Kind::Conv, 5, 2, 1, true},
    {"dil3x3", Kind::Conv, 3, 2, 2, true},         {"dil5x5", Kind::Conv, 5, 4, 2, true},
    {"pw1x1", Kind::Conv, 1, 0, 1, false},         {"maxpool3x3", Kind::MaxPool, 3, 1, 1, false},
    {"avgpool3x3", Kind::AvgPool, 3, 1, 1, false},
};

const std::vector<std::vector<int64_t>> kShapes = {{16, 32}, {32, 16}, {64, 8}};

torch::Tensor apply(const OpSpec& op, const torch::Tensor& x, const torch::Tensor& w, int64_t C) {
  switch (op.kind) {
    case Kind::Conv:
      return torch::conv2d(x, w, /*bias=*/{}, /*stride=*/1, /*padding=*/op.pad, /*dilation=*/op.dil,
                           /*groups=*/op.depthwise ? C : 1);
    case Kind::MaxPool:
      return torch::max_pool2d(x, {3, 3}, {1, 1}, {1, 1});
    case Kind::AvgPool:
      return torch::avg_pool2d(x, {3, 3}, {1, 1}, {1, 1}, /*ceil_mode=*/false,
                               /*count_include_pad=*/false);
  }
  return {};
}

void run_case(benchmark::State& state, const OpSpec& op, bool backward) {
  const int64_t C = state.range(0), HW = state.range(1);
  torch::manual_seed(0);
  torch::Tensor x = torch::randn({kBatch, C, HW, HW});
  torch::Tensor w;
  if (op.kind == Kind::Conv) {
    w = op.depthwise ? torch::randn({C, 1, op.k, op.k}) : torch::randn({C, C, 1, 1});
    w.mul_(0.1);
  }
  torch::Tensor y0;
  {
    torch::NoGradGuard ng;
    y0 = apply(op, x, w, C);
  }
  const torch::Tensor gy = torch::randn_like(y0).contiguous();
  const int64_t xb = x.numel() * x.element_size(), yb = y0.numel() * y0.element_size();
  y0 = torch::Tensor();

  if (!backward) {
    torch::NoGradGuard ng;
    for (int i = 0; i < kWarmupIters; ++i) benchmark::DoNotOptimize(apply(op, x, w, C));
    for (auto _ : state) {
      torch::Tensor y = apply(op, x, w, C);
      benchmark::DoNotOptimize(y.data_ptr());
    }
    state.SetBytesProcessed(state.iterations() * (xb + yb));
  } else {
    x.requires_grad_(true);
    if (w.defined()) w.requires_grad_(true);
    auto step = [&] {
      torch::Tensor y = apply(op, x, w, C);
      y.backward(gy);
      benchmark::DoNotOptimize(x.grad().data_ptr());
      x.mutable_grad() = torch::Tensor();
      if (w.defined()) w.mutable_grad() = torch::Tensor();
    };
    for (int i = 0; i < kWarmupIters; ++i) step();
    for (auto _ : state) step();
    state.SetBytesProcessed(state.iterations() * 2 * (xb + yb));
  }
}

int threads_from_env() {
  if (const char* s = std::getenv("OMP_NUM_THREADS")) {
    const int n = std::atoi(s);
    if (n > 0) return n;
  }
  return 2;
}

}  // namespace

// Keep freed blocks inside the glibc heap so that the per-iteration output and
// gradient buffers are recycled instead of being unmapped and faulted in again.
// On VMs where a first-touch page fault is expensive (measured ~10 us per 4 KiB
// page on the 2-core dev VM) the default glibc behaviour turns every >=4 MiB
// allocation into milliseconds of page faults, which would swamp the kernels.
// LIBTORCH_BENCH_KEEP_HEAP=0 restores the glibc defaults.
bool keep_heap_from_env() {
  const char* s = std::getenv("LIBTORCH_BENCH_KEEP_HEAP");
  return !(s && std::string(s) == "0");
}

int main(int argc, char** argv) {
  const bool keep_heap = keep_heap_from_env();
  if (keep_heap) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc maximum; all bench tensors are below it
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
  const int nthreads = threads_from_env();
  torch::set_num_threads(nthreads);

  for (const OpSpec& op : kOps) {
    for (const bool bwd : {false, true}) {
      const std::string name = std::string("BM_") + op.name + (bwd ? "_fwdbwd" : "_fwd");
      auto* b = benchmark::RegisterBenchmark(
          name.c_str(), [&op, bwd](benchmark::State& st) { run_case(st, op, bwd); });
      for (const auto& s : kShapes) b->Args(s);
      b->Unit(benchmark::kMicrosecond)->UseRealTime();
    }
  }

  benchmark::AddCustomContext("torch_version", TORCH_VERSION);
  benchmark::AddCustomContext("torch_num_threads", std::to_string(torch::get_num_threads()));
  benchmark::AddCustomContext("batch", std::to_string(kBatch));
  benchmark::AddCustomContext("keep_heap", keep_heap ? "1" : "0");

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
