// Modules: registration and naming, the layers and DARTS blocks (shapes, initialisation,
// train/eval), state dicts through archives (and every way a file can be bad), and
// finite-difference gradients of the blocks in float64.
#include <doctest/doctest.h>

#include <zlib.h>

#include <unistd.h>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "testing.hpp"
#include "tnas/io/archive.hpp"
#include "tnas/nn/layers.hpp"
#include "tnas/nn/module.hpp"
#include "tnas/nn/nas_blocks.hpp"
#include "tnas/nn/serialize.hpp"

using namespace tnas;
using V = std::vector<Tensor>;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> keys(const std::vector<std::pair<std::string, Tensor>>& v) {
  std::vector<std::string> k;
  for (auto& [n, t] : v) k.push_back(n);
  return k;
}

// A fresh path in the temp directory, removed (with its .tmp) when the test ends.
struct TempFile {
  fs::path path;
  explicit TempFile(const std::string& stem) {
    static int counter = 0;
    path = fs::temp_directory_path() /
           (stem + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".tnas");
  }
  ~TempFile() {
    std::error_code ec;
    fs::remove(path, ec);
    fs::remove(path.string() + ".tmp", ec);
  }
  std::string str() const { return path.string(); }
};

std::vector<unsigned char> slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void spit(const fs::path& p, const std::vector<unsigned char>& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// A two-level module with a shared child, to test traversal.
struct Block : nn::Module {
  Tensor w, b;
  Block(Rng& rng) : Module("Block") {
    w = register_parameter("w", Tensor::randn({2, 3}, rng));
    b = register_parameter("b", Tensor::zeros({3}));
    register_buffer("count", Tensor::zeros({1}));
  }
};
struct Net : nn::Module {
  std::shared_ptr<Block> first, second;
  Net(Rng& rng) : Module("Net") {
    register_parameter("scale", Tensor::ones({1}));
    first = register_module("first", std::make_shared<Block>(rng));
    auto cells = register_module("cells", std::make_shared<nn::Sequential>());
    cells->push_back(std::make_shared<Block>(rng));
    second = cells->push_back(std::make_shared<Block>(rng));
    cells->push_back(first);  // shared: must be listed once, under its first path
  }
};

Tensor input(const Shape& s, uint64_t seed, DType t = DType::f32) {
  Rng rng(seed);
  return Tensor::randn(s, rng, 1.0, t);
}

}  // namespace

TEST_CASE("registration: names, order, dedup, counts") {
  Rng rng(1);
  Net net(rng);
  CHECK(keys(net.named_parameters()) == std::vector<std::string>{"scale", "first.w", "first.b",
                                                                 "cells.0.w", "cells.0.b",
                                                                 "cells.1.w", "cells.1.b"});
  CHECK(keys(net.named_buffers()) ==
        std::vector<std::string>{"first.count", "cells.0.count", "cells.1.count"});
  CHECK(keys(net.state_dict()) == std::vector<std::string>{"scale", "first.w", "first.b",
                                                           "first.count", "cells.0.w", "cells.0.b",
                                                           "cells.0.count", "cells.1.w",
                                                           "cells.1.b", "cells.1.count"});
  CHECK(net.parameters().size() == 7);
  CHECK(net.num_parameters() == 1 + 3 * (6 + 3));
  CHECK(net.parameters()[5].same(net.second->w));
  for (auto& p : net.parameters()) CHECK(p.requires_grad());
  for (auto& b : net.buffers()) CHECK_FALSE(b.requires_grad());
  CHECK(net.named_modules().size() == 4);  // first, cells, cells.0, cells.1 (cells.2 is first)
  CHECK(net.named_modules()[1].first == "cells");
  CHECK(net.named_modules()[3].first == "cells.1");

  auto blk = std::make_shared<Block>(rng);
  CHECK(testing::throws_with([&] { blk->register_parameter("w", Tensor::zeros({1})); },
                             {"Block", "'w'", "already used"}));
  CHECK(testing::throws_with([&] { blk->register_buffer("a.b", Tensor::zeros({1})); },
                             {"Block", "'a.b'", "'.'"}));
  Tensor leaf = Tensor::ones({2}).set_requires_grad();
  CHECK(testing::throws_with([&] { blk->register_parameter("x", leaf * 2.0); },
                             {"Block", "'x'", "result of an op"}));
  CHECK(testing::throws_with([&] { (void)(*blk)(Tensor::zeros({1})); },
                             {"Block", "no single-input forward"}));
}

TEST_CASE("train/eval recurse; zero_grad drops gradients") {
  Rng rng(2);
  Net net(rng);
  CHECK(net.is_training());
  net.eval();
  for (auto& [n, m] : net.named_modules()) CHECK_FALSE(m->is_training());
  net.train();
  for (auto& [n, m] : net.named_modules()) CHECK(m->is_training());

  net.first->w.set_grad(Tensor::ones({2, 3}));
  net.zero_grad();
  CHECK_FALSE(net.first->w.grad().defined());
}

TEST_CASE("layers: shapes, names, errors") {
  Rng rng(3);
  Tensor x = input({2, 4, 7, 7}, 1);
  nn::Conv2d conv(4, 8, 3, {.stride = 2, .padding = 1, .bias = true}, rng);
  CHECK(conv(x).shape() == Shape{2, 8, 4, 4});
  CHECK(keys(conv.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  CHECK(conv.name() == "Conv2d(4, 8, kernel_size=3, stride=2, padding=1, bias=True)");
  CHECK(testing::throws_with(
      [&] {
        (void)conv(input({2, 3, 7, 7}, 1));
      },
      {"Conv2d(4, 8", "[2, 3, 7, 7]", "3 channels, expected 4"}));
  CHECK(testing::throws_with([&] { nn::Conv2d(4, 6, 3, {.groups = 4}, rng); },
                             {"groups 4", "out_channels 6"}));

  nn::Linear lin(12, 5, rng);
  CHECK(lin(input({3, 12}, 2)).shape() == Shape{3, 5});
  CHECK(testing::throws_with([&] { (void)lin(input({3, 11}, 2)); }, {"Linear", "[3, 11]"}));
  CHECK(nn::Linear(12, 5, false, rng).num_parameters() == 60);

  CHECK(nn::MaxPool2d(3, 2, 1)(x).shape() == Shape{2, 4, 4, 4});
  CHECK(nn::AvgPool2d(3, 1, 1)(x).shape() == Shape{2, 4, 7, 7});
  CHECK(nn::GlobalAvgPool()(x).shape() == Shape{2, 4});
  CHECK(nn::Flatten()(x).shape() == Shape{2, 196});
  CHECK(nn::Identity()(x).same(x));

  nn::Sequential seq(std::make_shared<nn::Conv2d>(4, 4, 3, nn::Conv2dConfig{.padding = 1}, rng),
                     std::make_shared<nn::BatchNorm2d>(4), std::make_shared<nn::ReLU>(),
                     std::make_shared<nn::GlobalAvgPool>(),
                     std::make_shared<nn::Linear>(4, 10, rng));
  CHECK(seq.size() == 5);
  CHECK(seq(x).shape() == Shape{2, 10});
  CHECK(seq.at<nn::BatchNorm2d>(1)->channels() == 4);
  CHECK(testing::throws_with([&] { (void)seq.at<nn::Linear>(0); }, {"layer 0", "Conv2d"}));
  CHECK(keys(seq.named_parameters()) ==
        std::vector<std::string>{"0.weight", "1.weight", "1.bias", "4.weight", "4.bias"});
}

TEST_CASE("Dropout: identity in eval, masks in training") {
  Rng rng(4);
  nn::Dropout drop(0.5, rng);
  Tensor x = Tensor::ones({1000});
  drop.eval();
  CHECK(drop(x).same(x));
  drop.train();
  auto v = drop(x).to_vector();
  int zeros = 0;
  for (double e : v) {
    CHECK((e == 0 || e == 2));
    zeros += e == 0;
  }
  CHECK(zeros > 400);
  CHECK(zeros < 600);
}

TEST_CASE("initialisation: PyTorch's bounds, same seed same network") {
  Rng a(42), b(42), c(43);
  nn::SepConv s1(8, 16, 5, 2, 2, true, a), s2(8, 16, 5, 2, 2, true, b), s3(8, 16, 5, 2, 2, true, c);
  auto p1 = s1.parameters(), p2 = s2.parameters(), p3 = s3.parameters();
  REQUIRE(p1.size() == p2.size());
  bool any_diff = false;
  for (size_t i = 0; i < p1.size(); ++i) {
    CHECK(p1[i].to_vector() == p2[i].to_vector());
    any_diff |= p1[i].to_vector() != p3[i].to_vector();
  }
  CHECK(any_diff);

  Rng rng(5);
  nn::Conv2d dw(8, 8, 3, {.groups = 8, .bias = true}, rng);  // fan_in = 1 * 3 * 3
  nn::Conv2d pw(8, 16, 1, {}, rng);                          // fan_in = 8
  nn::Linear fc(50, 10, rng);                                // fan_in = 50
  auto within = [](const Tensor& t, double bound) {
    double lo = 0, hi = 0;
    for (double v : t.to_vector()) lo = std::min(lo, v), hi = std::max(hi, v);
    // Inside the bound, and spread over most of it (a uniform draw, not a normal one).
    return hi <= bound && lo >= -bound && hi > 0.7 * bound && lo < -0.7 * bound;
  };
  CHECK(within(dw.weight(), 1 / 3.0));
  CHECK(within(dw.bias(), 1 / 3.0));
  CHECK(within(pw.weight(), 1 / std::sqrt(8.0)));
  CHECK(within(fc.weight(), 1 / std::sqrt(50.0)));
  CHECK(within(fc.bias(), 1 / std::sqrt(50.0)));
  nn::BatchNorm2d bn(6);
  CHECK(bn.weight().to_vector() == std::vector<double>(6, 1.0));
  CHECK(bn.bias().to_vector() == std::vector<double>(6, 0.0));
  CHECK(bn.running_var().to_vector() == std::vector<double>(6, 1.0));
  CHECK(nn::BatchNorm2d(6, {.affine = false}).parameters().empty());
}

TEST_CASE("DARTS blocks: output shapes at stride 1 and 2, even and odd sizes") {
  Rng rng(6);
  const int64_t C = 4;
  for (int64_t H : {8, 7, 5}) {
    for (int s : {1, 2}) {
      INFO("H = " << H << ", stride = " << s);
      Tensor x = input({2, C, H, H}, 7);
      const Shape want{2, C, (H + s - 1) / s, (H + s - 1) / s};
      std::vector<std::shared_ptr<nn::Module>> ops = {
          std::make_shared<nn::Zero>(s),
          std::make_shared<nn::MaxPool2d>(3, s, 1),
          std::make_shared<nn::AvgPool2d>(3, s, 1),
          std::make_shared<nn::SepConv>(C, C, 3, s, 1, false, rng),
          std::make_shared<nn::SepConv>(C, C, 5, s, 2, false, rng),
          std::make_shared<nn::DilConv>(C, C, 3, s, 2, 2, false, rng),
          std::make_shared<nn::DilConv>(C, C, 5, s, 4, 2, false, rng),
          std::make_shared<nn::ReLUConvBN>(C, C, 3, s, 1, true, rng),
      };
      if (s == 1)
        ops.push_back(std::make_shared<nn::Identity>());
      else
        ops.push_back(std::make_shared<nn::FactorizedReduce>(C, C, false, rng));
      for (auto& op : ops) {
        INFO(op->name());
        Tensor y = op->forward(x);
        CHECK(y.shape() == want);
        // MixedOp feeds one shared relu(x) to every candidate that begins with a ReLU.
        const bool relu_first = op->begins_with_relu();
        CHECK(relu_first ==
              (dynamic_cast<nn::SepConv*>(op.get()) || dynamic_cast<nn::DilConv*>(op.get()) ||
               dynamic_cast<nn::ReLUConvBN*>(op.get()) ||
               dynamic_cast<nn::FactorizedReduce*>(op.get())));
        if (relu_first)
          CHECK(op->forward_after_relu(relu(x)).to_vector() == y.to_vector());
        else
          CHECK_THROWS_AS(op->forward_after_relu(x), Error);
      }
    }
  }
  Tensor z = nn::Zero(2)(input({1, 3, 5, 6}, 1));
  CHECK(z.shape() == Shape{1, 3, 3, 3});
  CHECK(z.to_vector() == std::vector<double>(27, 0.0));
  CHECK(nn::ReLUConvBN(4, 8, 1, 1, 0, true, rng)(input({2, 4, 5, 5}, 1)).shape() ==
        Shape{2, 8, 5, 5});
}

TEST_CASE("DARTS blocks: parameter names and counts match operations.py") {
  Rng rng(7);
  nn::SepConv sep(16, 16, 3, 1, 1, true, rng);
  CHECK(keys(sep.named_parameters()) ==
        std::vector<std::string>{"op.1.weight", "op.2.weight", "op.3.weight", "op.3.bias",
                                 "op.5.weight", "op.6.weight", "op.7.weight", "op.7.bias"});
  CHECK(sep.num_parameters() == 2 * (16 * 9 + 16 * 16 + 2 * 16));
  CHECK(sep.op()->at<nn::Conv2d>(5)->config().stride == 1);
  nn::SepConv sep2(16, 32, 5, 2, 2, true, rng);
  CHECK(sep2.op()->at<nn::Conv2d>(1)->config().stride == 2);
  CHECK(sep2.op()->at<nn::Conv2d>(2)->out_channels() == 16);  // C_in -> C_in first
  CHECK(sep2.op()->at<nn::Conv2d>(6)->out_channels() == 32);

  nn::DilConv dil(16, 16, 3, 1, 2, 2, false, rng);
  CHECK(keys(dil.named_parameters()) == std::vector<std::string>{"op.1.weight", "op.2.weight"});
  CHECK(keys(dil.named_buffers()) ==
        std::vector<std::string>{"op.3.running_mean", "op.3.running_var"});
  CHECK(dil.op()->at<nn::Conv2d>(1)->config().dilation == 2);
  CHECK(dil.op()->at<nn::Conv2d>(1)->config().groups == 16);

  nn::FactorizedReduce fr(8, 16, true, rng);
  CHECK(keys(fr.named_parameters()) ==
        std::vector<std::string>{"conv_1.weight", "conv_2.weight", "bn.weight", "bn.bias"});
  CHECK(testing::throws_with([&] { nn::FactorizedReduce(8, 7, true, rng); },
                             {"FactorizedReduce(8, 7", "even", "7"}));
  CHECK(testing::throws_with(
      [&] {
        (void)fr(input({1, 8, 1, 4}, 1));
      },
      {"FactorizedReduce", "[1, 8, 1, 4]", "too small"}));
}

TEST_CASE("FactorizedReduce on odd sizes equals the reference on the zero-padded input") {
  // NAS-Bench-201 pads x with a zero row and column before the shifted branch; on an odd input
  // that is the same as padding x to even size first, which the DARTS reference handles.
  // Plain variables, not a structured binding: INFO captures them in a lambda, which Clang
  // before 16 does not allow for bindings.
  for (const auto& hw : {std::pair<int64_t, int64_t>{7, 7}, {5, 6}, {6, 5}}) {
    const int64_t H = hw.first, W = hw.second;
    INFO(H << "x" << W);
    Rng r1(8), r2(8);
    nn::FactorizedReduce a(3, 6, true, r1), b(3, 6, true, r2);
    Tensor x = input({2, 3, H, W}, 9);
    const int64_t He = H + H % 2, We = W + W % 2;
    Tensor xp = Tensor::zeros({2, 3, He, We});
    for (int64_t n = 0; n < 2 * 3; ++n)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j)
          xp.data<float>()[(n * He + i) * We + j] = x.data<float>()[(n * H + i) * W + j];
    Tensor ya = a(x), yb = b(xp);
    CHECK(ya.shape() == Shape{2, 6, (H + 1) / 2, (W + 1) / 2});
    CHECK(max_abs_diff(ya, yb) < 1e-5);
  }
}

TEST_CASE("BatchNorm2d: batch statistics in training, running statistics in evaluation") {
  nn::BatchNorm2d bn(3);
  Tensor x = input({4, 3, 5, 5}, 10) * 2.0 + 1.0;
  Tensor y = bn(x);
  for (int64_t c = 0; c < 3; ++c) {
    double s = 0, ss = 0, xs = 0;
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t i = 0; i < 25; ++i) {
        double v = y.data<float>()[(n * 3 + c) * 25 + i];
        s += v, ss += v * v, xs += x.data<float>()[(n * 3 + c) * 25 + i];
      }
    CHECK(std::abs(s / 100) < 1e-5);
    CHECK(std::abs(ss / 100 - 1) < 1e-3);
    CHECK(bn.running_mean().to_vector()[c] == doctest::Approx(0.1 * xs / 100).epsilon(1e-5));
  }
  std::vector<double> rm = bn.running_mean().to_vector(), rv = bn.running_var().to_vector();

  bn.eval();
  Tensor ye = bn(x);
  CHECK(bn.running_mean().to_vector() == rm);  // evaluation leaves the statistics alone
  for (int64_t c = 0; c < 3; ++c) {
    const double want = (x.at({1, c, 2, 3}) - rm[c]) / std::sqrt(rv[c] + 1e-5);
    CHECK(ye.at({1, c, 2, 3}) == doctest::Approx(want).epsilon(1e-5));
  }
  // A SepConv in eval mode runs its BNs in eval mode: same input, same output, stats fixed.
  Rng rng(11);
  nn::SepConv sep(3, 3, 3, 1, 1, true, rng);
  sep.eval();
  Tensor o1 = sep(x), o2 = sep(x);
  CHECK(max_abs_diff(o1, o2) == 0);
  CHECK(sep.op()->at<nn::BatchNorm2d>(3)->running_mean().to_vector() ==
        std::vector<double>(3, 0.0));
  sep.train();
  (void)sep(x);
  CHECK(sep.op()->at<nn::BatchNorm2d>(3)->running_mean().to_vector() !=
        std::vector<double>(3, 0.0));
}

TEST_CASE("Module::to(dtype) converts in place; handles stay valid") {
  Rng rng(12);
  nn::DilConv m(4, 4, 3, 1, 2, 2, true, rng);
  auto before = m.state_dict();
  Tensor w = m.op()->at<nn::Conv2d>(1)->weight();
  std::vector<double> wv = w.to_vector();
  m.to(DType::f64);
  CHECK(w.dtype() == DType::f64);  // the handle taken before sees the conversion
  CHECK(w.to_vector() == wv);
  for (auto& [k, t] : m.state_dict()) CHECK(t.dtype() == DType::f64);
  for (auto& p : m.parameters()) CHECK(p.requires_grad());
  CHECK(m(input({2, 4, 6, 6}, 1, DType::f64)).dtype() == DType::f64);
}

TEST_CASE("gradients of the DARTS blocks (float64, BN in training mode)") {
  auto check = [](nn::Module& m, const Shape& xs) {
    INFO(m.name());
    m.to(DType::f64);
    Rng rng(13);
    Tensor x = testing::param(xs, rng);
    V inputs{x};
    for (auto& p : m.parameters()) inputs.push_back(p);
    TNAS_CHECK_GRADS([&m](const V& v) { return m(v[0]); }, inputs,
                     GradCheckOptions{.atol = 1e-5, .rtol = 1e-4});
  };
  Rng rng(14);
  nn::SepConv sep(3, 4, 3, 2, 1, true, rng);
  check(sep, {2, 3, 5, 5});
  nn::DilConv dil(3, 4, 3, 1, 2, 2, true, rng);
  check(dil, {2, 3, 5, 5});
  nn::FactorizedReduce fr(3, 4, true, rng);
  check(fr, {2, 3, 5, 4});
  nn::ReLUConvBN rcb(3, 4, 3, 1, 1, true, rng);
  check(rcb, {2, 3, 4, 4});
  nn::Linear fc(5, 3, rng);
  check(fc, {4, 5});
}

TEST_CASE("state dict round trip through an archive") {
  Rng r1(15), r2(16);
  nn::SepConv a(4, 8, 3, 2, 1, true, r1), b(4, 8, 3, 2, 1, true, r2);
  (void)a(input({2, 4, 6, 6}, 1));  // move the running statistics off their initial values
  TempFile f("state");
  nn::save_state(a, f.path, {{"epoch", "7"}});
  CHECK(fs::exists(f.path));
  CHECK_FALSE(fs::exists(f.str() + ".tmp"));
  io::Metadata meta = nn::load_state(b, f.path);
  CHECK(meta.at("epoch") == "7");
  CHECK(meta.at("tnas.module") == a.name());
  auto sa = a.state_dict(), sb = b.state_dict();
  REQUIRE(sa.size() == sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    CHECK(sa[i].first == sb[i].first);
    CHECK(sa[i].second.to_vector() == sb[i].second.to_vector());
  }
  a.eval(), b.eval();
  Tensor x = input({2, 4, 6, 6}, 2);
  CHECK(max_abs_diff(a(x), b(x)) == 0);

  // The archive keeps float64, empty and scalar tensors, metadata with any bytes, and order.
  io::NamedTensors ts = {{"z", Tensor::from({1.5, -2.25}, {2}, DType::f64)},
                         {"a", Tensor::zeros({0, 3})},
                         {"s", Tensor::scalar(3.0)}};
  io::write(f.path, ts, {{"k", std::string("a\0b", 3)}});
  io::Archive back = io::read(f.path);
  CHECK(keys(back.tensors) == std::vector<std::string>{"z", "a", "s"});
  CHECK(back.tensor("z").dtype() == DType::f64);
  CHECK(back.tensor("z").to_vector() == std::vector<double>{1.5, -2.25});
  CHECK(back.tensor("a").shape() == Shape{0, 3});
  CHECK(back.tensor("s").shape() == Shape{});
  CHECK(back.meta.at("k") == std::string("a\0b", 3));
  io::Archive ck;
  ck.add("model.", back);
  ck.meta["step"] = "3";
  CHECK(keys(ck.extract("model.").tensors) == std::vector<std::string>{"z", "a", "s"});
}

TEST_CASE("archive errors name the file and say what is wrong") {
  Rng rng(17);
  nn::ReLUConvBN m(2, 4, 3, 1, 1, true, rng);
  TempFile f("bad");
  const std::string p = f.str();

  CHECK(testing::throws_with([&] { (void)io::read(p); }, {"cannot open", p}));
  CHECK(testing::throws_with([&] { nn::load_state(m, p); }, {"cannot open", p}));
  CHECK(testing::throws_with([&] { nn::save_state(m, f.path / "sub" / "x.tnas"); },
                             {"cannot create", "x.tnas"}));

  nn::save_state(m, f.path);
  const auto good = slurp(f.path);

  auto flipped = good;
  flipped[good.size() / 2] ^= 0x10;
  spit(f.path, flipped);
  CHECK(testing::throws_with([&] { nn::load_state(m, p); }, {p, "corrupt", "crc32"}));

  auto cut = good;
  cut.resize(good.size() - 10);
  spit(f.path, cut);
  CHECK(testing::throws_with([&] { (void)io::read(p); },
                             {p, "truncated", "expected " + std::to_string(good.size()),
                              "got " + std::to_string(good.size() - 10)}));
  cut.resize(10);
  spit(f.path, cut);
  CHECK(testing::throws_with([&] { (void)io::read(p); }, {p, "truncated"}));

  auto magic = good;
  magic[0] = 'X';
  spit(f.path, magic);
  CHECK(testing::throws_with([&] { (void)io::read(p); }, {p, "bad magic"}));

  // An unknown dtype code with a valid crc: a file from a newer tnas.
  io::write(f.path, {{"t", Tensor::zeros({2})}});
  auto dt = slurp(f.path);
  const size_t code_at = 8 + 8 + 4 + 4 + 4 + 1;  // magic, size, counts, name length, name "t"
  REQUIRE(dt[code_at] == 0);
  dt[code_at] = 7;
  const uint32_t crc = uint32_t(crc32_z(crc32_z(0, nullptr, 0), dt.data(), dt.size() - 4));
  std::memcpy(dt.data() + dt.size() - 4, &crc, 4);
  spit(f.path, dt);
  CHECK(testing::throws_with([&] { (void)io::read(p); }, {p, "unknown dtype code 7", "'t'"}));

  // A good file for another module: the error names the file and the mismatch.
  nn::save_state(m, f.path);
  nn::ReLUConvBN other(2, 6, 3, 1, 1, true, rng);
  CHECK(testing::throws_with([&] { nn::load_state(other, p); },
                             {p, "op.1.weight", "[4, 2, 3, 3]", "[6, 2, 3, 3]"}));
}

TEST_CASE("load_state_dict: strictness, shape errors, all or nothing") {
  Rng rng(18);
  nn::Sequential m(std::make_shared<nn::Conv2d>(2, 3, 3, nn::Conv2dConfig{}, rng),
                   std::make_shared<nn::BatchNorm2d>(3));
  auto sd = m.state_dict();
  std::vector<double> w0 = sd[0].second.to_vector();
  REQUIRE(nn::find_tensor(sd, "1.running_var"));
  CHECK(nn::find_tensor(sd, "1.running_var")->same(sd.back().second));
  CHECK_FALSE(nn::find_tensor(sd, "2.weight"));
  m.load_state_dict(sd);  // its own tensors: a no-op, not an overlapping copy
  CHECK(sd[0].second.to_vector() == w0);

  nn::StateDict missing(sd.begin() + 1, sd.end());
  CHECK(testing::throws_with([&] { m.load_state_dict(missing); },
                             {"Sequential", "1 missing key", "'0.weight'"}));
  nn::StateDict extra = sd;
  extra.emplace_back("2.weight", Tensor::zeros({1}));
  CHECK(testing::throws_with([&] { m.load_state_dict(extra); }, {"unexpected key", "'2.weight'"}));
  nn::StateDict dup = sd;
  dup.push_back(sd[1]);
  CHECK(testing::throws_with([&] { m.load_state_dict(dup); }, {"'1.weight'", "twice"}));

  // A shape mismatch late in the dict leaves the earlier tensors untouched.
  nn::StateDict bad;
  for (auto& [k, t] : sd) bad.emplace_back(k, Tensor::full(t.shape(), 5.0));
  bad.back().second = Tensor::zeros({4});
  CHECK(testing::throws_with([&] { m.load_state_dict(bad); },
                             {"'1.running_var'", "has [4]", "module has [3]"}));
  CHECK(sd[0].second.to_vector() == w0);

  // Not strict: loads what matches by name, skips the rest; dtype converts.
  nn::StateDict part = {{"0.weight", Tensor::full({3, 2, 3, 3}, 0.25, DType::f64)},
                        {"junk", Tensor::zeros({1})}};
  m.load_state_dict(part, /*strict=*/false);
  CHECK(sd[0].second.dtype() == DType::f32);
  CHECK(sd[0].second.to_vector() == std::vector<double>(54, 0.25));
  CHECK(testing::throws_with(
      [&] {
        m.load_state_dict({{"1.bias", Tensor::zeros({2})}}, false);
      },
      {"'1.bias'", "[2]", "[3]"}));
}
