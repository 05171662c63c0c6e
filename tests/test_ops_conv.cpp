// Convolution, pooling, batch norm and global average pool at the op level: finite-difference
// gradient checks in float64 (odd sizes, stride 2, dilation 2, groups = channels) and the
// errors that name the op and the shapes.
#include <doctest/doctest.h>

#include <cmath>
#include <span>

#include "testing.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;
using testing::param;
using V = std::vector<Tensor>;

TEST_CASE("gradients: conv2d (dense, strided, dilated, depthwise, grouped, pointwise, bias)") {
  Rng rng(11);
  struct Case {
    const char* what;
    int C, K, R, H, W;
    Conv2dOptions o;
    bool bias;
  };
  const Case cases[] = {
      {"dense 3x3 pad 1, odd sizes", 3, 5, 3, 7, 5, {.padding = 1}, false},
      {"dense 3x3 stride 2", 3, 4, 3, 9, 7, {.stride = 2, .padding = 1}, true},
      {"depthwise 3x3 (groups = channels)", 5, 5, 3, 7, 6, {.padding = 1, .groups = 5}, false},
      {"depthwise 5x5 stride 2", 3, 3, 5, 9, 8, {.stride = 2, .padding = 2, .groups = 3}, false},
      {"dilated depthwise 3x3 d=2",
       4,
       4,
       3,
       9,
       7,
       {.padding = 2, .dilation = 2, .groups = 4},
       false},
      {"dilated depthwise 5x5 d=2 stride 2",
       3,
       3,
       5,
       11,
       9,
       {.stride = 2, .padding = 4, .dilation = 2, .groups = 3},
       false},
      {"grouped 3x3 (2 groups)", 4, 6, 3, 5, 5, {.padding = 1, .groups = 2}, true},
      {"pointwise 1x1", 5, 7, 1, 5, 3, {}, false},
      {"pointwise 1x1 stride 2 (FactorizedReduce)", 4, 3, 1, 7, 7, {.stride = 2}, false},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    Tensor x = param({2, c.C, c.H, c.W}, rng);
    Tensor w = param({c.K, c.C / c.o.groups, c.R, c.R}, rng, 0.5);
    Tensor b = c.bias ? param({c.K}, rng) : Tensor();
    V in{x, w};
    if (c.bias) in.push_back(b);
    const Conv2dOptions o = c.o;
    TNAS_CHECK_GRADS(
        [o](const V& v) { return conv2d(v[0], v[1], o, v.size() > 2 ? v[2] : Tensor()); }, in);
  }
}

TEST_CASE("relu_conv2d equals conv2d(relu(x)) in value and gradients, keeping x only") {
  Rng rng(16);
  Tensor x = param({2, 4, 7, 5}, rng);
  for (double& v : std::span(x.data<double>(), size_t(x.numel())))
    if (std::abs(v) < 0.05) v = 0.3;  // away from the kink
  Tensor wd = param({4, 1, 3, 3}, rng, 0.5), wp = param({3, 4, 1, 1}, rng, 0.5);
  const Conv2dOptions dw{.stride = 2, .padding = 2, .dilation = 2, .groups = 4};
  auto fused = [dw](const V& v) { return relu_conv2d(v[0], v[1], dw); };
  auto plain = [dw](const V& v) { return conv2d(relu(v[0]), v[1], dw); };
  CHECK(fused(V{x, wd}).to_vector() == plain(V{x, wd}).to_vector());
  TNAS_CHECK_GRADS(fused, (V{x, wd}));
  Tensor b = param({3}, rng);
  auto fused_pw = [](const V& v) { return relu_conv2d(v[0], v[1], {}, v[2]); };
  TNAS_CHECK_GRADS(fused_pw, (V{x, wp, b}));
  // A non-contiguous input (FactorizedReduce's shifted branch).
  auto shifted = [](const V& v) {
    return relu_conv2d(slice(slice(v[0], 2, 1, 7), 3, 1, 5), v[1], {.stride = 2});
  };
  TNAS_CHECK_GRADS(shifted, (V{x, wp}));
}

TEST_CASE("separable_conv2d equals the two convs in value and gradients, keeping x only") {
  Rng rng(17);
  Tensor x = param({2, 4, 9, 7}, rng);
  for (double& v : std::span(x.data<double>(), size_t(x.numel())))
    if (std::abs(v) < 0.05) v = -0.3;  // away from the ReLU's kink
  Tensor wd3 = param({4, 1, 3, 3}, rng, 0.5), wd5 = param({4, 1, 5, 5}, rng, 0.5);
  Tensor wp = param({5, 4, 1, 1}, rng, 0.5);
  const Conv2dOptions opts[] = {{.padding = 1, .groups = 4},
                                {.stride = 2, .padding = 2, .groups = 4},
                                {.stride = 2, .padding = 4, .dilation = 2, .groups = 4}};
  for (const Conv2dOptions& o : opts) {
    CAPTURE(o.stride);
    CAPTURE(o.dilation);
    const Tensor& wd = o.padding == 1 ? wd3 : wd5;
    auto sep = [o](const V& v) { return separable_conv2d(v[0], v[1], v[2], o); };
    auto plain = [o](const V& v) { return conv2d(conv2d(v[0], v[1], o), v[2]); };
    auto rsep = [o](const V& v) { return relu_separable_conv2d(v[0], v[1], v[2], o); };
    auto rplain = [o](const V& v) { return conv2d(relu_conv2d(v[0], v[1], o), v[2]); };
    CHECK(sep(V{x, wd, wp}).to_vector() == plain(V{x, wd, wp}).to_vector());
    CHECK(rsep(V{x, wd, wp}).to_vector() == rplain(V{x, wd, wp}).to_vector());
    TNAS_CHECK_GRADS(sep, (V{x, wd, wp}));
    TNAS_CHECK_GRADS(rsep, (V{x, wd, wp}));
  }
  // Only some inputs need a gradient: the weights alone (x a constant), and x alone.
  Tensor xc = x.detach();
  auto weights_only = [xc](const V& v) {
    return relu_separable_conv2d(xc, v[0], v[1], {.padding = 1, .groups = 4});
  };
  TNAS_CHECK_GRADS(weights_only, (V{wd3, wp}));
  Tensor wdc = wd3.detach(), wpc = wp.detach();
  auto x_only = [wdc, wpc](const V& v) {
    return relu_separable_conv2d(v[0], wdc, wpc, {.padding = 1, .groups = 4});
  };
  TNAS_CHECK_GRADS(x_only, (V{x}));
}

TEST_CASE("separable_conv2d holds no depthwise output between forward and backward") {
  Rng rng(18);
  Tensor x = Tensor::randn({8, 16, 32, 32}, rng).set_requires_grad(true);
  Tensor wd = Tensor::randn({16, 1, 3, 3}, rng).set_requires_grad(true);
  Tensor wp = Tensor::randn({16, 16, 1, 1}, rng).set_requires_grad(true);
  const Conv2dOptions o{.padding = 1, .groups = 16};
  auto& a = allocator(Device::cpu);
  auto held = [&](auto&& f) {  // bytes a forward leaves live, its output included
    const size_t before = a.stats().live_bytes;
    Tensor y = f();
    const size_t after = a.stats().live_bytes;
    backward(sum(y));
    return after - before;
  };
  const size_t plain = held([&] { return conv2d(relu_conv2d(x, wd, o), wp); });
  const size_t fused = held([&] { return relu_separable_conv2d(x, wd, wp, o); });
  CHECK(fused == x.nbytes());  // the output, the same size as x here
  CHECK(plain == 2 * x.nbytes());
  // Sequential runs ReLU -> depthwise -> pointwise (a DARTS dil_conv) as this op.
  nn::Sequential seq;
  seq.push_back(std::make_shared<nn::ReLU>());
  seq.push_back(
      std::make_shared<nn::Conv2d>(16, 16, 3, nn::Conv2dConfig{.padding = 1, .groups = 16}, rng));
  seq.push_back(std::make_shared<nn::Conv2d>(16, 16, 1, nn::Conv2dConfig{}, rng));
  CHECK(held([&] { return seq.forward(x); }) == x.nbytes());
  Tensor ref =
      conv2d(relu_conv2d(x, seq.at<nn::Conv2d>(1)->weight(), o), seq.at<nn::Conv2d>(2)->weight());
  CHECK(seq.forward(x).to_vector() == ref.to_vector());
  {
    nn::RecomputeDepthwise off(false);  // the depthwise output is held again
    CHECK(held([&] { return seq.forward(x); }) == 2 * x.nbytes());
  }
  CHECK(nn::recompute_depthwise_flag());
}

TEST_CASE("separable_conv2d errors name the weight that is not depthwise or pointwise") {
  Tensor x = Tensor::zeros({2, 4, 8, 8});
  CHECK(testing::throws_with(
      [&] {
        (void)separable_conv2d(x, Tensor::zeros({4, 4, 3, 3}), Tensor::zeros({5, 4, 1, 1}),
                               {.padding = 1});
      },
      {"separable_conv2d", "[4, 4, 3, 3]", "not depthwise"}));
  CHECK(testing::throws_with(
      [&] {
        (void)separable_conv2d(x, Tensor::zeros({4, 1, 3, 3}), Tensor::zeros({5, 4, 3, 3}),
                               {.padding = 1, .groups = 4});
      },
      {"separable_conv2d", "[5, 4, 3, 3]", "not pointwise"}));
  CHECK(testing::throws_with(
      [&] {
        (void)separable_conv2d(x, Tensor::zeros({4, 1, 3, 3}), Tensor::zeros({5, 3, 1, 1}),
                               {.padding = 1, .groups = 4});
      },
      {"conv2d", "[5, 3, 1, 1]"}));
}

TEST_CASE("conv2d errors name the op and the shapes") {
  Tensor x = Tensor::zeros({2, 3, 8, 8});
  CHECK(testing::throws_with(
      [&] {
        (void)conv2d(x, Tensor::zeros({4, 2, 3, 3}), {.padding = 1});
      },
      {"conv2d", "[2, 3, 8, 8]", "[4, 2, 3, 3]"}));
  CHECK(testing::throws_with(
      [&] {
        (void)conv2d(x, Tensor::zeros({4, 1, 3, 3}), {.groups = 2});
      },
      {"conv2d", "groups"}));
  CHECK(testing::throws_with(
      [&] {
        (void)conv2d(Tensor::zeros({3, 8, 8}), Tensor::zeros({4, 3, 3, 3}));
      },
      {"conv2d", "[3, 8, 8]"}));
  CHECK(testing::throws_with(
      [&] {
        (void)conv2d(x, Tensor::zeros({4, 3, 3, 3}, DType::f64));
      },
      {"conv2d", "float64"}));
}

TEST_CASE("gradients: max_pool2d and avg_pool2d (stride 1 and 2, padding, count_include_pad)") {
  Rng rng(12);
  Tensor x = param({2, 3, 7, 6}, rng);  // distinct values almost surely: no ties at the max
  for (int stride : {1, 2}) {
    CAPTURE(stride);
    TNAS_CHECK_GRADS([stride](const V& v) { return max_pool2d(v[0], {3, stride, 1}); }, (V{x}));
    TNAS_CHECK_GRADS(
        [stride](const V& v) {
          return avg_pool2d(v[0], {3, stride, 1, false});
        },
        (V{x}));
    TNAS_CHECK_GRADS(
        [stride](const V& v) {
          return avg_pool2d(v[0], {3, stride, 1, true});
        },
        (V{x}));
  }
  TNAS_CHECK_GRADS([](const V& v) { return max_pool2d(v[0], {2, 2, 0}); }, (V{x}));
}

TEST_CASE("avg_pool2d count_include_pad=false divides the border by the in-bounds count") {
  Tensor x = Tensor::full({1, 1, 3, 3}, 1.0);
  Tensor excl = avg_pool2d(x, {3, 1, 1, false});
  Tensor incl = avg_pool2d(x, {3, 1, 1, true});
  for (double v : excl.to_vector()) CHECK(v == doctest::Approx(1.0));
  CHECK(incl.to_vector()[0] == doctest::Approx(4.0 / 9.0));  // corner: 4 of 9 in bounds
  CHECK(incl.to_vector()[4] == doctest::Approx(1.0));
}

TEST_CASE("gradients: batch_norm in training (affine and not) and evaluation") {
  Rng rng(13);
  Tensor x = param({3, 4, 5, 3}, rng);
  Tensor g = Tensor::uniform({4}, rng, 0.5, 1.5, DType::f64).set_requires_grad();
  Tensor b = param({4}, rng);
  // Training: batch statistics (the running buffers are updated but do not enter the output).
  auto train_bn = [](const V& v) {
    Tensor rm = Tensor::zeros({4}, DType::f64), rv = Tensor::full({4}, 1.0, DType::f64);
    return batch_norm(v[0], v[1], v[2], rm, rv, {.training = true});
  };
  TNAS_CHECK_GRADS(train_bn, (V{x, g, b}));
  // Non-affine (the DARTS search candidates): the backward works from the saved output.
  TNAS_CHECK_GRADS(
      [](const V& v) { return batch_norm(v[0], Tensor(), Tensor(), Tensor(), Tensor()); }, (V{x}));
  // A 2-D input [N, C].
  Tensor x2 = param({6, 4}, rng);
  TNAS_CHECK_GRADS([](const V& v) { return batch_norm(v[0], v[1], v[2], {}, {}); }, (V{x2, g, b}));
  // Evaluation: running statistics, an affine map per channel.
  Tensor rm = Tensor::randn({4}, rng, 0.3, DType::f64);
  Tensor rv = Tensor::uniform({4}, rng, 0.5, 2.0, DType::f64);
  auto eval_bn = [rm, rv](const V& v) {
    return batch_norm(v[0], v[1], v[2], rm, rv, {.training = false});
  };
  TNAS_CHECK_GRADS(eval_bn, (V{x, g, b}));
}

TEST_CASE("batch_norm: non-affine training output is normalised per channel") {
  Rng rng(14);
  Tensor x = Tensor::randn({4, 3, 5, 5}, rng, 2.0, DType::f64);
  Tensor y = batch_norm(x, {}, {}, {}, {});
  Tensor m = mean(y, {0, 2, 3});
  Tensor v = mean(square(y), {0, 2, 3});
  for (double e : m.to_vector()) CHECK(std::abs(e) < 1e-12);
  for (double e : v.to_vector()) CHECK(e == doctest::Approx(1.0).epsilon(1e-4));
  CHECK(testing::throws_with(
      [&] {
        (void)batch_norm(x, Tensor::zeros({4}, DType::f64), Tensor::zeros({4}, DType::f64), {}, {});
      },
      {"batch_norm", "[4]", "[4, 3, 5, 5]"}));
}

TEST_CASE("gradients: global_avg_pool") {
  Rng rng(15);
  Tensor x = param({2, 3, 5, 3}, rng);
  TNAS_CHECK_GRADS([](const V& v) { return global_avg_pool(v[0]); }, (V{x}));
}
