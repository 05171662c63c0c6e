// Every op's device path on the emulated device (tests/emulated_device.hpp) against the CPU
// path, as test_cuda.cpp checks the real CUDA backend (those cases skip without a GPU; these
// always run): random inputs of odd sizes, forward and gradients, with the device allocator's
// cache poisoned with NaN first. A failure here is a bug of the op's device path (an argument
// or a contract the real backend would get wrong too) or of the emulated kernels.
#include <doctest/doctest.h>

#include <omp.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "emulated_device.hpp"
#include "emulated_device/checks.hpp"
#include "testing.hpp"
#include "tnas/autograd/engine.hpp"
#include "tnas/autograd/grad_mode.hpp"
#include "tnas/backend/registry.hpp"
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

using namespace tnas;
using namespace emulated_checks;

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
  compare("relu_separable_conv2d dilated 5x5 stride 2",
          [](const V& v) {
            return relu_separable_conv2d(v[0], v[1], v[2],
                                         {.stride = 2, .padding = 4, .dilation = 2, .groups = 6});
          },
          {xz, rnd({6, 1, 5, 5}, 59), rnd({5, 6, 1, 1}, 60)});
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
