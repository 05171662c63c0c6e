// The DARTS supernet and search: shapes, the separation of weights and alphas, the genotype
// derivation rule, the second-order gradient against finite differences of the unrolled
// objective, and a killed-then-resumed search ending exactly like an uninterrupted one.
#include <doctest/doctest.h>

#include <filesystem>

#include "testing.hpp"
#include "tnas/search/darts.hpp"

using namespace tnas;
using Net = search::Supernet<space::Darts>;

namespace {
search::SupernetConfig tiny(DType t = DType::f32) {
  return {.in_channels = 1, .channels = 2, .cells = 3, .classes = 3, .seed = 5, .dtype = t};
}
data::Batch random_batch(int64_t n, int64_t hw, Rng& rng, DType t) {
  data::Batch b;
  b.x = Tensor::randn({n, 1, hw, hw}, rng, 1.0, t);
  for (int64_t i = 0; i < n; ++i) b.labels.push_back(int32_t(rng.below(3)));
  return b;
}
data::Dataset random_dataset(int64_t n, uint64_t seed) {
  Rng rng(seed);
  data::Dataset ds;
  ds.images = Tensor::uniform({n, 1, 8, 8}, rng, 0, 1);
  for (int64_t i = 0; i < n; ++i) {
    int32_t y = int32_t(rng.below(3));
    ds.labels.push_back(y);
    float* p = ds.images.data<float>() + i * 64;
    for (int k = 0; k < 16; ++k) p[y * 16 + k] += 1.0f;  // a learnable signal
  }
  ds.num_classes = 3;
  return ds;
}
}  // namespace

TEST_CASE("DARTS supernet: shapes, weights apart from alphas, derivation rule") {
  Net net(tiny());
  Rng rng(1);
  Tensor y = net.forward(Tensor::randn({2, 1, 9, 9}, rng));  // odd size
  CHECK(y.shape() == Shape{2, 3});
  auto alphas = net.arch_parameters();
  REQUIRE(alphas.size() == 2);
  CHECK(alphas[0].shape() == Shape{14, 8});
  for (auto& p : net.parameters())
    for (auto& a : alphas) CHECK_FALSE(p.same(a));
  // Put all the weight of every edge on sep_conv_3x3, except that node 0 prefers its input 1
  // and `none` dominates edge 2: the derivation must skip none.
  {
    NoGrad ng;
    for (auto& a : alphas) {
      a.fill_(0);
      for (int e = 0; e < 14; ++e) a.data<float>()[e * 8 + 4] = 5;
      a.data<float>()[1 * 8 + 4] = 6;  // node 0, input 1 strongest
      a.data<float>()[2 * 8 + 0] = 9;  // node 1, input 0: none wins but is excluded
      a.data<float>()[2 * 8 + 4] = 1;
    }
  }
  auto g = net.genotype();
  CHECK(g.normal[0] == std::pair<std::string, int>{"sep_conv_3x3", 1});
  CHECK(g.normal[1] == std::pair<std::string, int>{"sep_conv_3x3", 0});
  CHECK(g.normal.size() == 8);
  CHECK(g.normal_concat == std::vector<int>{2, 3, 4, 5});
  // node 1's weakest edge is input 0 (sep_conv weight after softmax is lowest there)
  CHECK(g.normal[2].second != 0);
  CHECK(g.normal[3].second != 0);
}

TEST_CASE("second-order DARTS: alpha gradient matches finite differences of the unrolled loss") {
  Net net(tiny(DType::f64));
  Rng rng(7);
  data::Batch train = random_batch(4, 8, rng, DType::f64),
              valid = random_batch(4, 8, rng, DType::f64);
  // In float64 the finite-difference step of the Hessian-vector product can be small, so the
  // approximation error vanishes and what is checked is the implementation of eq. 7-8. (With
  // DARTS' r = 0.01 a network this small, all ReLU kinks, is visibly non-linear at that scale.)
  search::DartsOptions o{
      .second_order = true, .w_lr = 0.1, .w_momentum = 0, .w_wd = 0, .unroll_r = 1e-5};
  search::Darts<Net> darts(net, o);
  auto w = net.parameters();
  auto a = net.arch_parameters();
  // Make the alphas non-trivial so the check is not at a symmetric point.
  {
    NoGrad ng;
    Rng r(3);
    for (auto& t : a) t.copy_(Tensor::randn(t.shape(), r, 0.5, DType::f64));
  }
  const auto w0 = search::detail::clones(w);
  darts.unrolled_alpha_grad(train, valid);
  std::vector<Tensor> analytic;
  for (auto& t : a) analytic.push_back(t.grad().clone());
  // f(alpha) = L_val(w - eta dL_train(w, alpha)/dw, alpha)
  auto f = [&]() {
    search::detail::assign(w, w0);
    for (auto& p : w) p.zero_grad();
    for (auto& t : a) t.zero_grad();
    backward(darts.loss(train));
    auto g = search::detail::grads_of(w);
    search::detail::axpy(w, -0.1, g);
    NoGrad ng;
    double v = darts.loss(valid).item();
    search::detail::assign(w, w0);
    return v;
  };
  const double h = 1e-5;
  double worst = 0;
  int checked = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double* p = a[i].data<double>();
    // Every third element keeps the test fast while covering all edges and ops.
    for (int64_t k = 0; k < a[i].numel(); k += 3, ++checked) {
      const double orig = p[k];
      p[k] = orig + h;
      const double fp = f();
      p[k] = orig - h;
      const double fm = f();
      p[k] = orig;
      const double num = (fp - fm) / (2 * h);
      const double ana = analytic[i].data<double>()[k];
      worst = std::max(worst, std::abs(ana - num) / (1e-4 + std::abs(num)));
    }
  }
  INFO("worst relative error over ", checked, " alpha elements: ", worst);
  CHECK(worst < 1e-4);
  // And it is a different gradient from the first-order one.
  for (auto& t : a) t.zero_grad();
  backward(darts.loss(valid));
  CHECK(max_abs_diff(a[0].grad(), analytic[0]) > 1e-8);
}

TEST_CASE("a killed and resumed search ends exactly like an uninterrupted one") {
  auto ds = random_dataset(96, 11);
  auto halves = data::split_train_valid(ds, 48, 3);
  const auto dir = std::filesystem::temp_directory_path() / "tnas_test_darts_resume";
  std::filesystem::remove_all(dir);
  search::DartsOptions o{.epochs = 3, .batch = 16, .out_dir = dir / "a", .verbose = false};
  search::DartsOptions straight = o;
  straight.out_dir = dir / "b";

  Net n1(tiny());
  auto r1 = search::Darts<Net>(n1, straight).run(halves.train, halves.valid);

  o.epochs_this_run = 1;  // "killed" after one epoch
  {
    Net n2(tiny());
    search::Darts<Net>(n2, o).run(halves.train, halves.valid);
  }
  o.epochs_this_run = 0;
  o.resume = true;
  Net n3(tiny());
  auto r3 = search::Darts<Net>(n3, o).run(halves.train, halves.valid);

  REQUIRE(r1.history.size() == 3);
  REQUIRE(r3.history.size() == 3);
  CHECK(r1.genotype.str() == r3.genotype.str());
  CHECK(r1.history.back().train_loss == r3.history.back().train_loss);
  CHECK(max_abs_diff(n1.arch_parameters()[0], n3.arch_parameters()[0]) == 0);
  CHECK(std::filesystem::exists(dir / "a" / "search_log.csv"));
  CHECK(std::filesystem::exists(dir / "a" / "alphas.jsonl"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("NAS-Bench-201 supernet: shapes and derivation") {
  using Nb = search::Supernet<space::Nb201>;
  Nb net({.in_channels = 1, .channels = 4, .cells = 1, .classes = 3, .seed = 1});
  Rng rng(1);
  CHECK(net.forward(Tensor::randn({2, 1, 8, 8}, rng)).shape() == Shape{2, 3});
  CHECK(net.arch_parameters()[0].shape() == Shape{6, 5});
  auto g = net.genotype();
  CHECK(g.str().size() > 20);
}
