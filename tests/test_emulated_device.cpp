// The device dispatch path of every op, on CPU-only CI: Device::cuda is the emulated device of
// emulated_device.hpp (host memory that the host may not touch outside a kernel, host kernels
// that follow backend/registry.hpp's contracts), and each op's forward and gradients on it must
// equal the CPU path's, as test_cuda.cpp checks the real CUDA backend (those cases skip without
// a GPU; these always run). Random inputs of odd sizes, with the device allocator's cache
// poisoned with NaN first (so an output element left unwritten fails). Then the optimizers'
// fused device steps and gradient clipping against their CPU loops over several steps, a small
// module trained on the device, a training step captured as a device graph and replayed, and
// the error a missing kernel gives. A failure here is a bug of the op's device path (an
// argument or a contract the real backend would get wrong too) or of the emulated kernels.
#include <doctest/doctest.h>

#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "emulated_device.hpp"
#include "testing.hpp"
#include "tnas/autograd/engine.hpp"
#include "tnas/autograd/grad_mode.hpp"
#include "tnas/backend/registry.hpp"
#include "tnas/core/graph.hpp"
#include "tnas/core/tensor.hpp"
#include "tnas/nn/layers.hpp"
#include "tnas/nn/module.hpp"
#include "tnas/ops/binary.hpp"
#include "tnas/ops/conv.hpp"
#include "tnas/ops/elementwise.hpp"
#include "tnas/ops/linear.hpp"
#include "tnas/ops/loss.hpp"
#include "tnas/ops/mixed.hpp"
#include "tnas/ops/norm.hpp"
#include "tnas/ops/pool.hpp"
#include "tnas/ops/reduce.hpp"
#include "tnas/ops/shape.hpp"
#include "tnas/optim/adam.hpp"
#include "tnas/optim/clip.hpp"
#include "tnas/optim/sgd.hpp"
#include "tnas/search/darts.hpp"
#include "tnas/search/supernet.hpp"
#include "tnas/space/cell.hpp"
#include "tnas/space/genotype.hpp"
#include "tnas/train/fit.hpp"
#include "tnas/train/network.hpp"

using namespace tnas;
using V = std::vector<Tensor>;

namespace {

constexpr double kTol = 1e-5;  // relative to 1 + the largest magnitude of the CPU result

// Every case starts here: the emulated device (which also re-arms its report of host accesses
// to device memory), and OpenMP on this thread only, as ctest runs the tests. Each kernel call
// changes page protections, which costs a TLB shootdown on every core where an idle OpenMP
// worker is still spinning: seconds on a busy machine.
void setup() {
  omp_set_num_threads(1);
  testing::install_emulated_device();
}

// Fills the device cache with NaN blocks of the sizes a case will ask for, so outputs start
// as NaN wherever the allocator hands out a cached block.
void poison(const std::vector<int64_t>& numels, DType t = DType::f32) {
  std::vector<Tensor> keep;
  for (int64_t n : numels)
    for (int i = 0; i < 4; ++i)
      keep.push_back(Tensor::full({n}, std::numeric_limits<double>::quiet_NaN(), t, Device::cuda));
}

double max_abs(const Tensor& t) {
  return max_abs_diff(t, Tensor::zeros(t.shape(), t.dtype()));
}
// |want - got| <= tol * (1 + max |want|) everywhere (NaN never passes); got may be on the device.
bool matches(const Tensor& want, const Tensor& got, double tol = kTol) {
  REQUIRE(want.shape() == got.shape());
  return max_abs_diff(want, got.cpu()) <= tol * (1 + max_abs(want));
}

// Runs f on CPU leaves and on their device copies, back-propagates the same random gradient of
// the output, and compares outputs and every input's gradient.
void compare(const std::string& what, const std::function<Tensor(const V&)>& f, const V& inputs,
             double tol = kTol, bool grads = true) {
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

Tensor rnd(const Shape& s, uint64_t seed, double stddev = 1.0) {
  Rng rng(seed);
  return Tensor::randn(s, rng, stddev);
}

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

TEST_CASE("emulated device: elementwise, broadcasting, reductions") {
  setup();
  Tensor a = rnd({3, 5, 7}, 2), b = rnd({5, 1}, 3), c = rnd({3, 5, 7}, 4);
  compare("add broadcast", [](const V& x) { return add(x[0], x[1]); }, {a, b});
  compare("add broadcast both ways", [](const V& x) { return add(x[0], x[1]); },
          {rnd({3, 1, 7}, 5), rnd({5, 1}, 6)});
  compare("sub", [](const V& x) { return sub(x[0], x[1]); }, {a, c});
  compare("sub broadcast", [](const V& x) { return sub(x[0], x[1]); }, {b, a});
  compare("mul broadcast", [](const V& x) { return mul(x[0], x[1]); }, {a, b});
  compare("mul by a scalar tensor", [](const V& x) { return mul(x[0], x[1]); }, {a, rnd({}, 8)});
  compare("div", [](const V& x) { return div(x[0], add_scalar(square(x[1]), 1.0)); }, {a, c});
  compare("div broadcast", [](const V& x) { return div(x[0], add_scalar(square(x[1]), 0.5)); },
          {a, rnd({7}, 9)});
  compare("scale", [](const V& x) { return scale(x[0], -1.5); }, {a});
  compare("neg", [](const V& x) { return neg(x[0]); }, {a});
  compare("add_scalar", [](const V& x) { return add_scalar(x[0], 0.75); }, {a});
  compare("relu", [](const V& x) { return relu(x[0]); }, {a});
  compare("sigmoid", [](const V& x) { return sigmoid(x[0]); }, {a});
  compare("tanh", [](const V& x) { return tanh(x[0]); }, {a});
  compare("exp", [](const V& x) { return exp(x[0]); }, {a});
  compare("log", [](const V& x) { return log(add_scalar(square(x[0]), 0.5)); }, {a});
  compare("square", [](const V& x) { return square(x[0]); }, {a});
  compare("sign_ste", [](const V& x) { return sign_ste(x[0]); }, {scale(a, 1.5)});
  compare("sum axes", [](const V& x) { return sum(x[0], {0, 2}); }, {a});
  compare("sum keepdim", [](const V& x) { return sum(x[0], {1}, true); }, {a});
  compare("sum all", [](const V& x) { return sum(x[0]); }, {a});
  compare("mean all", [](const V& x) { return mean(x[0]); }, {a});
  compare("mean last axis", [](const V& x) { return mean(x[0], {-1}); }, {a});
  compare("sum of a strided view",
          [](const V& x) {
            return sum(slice(x[0], 2, 1, 7, 2), {0, 1});
          },
          {a});
  compare("global_avg_pool", [](const V& x) { return global_avg_pool(x[0]); },
          {rnd({3, 5, 7, 9}, 5)});
  compare("concat",
          [](const V& x) {
            return concat({x[0], x[1]}, 1);
          },
          {rnd({3, 2, 7}, 6), rnd({3, 5, 7}, 7)});
  compare("split, slice, concat",
          [](const V& x) {
            auto parts = split(x[0], {2, 3}, 1);
            Tensor m = mul(parts[0], slice(parts[1], 1, 0, 3, 2));
            return concat({m, slice(x[0], 1, 1, 5, 2)}, 1);
          },
          {a});
  compare("reshape of a view",
          [](const V& x) {
            return reshape(slice(x[0], 2, 0, 6), {5, -1});
          },
          {a});
  compare("dropout",
          [](const V& x) {
            Rng r(11);
            return dropout(x[0], 0.3, true, r);
          },
          {a});
  // float64: the elementwise, copy and reduction kernels take both types
  const Tensor a64 = a.to(DType::f64), b64 = b.to(DType::f64);
  compare("f64 mul broadcast", [](const V& x) { return mul(x[0], x[1]); }, {a64, b64});
  compare("f64 div", [](const V& x) { return div(x[0], add_scalar(square(x[1]), 1.0)); },
          {a64, b64});
  compare("f64 sigmoid, tanh, exp, log",
          [](const V& x) {
            return add(mul(sigmoid(x[0]), tanh(x[0])), log(add_scalar(exp(x[0]), 1.0)));
          },
          {a64});
  compare("f64 mean axes", [](const V& x) { return mean(x[0], {0, 1}); }, {a64});
  compare("f64 concat", [](const V& x) { return concat({x[0], x[1]}, 0); }, {a64, a64});
}

TEST_CASE(
    "emulated device: depthwise and dilated depthwise conv, every kernel size / stride / "
    "dilation") {
  setup();
  for (int R : {3, 5})
    for (int stride : {1, 2})
      for (int dil : {1, 2}) {
        const int pad = (R - 1) * dil / 2;
        for (auto shape : {Shape{3, 5, 7, 9}, Shape{2, 4, 16, 16}, Shape{1, 3, 13, 37}}) {
          const int64_t C = shape[1];
          Tensor x = rnd(shape, 10 + R), w = rnd({C, 1, R, R}, 20 + R, 0.5);
          compare("dw R=" + std::to_string(R) + " s=" + std::to_string(stride) +
                      " d=" + std::to_string(dil) + " " + shape.str(),
                  [&](const V& v) {
                    return conv2d(
                        v[0], v[1],
                        {.stride = stride, .padding = pad, .dilation = dil, .groups = int(C)});
                  },
                  {x, w});
        }
      }
}

TEST_CASE(
    "emulated device: pointwise, dense, grouped, dilated and strided conv, with bias; "
    "relu_conv2d; linear and matmul") {
  setup();
  Tensor x = rnd({3, 6, 7, 9}, 30);
  compare("pointwise", [](const V& v) { return conv2d(v[0], v[1], {}, v[2]); },
          {x, rnd({5, 6, 1, 1}, 31), rnd({5}, 32)});
  compare("1x1 stride 2", [](const V& v) { return conv2d(v[0], v[1], {.stride = 2}); },
          {x, rnd({4, 6, 1, 1}, 33)});
  compare("dense 3x3", [](const V& v) { return conv2d(v[0], v[1], {.padding = 1}); },
          {x, rnd({5, 6, 3, 3}, 34)});
  compare("dense 3x3 with bias, no padding",
          [](const V& v) { return conv2d(v[0], v[1], {}, v[2]); },
          {x, rnd({7, 6, 3, 3}, 41), rnd({7}, 42)});
  compare("grouped 3x3 stride 2",
          [](const V& v) { return conv2d(v[0], v[1], {.stride = 2, .padding = 1, .groups = 2}); },
          {x, rnd({4, 3, 3, 3}, 35)});
  compare("grouped 5x5 dilated",
          [](const V& v) {
            return conv2d(v[0], v[1], {.padding = 4, .dilation = 2, .groups = 3}, v[2]);
          },
          {x, rnd({9, 2, 5, 5}, 43), rnd({9}, 44)});
  compare("dense 3x1 stride 2 dilation 2",
          [](const V& v) { return conv2d(v[0], v[1], {.stride = 2, .padding = 2, .dilation = 2}); },
          {x, rnd({3, 6, 3, 1}, 45)});
  compare("relu_conv2d", [](const V& v) { return relu_conv2d(v[0], v[1], {.padding = 1}, v[2]); },
          {x, rnd({5, 6, 3, 3}, 46), rnd({5}, 47)});
  compare("relu_conv2d depthwise",
          [](const V& v) { return relu_conv2d(v[0], v[1], {.padding = 1, .groups = 6}); },
          {x, rnd({6, 1, 3, 3}, 48)});
  // The ReLU fused into the device kernels (ConvShape::relu_x) on every conv path; x has exact
  // zeros, where relu'(0) = 0 as on the CPU.
  Tensor xz = testing::with_zeros(x);
  compare("relu_conv2d pointwise with bias",
          [](const V& v) { return relu_conv2d(v[0], v[1], {}, v[2]); },
          {xz, rnd({5, 6, 1, 1}, 53), rnd({5}, 54)});
  compare("relu_conv2d pointwise, one image", [](const V& v) { return relu_conv2d(v[0], v[1]); },
          {testing::with_zeros(rnd({1, 6, 5, 4}, 55)), rnd({3, 6, 1, 1}, 56)});
  compare("relu_conv2d 1x1 stride 2",
          [](const V& v) { return relu_conv2d(v[0], v[1], {.stride = 2}); },
          {xz, rnd({4, 6, 1, 1}, 57)});
  compare("relu_conv2d dilated depthwise 5x5 stride 2",
          [](const V& v) {
            return relu_conv2d(v[0], v[1], {.stride = 2, .padding = 4, .dilation = 2, .groups = 6});
          },
          {xz, rnd({6, 1, 5, 5}, 58)});
  compare("linear", [](const V& v) { return linear(v[0], v[1], v[2]); },
          {rnd({7, 11}, 36), rnd({5, 11}, 37), rnd({5}, 38)});
  compare("linear without bias", [](const V& v) { return linear(v[0], v[1]); },
          {rnd({3, 13}, 49), rnd({1, 13}, 50)});
  compare("matmul", [](const V& v) { return matmul(v[0], v[1]); },
          {rnd({7, 11}, 39), rnd({11, 3}, 40)});
  compare(
      "matmul of a transposed view",
      [](const V& v) {
        return matmul(v[0].as_strided({11, 7}, {1, 11}, 0), v[1]);
      },
      {rnd({7, 11}, 51), rnd({7, 5}, 52)}, kTol, false);
}

TEST_CASE("emulated device: max and avg pooling") {
  setup();
  for (int stride : {1, 2})
    for (auto shape : {Shape{3, 5, 7, 9}, Shape{2, 3, 8, 8}}) {
      Tensor x = rnd(shape, 50 + stride);
      const Pool2dOptions o{.kernel = 3, .stride = stride, .padding = 1};
      compare("max_pool " + shape.str(), [&](const V& v) { return max_pool2d(v[0], o); }, {x});
      compare("avg_pool " + shape.str(), [&](const V& v) { return avg_pool2d(v[0], o); }, {x});
      Pool2dOptions inc = o;
      inc.count_include_pad = true;
      compare("avg_pool incl pad " + shape.str(), [&](const V& v) { return avg_pool2d(v[0], inc); },
              {x});
    }
  const Pool2dOptions two{.kernel = 2, .stride = 2, .padding = 0};
  compare("max_pool 2x2", [&](const V& v) { return max_pool2d(v[0], two); },
          {rnd({2, 3, 9, 7}, 53)});
  compare("avg_pool 2x2", [&](const V& v) { return avg_pool2d(v[0], two); },
          {rnd({2, 3, 9, 7}, 54)});
}

TEST_CASE("emulated device: mixed-op weighted sum") {
  setup();
  const Shape s{3, 5, 7, 9};
  compare("weighted_sum",
          [](const V& v) {
            return weighted_sum({v[0], v[1], Tensor(), v[2]}, v[3]);
          },
          {rnd(s, 60), rnd(s, 61), rnd(s, 62), rnd({4}, 63)});
  compare("weighted_sum odd size",
          [](const V& v) {
            return weighted_sum({v[0], v[1]}, v[2]);
          },
          {rnd({3, 5, 7}, 64), rnd({3, 5, 7}, 65), rnd({2}, 66)});
  compare("weighted_sum, a zero candidate first",
          [](const V& v) {
            return weighted_sum({Tensor(), v[0]}, v[1]);
          },
          {rnd({5, 3}, 67), rnd({2}, 68)});
}

TEST_CASE("emulated device: batch norm, train and eval, affine or not") {
  setup();
  for (const Shape s : {Shape{3, 5, 7, 9}, Shape{6, 5}}) {
    for (bool affine : {true, false}) {
      const std::string tag = s.str() + " affine=" + (affine ? "1" : "0");
      Tensor rm_c = rnd({5}, 70, 0.1), rv_c = add_scalar(square(rnd({5}, 71)), 0.5);
      Tensor rm_d = rm_c.to(Device::cuda), rv_d = rv_c.to(Device::cuda);
      V in{rnd(s, 72)};
      if (affine) in.push_back(rnd({5}, 73)), in.push_back(rnd({5}, 74));
      int calls = 0;
      compare(
          "batch_norm train " + tag,
          [&](const V& v) {
            const bool dev = v[0].device() == Device::cuda;
            ++calls;
            return batch_norm(v[0], affine ? v[1] : Tensor(), affine ? v[2] : Tensor(),
                              dev ? rm_d : rm_c, dev ? rv_d : rv_c, {.training = true});
          },
          in);
      CHECK(calls == 2);
      CHECK(matches(rm_c, rm_d));
      CHECK(matches(rv_c, rv_d));
      compare(
          "batch_norm eval " + tag,
          [&](const V& v) {
            const bool dev = v[0].device() == Device::cuda;
            return batch_norm(v[0], affine ? v[1] : Tensor(), affine ? v[2] : Tensor(),
                              dev ? rm_d : rm_c, dev ? rv_d : rv_c, {.training = false});
          },
          in);
      compare(
          "batch_norm train without running statistics " + tag,
          [&](const V& v) {
            return batch_norm(v[0], affine ? v[1] : Tensor(), affine ? v[2] : Tensor(), Tensor(),
                              Tensor(), {.training = true, .momentum = 0.3});
          },
          in);
    }
  }
  // A non-affine training batch norm (every DARTS candidate's last layer) back-propagates from
  // its output: the tape does not keep its input alive.
  Tensor leaf = rnd({4, 3, 8, 8}, 75).to(Device::cuda);
  leaf.set_requires_grad();
  Tensor x = scale(leaf, 2.0);  // an intermediate whose own backward keeps nothing
  const size_t before = allocator(Device::cuda).stats().live_bytes;
  Tensor y = batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), {.training = true});
  const size_t with_x = allocator(Device::cuda).stats().live_bytes;
  x = Tensor();
  CHECK(allocator(Device::cuda).stats().live_bytes + leaf.nbytes() <= with_x);
  CHECK(with_x > before);
  backward(sum(square(y)));
  CHECK(leaf.grad().defined());
}

TEST_CASE("emulated device: softmax, log_softmax, cross-entropy") {
  setup();
  Tensor x = rnd({7, 10}, 80, 2.0);
  compare("softmax", [](const V& v) { return softmax(v[0]); }, {x});
  compare("log_softmax", [](const V& v) { return log_softmax(v[0]); }, {rnd({5, 37}, 81)});
  compare("softmax rank 3", [](const V& v) { return softmax(v[0], 2); }, {rnd({2, 3, 11}, 82)});
  const std::vector<int32_t> labels{0, 3, 9, 9, 1, 5, 2};
  compare("cross_entropy", [&](const V& v) { return cross_entropy(v[0], labels); }, {x});
  compare("cross_entropy of log_softmax",
          [&](const V& v) { return cross_entropy(scale(log_softmax(v[0]), 0.5), labels); }, {x});
  // labels as a tensor: on the host (checked, converted), or on the device (used in place)
  const Tensor lab = Tensor::from({0, 3, 9, 9, 1, 5, 2}, {7});
  compare("cross_entropy, host label tensor", [&](const V& v) { return cross_entropy(v[0], lab); },
          {x});
  compare("cross_entropy, device label tensor",
          [&](const V& v) {
            return cross_entropy(v[0], v[0].device() == Device::cpu ? lab : lab.to(Device::cuda));
          },
          {x});
  // a device label outside [0, K) makes the loss NaN (no error: nothing is read back)
  {
    Tensor bad = Tensor::from({0, 3, 10, 9, 1, -1, 2}, {7}).to(Device::cuda);
    Tensor xd = x.to(Device::cuda).set_requires_grad();
    Tensor l = cross_entropy(xd, bad);
    CHECK(std::isnan(l.item()));
    backward(l);
    const std::vector<double> g = xd.grad().to_vector();
    for (int64_t r = 0; r < 7; ++r)
      for (int64_t c = 0; c < 10; ++c) {
        INFO("row ", r, " column ", c);
        CHECK(std::isnan(g[size_t(r * 10 + c)]) == (r == 2 || r == 5));
      }
  }
  // the implicit gradient of a scalar loss
  Tensor xc = x.clone().set_requires_grad(), xd = x.to(Device::cuda).set_requires_grad();
  Tensor lc = cross_entropy(xc, labels), ld = cross_entropy(xd, labels);
  CHECK(ld.item() == doctest::Approx(lc.item()).epsilon(1e-6));
  backward(lc);
  backward(ld);
  CHECK(matches(xc.grad(), xd.grad()));
}

namespace {

// normal(0, 1) floats with every 7th element +0 and every 11th -0 (both have sign +1).
Tensor signed_input(const Shape& s, uint64_t seed) {
  Tensor t = rnd(s, seed);
  float* d = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (i % 7 == 3) d[i] = 0.f;
    if (i % 11 == 5) d[i] = -0.f;
  }
  return t;
}

// Exact equality (NaN never equals).
bool exact(const Tensor& want, const Tensor& got) {
  REQUIRE(want.shape() == got.shape());
  const std::vector<double> a = want.to_vector(), b = got.to_vector();
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i])) {
      MESSAGE("first mismatch at flat index ", i, ": want ", a[i], ", got ", b[i]);
      return false;
    }
  return true;
}

}  // namespace

TEST_CASE("emulated device: sign_ste, xnor conv and matmul, binary_conv2d") {
  setup();
  struct C {
    int64_t N, C, H, W, K, R;
    int stride, pad, dil, groups;
  };
  uint64_t seed = 100;
  for (const C c : {C{1, 3, 7, 9, 5, 3, 1, 1, 1, 1}, C{3, 37, 11, 13, 19, 3, 2, 1, 1, 1},
                    C{1, 130, 8, 11, 40, 3, 1, 2, 2, 2}, C{3, 37, 9, 11, 37, 3, 1, 1, 1, 37},
                    C{1, 37, 4, 5, 7, 3, 1, 3, 1, 1}, C{3, 65, 9, 7, 33, 5, 1, 2, 1, 1}}) {
    INFO("N", c.N, " C", c.C, " ", c.H, "x", c.W, " -> K", c.K, " R", c.R, " s", c.stride, " p",
         c.pad, " d", c.dil, " g", c.groups);
    Tensor x = signed_input({c.N, c.C, c.H, c.W}, seed++);
    Tensor w = signed_input({c.K, c.C / c.groups, c.R, c.R}, seed++);
    const Conv2dOptions o{
        .stride = c.stride, .padding = c.pad, .dilation = c.dil, .groups = c.groups};
    NoGrad ng;
    const Tensor want = conv2d(sign_ste(x), sign_ste(w), o);  // the float conv of the signs
    poison({want.numel()});
    const Tensor got = xnor_conv2d(x.to(Device::cuda), w.to(Device::cuda), o);
    REQUIRE(got.device() == Device::cuda);
    CHECK(exact(want, got));
    CHECK(exact(xnor_conv2d(x, w, o), got));
    // the float conv of the signs on the device too
    CHECK(exact(want, conv2d(sign_ste(x.to(Device::cuda)), sign_ste(w.to(Device::cuda)), o)));
  }
  struct G {
    int64_t M, N, K;
  };
  for (const G g : {G{1, 1, 1}, G{7, 5, 3}, G{37, 19, 65}, G{130, 77, 300}}) {
    INFO("M ", g.M, " N ", g.N, " K ", g.K);
    Tensor a = signed_input({g.M, g.K}, seed++), b = signed_input({g.N, g.K}, seed++);
    NoGrad ng;
    const Tensor want = xnor_matmul(a, b);
    poison({g.M * g.N});
    CHECK(exact(want, xnor_matmul(a.to(Device::cuda), b.to(Device::cuda))));
    CHECK(exact(matmul(sign_ste(a), sign_ste(b).as_strided({g.K, g.N}, {1, g.K}, 0)), want));
  }
  Tensor x = rnd({3, 6, 7, 9}, 120), w = rnd({4, 6, 3, 3}, 121, 0.5);
  for (bool bw : {false, true})
    for (bool sa : {false, true})
      compare(std::string("binary_conv2d binary_weights=") + (bw ? "1" : "0") +
                  " scale_activations=" + (sa ? "1" : "0"),
              [&](const V& v) {
                return binary_conv2d(v[0], v[1], {.stride = 1, .padding = 1},
                                     {.binary_weights = bw, .scale_activations = sa});
              },
              {x, w});
  compare("binarize_weight", [](const V& v) { return binarize_weight(v[0]); }, {w});
}

TEST_CASE("emulated device: a small network, forward and backward") {
  setup();
  const std::vector<int32_t> labels{1, 0, 2, 2};
  compare("conv, batch norm, relu, pool, conv, global pool, linear, cross-entropy",
          [&](const V& v) {
            Tensor rm = Tensor::zeros({6}, DType::f32, v[0].device());
            Tensor rv = Tensor::ones({6}, DType::f32, v[0].device());
            Tensor h = conv2d(v[0], v[1], {.padding = 1});
            h = relu(batch_norm(h, v[2], v[3], rm, rv, {.training = true}));
            h = max_pool2d(h, {.kernel = 3, .stride = 2, .padding = 1});
            h = relu_conv2d(h, v[4], {.padding = 1, .groups = 6});
            h = global_avg_pool(h);
            return cross_entropy(linear(h, v[5], v[6]), labels);
          },
          {rnd({4, 3, 11, 9}, 130), rnd({6, 3, 3, 3}, 131, 0.3), rnd({6}, 132), rnd({6}, 133),
           rnd({6, 1, 3, 3}, 134, 0.3), rnd({3, 6}, 135, 0.3), rnd({3}, 136)});
}

namespace {

// Parameters of odd sizes on the CPU, and device copies of them.
V params_cpu(uint64_t seed) {
  return {rnd({7}, seed), rnd({3, 5}, seed + 1), rnd({2, 3, 3, 3}, seed + 2), rnd({1}, seed + 3)};
}
V to_device(const V& ps) {
  V out;
  for (const Tensor& p : ps) out.push_back(p.to(Device::cuda));
  return out;
}
// The same random gradient for each CPU parameter and its device copy; parameter `skip` gets
// none this step (step() must leave it and its state alone).
void set_grads(const V& pc, const V& pd, uint64_t seed, size_t skip) {
  for (size_t i = 0; i < pc.size(); ++i) {
    Tensor c = pc[i], d = pd[i];
    if (i == skip) {
      c.zero_grad();
      d.zero_grad();
      continue;
    }
    Tensor g = rnd(c.shape(), seed * 31 + i);
    c.set_grad(g);
    d.set_grad(g.to(Device::cuda));
  }
}

}  // namespace

TEST_CASE("emulated device: SGD steps on device parameters equal the CPU steps") {
  setup();
  const optim::SGDOptions configs[] = {
      {.lr = 0.1},
      {.lr = 0.05, .weight_decay = 0.01},
      {.lr = 0.1, .momentum = 0.9},
      {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .weight_decay = 3e-4},
      {.lr = 0.025, .momentum = 0.9, .weight_decay = 3e-4, .nesterov = true},
  };
  for (const optim::SGDOptions& o : configs) {
    INFO("lr ", o.lr, " momentum ", o.momentum, " dampening ", o.dampening, " weight_decay ",
         o.weight_decay, " nesterov ", o.nesterov);
    V pc = params_cpu(200), pd = to_device(pc);
    optim::SGD oc(pc, o), od(pd, o);
    for (int step = 0; step < 6; ++step) {
      INFO("step ", step);
      set_grads(pc, pd, uint64_t(step), step == 2 ? 1 : step == 4 ? 3 : 99);
      oc.step();
      od.step();
      for (size_t i = 0; i < pc.size(); ++i) {
        INFO("parameter ", i);
        CHECK(pd[i].device() == Device::cuda);
        CHECK(matches(pc[i], pd[i]));
        const auto &sc = oc.param_state(i), &sd = od.param_state(i);
        CHECK(sc.step == sd.step);
        REQUIRE(sc.buf[0].defined() == sd.buf[0].defined());
        if (sc.buf[0].defined()) {
          CHECK(sd.buf[0].device() == Device::cuda);
          CHECK(matches(sc.buf[0], sd.buf[0]));
        }
      }
    }
  }
}

TEST_CASE("emulated device: Adam steps on device parameters equal the CPU steps") {
  setup();
  const optim::AdamOptions configs[] = {
      {},
      {.lr = 3e-4, .beta1 = 0.5, .beta2 = 0.999, .weight_decay = 1e-3},  // DARTS' alphas
      {.lr = 0.01, .beta1 = 0.3, .beta2 = 0.9, .eps = 1e-6},  // 1 - beta1 >= 0.5: the other lerp
  };
  for (const optim::AdamOptions& o : configs) {
    INFO("lr ", o.lr, " betas ", o.beta1, ", ", o.beta2, " eps ", o.eps, " weight_decay ",
         o.weight_decay);
    V pc = params_cpu(300), pd = to_device(pc);
    optim::Adam oc(pc, o), od(pd, o);
    for (int step = 0; step < 6; ++step) {
      INFO("step ", step);
      set_grads(pc, pd, uint64_t(100 + step), step == 1 ? 0 : step == 3 ? 2 : 99);
      oc.step();
      od.step();
      for (size_t i = 0; i < pc.size(); ++i) {
        INFO("parameter ", i);
        CHECK(matches(pc[i], pd[i]));
        const auto &sc = oc.param_state(i), &sd = od.param_state(i);
        CHECK(sc.step == sd.step);
        for (int b = 0; b < 2; ++b) {
          REQUIRE(sc.buf[b].defined() == sd.buf[b].defined());
          if (sc.buf[b].defined()) CHECK(matches(sc.buf[b], sd.buf[b]));
        }
      }
    }
  }
}

TEST_CASE("emulated device: clip_grad_norm and clip_grad_norm_async on device gradients") {
  setup();
  for (double max_norm : {0.5, 3.0, 1e3}) {  // clipping, clipping, not clipping
    INFO("max_norm ", max_norm);
    V pc = params_cpu(400), pd = to_device(pc);
    set_grads(pc, pd, 7, 2);  // parameter 2 has no gradient: it counts as zero
    // a gradient that is a strided view: clipping scales a copy of its own instead
    Tensor big = rnd({5, 3}, 401);
    pc[1].set_grad(big.as_strided({3, 5}, {1, 3}, 0));
    pd[1].set_grad(big.to(Device::cuda).as_strided({3, 5}, {1, 3}, 0));
    V before;
    for (const Tensor& p : pc) before.push_back(p.grad().defined() ? p.grad().clone() : Tensor());
    const double nc = optim::clip_grad_norm(pc, max_norm);
    const double nd = optim::clip_grad_norm(pd, max_norm);
    CHECK(nd == doctest::Approx(nc).epsilon(1e-6));
    for (size_t i = 0; i < pc.size(); ++i) {
      INFO("parameter ", i);
      REQUIRE(pc[i].grad().defined() == pd[i].grad().defined());
      if (!pc[i].grad().defined()) continue;
      CHECK(pd[i].grad().device() == Device::cuda);
      CHECK(matches(pc[i].grad(), pd[i].grad()));
      if (max_norm > nc) CHECK(max_abs_diff(before[i], pd[i].grad().cpu()) == 0);
    }
    // the asynchronous form: the squared norm stays on the device
    V qc = params_cpu(500), qd = to_device(qc);
    set_grads(qc, qd, 8, 99);
    const double n2 = optim::clip_grad_norm(qc, max_norm);
    Tensor sq = optim::clip_grad_norm_async(qd, max_norm);
    CHECK(sq.device() == Device::cuda);
    CHECK(sq.dtype() == DType::f32);
    CHECK(sq.numel() == 1);
    CHECK(std::sqrt(sq.item()) == doctest::Approx(n2).epsilon(1e-6));
    for (size_t i = 0; i < qc.size(); ++i) CHECK(matches(qc[i].grad(), qd[i].grad()));
  }
  // a non-finite gradient: the norm says so and no gradient changes
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), double(INFINITY)}) {
    INFO("bad value ", bad);
    V pc = params_cpu(600), pd = to_device(pc);
    set_grads(pc, pd, 9, 99);
    Tensor g = pc[2].grad().clone();
    g.data<float>()[5] = float(bad);
    pc[2].set_grad(g);
    pd[2].set_grad(g.to(Device::cuda));
    V before;
    for (const Tensor& p : pd) before.push_back(p.grad().cpu());
    const double nc = optim::clip_grad_norm(pc, 0.1);
    const double nd = optim::clip_grad_norm(pd, 0.1);
    CHECK(std::isnan(nc) == std::isnan(bad));
    CHECK(std::isnan(nd) == std::isnan(bad));
    CHECK_FALSE(std::isfinite(nd));
    for (size_t i = 0; i < pd.size(); ++i) {
      const std::vector<double> want = before[i].to_vector(), got = pd[i].grad().to_vector();
      bool same = want.size() == got.size();
      for (size_t j = 0; same && j < want.size(); ++j)
        same = want[j] == got[j] || (std::isnan(want[j]) && std::isnan(got[j]));
      CHECK(same);
    }
  }
}

namespace {

// conv -> BN -> relu -> dilated depthwise conv (after a ReLU: relu_conv2d) -> 1x1 conv -> BN
// (not affine) -> relu -> 1x1 conv with bias -> global pool -> linear. No parameter whose
// gradient is zero up to rounding (a bias right before a BN; a BN scale that a later per-channel
// BN undoes), which Adam would amplify into different steps on the two paths.
std::shared_ptr<nn::Sequential> small_net(uint64_t seed) {
  Rng rng(seed);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Conv2d>(3, 6, 3, nn::Conv2dConfig{.padding = 1}, rng));
  net->push_back(std::make_shared<nn::BatchNorm2d>(6));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Conv2d>(
      6, 6, 3, nn::Conv2dConfig{.padding = 2, .dilation = 2, .groups = 6}, rng));
  net->push_back(std::make_shared<nn::Conv2d>(6, 5, 1, nn::Conv2dConfig{}, rng));
  net->push_back(std::make_shared<nn::BatchNorm2d>(5, nn::BatchNorm2dConfig{.affine = false}));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Conv2d>(5, 5, 1, nn::Conv2dConfig{.bias = true}, rng));
  net->push_back(std::make_shared<nn::GlobalAvgPool>());
  net->push_back(std::make_shared<nn::Linear>(5, 4, rng));
  return net;
}

}  // namespace

TEST_CASE("emulated device: a module moved to the device trains like its CPU twin") {
  setup();
  for (bool use_adam : {false, true}) {
    INFO("optimizer: ", std::string(use_adam ? "Adam" : "SGD"));
    auto net_c = small_net(700), net_d = small_net(700);
    auto make = [&](const std::vector<Tensor>& ps) -> std::unique_ptr<optim::Optimizer> {
      if (use_adam) return std::make_unique<optim::Adam>(ps, optim::AdamOptions{.lr = 0.01});
      return std::make_unique<optim::SGD>(
          ps, optim::SGDOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3});
    };
    auto opt_c = make(net_c->parameters());
    auto opt_d = make(net_d->parameters());  // made before the move: its handles follow
    net_d->to(Device::cuda);
    REQUIRE(net_d->device() == Device::cuda);
    for (const Tensor& p : opt_d->params()) REQUIRE(p.device() == Device::cuda);
    const std::vector<int32_t> labels{3, 0, 1, 1, 2};
    for (int step = 0; step < 4; ++step) {
      INFO("step ", step);
      Tensor x = rnd({5, 3, 9, 7}, 710 + uint64_t(step));
      Tensor lc = cross_entropy(net_c->forward(x), labels);
      Tensor ld = cross_entropy(net_d->forward(x.to(Device::cuda)), labels);
      CHECK(ld.item() == doctest::Approx(lc.item()).epsilon(1e-5));
      backward(lc);
      backward(ld);
      const double nc = optim::clip_grad_norm(net_c->parameters(), 1.0);
      const double nd = optim::clip_grad_norm(net_d->parameters(), 1.0);
      CHECK(nd == doctest::Approx(nc).epsilon(1e-5));
      opt_c->step();
      opt_d->step();
      opt_c->zero_grad();
      opt_d->zero_grad();
      const auto sc = net_c->state_dict(), sd = net_d->state_dict();
      REQUIRE(sc.size() == sd.size());
      for (size_t i = 0; i < sc.size(); ++i) {
        INFO(sc[i].first);
        CHECK(sd[i].second.device() == Device::cuda);
        CHECK(matches(sc[i].second, sd[i].second));
      }
    }
  }
}

TEST_CASE("emulated device: a captured graph replays the device work") {
  setup();
  // a small computation on buffers that the host refills between replays
  Tensor x = Tensor::empty({5, 7}, DType::f32, Device::cuda);
  Tensor w = rnd({7}, 800).to(Device::cuda);
  x.copy_(rnd({5, 7}, 801));
  Tensor y, s;
  DeviceGraph graph(Device::cuda);
  graph.capture([&] {
    y = relu(mul(x, w));
    s = mean(y, {1});
  });
  REQUIRE(graph.ready());
  for (int r = 0; r < 3; ++r) {
    INFO("replay ", r);
    const Tensor xc = rnd({5, 7}, 810 + uint64_t(r));
    x.copy_(xc);
    graph.replay();
    CHECK(matches(mean(relu(mul(xc, w.cpu())), {1}), s));
  }
  // a copy between host and device inside the capture is an error, and the capture is dropped
  DeviceGraph bad(Device::cuda);
  CHECK(testing::throws_with([&] { bad.capture([&] { (void)sum(x).item(); }); },
                             {"graph capture", "host and device"}));
  CHECK_FALSE(bad.ready());
  CHECK(sum(x).item() == doctest::Approx(sum(x.cpu()).item()));  // eager again
}

TEST_CASE("emulated device: a captured training step replays like eager CPU steps") {
  setup();
  for (bool use_adam : {false, true}) {
    INFO("optimizer: ", std::string(use_adam ? "Adam" : "SGD"));
    auto net_c = small_net(900), net_d = small_net(900);
    net_d->to(Device::cuda);
    auto make = [&](const std::vector<Tensor>& ps) -> std::unique_ptr<optim::Optimizer> {
      if (use_adam) return std::make_unique<optim::Adam>(ps, optim::AdamOptions{.lr = 0.01});
      return std::make_unique<optim::SGD>(
          ps,
          optim::SGDOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3, .nesterov = true});
    };
    const std::vector<Tensor> pc = net_c->parameters(), pd = net_d->parameters();
    auto opt_c = make(pc), opt_d = make(pd);
    auto batch = [](int step, Tensor& x, Tensor& lab) {
      x = rnd({5, 3, 9, 7}, 910 + uint64_t(step));
      lab = Tensor::from({double(step % 4), 0, 1, 3, 2}, {5});
    };
    auto cpu_step = [&](const Tensor& x, const Tensor& lab) {
      opt_c->zero_grad();
      Tensor loss = cross_entropy(net_c->forward(x), lab);
      backward(loss);
      optim::clip_grad_norm(pc, 1.0);
      opt_c->step();
      return loss.item();
    };
    auto compare_state = [&] {
      const auto sc = net_c->state_dict(), sd = net_d->state_dict();
      REQUIRE(sc.size() == sd.size());
      for (size_t i = 0; i < sc.size(); ++i) {
        INFO(sc[i].first);
        CHECK(matches(sc[i].second, sd[i].second));
      }
    };
    // one eager step first (the optimizer's buffers), as search/darts.hpp does
    Tensor x, lab;
    batch(0, x, lab);
    const double l0 = cpu_step(x, lab);
    opt_d->zero_grad();
    Tensor loss0 = cross_entropy(net_d->forward(x.to(Device::cuda)), lab.to(Device::cuda));
    backward(loss0);
    optim::clip_grad_norm(pd, 1.0);
    opt_d->step();
    CHECK(loss0.item() == doctest::Approx(l0).epsilon(1e-5));
    compare_state();

    Tensor xd = Tensor::empty({5, 3, 9, 7}, DType::f32, Device::cuda);
    Tensor yd = Tensor::empty({5}, DType::f32, Device::cuda);
    Tensor loss;
    std::vector<Tensor> before;
    for (const Tensor& p : pd) before.push_back(p.cpu());
    DeviceGraph graph(Device::cuda);
    graph.capture([&] {
      opt_d->zero_grad();
      loss = cross_entropy(net_d->forward(xd), yd);
      backward(loss);
      optim::clip_grad_norm_async(pd, 1.0);
      opt_d->capture_step();
    });
    for (size_t i = 0; i < pd.size(); ++i)  // capturing ran nothing
      CHECK(max_abs_diff(before[i], pd[i].cpu()) == 0);
    for (int step = 1; step < 5; ++step) {
      INFO("step ", step);
      batch(step, x, lab);
      const double lc = cpu_step(x, lab);
      xd.copy_(x);
      yd.copy_(lab);
      opt_d->stage_replay();
      graph.replay();
      CHECK(loss.item() == doctest::Approx(lc).epsilon(1e-5));
      compare_state();
      for (size_t i = 0; i < pc.size(); ++i)
        CHECK(opt_c->param_state(i).step == opt_d->param_state(i).step);
    }
  }
}

namespace {
data::Batch darts_batch(Rng& rng, int shift) {
  data::Batch b;
  b.x = Tensor::randn({6, 3, 8, 8}, rng);
  for (int i = 0; i < 6; ++i) b.labels.push_back((i * 3 + shift) % 10);
  return b;
}
}  // namespace

TEST_CASE("emulated device: a DARTS search step gives the CPU's loss, first and second order") {
  setup();
  for (bool second_order : {false, true}) {
    INFO("second order ", second_order);
    search::SupernetConfig cfg{.in_channels = 3, .channels = 4, .cells = 3, .classes = 10};
    search::Supernet<space::Darts> nc(cfg), nd(cfg);
    nd.to(Device::cuda);
    REQUIRE(nd.arch_parameters()[0].device() == Device::cuda);
    search::DartsOptions o{.second_order = second_order, .batch = 6, .verbose = false};
    search::Darts dc(nc, o), dd(nd, o);
    CHECK(dd.device() == Device::cuda);
    Rng rng(11);
    for (int s = 0; s < 2; ++s) {
      const data::Batch bt = darts_batch(rng, s), bv = darts_batch(rng, s + 5);
      const auto [lc, ac] = dc.step(bt, bv, true);
      const auto [ld, ad] = dd.step(bt, bv, true);
      INFO("step ", s);
      CHECK(ld == doctest::Approx(lc).epsilon(1e-5));
      CHECK(ac == ad);
    }
    CHECK(matches(nc.alpha_normal(), nd.alpha_normal()));
    CHECK(matches(nc.alpha_reduce(), nd.alpha_reduce()));
    CHECK(nc.genotype().str() == nd.genotype().str());
  }
}

TEST_CASE("emulated device: DARTS steps replayed as a device graph equal the eager steps") {
  setup();
  for (bool one_level : {false, true}) {
    INFO("one level ", one_level);
    search::SupernetConfig cfg{.in_channels = 3, .channels = 4, .cells = 3, .classes = 10};
    search::Supernet<space::Darts> nc(cfg), ng(cfg);
    ng.to(Device::cuda);
    search::DartsOptions o{.one_level = one_level, .batch = 6, .verbose = false};
    search::Darts dc(nc, o);
    o.device_graph = true;
    search::Darts dg(ng, o);
    Rng rng(12);
    for (int s = 0; s < 5; ++s) {
      const data::Batch bt = darts_batch(rng, s), bv = darts_batch(rng, s + 3);
      const bool alpha = s != 1 && s != 2;  // warm-up steps in between: their own graph
      if (s == 4) {                         // a new learning rate reaches the replayed step
        dc.weight_optimizer().set_lr(0.01);
        dg.weight_optimizer().set_lr(0.01);
      }
      const auto [lc, ac] = dc.step(bt, bv, alpha);
      const auto [lg, ag] = dg.step(bt, bv, alpha);
      INFO("step ", s);
      CHECK(lg == doctest::Approx(lc).epsilon(1e-5));
      CHECK(ac == ag);
    }
    CHECK(matches(nc.alpha_normal(), ng.alpha_normal()));
    const auto sc = nc.state_dict(), sg = ng.state_dict();
    REQUIRE(sc.size() == sg.size());
    for (size_t i = 0; i < sc.size(); ++i) {
      INFO(sc[i].first);
      CHECK(matches(sc[i].second, sg[i].second, 1e-4));
    }
    for (size_t i = 0; i < nc.parameters().size(); ++i)
      CHECK(dc.weight_optimizer().param_state(i).step == dg.weight_optimizer().param_state(i).step);
  }
  search::SupernetConfig cfg{.in_channels = 3, .channels = 4, .cells = 3, .classes = 10};
  search::Supernet<space::Darts> net(cfg);
  CHECK(testing::throws_with(
      [&] { search::Darts d(net, {.second_order = true, .verbose = false, .device_graph = true}); },
      {"device_graph", "second-order"}));
}

TEST_CASE("emulated device: a DARTS run on the device logs, checkpoints and resumes") {
  setup();
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "tnas_emulated_darts_run";
  fs::remove_all(dir);
  Rng rng(13);
  auto make_set = [&](int64_t n) {
    data::Dataset ds;
    ds.images = Tensor::randn({n, 1, 8, 8}, rng);
    for (int64_t i = 0; i < n; ++i) ds.labels.push_back(int32_t(i % 3));
    ds.num_classes = 3;
    return ds;
  };
  const data::Dataset tr = make_set(16), va = make_set(16);
  search::SupernetConfig cfg{.in_channels = 1, .channels = 4, .cells = 2, .classes = 3};
  auto run = [&](int epochs_this_run, bool resume) {
    search::Supernet<space::Darts> net(cfg);
    net.to(Device::cuda);
    search::Darts d(net, {.epochs = 2,
                          .batch = 8,
                          .out_dir = dir,
                          .resume = resume,
                          .epochs_this_run = epochs_this_run,
                          .verbose = false,
                          .device_graph = true});
    auto r = d.run(tr, va);
    return std::make_pair(r.genotype.str(), net.alpha_normal().cpu());
  };
  const auto whole = run(0, false);
  fs::remove_all(dir);
  run(1, false);
  const auto resumed = run(0, true);
  CHECK(resumed.first == whole.first);
  CHECK(max_abs_diff(resumed.second, whole.second) == 0);
  CHECK(fs::exists(dir / "alphas.jsonl"));
  fs::remove_all(dir);
}

TEST_CASE("emulated device: retraining with train::fit on the device follows the CPU run") {
  setup();
  const data::Dataset tr = testing::quadrants(48, 3), te = testing::quadrants(16, 4);
  const auto g = space::DartsGenotype::parse(
      "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
      "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
      "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
      "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
      "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, "
      "5])");
  for (auto opt : {train::FitOptimizer::sgd, train::FitOptimizer::adam}) {
    INFO("adam ", opt == train::FitOptimizer::adam);
    auto make = [&] {
      return train::DartsNetwork(g, {.in_channels = 1,
                                     .channels = 4,
                                     .cells = 3,
                                     .classes = 4,
                                     .auxiliary = true,
                                     .drop_path_prob = 0.3,
                                     .image_size = 8,
                                     .seed = 11});
    };
    train::DartsNetwork nc = make(), nd = make();
    nd.to(Device::cuda);
    train::FitOptions o;
    o.epochs = 2;
    o.batch_size = 16;
    o.optimizer = opt;
    o.lr = opt == train::FitOptimizer::adam ? 2e-3 : 0.05;
    o.verbose = false;
    o.label_smoothing = 0.1;
    o.augment = {.crop_padding = 1, .hflip = true, .cutout = 3};
    const train::FitResult rc = train::fit(nc, tr, te, o);
    const train::FitResult rd = train::fit(nd, tr, te, o);
    REQUIRE(rc.history.size() == rd.history.size());
    for (size_t e = 0; e < rc.history.size(); ++e)
      CHECK(rd.history[e].train_loss == doctest::Approx(rc.history[e].train_loss).epsilon(1e-4));
    CHECK(rd.eval_acc == rc.eval_acc);
    const auto sc = nc.state_dict(), sd = nd.state_dict();
    REQUIRE(sc.size() == sd.size());
    for (size_t i = 0; i < sc.size(); ++i) {
      INFO(sc[i].first);
      CHECK(sd[i].second.device() == Device::cuda);
      CHECK(matches(sc[i].second, sd[i].second, 1e-3));
    }
  }
}

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
