// Softmax, log-softmax, cross-entropy and linear algebra ops.
#include <doctest/doctest.h>

#include "testing.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;
using testing::param;
using V = std::vector<Tensor>;

TEST_CASE("softmax rows sum to one and survive large logits") {
  Tensor x = Tensor::from({1000, 1001, 1002, -5, 0, 5}, {2, 3});
  Tensor s = softmax(x);
  auto v = s.to_vector();
  CHECK(v[0] + v[1] + v[2] == doctest::Approx(1));
  CHECK(v[2] == doctest::Approx(0.665241).epsilon(1e-4));
  for (double e : v) CHECK(std::isfinite(e));
}

TEST_CASE("cross entropy value and label checks") {
  Tensor x = Tensor::from({0, 0, 0, 0}, {2, 2});
  std::vector<int32_t> y{0, 1};
  CHECK(cross_entropy(x, y).item() == doctest::Approx(std::log(2.0)));
  std::vector<int32_t> bad{0, 2};
  CHECK(testing::throws_with([&] { (void)cross_entropy(x, bad); }, {"label 2", "row 1"}));
  std::vector<int32_t> few{0};
  CHECK(testing::throws_with([&] { (void)cross_entropy(x, few); }, {"1 labels", "[2, 2]"}));
  CHECK(argmax_rows(Tensor::from({1, 3, 2, 5, 4, 0}, {2, 3})) == std::vector<int32_t>{1, 0});
}

TEST_CASE("gradients: softmax, log_softmax, cross_entropy") {
  Rng rng(1);
  Tensor x = param({4, 7}, rng);
  TNAS_CHECK_GRADS([](const V& v) { return softmax(v[0]); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return log_softmax(v[0]); }, (V{x}));
  std::vector<int32_t> y{0, 6, 3, 3};
  TNAS_CHECK_GRADS([&](const V& v) { return cross_entropy(v[0], y); }, (V{x}));
}

TEST_CASE("gradients: matmul and linear") {
  Rng rng(2);
  Tensor a = param({3, 5}, rng), b = param({5, 4}, rng);
  TNAS_CHECK_GRADS([](const V& v) { return matmul(v[0], v[1]); }, (V{a, b}));
  Tensor x = param({6, 5}, rng), w = param({3, 5}, rng), bias = param({3}, rng);
  TNAS_CHECK_GRADS([](const V& v) { return linear(v[0], v[1], v[2]); }, (V{x, w, bias}));
  TNAS_CHECK_GRADS([](const V& v) { return linear(v[0], v[1]); }, (V{x, w}));
  CHECK(testing::throws_with([&] { (void)matmul(a, a); }, {"matmul", "[3, 5] x [3, 5]"}));
  CHECK(testing::throws_with([&] { (void)linear(x, b); }, {"linear", "[6, 5]", "[5, 4]"}));
}

TEST_CASE("weighted_sum: value, none candidates, gradients to candidates and weights") {
  Rng rng(5);
  Tensor a = param({2, 3, 4, 4}, rng), b = param({2, 3, 4, 4}, rng), w = param({3}, rng);
  Tensor out = weighted_sum({a, Tensor(), b}, w);
  Tensor ref = a * slice(w, 0, 0, 1) + b * slice(w, 0, 2, 3);
  CHECK(max_abs_diff(out, ref) < 1e-12);
  TNAS_CHECK_GRADS(
      [](const V& v) {
        return weighted_sum({v[0], Tensor(), v[1]}, v[2]);
      },
      (V{a, b, w}));
  TNAS_CHECK_GRADS(
      [](const V& v) {
        return weighted_sum({v[0], v[1]}, softmax(v[2]));
      },
      (V{a, b, param({2}, rng)}));
  CHECK(testing::throws_with(
      [&] {
        (void)weighted_sum({a, b}, w);
      },
      {"weighted_sum", "2 candidates"}));
}
