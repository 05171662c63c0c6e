// The host's share of a DARTS search step on a device: the step of bench_darts_step (batch 64,
// 32x32x3, C = 16, 8 cells, first order) on a "null device", whose kernels and device hooks
// return at once (the emulated device of tests/emulated_device.hpp with its kernel table and
// hooks replaced by no-ops). What is left is what tnas itself costs per step: op dispatch,
// shape checks, autograd, the allocator, the optimizers' bookkeeping. Counters:
//   launches  device calls (kernels + device-side copies and fills) enqueued per step
//   s_per_launch  host time per call
//   device_peak_MiB  the most device memory the step's tensors held at once (the allocator's
//                    peak of live bytes, size classes included; kernels' scratch excluded)
//   device_reserved_MiB  what the caching allocator took from the device in all (live + cached)
// so the eager GPU step cannot be faster than this time plus launches x the driver's launch
// cost, and a step replayed as a graph (graph = 1) costs the host only its staging and reads.
// Runs on any machine; it never links the CUDA backend.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <type_traits>

#include "emulated_device.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;

namespace {

long g_calls = 0;
template <class F>
struct Noop;
template <class R, class... A>
struct Noop<R (*)(A...)> {
  static R f(A...) {
    ++g_calls;
    if constexpr (!std::is_void_v<R>) return R{};
  }
};
#define TNAS_NOOP(slot) k.slot = &Noop<decltype(k.slot)>::f
#define TNAS_NOOP_HOOK(slot) h.slot = &Noop<decltype(h.slot)>::f

void install_null_device() {
  setenv("TNAS_EMULATED_DEVICE_PROTECT", "0", 1);  // nothing touches device memory anyway
  testing::install_emulated_device();              // allocator, graph capture, argument checks
  backend::Kernels& k = backend::kernels(Device::cuda);
  static_assert(backend::kKernelCount == 31, "give the new kernel slots a no-op here");
  TNAS_NOOP(unary), TNAS_NOOP(unary_backward), TNAS_NOOP(binary), TNAS_NOOP(copy_view);
  TNAS_NOOP(reduce_sum), TNAS_NOOP(conv2d_forward), TNAS_NOOP(conv2d_backward_input);
  TNAS_NOOP(conv2d_backward_weight), TNAS_NOOP(gemm), TNAS_NOOP(max_pool2d_forward);
  TNAS_NOOP(max_pool2d_backward), TNAS_NOOP(avg_pool2d_forward), TNAS_NOOP(avg_pool2d_backward);
  TNAS_NOOP(batch_norm_forward_train), TNAS_NOOP(batch_norm_forward_eval);
  TNAS_NOOP(batch_norm_backward), TNAS_NOOP(batch_norm_backward_eval);
  TNAS_NOOP(batch_norm_backward_from_output);
  TNAS_NOOP(weighted_sum_forward), TNAS_NOOP(weighted_sum_backward);
  TNAS_NOOP(log_softmax_forward), TNAS_NOOP(log_softmax_backward), TNAS_NOOP(softmax_forward);
  TNAS_NOOP(softmax_backward), TNAS_NOOP(cross_entropy_forward), TNAS_NOOP(xnor_conv2d);
  TNAS_NOOP(xnor_gemm), TNAS_NOOP(sgd_step), TNAS_NOOP(adam_step), TNAS_NOOP(sum_squares);
  TNAS_NOOP(clip_scale);
  DeviceHooks& h = device_hooks();
  // the graph hooks stay: a replay runs the recorded no-ops
  TNAS_NOOP_HOOK(copy), TNAS_NOOP_HOOK(fill), TNAS_NOOP_HOOK(gather), TNAS_NOOP_HOOK(convert);
  TNAS_NOOP_HOOK(accumulate);
}
#undef TNAS_NOOP
#undef TNAS_NOOP_HOOK

// range(0): 1 = replay the step as a device graph.
void BM_darts_step_host_overhead(benchmark::State& st) {
  static const bool once = (install_null_device(), true);
  (void)once;
  search::Supernet<space::Darts> net(
      {.in_channels = 3, .channels = 16, .cells = 8, .classes = 10, .seed = 0});
  net.to(Device::cuda);
  search::Darts darts(net, {.batch = 64, .verbose = false, .device_graph = st.range(0) != 0});
  Rng rng(0);
  data::Batch b;
  b.x = Tensor::randn({64, 3, 32, 32}, rng);
  for (int i = 0; i < 64; ++i) b.labels.push_back(i % 10);
  for (int i = 0; i < 3; ++i) darts.step(b, b, true);  // eager, capture, replay
  allocator(Device::cuda).reset_peak();
  g_calls = 0;
  for (auto _ : st) darts.step(b, b, true);
  const double per_step = double(g_calls) / double(st.iterations());
  st.counters["launches"] = per_step;
  const AllocatorStats mem = allocator(Device::cuda).stats();
  st.counters["device_peak_MiB"] = double(mem.peak_bytes) / (1 << 20);
  st.counters["device_reserved_MiB"] = double(mem.live_bytes + mem.cached_bytes) / (1 << 20);
  // launches x iterations / elapsed, inverted: host seconds per launch
  if (per_step > 0)
    st.counters["s_per_launch"] = benchmark::Counter(
        per_step, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

}  // namespace

BENCHMARK(BM_darts_step_host_overhead)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->MinTime(2.0);

BENCHMARK_MAIN();
