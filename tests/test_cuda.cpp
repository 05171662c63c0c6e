// The CUDA backend against the CPU path: every op on random inputs of odd sizes, forward and
// gradients, with the device allocator's cache poisoned with NaN first (so a kernel that
// leaves an output element unwritten fails). Without a CUDA device every case says so and
// skips; the file is only built when the backend is (TNAS_HAVE_CUDA).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "testing.hpp"
#include "tnas/backend/cuda/cuda.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;
using V = std::vector<Tensor>;

namespace {

// Fills the device cache with NaN blocks of the sizes a case will ask for, so outputs start
// as NaN wherever the allocator hands out a cached block.
void poison(const std::vector<int64_t>& numels) {
  std::vector<Tensor> keep;
  for (int64_t n : numels)
    for (int i = 0; i < 4; ++i)
      keep.push_back(
          Tensor::full({n}, std::numeric_limits<double>::quiet_NaN(), DType::f32, Device::cuda));
}

// Runs f on CPU leaves and on their CUDA copies, back-propagates the same random gradient of
// the output, and compares outputs and every input's gradient.
void compare(const std::string& what, const std::function<Tensor(const V&)>& f, const V& inputs,
             double tol = 1e-4, bool grads = true) {
  INFO(what);
  V cpu, dev;
  std::vector<int64_t> sizes;
  for (const Tensor& t : inputs) {
    Tensor c = t.clone();
    Tensor d = t.to(Device::cuda);
    if (grads) c.set_requires_grad(), d.set_requires_grad();
    cpu.push_back(c);
    dev.push_back(d);
    sizes.push_back(t.numel());
  }
  Tensor yc = f(cpu);
  sizes.push_back(yc.numel());
  poison(sizes);
  Tensor yd = f(dev);
  REQUIRE(yd.device() == Device::cuda);
  CHECK(max_abs_diff(yc, yd.cpu()) <= tol * (1 + max_abs_diff(yc, Tensor::zeros(yc.shape()))));
  if (!grads) return;
  Rng rng(7);
  Tensor g = Tensor::randn(yc.shape(), rng);
  poison(sizes);
  backward(yc, g);
  backward(yd, g.to(Device::cuda));
  for (size_t i = 0; i < cpu.size(); ++i) {
    INFO("gradient of input ", i);
    REQUIRE(cpu[i].grad().defined());
    REQUIRE(dev[i].grad().defined());
    const double scale = 1 + max_abs_diff(cpu[i].grad(), Tensor::zeros(cpu[i].shape()));
    CHECK(max_abs_diff(cpu[i].grad(), dev[i].grad().cpu()) <= tol * scale);
  }
}

// Under tests/cudasim (test_cuda_sim), where every GPU thread is a simulated fiber, the DARTS
// cases run on smaller batches and fewer steps; the kernels they exercise are the same.
#ifdef TNAS_TEST_CUDASIM
constexpr int64_t kDartsBatch = 2, kDartsHW = 8, kDartsSteps = 1, kGraphSteps = 4;
#else
constexpr int64_t kDartsBatch = 6, kDartsHW = 12, kDartsSteps = 3, kGraphSteps = 5;
#endif

Tensor rnd(const Shape& s, uint64_t seed, double stddev = 1.0) {
  Rng rng(seed);
  return Tensor::randn(s, rng, stddev);
}

}  // namespace

TEST_CASE("cuda: tensors round-trip and fill, convert, gather, accumulate") {
  TNAS_SKIP_WITHOUT_GPU();
  Tensor a = rnd({3, 5, 7, 9}, 1);
  Tensor d = a.to(Device::cuda);
  CHECK(d.device() == Device::cuda);
  CHECK(max_abs_diff(a, d.cpu()) == 0);
  CHECK(Tensor::full({7, 3}, 2.5, DType::f32, Device::cuda).to_vector() ==
        std::vector<double>(21, 2.5));
  CHECK(max_abs_diff(a.to(DType::f64), d.to(DType::f64).cpu()) == 0);
  // a strided view made contiguous on the device
  Tensor v = d.as_strided({3, 5, 9, 7}, {315, 63, 1, 9}, 0).contiguous();
  Tensor vc = a.as_strided({3, 5, 9, 7}, {315, 63, 1, 9}, 0).contiguous();
  CHECK(max_abs_diff(vc, v.cpu()) == 0);
}

TEST_CASE("cuda: elementwise, broadcasting, reductions") {
  TNAS_SKIP_WITHOUT_GPU();
  Tensor a = rnd({3, 5, 7}, 2), b = rnd({5, 1}, 3), c = rnd({3, 5, 7}, 4);
  compare("add broadcast", [](const V& x) { return add(x[0], x[1]); }, {a, b});
  compare("sub", [](const V& x) { return sub(x[0], x[1]); }, {a, c});
  compare("mul broadcast", [](const V& x) { return mul(x[0], x[1]); }, {a, b});
  compare("div", [](const V& x) { return div(x[0], add_scalar(square(x[1]), 1.0)); }, {a, c});
  compare("scale", [](const V& x) { return scale(x[0], -1.5); }, {a});
  compare("relu", [](const V& x) { return relu(x[0]); }, {a});
  compare("sigmoid", [](const V& x) { return sigmoid(x[0]); }, {a});
  compare("tanh", [](const V& x) { return tanh(x[0]); }, {a});
  compare("exp", [](const V& x) { return exp(x[0]); }, {a});
  compare("log", [](const V& x) { return log(add_scalar(square(x[0]), 0.5)); }, {a});
  compare("sign_ste", [](const V& x) { return sign_ste(x[0]); }, {a});
  compare("sum axes", [](const V& x) { return sum(x[0], {0, 2}); }, {a});
  compare("mean all", [](const V& x) { return mean(x[0]); }, {a});
  compare("global_avg_pool", [](const V& x) { return global_avg_pool(x[0]); },
          {rnd({3, 5, 7, 9}, 5)});
  compare("concat",
          [](const V& x) {
            return concat({x[0], x[1]}, 1);
          },
          {rnd({3, 2, 7}, 6), rnd({3, 5, 7}, 7)});
}

namespace {

// Every depthwise kernel size / stride / dilation on the given shapes, plain and with the ReLU
// fused (read as max(x, 0), dx masked by x > 0).
void check_depthwise_convs(const std::vector<Shape>& shapes) {
  for (int R : {3, 5})
    for (int stride : {1, 2})
      for (int dil : {1, 2}) {
        const int pad = (R - 1) * dil / 2;
        for (const Shape& shape : shapes) {
          const int64_t C = shape[1];
          Tensor x = rnd(shape, 10 + R), w = rnd({C, 1, R, R}, 20 + R, 0.5);
          const std::string what = "dw R=" + std::to_string(R) + " s=" + std::to_string(stride) +
                                   " d=" + std::to_string(dil) + " " + shape.str();
          const Conv2dOptions o{
              .stride = stride, .padding = pad, .dilation = dil, .groups = int(C)};
          compare(
              what, [&](const V& v) { return conv2d(v[0], v[1], o); }, {x, w}, 1e-4);
          compare(
              "relu " + what, [&](const V& v) { return relu_conv2d(v[0], v[1], o); },
              {testing::with_zeros(x), w}, 1e-4);
        }
      }
}

// Pointwise (cuBLAS, batched and single image), strided 1x1, dense, grouped and 7x7 depthwise
// convolutions, plain and with the ReLU fused.
void check_other_convs() {
  Tensor x = rnd({3, 6, 7, 9}, 30);
  compare("pointwise", [](const V& v) { return conv2d(v[0], v[1], {}, v[2]); },
          {x, rnd({5, 6, 1, 1}, 31), rnd({5}, 32)});
  compare("1x1 stride 2", [](const V& v) { return conv2d(v[0], v[1], {.stride = 2}); },
          {x, rnd({4, 6, 1, 1}, 33)});
  compare("dense 3x3", [](const V& v) { return conv2d(v[0], v[1], {.padding = 1}); },
          {x, rnd({5, 6, 3, 3}, 34)});
  compare("grouped 3x3 stride 2",
          [](const V& v) { return conv2d(v[0], v[1], {.stride = 2, .padding = 1, .groups = 2}); },
          {x, rnd({4, 3, 3, 3}, 35)});
  compare("dense 5x5 dilation 2 stride 2, no padding",
          [](const V& v) { return conv2d(v[0], v[1], {.stride = 2, .dilation = 2}); },
          {rnd({2, 3, 13, 11}, 61), rnd({4, 3, 5, 5}, 62)});
  compare("depthwise 7x7 (no tiled kernel)",
          [](const V& v) { return conv2d(v[0], v[1], {.padding = 3, .groups = 6}); },
          {x, rnd({6, 1, 7, 7}, 63)});
  Tensor xz = testing::with_zeros(x);
  compare("relu pointwise with bias", [](const V& v) { return relu_conv2d(v[0], v[1], {}, v[2]); },
          {xz, rnd({5, 6, 1, 1}, 53), rnd({5}, 54)});
  compare("relu pointwise, one image", [](const V& v) { return relu_conv2d(v[0], v[1]); },
          {testing::with_zeros(rnd({1, 6, 5, 4}, 55)), rnd({3, 6, 1, 1}, 56)});
  compare("relu 1x1 stride 2", [](const V& v) { return relu_conv2d(v[0], v[1], {.stride = 2}); },
          {xz, rnd({4, 6, 1, 1}, 57)});
  compare("relu dense 3x3", [](const V& v) { return relu_conv2d(v[0], v[1], {.padding = 1}); },
          {xz, rnd({5, 6, 3, 3}, 58)});
  // depthwise -> pointwise as one op, the depthwise output recomputed in the backward
  compare(
      "relu separable 5x5 dilation 2 stride 2",
      [](const V& v) {
        return relu_separable_conv2d(v[0], v[1], v[2],
                                     {.stride = 2, .padding = 4, .dilation = 2, .groups = 6});
      },
      {xz, rnd({6, 1, 5, 5}, 64), rnd({5, 6, 1, 1}, 65)}, 1e-4);
  compare(
      "separable 3x3",
      [](const V& v) { return separable_conv2d(v[0], v[1], v[2], {.padding = 1, .groups = 6}); },
      {x, rnd({6, 1, 3, 3}, 66), rnd({4, 6, 1, 1}, 67)}, 1e-4);
  // pointwise weight gradient over many images (one batched GEMM + a fixed-order sum)
  compare("pointwise, 37 images", [](const V& v) { return conv2d(v[0], v[1]); },
          {rnd({37, 16, 6, 5}, 59), rnd({24, 16, 1, 1}, 60)});
}

// Sets the convolution engine for a scope and restores the previous one.
class EngineScope {
 public:
  explicit EngineScope(cuda::ConvEngine e) : saved_(cuda::conv_engine()) {
    cuda::set_conv_engine(e);
  }
  ~EngineScope() { cuda::set_conv_engine(saved_); }
  EngineScope(const EngineScope&) = delete;
  EngineScope& operator=(const EngineScope&) = delete;

 private:
  cuda::ConvEngine saved_;
};

}  // namespace

TEST_CASE("cuda: depthwise and dilated depthwise conv, every kernel size / stride / dilation") {
  TNAS_SKIP_WITHOUT_GPU();
  check_depthwise_convs({Shape{3, 5, 7, 9}, Shape{2, 4, 16, 16}, Shape{1, 3, 13, 37}});
}

// Lowers the simulator's grid limit along y and z for a scope (CUDASIM_MAX_GRID_YZ; a GPU
// ignores it, and the cases under it run unsplit there).
struct GridLimitScope : testing::EnvScope {
  explicit GridLimitScope(const char* limit) : EnvScope("CUDASIM_MAX_GRID_YZ", limit) {}
};

TEST_CASE("cuda: depthwise convs split to fit the grid, past 48 KB of shared memory, and empty") {
  TNAS_SKIP_WITHOUT_GPU();
  {
    // N*C planes along z and the weight gradient's channels along y, at most 2 blocks each:
    // 5 images of 7 channels at 9x9 run as launches of 2, 2 and 1 images, and of 2 channels.
    GridLimitScope limit("2");
    check_depthwise_convs({Shape{5, 7, 9, 9}});
#ifdef TNAS_TEST_CUDASIM
    // 40 channels do not fit 1 block of 4 planes: an error, not a partial result.
    GridLimitScope one("1");
    CHECK(testing::throws_with(
        [] {
          (void)conv2d(rnd({1, 40, 16, 16}, 70).to(Device::cuda),
                       rnd({40, 1, 3, 3}, 71).to(Device::cuda), {.padding = 1, .groups = 40});
        },
        {"does not fit the grid"}));
#endif
  }
  // 5x5 dilation 2 at a 4x4 output over 64 images: the weight gradient's tile (64 planes of
  // 12 x 16 floats) is 48 KB before its reduction rows, so the launch must opt in.
  compare("dw 5x5 d=2, 64 images of 4x4",
          [](const V& v) { return conv2d(v[0], v[1], {.padding = 4, .dilation = 2, .groups = 2}); },
          {rnd({64, 2, 4, 4}, 72), rnd({2, 1, 5, 5}, 73, 0.5)});
  // No images: an empty output, zero weight gradients.
  compare("dw 3x3, no images",
          [](const V& v) { return conv2d(v[0], v[1], {.padding = 1, .groups = 3}); },
          {rnd({0, 3, 5, 5}, 74), rnd({3, 1, 3, 3}, 75)});
}

TEST_CASE("cuda: pointwise, dense, grouped and strided conv, with bias; linear and matmul") {
  TNAS_SKIP_WITHOUT_GPU();
  check_other_convs();
  compare("linear", [](const V& v) { return linear(v[0], v[1], v[2]); },
          {rnd({7, 11}, 36), rnd({5, 11}, 37), rnd({5}, 38)});
  compare("matmul", [](const V& v) { return matmul(v[0], v[1]); },
          {rnd({7, 11}, 39), rnd({11, 3}, 40)});
}

TEST_CASE("cuda: convolution engines: native kernels and cuDNN for every shape") {
  TNAS_SKIP_WITHOUT_GPU();
  const std::string about = std::string("conv engine by default: ") +
                            cuda::to_string(cuda::conv_engine()) +
                            "; cuDNN in this build: " + (cuda::has_cudnn() ? "yes" : "no");
  MESSAGE(about);
  for (cuda::ConvEngine e : {cuda::ConvEngine::native, cuda::ConvEngine::cudnn}) {
    INFO("engine ", cuda::to_string(e));
    if (e == cuda::ConvEngine::cudnn && !cuda::has_cudnn()) {
      MESSAGE("skipped the cudnn engine: this build has no cuDNN");
      CHECK_THROWS_WITH_AS(cuda::set_conv_engine(e), doctest::Contains("no cuDNN"), Error);
      continue;
    }
    const EngineScope scope(e);
    check_other_convs();
    check_depthwise_convs({Shape{2, 3, 11, 13}});
  }
}

TEST_CASE("cuda: every convolution engine repeats its results bit for bit") {
  TNAS_SKIP_WITHOUT_GPU();
  // Large enough reductions (weight gradients over N*P*Q = 1,350 terms) that a summation order
  // changing between calls would show.
  const Tensor x = rnd({6, 8, 15, 15}, 70), w = rnd({8, 8, 3, 3}, 71), g = rnd({6, 8, 15, 15}, 72);
  for (cuda::ConvEngine e :
       {cuda::ConvEngine::native, cuda::ConvEngine::cudnn, cuda::ConvEngine::automatic}) {
    if (e == cuda::ConvEngine::cudnn && !cuda::has_cudnn()) continue;
    INFO("engine ", cuda::to_string(e));
    const EngineScope scope(e);
    std::vector<Tensor> first;
    for (int run = 0; run < 2; ++run) {
      Tensor xd = x.to(Device::cuda), wd = w.to(Device::cuda);
      xd.set_requires_grad();
      wd.set_requires_grad();
      Tensor y = conv2d(xd, wd, {.padding = 1});
      backward(y, g.to(Device::cuda));
      const std::vector<Tensor> now{y.cpu(), xd.grad().cpu(), wd.grad().cpu()};
      if (run == 0) {
        first = now;
        continue;
      }
      for (size_t i = 0; i < now.size(); ++i) {
        INFO("output ", i, " (y, dx, dw)");
        CHECK(max_abs_diff(first[i], now[i]) == 0.0);
      }
    }
  }
}

TEST_CASE("cuda: conv engine names") {
  CHECK(cuda::parse_conv_engine("auto") == cuda::ConvEngine::automatic);
  CHECK(cuda::parse_conv_engine("native") == cuda::ConvEngine::native);
  CHECK(cuda::parse_conv_engine("cudnn") == cuda::ConvEngine::cudnn);
  CHECK_THROWS_WITH_AS(cuda::parse_conv_engine("cuDNN9"),
                       doctest::Contains("'cuDNN9' (expected auto, native or cudnn)"), Error);
  for (cuda::ConvEngine e :
       {cuda::ConvEngine::automatic, cuda::ConvEngine::native, cuda::ConvEngine::cudnn})
    CHECK(cuda::parse_conv_engine(cuda::to_string(e)) == e);
}

TEST_CASE("cuda: max and avg pooling") {
  TNAS_SKIP_WITHOUT_GPU();
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
}

TEST_CASE("cuda: mixed-op weighted sum") {
  TNAS_SKIP_WITHOUT_GPU();
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
}

TEST_CASE("cuda: batch norm, train and eval, affine or not") {
  TNAS_SKIP_WITHOUT_GPU();
  // one block per channel; channels split over 6 blocks with chunks that end inside a row; the
  // same with a large mean and a small spread (the chunks' statistics merged without losing it)
  struct Case {
    Shape s;
    double offset, spread;
  };
  for (const Case& k :
       {Case{{3, 5, 7, 9}, 0, 1}, Case{{7, 3, 37, 41}, 0, 1}, Case{{7, 3, 37, 41}, 100, 0.01}}) {
    const int64_t C = k.s[1];
    for (bool affine : {true, false}) {
      INFO("shape ", k.s.str(), " offset ", k.offset);
      Tensor rm_c = rnd({C}, 70, 0.1), rv_c = add_scalar(square(rnd({C}, 71)), 0.5);
      Tensor rm_d = rm_c.to(Device::cuda), rv_d = rv_c.to(Device::cuda);
      V in{add_scalar(rnd(k.s, 72, k.spread), k.offset)};
      if (affine) in.push_back(rnd({C}, 73)), in.push_back(rnd({C}, 74));
      int calls = 0;
      compare(
          std::string("batch_norm train affine=") + (affine ? "1" : "0"),
          [&](const V& v) {
            const bool dev = v[0].device() == Device::cuda;
            ++calls;
            return batch_norm(v[0], affine ? v[1] : Tensor(), affine ? v[2] : Tensor(),
                              dev ? rm_d : rm_c, dev ? rv_d : rv_c, {.training = true});
          },
          in);
      CHECK(calls == 2);
      CHECK(max_abs_diff(rm_c, rm_d.cpu()) < 1e-5 * (1 + k.offset));
      CHECK(max_abs_diff(rv_c, rv_d.cpu()) < 1e-5);
      compare(
          std::string("batch_norm eval affine=") + (affine ? "1" : "0"),
          [&](const V& v) {
            const bool dev = v[0].device() == Device::cuda;
            return batch_norm(v[0], affine ? v[1] : Tensor(), affine ? v[2] : Tensor(),
                              dev ? rm_d : rm_c, dev ? rv_d : rv_c, {.training = false});
          },
          in);
    }
  }
}

TEST_CASE("cuda: softmax, log_softmax, cross-entropy") {
  TNAS_SKIP_WITHOUT_GPU();
  Tensor x = rnd({7, 10}, 80, 2.0);
  compare("softmax", [](const V& v) { return softmax(v[0]); }, {x});
  compare("log_softmax", [](const V& v) { return log_softmax(v[0]); }, {rnd({5, 37}, 81)});
  const std::vector<int32_t> labels{0, 3, 9, 9, 1, 5, 2};
  compare("cross_entropy", [&](const V& v) { return cross_entropy(v[0], labels); }, {x});
}

TEST_CASE("cuda: a missing kernel names the op and the device") {
  TNAS_SKIP_WITHOUT_GPU();
  Tensor x = rnd({2, 3}, 90).to(DType::f64).to(Device::cuda);
  CHECK(testing::throws_with([&] { softmax(x); }, {"softmax", "cuda", "float32"}));
}

namespace {
// Parameters of odd sizes (one over a launch's chunk, many more than a launch's list) with
// gradients, on the CPU and as CUDA copies.
struct ParamSet {
  V cpu, dev;
  explicit ParamSet(int n, uint64_t seed) {
    for (int i = 0; i < n; ++i) {
      const int64_t len = i == 0 ? 5003 : 1 + (i * 37) % 97;
      Tensor p = rnd({len}, seed + 2 * uint64_t(i));
      cpu.push_back(p.clone().set_requires_grad());
      dev.push_back(p.to(Device::cuda).set_requires_grad());
    }
  }
  void set_grads(uint64_t seed, double scale = 1.0) {
    for (size_t i = 0; i < cpu.size(); ++i) {
      if (i % 7 == 3) continue;  // some parameters have no gradient this step
      Tensor g = rnd(cpu[i].shape(), seed + i, scale);
      cpu[i].set_grad(g);
      dev[i].set_grad(g.to(Device::cuda));
    }
  }
  double max_diff() const {
    double d = 0;
    for (size_t i = 0; i < cpu.size(); ++i) d = std::max(d, max_abs_diff(cpu[i], dev[i].cpu()));
    return d;
  }
};
}  // namespace

TEST_CASE("cuda: fused SGD and Adam steps equal the CPU updates") {
  TNAS_SKIP_WITHOUT_GPU();
  for (bool nesterov : {false, true}) {
    INFO("nesterov ", nesterov);
    ParamSet ps(90, 100);
    optim::SGDOptions o{.lr = 0.05, .momentum = 0.9, .weight_decay = 3e-4, .nesterov = nesterov};
    optim::SGD sc(ps.cpu, o), sd(ps.dev, o);
    for (int s = 0; s < 4; ++s) {
      ps.set_grads(200 + 100 * uint64_t(s));
      poison({5003, 97});
      sc.step();
      sd.step();
    }
    CHECK(ps.max_diff() < 1e-5);
  }
  ParamSet ps(90, 300);
  optim::AdamOptions o{.lr = 3e-3, .beta1 = 0.5, .beta2 = 0.999, .weight_decay = 1e-3};
  optim::Adam ac(ps.cpu, o), ad(ps.dev, o);
  for (int s = 0; s < 5; ++s) {
    ps.set_grads(400 + 100 * uint64_t(s));
    ac.step();
    ad.step();
  }
  CHECK(ps.max_diff() < 1e-5);
  // The state saved from the device restores on the CPU, and vice versa.
  optim::Adam back(ps.cpu, o);
  back.load_state(ad.state());
  CHECK(back.param_state(0).step == ad.param_state(0).step);
}

TEST_CASE("cuda: gradient clipping on the device, with and without clipping, and NaN") {
  TNAS_SKIP_WITHOUT_GPU();
  for (double scale : {0.01, 3.0}) {
    INFO("gradient scale ", scale);
    ParamSet ps(60, 500);
    ps.set_grads(600, scale);
    const double nc = optim::clip_grad_norm(ps.cpu, 5.0);
    const double nd = optim::clip_grad_norm(ps.dev, 5.0);
    CHECK(std::abs(nc - nd) <= 1e-5 * nc);
    for (size_t i = 0; i < ps.cpu.size(); ++i)
      if (ps.cpu[i].grad().defined())
        CHECK(max_abs_diff(ps.cpu[i].grad(), ps.dev[i].grad().cpu()) < 1e-6);
  }
  ParamSet ps(10, 700);
  ps.set_grads(800, 10.0);
  Tensor g = ps.dev[1].grad().cpu();
  g.data<float>()[3] = std::numeric_limits<float>::quiet_NaN();
  ps.dev[1].set_grad(g.to(Device::cuda));
  const Tensor before = ps.dev[0].grad().cpu();
  CHECK(!std::isfinite(optim::clip_grad_norm(ps.dev, 1.0)));
  CHECK(max_abs_diff(before, ps.dev[0].grad().cpu()) == 0);
}

TEST_CASE("cuda: a DARTS search step gives the CPU's loss on the same weights and batch") {
  TNAS_SKIP_WITHOUT_GPU();
  for (bool second_order : {false, true}) {
    INFO("second order ", second_order);
    search::SupernetConfig cfg{.in_channels = 3, .channels = 8, .cells = 3, .classes = 10};
    search::Supernet<space::Darts> nc(cfg), nd(cfg);
    nd.to(Device::cuda);
    CHECK(nd.arch_parameters()[0].device() == Device::cuda);
    search::DartsOptions o{.second_order = second_order, .batch = kDartsBatch, .verbose = false};
    search::Darts dc(nc, o), dd(nd, o);
    Rng rng(11);
    data::Batch bt, bv;
    bt.x = Tensor::randn({kDartsBatch, 3, kDartsHW, kDartsHW}, rng);
    bv.x = Tensor::randn({kDartsBatch, 3, kDartsHW, kDartsHW}, rng);
    for (int i = 0; i < kDartsBatch; ++i)
      bt.labels.push_back(i % 10), bv.labels.push_back((i * 3) % 10);
    for (int s = 0; s < kDartsSteps; ++s) {
      const auto [lc, ac] = dc.step(bt, bv, true);
      const auto [ld, ad] = dd.step(bt, bv, true);
      INFO("step ", s);
      CHECK(std::abs(lc - ld) <= 1e-4 * std::abs(lc));
      CHECK(ac == ad);
    }
    // Not the genotypes: after a few steps from alphas of 1e-3, two candidates of an edge can
    // differ by less than the float rounding of the two paths, and either may rank first.
    CHECK(max_abs_diff(nc.alpha_normal(), nd.alpha_normal().cpu()) < 1e-4);
    CHECK(max_abs_diff(nc.alpha_reduce(), nd.alpha_reduce().cpu()) < 1e-4);
  }
}

TEST_CASE("cuda: a captured graph replays on new inputs; a host copy inside a capture is refused") {
  TNAS_SKIP_WITHOUT_GPU();
  Tensor x = rnd({1001}, 900).to(Device::cuda);
  Tensor y;
  DeviceGraph g(Device::cuda);
  g.capture([&] { y = add_scalar(scale(relu(x), 2.0), 1.0); });
  for (uint64_t s = 0; s < 3; ++s) {
    Tensor xc = rnd({1001}, 901 + s);
    x.copy_(xc);
    g.replay();
    CHECK(max_abs_diff(y.cpu(), add_scalar(scale(relu(xc), 2.0), 1.0)) < 1e-6);
  }
  DeviceGraph bad(Device::cuda);
  CHECK(testing::throws_with([&] { bad.capture([&] { (void)sum(relu(x)).item(); }); },
                             {"capture", "host"}));
  CHECK(!bad.ready());
  CHECK(max_abs_diff(relu(x).cpu(), relu(x.cpu())) == 0);  // eager work runs again
}

TEST_CASE("cuda: DARTS steps replayed as a CUDA graph equal the eager steps") {
  TNAS_SKIP_WITHOUT_GPU();
  for (bool one_level : {false, true}) {
    INFO("one level ", one_level);
    search::SupernetConfig cfg{.in_channels = 3, .channels = 8, .cells = 3, .classes = 10};
    search::Supernet<space::Darts> ne(cfg), ng(cfg);
    ne.to(Device::cuda);
    ng.to(Device::cuda);
    search::DartsOptions o{.one_level = one_level, .batch = kDartsBatch, .verbose = false};
    search::Darts de(ne, o);
    o.device_graph = true;
    search::Darts dg(ng, o);
    Rng rng(12);
    for (int s = 0; s < kGraphSteps; ++s) {
      data::Batch bt, bv;
      bt.x = Tensor::randn({kDartsBatch, 3, kDartsHW, kDartsHW}, rng);
      bv.x = Tensor::randn({kDartsBatch, 3, kDartsHW, kDartsHW}, rng);
      for (int i = 0; i < kDartsBatch; ++i)
        bt.labels.push_back((i + s) % 10), bv.labels.push_back(i % 7);
      const bool alpha = s != 1;  // a warm-up step in between: its own graph
      if (s == 3) dg.weight_optimizer().set_lr(0.01), de.weight_optimizer().set_lr(0.01);
      const auto [le, ae] = de.step(bt, bv, alpha);
      const auto [lg, ag] = dg.step(bt, bv, alpha);
      INFO("step ", s);
      CHECK(std::abs(le - lg) <= 1e-5 * std::abs(le));
      CHECK(ae == ag);
    }
    CHECK(max_abs_diff(ne.alpha_normal().cpu(), ng.alpha_normal().cpu()) < 1e-5);
    CHECK(de.weight_optimizer().param_state(0).step == dg.weight_optimizer().param_state(0).step);
  }
}

#ifdef TNAS_TEST_CUDASIM
// The race checker of the simulator's race-checking build (tests/cudasim/racecheck.cpp), which
// test_cuda_racecheck links: it must see the backend's own kernels, not only the simulator's
// test kernels (a build that lost their instrumentation would pass everything unchecked).
namespace cudasim {
bool racecheck_enabled();
unsigned long long racecheck_checked();
}  // namespace cudasim

TEST_CASE("cuda: the simulator's race checker sees the backend's kernels") {
  if (!cudasim::racecheck_enabled()) {
    MESSAGE("skipped: this build of the simulator has no race checker (test_cuda_racecheck has)");
    return;
  }
  Rng rng(3);
  Tensor x = Tensor::randn({2, 5, 7, 7}, rng).to(Device::cuda);
  Tensor w = Tensor::randn({5, 1, 3, 3}, rng).to(Device::cuda);
  const unsigned long long before = cudasim::racecheck_checked();
  Tensor y = conv2d(x, w, {.padding = 1, .groups = 5}).cpu();
  // every output written once, every input read at least once
  CHECK(cudasim::racecheck_checked() - before >= 2 * static_cast<unsigned long long>(y.numel()));
}
#endif
