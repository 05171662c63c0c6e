// The checks the emulated-device tests share (test_emulated_device*.cpp): Device::cuda is the
// emulated device of ../emulated_device.hpp, and each op's forward and gradients on it must equal
// the CPU path's, with the device allocator's cache poisoned with NaN first (so an output
// element left unwritten fails).
#pragma once

#include <doctest/doctest.h>

#include <omp.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "../emulated_device.hpp"
#include "../testing.hpp"
#include "tnas/autograd/engine.hpp"
#include "tnas/core/tensor.hpp"

namespace emulated_checks {
using namespace tnas;
using V = std::vector<Tensor>;

inline constexpr double kTol = 1e-5;  // relative to 1 + the largest magnitude of the CPU result

// Every case starts here: the emulated device (which also re-arms its report of host accesses
// to device memory), and OpenMP on this thread only, as ctest runs the tests. Each kernel call
// changes page protections, which costs a TLB shootdown on every core where an idle OpenMP
// worker is still spinning: seconds on a busy machine.
inline void setup() {
  omp_set_num_threads(1);
  testing::install_emulated_device();
}

// Fills the device cache with NaN blocks of the sizes a case will ask for, so outputs start
// as NaN wherever the allocator hands out a cached block.
inline void poison(const std::vector<int64_t>& numels, DType t = DType::f32) {
  std::vector<Tensor> keep;
  for (int64_t n : numels)
    for (int i = 0; i < 4; ++i)
      keep.push_back(Tensor::full({n}, std::numeric_limits<double>::quiet_NaN(), t, Device::cuda));
}

inline double max_abs(const Tensor& t) {
  return max_abs_diff(t, Tensor::zeros(t.shape(), t.dtype()));
}
// |want - got| <= tol * (1 + max |want|) everywhere (NaN never passes); got may be on the device.
inline bool matches(const Tensor& want, const Tensor& got, double tol = kTol) {
  REQUIRE(want.shape() == got.shape());
  return max_abs_diff(want, got.cpu()) <= tol * (1 + max_abs(want));
}

// Runs f on CPU leaves and on their device copies, back-propagates the same random gradient of
// the output, and compares outputs and every input's gradient.
inline void compare(const std::string& what, const std::function<Tensor(const V&)>& f,
                    const V& inputs, double tol = kTol, bool grads = true) {
  INFO(what);
  V cpu, dev;
  std::vector<int64_t> sizes;
  for (const Tensor& t : inputs) {
    Tensor c = t.clone();
    Tensor d = t.to(Device::cuda);
    REQUIRE(testing::is_emulated_device_pointer(d.raw()));
    if (grads) c.set_requires_grad(), d.set_requires_grad();
    cpu.push_back(c);
    dev.push_back(d);
    sizes.push_back(t.numel());
  }
  Tensor yc = f(cpu);
  sizes.push_back(yc.numel());
  poison(sizes, yc.dtype());
  Tensor yd = f(dev);
  REQUIRE(yd.device() == Device::cuda);
  REQUIRE(yd.dtype() == yc.dtype());
  CHECK(matches(yc, yd, tol));
  if (!grads) return;
  Rng rng(7);
  Tensor g = Tensor::randn(yc.shape(), rng, 1.0, yc.dtype());
  poison(sizes, yc.dtype());
  backward(yc, g);
  backward(yd, g.to(Device::cuda));
  for (size_t i = 0; i < cpu.size(); ++i) {
    INFO("gradient of input ", i);
    REQUIRE(cpu[i].grad().defined());
    REQUIRE(dev[i].grad().defined());
    CHECK(dev[i].grad().device() == Device::cuda);
    CHECK(matches(cpu[i].grad(), dev[i].grad(), tol));
  }
}

inline Tensor rnd(const Shape& s, uint64_t seed, double stddev = 1.0) {
  Rng rng(seed);
  return Tensor::randn(s, rng, stddev);
}

}  // namespace emulated_checks
