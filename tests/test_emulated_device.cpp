// The emulated device itself (tests/emulated_device.hpp), which the other
// test_emulated_device_*.cpp files run the device dispatch path on, on CPU-only CI: it fills
// every kernel slot and hook, keeps device memory out of the host's reach outside a kernel,
// and a missing kernel names the op and the device.
#include <doctest/doctest.h>

#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "emulated_device.hpp"
#include "emulated_device/checks.hpp"
#include "testing.hpp"
#include "tnas/backend/registry.hpp"
#include "tnas/core/tensor.hpp"
#include "tnas/ops/conv.hpp"
#include "tnas/ops/elementwise.hpp"
#include "tnas/ops/loss.hpp"
#include "tnas/ops/reduce.hpp"
#include "tnas/optim/clip.hpp"
#include "tnas/optim/sgd.hpp"

using namespace tnas;
using namespace emulated_checks;

TEST_CASE(
    "emulated device: installed once, every slot set; tensors round-trip and fill, convert, "
    "gather, accumulate") {
  setup();
  testing::install_emulated_device();  // idempotent
  const backend::Kernels& k = backend::kernels(Device::cuda);
  const void* slots[backend::kKernelCount];
  std::memcpy(slots, &k, sizeof slots);
  for (size_t i = 0; i < backend::kKernelCount; ++i) {
    INFO("slot ", i);
    CHECK(slots[i] != nullptr);
  }
  CHECK(bool(device_hooks().copy));
  CHECK(bool(device_hooks().fill));
  CHECK(bool(device_hooks().gather));
  CHECK(bool(device_hooks().convert));
  CHECK(bool(device_hooks().accumulate));
  CHECK(bool(device_hooks().capture_begin));
  CHECK(bool(device_hooks().capture_end));
  CHECK(bool(device_hooks().graph_replay));
  CHECK(bool(device_hooks().graph_destroy));

  Tensor a = rnd({3, 5, 7, 9}, 1);
  const size_t live = allocator(Device::cuda).stats().live_bytes;
  Tensor d = a.to(Device::cuda);
  CHECK(d.device() == Device::cuda);
  CHECK(allocator(Device::cuda).stats().live_bytes >= live + a.nbytes());
  CHECK(testing::is_emulated_device_pointer(d.raw()));
  CHECK_FALSE(testing::is_emulated_device_pointer(a.raw()));
  CHECK(max_abs_diff(a, d.cpu()) == 0);
  CHECK(max_abs_diff(a, d.clone().cpu()) == 0);
  CHECK(Tensor::full({7, 3}, 2.5, DType::f32, Device::cuda).to_vector() ==
        std::vector<double>(21, 2.5));
  CHECK(Tensor::full({5}, -1.25, DType::f64, Device::cuda).to_vector() ==
        std::vector<double>(5, -1.25));
  CHECK(Tensor::scalar(3.5, DType::f32, Device::cuda).item() == 3.5);
  CHECK(max_abs_diff(a.to(DType::f64), d.to(DType::f64).cpu()) == 0);
  CHECK(max_abs_diff(a.to(DType::f64).to(Device::cuda).to(DType::f32).cpu(), a) == 0);
  // a strided view made contiguous on the device, and copied into a device tensor
  Tensor v = d.as_strided({3, 5, 9, 7}, {315, 63, 1, 9}, 0).contiguous();
  Tensor vc = a.as_strided({3, 5, 9, 7}, {315, 63, 1, 9}, 0).contiguous();
  CHECK(v.device() == Device::cuda);
  CHECK(max_abs_diff(vc, v.cpu()) == 0);
  Tensor into = Tensor::empty({3, 5, 9, 7}, DType::f32, Device::cuda);
  into.copy_(d.as_strided({3, 5, 9, 7}, {315, 63, 1, 9}, 0));
  CHECK(max_abs_diff(vc, into.cpu()) == 0);
  into.copy_(vc);  // host to device
  CHECK(max_abs_diff(vc, into.cpu()) == 0);
  // accumulate: the hook, and gradient accumulation over two backward passes
  Tensor acc = d.clone();
  device_hooks().accumulate(acc.raw(), d.raw(), DType::f32, size_t(d.numel()));
  CHECK(max_abs_diff(scale(a, 2.0), acc.cpu()) == 0);
  Tensor leaf = d.clone().set_requires_grad();
  backward(sum(leaf));
  backward(sum(leaf));
  CHECK(leaf.grad().device() == Device::cuda);
  CHECK(leaf.grad().to_vector() == std::vector<double>(size_t(a.numel()), 2.0));
}

TEST_CASE("emulated device: device memory is not host memory") {
  setup();
  Tensor h = rnd({4, 5}, 2);
  Tensor d = h.to(Device::cuda);
  Tensor out = Tensor::empty({4, 5}, DType::f32, Device::cuda);
  const backend::Kernels& k = backend::kernels(Device::cuda);
  // a host pointer where the kernel wants device memory, and the reverse
  CHECK(testing::throws_with(
      [&] { k.unary(backend::UnaryOp::relu, DType::f32, h.raw(), out.raw(), h.numel(), 0.0); },
      {"unary", "x", "host memory"}));
  CHECK(testing::throws_with(
      [&] { k.unary(backend::UnaryOp::relu, DType::f32, d.raw(), out.raw(), 100, 0.0); },
      {"unary", "not inside one device block"}));
  Tensor labels_host = Tensor::zeros({4});  // the labels are device memory now
  Tensor loss = Tensor::empty({1}, DType::f32, Device::cuda);
  CHECK(testing::throws_with(
      [&] {
        k.cross_entropy_forward(4, 5, d.data<float>(), labels_host.data<float>(),
                                loss.data<float>(), out.data<float>());
      },
      {"cross_entropy_forward", "labels", "host memory"}));
  // the pointer arrays of the list kernels are host memory
  Tensor sq = Tensor::empty({1}, DType::f32, Device::cuda);
  Tensor arr = Tensor::empty({2}, DType::f64, Device::cuda);
  const int64_t numel[1] = {20};
  CHECK(testing::throws_with(
      [&] {
        k.sum_squares(1, numel, static_cast<const float* const*>(arr.raw()), sq.data<float>());
      },
      {"sum_squares", "tensor list", "host memory"}));

  if (!testing::emulated_device_protects_memory()) {
    MESSAGE("TNAS_EMULATED_DEVICE_PROTECT=0: the pages are left accessible");
    return;
  }
  // The host reading a device tensor's data directly dies at the access (in a child process).
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::signal(SIGSEGV, SIG_DFL);
    volatile float v = *static_cast<volatile const float*>(d.raw());
    (void)v;
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV));
}

namespace {

// Sets a kernel slot to `value` for the scope (nullptr: the kernel is missing).
template <class Fn>
struct SlotScope {
  Fn backend::Kernels::*slot;
  Fn saved;
  SlotScope(Fn backend::Kernels::*s, Fn value) : slot(s), saved(backend::kernels(Device::cuda).*s) {
    backend::kernels(Device::cuda).*slot = value;
  }
  ~SlotScope() { backend::kernels(Device::cuda).*slot = saved; }
  SlotScope(const SlotScope&) = delete;
  SlotScope& operator=(const SlotScope&) = delete;
};

}  // namespace

TEST_CASE("emulated device: a missing kernel names the op and the device") {
  setup();
  using K = backend::Kernels;
  Tensor x = rnd({2, 3}, 90).to(Device::cuda);
  {
    SlotScope<decltype(K::softmax_forward)> s(&K::softmax_forward, nullptr);
    CHECK(testing::throws_with([&] { softmax(x); }, {"softmax", "no kernel", "cuda"}));
  }
  CHECK(softmax(x).device() == Device::cuda);  // restored
  {
    SlotScope<decltype(K::conv2d_backward_weight)> s(&K::conv2d_backward_weight, nullptr);
    Tensor xi = rnd({1, 2, 5, 5}, 91).to(Device::cuda).set_requires_grad();
    Tensor w = rnd({3, 2, 3, 3}, 92).to(Device::cuda).set_requires_grad();
    Tensor y = conv2d(xi, w);
    CHECK(
        testing::throws_with([&] { backward(sum(y)); }, {"conv2d backward", "no kernel", "cuda"}));
  }
  {
    SlotScope<decltype(K::sgd_step)> s(&K::sgd_step, nullptr);
    Tensor p = rnd({4}, 93).to(Device::cuda);
    p.set_grad(rnd({4}, 94).to(Device::cuda));
    optim::SGD opt({p}, 0.1);
    CHECK(testing::throws_with([&] { opt.step(); }, {"SGD step", "no kernel", "cuda"}));
  }
  {
    SlotScope<decltype(K::sum_squares)> s(&K::sum_squares, nullptr);
    Tensor p = rnd({4}, 95).to(Device::cuda);
    p.set_grad(rnd({4}, 96).to(Device::cuda));
    CHECK(testing::throws_with([&] { optim::clip_grad_norm({p}, 1.0); },
                               {"clip_grad_norm", "no kernel", "cuda"}));
  }
  // float32-only kernels say so for float64
  Tensor x64 = rnd({2, 3}, 97).to(DType::f64).to(Device::cuda);
  CHECK(testing::throws_with([&] { softmax(x64); }, {"softmax", "cuda", "float32"}));
}
