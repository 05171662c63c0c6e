// One first-order DARTS search step, timed: the twin of ../shared/peers/libtorch/darts_step.cpp
// (same network, same step, same flags, same JSON fields), so the two can run side by side.
//
//   bench_darts_step [--batch 64] [--hw 32] [--cin 3] [--C 16] [--layers 8] [--iters 3]
//                    [--warm 1] [--second-order 0] [--device cpu|cuda] [--graph 0]
//                    [--recompute 1]
//
// --graph 1 (with --device cuda): the step is captured as a CUDA graph after one eager step
// and replayed (DartsOptions::device_graph), as the peer's `cudagraph` variant.
//
// --recompute 0: the depthwise outputs are held from the forward to the backward instead of
// being recomputed there (nn::RecomputeDepthwise): more memory, fewer kernels.
//
// The step: alpha Adam on a "validation" batch, then SGD on the weights from a "train" batch
// with gradient-norm clipping at 5 (search::Darts::step). It rotates over 4 random batches.
// Threads: OMP_NUM_THREADS. Prints one JSON line; peak_rss_MiB is the process's peak RSS,
// tensor_peak_MiB the peak of the step's device's allocator (device memory with --device cuda).
// On CUDA every step ends by reading its loss, so a step's time includes all of its GPU work.
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "tnas/tnas.hpp"
#ifdef TNAS_HAVE_CUDA
#include "tnas/backend/cuda/cuda.hpp"
#endif

using namespace tnas;

namespace {
double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // KiB on Linux
}
}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, long> a{{"batch", 64}, {"hw", 32},      {"cin", 3},  {"C", 16},
                                {"layers", 8}, {"iters", 3},    {"warm", 1}, {"second-order", 0},
                                {"graph", 0},  {"recompute", 1}};
  Device dev = Device::cpu;
  for (int i = 1; i < argc; i += 2) {
    if (std::strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
      if (std::strcmp(argv[i + 1], "cuda") == 0) {
#ifdef TNAS_HAVE_CUDA
        if (!cuda::available()) {
          std::fprintf(stderr, "bench_darts_step: --device cuda: no usable CUDA device\n");
          return 2;
        }
        dev = Device::cuda;
#else
        std::fprintf(stderr, "bench_darts_step: --device cuda: built without CUDA\n");
        return 2;
#endif
      } else if (std::strcmp(argv[i + 1], "cpu") != 0) {
        std::fprintf(stderr, "bench_darts_step: --device cpu|cuda, got %s\n", argv[i + 1]);
        return 2;
      }
      continue;
    }
    if (std::strncmp(argv[i], "--", 2) != 0 || !a.count(argv[i] + 2) || i + 1 >= argc) {
      std::fprintf(stderr, "bench_darts_step: unknown flag or missing value: %s\n", argv[i]);
      return 2;
    }
    a[argv[i] + 2] = std::stol(argv[i + 1]);
  }
  try {
    nn::RecomputeDepthwise recompute(a["recompute"] != 0);
    search::Supernet<space::Darts> net({.in_channels = a["cin"],
                                        .channels = a["C"],
                                        .cells = a["layers"],
                                        .classes = 10,
                                        .seed = 0});
    net.to(dev);
    search::Darts darts(net, {.second_order = a["second-order"] != 0,
                              .batch = a["batch"],
                              .verbose = false,
                              .device_graph = a["graph"] != 0});
    Rng rng(0);
    std::vector<data::Batch> bs(4);
    for (auto& b : bs) {
      b.x = Tensor::randn({a["batch"], a["cin"], a["hw"], a["hw"]}, rng);
      for (long i = 0; i < a["batch"]; ++i) b.labels.push_back(int32_t(rng.next_u64() % 10));
    }
    const double t0 = train::Progress::now();
    double loss = 0;
    for (long i = 0; i < a["warm"]; ++i) loss = darts.step(bs[(i + 1) % 4], bs[i % 4], true).first;
    const double warm_s = train::Progress::now() - t0;
    std::vector<double> t;
    for (long i = 0; i < a["iters"]; ++i) {
      const double t1 = train::Progress::now();
      loss = darts.step(bs[(i + 1) % 4], bs[i % 4], true).first;
      t.push_back((train::Progress::now() - t1) * 1e3);
    }
    std::sort(t.begin(), t.end());
    const double med = t.empty() ? 0 : t[t.size() / 2], mn = t.empty() ? 0 : t.front();
    const AllocatorStats st = allocator(dev).stats();
    std::printf(
        "{\"impl\":\"tnas\",\"device\":\"%s\",\"graph\":%s,\"batch\":%ld,\"hw\":%ld,\"cin\":%ld,"
        "\"C\":%ld,"
        "\"layers\":%ld,"
        "\"second_order\":%s,\"recompute\":%s,"
        "\"step_ms_median\":%.1f,\"step_ms_min\":%.1f,\"peak_rss_MiB\":%.1f,"
        "\"tensor_peak_MiB\":%.1f,\"cached_MiB\":%.1f,\"system_allocs\":%zu,\"iters\":%ld,\"warm\":"
        "%ld,\"warmup_s\":%.2f,\"last_loss\":%.4f,\"n_weight_params\":%lld}"
        "\n",
        dev == Device::cuda ? "cuda" : "cpu", a["graph"] ? "true" : "false", a["batch"], a["hw"],
        a["cin"], a["C"], a["layers"], a["second-order"] ? "true" : "false",
        a["recompute"] ? "true" : "false", med, mn, peak_rss_mib(),
        double(st.peak_bytes) / (1 << 20), double(st.cached_bytes) / (1 << 20), st.system_allocs,
        a["iters"], a["warm"], warm_s, loss, (long long)net.num_parameters());
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_darts_step: %s\n", e.what());
    return 1;
  }
  return 0;
}
