// Binary operators: bit-packing, the XNOR / popcount convolution and GEMM (every compiled CPU
// kernel path, exact against a float convolution of +/-1 tensors), the straight-through
// gradients, the binary layers and ops, and a binary (BATS) supernet and network.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "testing.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;
using testing::throws_with;

namespace {

Tensor signs(const Tensor& x) {
  NoGrad ng;
  return sign_ste(x);
}

struct ConvCase {
  int64_t N, C, H, W, K, R;
  int stride, pad, dil, groups;
};

#define INFO_CASE(c)                                                                              \
  INFO("N ", (c).N, " C ", (c).C, " ", (c).H, "x", (c).W, " K ", (c).K, " R ", (c).R, " stride ", \
       (c).stride, " pad ", (c).pad, " dil ", (c).dil, " groups ", (c).groups)

const ConvCase kCases[] = {
    {1, 3, 5, 7, 4, 3, 1, 1, 1, 1},      // odd channels, odd sizes
    {3, 37, 9, 6, 5, 3, 1, 1, 1, 1},     // 37 channels: one partial word
    {2, 65, 7, 7, 9, 3, 2, 1, 1, 1},     // 65: a full word and one bit; stride 2
    {1, 130, 6, 5, 3, 3, 1, 2, 2, 1},    // 130: three words; dilation 2, padding 2
    {2, 64, 8, 8, 16, 3, 1, 1, 1, 1},    // exactly one word
    {2, 32, 9, 9, 12, 3, 1, 1, 1, 4},    // grouped
    {1, 6, 7, 5, 6, 3, 2, 1, 1, 2},      // groups 2, stride 2
    {2, 8, 6, 7, 8, 3, 1, 1, 1, 8},      // depthwise
    {1, 70, 5, 6, 11, 1, 1, 0, 1, 1},    // 1x1
    {2, 20, 9, 8, 7, 5, 1, 2, 1, 1},     // 5x5
    {1, 16, 11, 10, 16, 5, 2, 4, 2, 2},  // 5x5 dilation 2 padding 4, stride 2, groups 2
    {3, 100, 4, 4, 20, 3, 1, 0, 1, 1},   // no padding
    {1, 5, 3, 3, 2, 3, 1, 3, 1, 1},      // padding larger than half the window
    {2, 40, 3, 35, 9, 3, 1, 1, 1, 1},    // rows of 35 pixels: two 16-pixel packing blocks + 3
    {1, 67, 2, 19, 5, 3, 2, 1, 1, 1},    // 19 pixels, two words per pixel, stride 2
    {1, 24, 3, 21, 6, 3, 1, 1, 1, 3},    // grouped rows of 21 pixels
};

}  // namespace

TEST_CASE("pack_input: +/-1 codes round-trip; padding and pad bits stay 0") {
  Rng rng(1);
  for (const ConvCase& c : kCases) {
    INFO_CASE(c);
    cpu::xnor::Shape s{c.N, c.C, c.H, c.W, c.K, c.R, c.R, c.stride, c.pad, c.dil, c.groups};
    Tensor x = Tensor::randn({c.N, c.C, c.H, c.W}, rng, 1.0, DType::f32);
    std::vector<uint64_t> packed(size_t(s.packed_input_words()), ~uint64_t(0));  // poisoned
    cpu::xnor::pack_input(s, x.data<float>(), packed.data());
    Tensor back = Tensor::full(x.shape(), std::nan(""), DType::f32);
    CHECK(cpu::xnor::unpack_input(s, packed.data(), back.data<float>()));
    CHECK(max_abs_diff(back, signs(x)) == 0.0);
  }
}

TEST_CASE("xnor_conv2d equals a float conv of sign(x) and sign(w), exactly, on every path") {
  Rng rng(2);
  for (const ConvCase& c : kCases) {
    Tensor x = Tensor::randn({c.N, c.C, c.H, c.W}, rng, 1.0, DType::f32);
    Tensor w = Tensor::randn({c.K, c.C / c.groups, c.R, c.R}, rng, 1.0, DType::f32);
    const Conv2dOptions o{c.stride, c.pad, c.dil, c.groups};
    // The reference in float64: every value is an integer well inside double's exact range.
    Tensor ref = conv2d(signs(x).to(DType::f64), signs(w).to(DType::f64), o);
    cpu::xnor::Shape s{c.N, c.C, c.H, c.W, c.K, c.R, c.R, c.stride, c.pad, c.dil, c.groups};
    for (cpu::xnor::Path path : cpu::xnor::compiled_paths()) {
      INFO_CASE(c);
      INFO("path ", cpu::xnor::name(path));
      Tensor y = Tensor::full(ref.shape(), std::nan(""), DType::f32);  // poisoned output
      cpu::xnor::conv2d(s, x.data<float>(), w.data<float>(), y.data<float>(), path);
      CHECK(max_abs_diff(y.to(DType::f64), ref) == 0.0);
    }
    INFO_CASE(c);
    CHECK(max_abs_diff(xnor_conv2d(x, w, o).to(DType::f64), ref) == 0.0);
  }
}

TEST_CASE("xnor_conv2d: zeros count as +1, like sign_ste") {
  Tensor x = Tensor::zeros({1, 3, 3, 3});
  Tensor w = Tensor::zeros({2, 3, 3, 3});
  Tensor y = xnor_conv2d(x, w, {1, 1, 1, 1});
  CHECK(y.to_vector()[4] == 27.0);  // the centre pixel: 27 products of (+1)(+1)
  CHECK(y.to_vector()[0] == 12.0);  // a corner: 4 in-bounds taps x 3 channels
}

TEST_CASE("xnor_matmul equals sign(a) sign(b)^T exactly, odd sizes") {
  Rng rng(3);
  // Plain variables, not a structured binding: INFO captures them in a lambda, which Clang
  // before 16 does not allow for bindings.
  for (const auto& mnk : {std::tuple{1, 1, 1},
                          {5, 3, 64},
                          {7, 9, 65},
                          {13, 17, 130},
                          {3, 30, 200},
                          {40, 7, 70},
                          {70, 33, 129}}) {
    const int M = std::get<0>(mnk), N = std::get<1>(mnk), K = std::get<2>(mnk);
    INFO(M, "x", N, "x", K);
    Tensor a = Tensor::randn({M, K}, rng, 1.0, DType::f32);
    Tensor b = Tensor::randn({N, K}, rng, 1.0, DType::f32);
    Tensor ref = ops::detail::mm(signs(a).to(DType::f64), false, signs(b).to(DType::f64), true);
    for (cpu::xnor::Path path : cpu::xnor::compiled_paths()) {
      INFO(cpu::xnor::name(path));
      Tensor c = Tensor::full({M, N}, std::nan(""), DType::f32);
      cpu::xnor::gemm(M, N, K, a.data<float>(), b.data<float>(), c.data<float>(), path);
      CHECK(max_abs_diff(c.to(DType::f64), ref) == 0.0);
    }
    CHECK(max_abs_diff(xnor_matmul(a, b).to(DType::f64), ref) == 0.0);
  }
}

TEST_CASE("xnor ops: bad shapes are errors that say what") {
  Tensor x = Tensor::zeros({1, 4, 5, 5}), w = Tensor::zeros({3, 5, 3, 3});
  CHECK(throws_with([&] { xnor_conv2d(x, w); }, {"conv2d", "channels"}));
  CHECK(throws_with(
      [&] {
        xnor_conv2d(x.to(DType::f64), Tensor::zeros({3, 4, 3, 3}, DType::f64));
      },
      {"xnor_conv2d", "float32"}));
  CHECK(throws_with(
      [&] {
        xnor_matmul(Tensor::zeros({2, 3}), Tensor::zeros({2, 4}));
      },
      {"xnor_matmul", "same K"}));
}

TEST_CASE("sign_ste and binarize_weight: straight-through gradients") {
  Rng rng(4);
  Tensor w = Tensor::randn({3, 2, 3, 3}, rng, 0.8, DType::f64).set_requires_grad();
  Tensor wb = binarize_weight(w);
  Tensor g = Tensor::randn(w.shape(), rng, 1.0, DType::f64);
  backward(sum(mul(wb, g)));
  auto wv = w.to_vector(), gv = g.to_vector(), dv = w.grad().to_vector(), bv = wb.to_vector();
  const int64_t per = 2 * 3 * 3;
  for (int64_t k = 0; k < 3; ++k) {
    double alpha = 0;
    for (int64_t i = 0; i < per; ++i) alpha += std::abs(wv[size_t(k * per + i)]) / double(per);
    for (int64_t i = 0; i < per; ++i) {
      const size_t j = size_t(k * per + i);
      CHECK(bv[j] == doctest::Approx((wv[j] >= 0 ? 1 : -1) * alpha));
      // d/dw of alpha * sign(w) with alpha constant and sign's clipped identity.
      CHECK(dv[j] == doctest::Approx(std::abs(wv[j]) <= 1 ? alpha * gv[j] : 0.0));
    }
  }
}

TEST_CASE("binary_conv2d: real-weight gradient matches finite differences") {
  // The conv is linear in w, so with x fixed (its sign is constant) the w-gradient is exact;
  // the x-gradient is the straight-through one and checked against its formula.
  Rng rng(5);
  Tensor x = Tensor::randn({2, 3, 5, 4}, rng, 1.0, DType::f64);
  Tensor w = testing::param({4, 3, 3, 3}, rng);
  TNAS_CHECK_GRADS(
      [&](const std::vector<Tensor>& in) {
        return binary_conv2d(x, in[0], {1, 1});
      },
      std::vector<Tensor>{w});
  Tensor wg = testing::param({4, 1, 3, 3}, rng);
  Tensor xg = Tensor::randn({1, 4, 6, 6}, rng, 1.0, DType::f64);
  TNAS_CHECK_GRADS(
      [&](const std::vector<Tensor>& in) {
        return binary_conv2d(xg, in[0], {2, 1, 1, 4});
      },
      std::vector<Tensor>{wg});
  // dL/dx = conv2d's input gradient at sign(x), masked by |x| <= 1.
  Tensor xr = Tensor::randn({2, 3, 5, 4}, rng, 1.0, DType::f64).set_requires_grad();
  Tensor gy = Tensor::randn({2, 4, 5, 4}, rng, 1.0, DType::f64);
  backward(sum(mul(binary_conv2d(xr, w.detach(), {1, 1}), gy)));
  Tensor xs = signs(xr.detach()).set_requires_grad();
  backward(sum(mul(conv2d(xs, w.detach(), {1, 1}), gy)));
  auto a = xr.grad().to_vector(), b = xs.grad().to_vector(), xv = xr.to_vector();
  for (size_t i = 0; i < a.size(); ++i)
    CHECK(a[i] == doctest::Approx(std::abs(xv[i]) <= 1 ? b[i] : 0.0));
}

TEST_CASE("binary_conv2d with scale_activations multiplies by XNOR-Net's K") {
  Rng rng(6);
  Tensor x = Tensor::randn({1, 2, 4, 4}, rng, 1.0, DType::f64);
  Tensor w = Tensor::randn({3, 2, 3, 3}, rng, 1.0, DType::f64);
  Tensor y0 = binary_conv2d(x, w, {1, 1});
  Tensor y1 = binary_conv2d(x, w, {1, 1}, {.scale_activations = true});
  // K at the centre pixel (1, 1): the mean over the 3x3 window of mean_c |x|.
  auto xv = x.to_vector();
  double k = 0;
  for (int c = 0; c < 2; ++c)
    for (int h = 0; h < 3; ++h)
      for (int ww = 0; ww < 3; ++ww) k += std::abs(xv[size_t((c * 4 + h) * 4 + ww)]) / 18.0;
  const size_t centre = 1 * 4 + 1;
  CHECK(y1.to_vector()[centre] == doctest::Approx(y0.to_vector()[centre] * k));
}

TEST_CASE("BinaryConv2d: the XNOR inference path equals the float path") {
  Rng rng(7);
  nn::BinaryConv2d conv(37, 20, 3, nn::Conv2dConfig{.stride = 2, .padding = 1}, rng);
  Tensor x = Tensor::randn({3, 37, 9, 8}, rng, 1.0, DType::f32);
  conv.set_binary_weights(true);
  conv.train(false);
  Tensor y_xnor, y_float;
  {
    NoGrad ng;
    y_xnor = conv.forward(x);  // xnor path (eval, no grad)
  }
  y_float = conv.forward(x);                    // grad enabled: the float path
  CHECK(max_abs_diff(y_xnor, y_float) == 0.0);  // bit for bit
  CHECK(conv.binary_weight_bytes() == (20 * 37 * 9 + 7) / 8 + 20 * 4);
}

TEST_CASE("binary ops: names, shapes on odd sizes, parameter counts") {
  Rng rng(8);
  using Ops = space::BatsOps;
  static_assert(Ops::binary && Ops::size == 8);
  CHECK(Ops::index_of("bin_sep_conv_3x3") >= 0);
  CHECK(Ops::index_of("bin_dil_conv_5x5") >= 0);
  CHECK(Ops::index_of("bin_skip_connect") >= 0);
  CHECK(op::find("bin_sep_conv_5x5") != nullptr);
  CHECK(!op::find("bin_skip_connect")->parametric);
  for (int64_t C : {16, 32}) {
    for (int stride : {1, 2}) {
      for (int i = 0; i < Ops::size; ++i) {
        INFO(Ops::names[size_t(i)], " C ", C, " stride ", stride);
        if (Ops::names[size_t(i)] == "none") continue;
        auto m = Ops::build(i, C, stride, true, rng);
        CHECK(m->num_parameters() == Ops::params(i, C, stride, true));
        Tensor y = m->forward(Tensor::randn({2, C, 7, 7}, rng, 1.0, DType::f32));
        const int64_t out = stride == 1 ? 7 : 4;
        CHECK(y.shape() == Shape{2, C, out, out});
      }
    }
  }
}

TEST_CASE("BATS supernet: forward, backward, alphas, binary genotype; network turns fully binary") {
  search::SupernetConfig cfg{.in_channels = 1, .channels = 4, .cells = 3, .classes = 10, .seed = 1};
  search::Supernet<space::Bats> net(cfg);
  net.set_mixing({search::Mixing::softmax, 0.5});  // BATS' temperature T < 1
  Rng rng(9);
  Tensor x = Tensor::randn({2, 1, 12, 12}, rng, 1.0, DType::f32);
  std::vector<int32_t> labels{1, 7};
  Tensor loss = cross_entropy(net.forward(x), labels);
  backward(loss);
  CHECK(std::isfinite(loss.item()));
  CHECK(net.alpha_normal().grad().defined());
  auto g = net.genotype();
  for (auto& [op, from] : g.normal) CHECK(space::BatsOps::index_of(op) > 0);

  train::DartsNetworkConfig ncfg{.in_channels = 1,
                                 .channels = 16,
                                 .cells = 3,
                                 .classes = 10,
                                 .drop_path_prob = 0.0,
                                 .seed = 2};
  ncfg.ops = train::cell_ops<space::BatsOps>();
  train::DartsNetwork model(g, ncfg);
  CHECK(nn::set_binary_weights(model, true) > 10);
  model.train(false);
  Tensor xb = Tensor::randn({3, 1, 12, 12}, rng, 1.0, DType::f32);
  Tensor y_xnor, y_float;
  {
    NoGrad ng;
    y_xnor = model.forward(xb);
  }
  y_float = model.forward(xb);
  CHECK(max_abs_diff(y_xnor, y_float) == 0.0);
  auto mem = nn::weight_memory(model);
  CHECK(mem.binary_bytes < mem.float_bytes);
  CHECK(mem.binary_params > mem.real_params);
  // A DARTS genotype is not a binary-space genotype.
  auto darts = space::DartsGenotype::parse(
      "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), "
      "('sep_conv_3x3', 1)], normal_concat=[2, 3], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', "
      "1), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3])");
  CHECK(throws_with([&] { train::DartsNetwork bad(darts, ncfg); }, {"sep_conv_3x3"}));
}
