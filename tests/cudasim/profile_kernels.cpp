// The memory traffic of tnas's CUDA kernels, from the simulator's profile (profile.hpp): the
// kernels of issue #4's bandwidth target (depthwise and dilated 3x3 convolutions at 256
// channels of 56x56) and of the DARTS step's other memory-bound ops run through tnas's ops on
// the simulated device (race-checking build), and the test checks what a GPU's memory system
// would see: each tensor read from and written to DRAM once, stores in full sectors, the tile
// halos' extra L2 traffic small, and shared memory without bank conflicts beyond a bound.
// A table of every kernel is printed.
//
// These are properties of the kernels' access patterns, not timings: they say whether a kernel
// can reach the copy bandwidth, not that it does (occupancy, latency hiding and the caches'
// real behaviour are a GPU's to show; tools/device-check measures them). The batch is 1 where
// the target's is 64: each image is its own set of blocks, so the traffic per image is the
// same.
#include <doctest/doctest.h>

#include <cstdio>
#include <functional>
#include <string>

#include "profile.hpp"
#include "tnas/backend/cuda/cuda.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;
using cudasim::KernelProfile;

namespace {

bool profiling() {
  // (the race checker has its own tests; here it would only triple the time)
  static const bool on = cuda::available() && cudasim::profile_enable(true, false);
  return on;
}
#define SKIP_WITHOUT_PROFILE()                                                    \
  if (!profiling()) {                                                             \
    MESSAGE("skipped: profiling needs the race-checking build of the simulator"); \
    return;                                                                       \
  }

// The kernels that `run` launches, with a table of them on stdout.
std::vector<KernelProfile> profile(const std::string& what, const std::function<void()>& run) {
  cudasim::profile_take();
  run();
  cuda::synchronize();
  auto ps = cudasim::profile_take();
  std::printf("== %s\n%s", what.c_str(), cudasim::profile_table(ps).c_str());
  return ps;
}
// The one kernel among ps whose short name starts with `prefix`.
const KernelProfile& kernel(const std::vector<KernelProfile>& ps, const std::string& prefix) {
  const KernelProfile* found = nullptr;
  for (const auto& p : ps)
    if (cudasim::short_name(p.name).rfind(prefix, 0) == 0) {
      REQUIRE_MESSAGE(!found, "two kernels named ", prefix, "...");
      found = &p;
    }
  REQUIRE_MESSAGE(found, "no kernel named ", prefix, "...");
  return *found;
}

Tensor rnd(const Shape& s, uint64_t seed) {
  Rng rng(seed);
  return Tensor::randn(s, rng).to(Device::cuda);
}

// A memory-bound kernel that reads `in` bytes of tensors and writes `out`: DRAM traffic within
// 2% (plus a page for small operands) of that, stores in whole sectors, the halo re-reads
// between blocks (L2 beyond DRAM) within `halo`, and shared memory within `conflicts`.
void check_traffic(const KernelProfile& k, double in, double out, double halo = 1.25,
                   double conflicts = 1.5) {
  INFO(cudasim::short_name(k.name));
  CHECK(double(k.dram_ld_bytes) <= 1.02 * in + 4096);
  CHECK(double(k.dram_ld_bytes) >= 0.98 * in);
  CHECK(double(k.dram_st_bytes) == doctest::Approx(out).epsilon(0.02));
  CHECK(k.st_efficiency() >= 0.98);
  CHECK(double(k.l2_ld_bytes) <= halo * double(k.dram_ld_bytes));
  CHECK(k.smem_conflict_factor() <= conflicts);
}

}  // namespace

TEST_CASE("profile: depthwise and dilated 3x3 at 256x56x56 move each tensor through DRAM once") {
  SKIP_WITHOUT_PROFILE();
  const Shape shape{1, 256, 56, 56};
  const double bytes = double(shape.numel()) * 4, wbytes = 256 * 9 * 4;
  Tensor x = rnd(shape, 1), w = rnd({256, 1, 3, 3}, 2), g = rnd(shape, 3);
  for (int dil : {1, 2}) {
    CAPTURE(dil);
    const Conv2dOptions o{.padding = dil, .dilation = dil, .groups = 256};
    const std::string what = dil == 1 ? "depthwise 3x3" : "dilated 3x3 (d = 2)";
    Tensor y;
    auto fwd = profile(what + " forward", [&] { y = conv2d(x, w, o); });
    check_traffic(kernel(fwd, "dw_forward_kernel"), bytes + wbytes, bytes);
    Tensor xg = x.detach().set_requires_grad(true), wg = w.detach().set_requires_grad(true);
    Tensor yg = conv2d(xg, wg, o);
    cuda::synchronize();
    auto bwd = profile(what + " backward (input and weight gradients)", [&] { backward(yg, g); });
    // backward-input is the forward kernel with the weights rotated
    check_traffic(kernel(bwd, "dw_forward_kernel"), bytes + wbytes, bytes);
    // the weight gradient reads x and gy and writes one partial sum per block
    const KernelProfile& wk = kernel(bwd, "dw_wgrad_partial_kernel");
    CHECK(double(wk.dram_ld_bytes) <= 1.02 * 2 * bytes);
    CHECK(double(wk.dram_st_bytes) <= 0.05 * bytes);
    CHECK(double(wk.l2_ld_bytes) <= 1.25 * double(wk.dram_ld_bytes));
    CHECK(wk.smem_conflict_factor() <= 1.5);
  }
}

TEST_CASE("profile: the DARTS step's other memory-bound kernels at 64x16x32x32") {
  SKIP_WITHOUT_PROFILE();
  const Shape shape{64, 16, 32, 32};
  const double bytes = double(shape.numel()) * 4;
  std::vector<Tensor> ys;
  for (int k = 0; k < 7; ++k) ys.push_back(rnd(shape, 10 + uint64_t(k)));
  Tensor wts = rnd({7}, 20);
  auto ws = profile("weighted_sum of 7 candidates", [&] { (void)weighted_sum(ys, wts); });
  check_traffic(kernel(ws, "weighted_sum_kernel"), 7 * bytes + 28, bytes);
  Tensor x = rnd(shape, 21);
  auto bn = profile("batch norm (training, no affine)",
                    [&] { (void)batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor()); });
  for (const KernelProfile& k : bn) CHECK(double(k.dram_st_bytes) <= 1.02 * bytes + 4096);
  auto mp = profile("max pool 3x3", [&] { (void)max_pool2d(x); });
  check_traffic(kernel(mp, "max_pool_forward_kernel"), bytes, bytes);
  auto ap = profile("avg pool 3x3", [&] { (void)avg_pool2d(x); });
  check_traffic(kernel(ap, "avg_pool_forward_kernel"), bytes, bytes);
}
