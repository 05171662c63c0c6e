// Elementwise ops: values, broadcasting, errors and finite-difference gradients (float64).
#include <doctest/doctest.h>

#include "testing.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;
using testing::param;
using V = std::vector<Tensor>;

TEST_CASE("arithmetic values and broadcasting") {
  Tensor a = Tensor::from({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from({10, 20, 30}, {3});
  CHECK((a + b).to_vector() == std::vector<double>{11, 22, 33, 14, 25, 36});
  Tensor c = Tensor::from({2, 4}, {2, 1});
  CHECK((a / c).to_vector() == std::vector<double>{0.5, 1, 1.5, 1, 1.25, 1.5});
  CHECK(testing::throws_with(
      [&] {
        (void)(a + Tensor::from({1, 2}, {2}));
      },
      {"add", "[2, 3]", "[2]", "do not broadcast"}));
  Tensor d = Tensor::from({1, 2, 3}, {3}, DType::f64);
  CHECK(testing::throws_with([&] { (void)(b * d); }, {"mul", "dtype mismatch", "float64"}));
}

TEST_CASE("gradients: arithmetic with broadcasting over N,C,H,W") {
  Rng rng(1);
  Tensor x = param({2, 3, 4, 5}, rng), c = param({1, 3, 1, 1}, rng), s = param({}, rng);
  TNAS_CHECK_GRADS([](const V& v) { return v[0] + v[1]; }, (V{x, c}));
  TNAS_CHECK_GRADS([](const V& v) { return v[0] - v[1]; }, (V{x, c}));
  TNAS_CHECK_GRADS([](const V& v) { return v[0] * v[1]; }, (V{x, c}));
  TNAS_CHECK_GRADS([](const V& v) { return v[0] * v[1]; }, (V{x, s}));  // mixed-op weighting
  Tensor pos = Tensor::uniform({1, 3, 1, 1}, rng, 0.5, 2.0, DType::f64).set_requires_grad();
  TNAS_CHECK_GRADS([](const V& v) { return v[0] / v[1]; }, (V{x, pos}));
  TNAS_CHECK_GRADS([](const V& v) { return scale(v[0], -2.5) + 1.0; }, (V{x}));
}

TEST_CASE("gradients: activations") {
  Rng rng(2);
  // Keep inputs away from relu's kink and sign's discontinuity.
  Tensor x = param({3, 7}, rng);
  for (double& v : std::span(x.data<double>(), 21))
    if (std::abs(v) < 0.05) v = 0.3;
  TNAS_CHECK_GRADS([](const V& v) { return relu(v[0]); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return sigmoid(v[0]); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return tanh(v[0]); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return exp(v[0]); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return square(v[0]); }, (V{x}));
  Tensor p = Tensor::uniform({3, 7}, rng, 0.2, 3.0, DType::f64).set_requires_grad();
  TNAS_CHECK_GRADS([](const V& v) { return log(v[0]); }, (V{p}));
}

TEST_CASE("sign with straight-through estimator") {
  Tensor x = Tensor::from({-2.0, -0.5, 0.0, 0.5, 2.0}, {5}, DType::f64).set_requires_grad();
  Tensor y = sign_ste(x);
  CHECK(y.to_vector() == std::vector<double>{-1, -1, 1, 1, 1});
  backward(sum(y));
  CHECK(x.grad().to_vector() == std::vector<double>{0, 1, 1, 1, 0});
}

TEST_CASE("dropout: identity in eval, mask and scale in training, gradient through mask") {
  Rng rng(3);
  Tensor x = Tensor::ones({1000}, DType::f64).set_requires_grad();
  CHECK(dropout(x, 0.3, false).same(x));
  Rng r1(7);
  Tensor y = dropout(x, 0.25, true, r1);
  auto v = y.to_vector();
  int zeros = 0;
  for (double e : v) {
    CHECK((e == 0 || std::abs(e - 1 / 0.75) < 1e-12));
    zeros += e == 0;
  }
  CHECK(zeros > 180);
  CHECK(zeros < 320);
  // The same seed gives the same mask, so the finite-difference check is well defined.
  Tensor z = param({4, 5}, rng);
  TNAS_CHECK_GRADS(
      [](const V& in) {
        Rng r(11);
        return dropout(in[0], 0.5, true, r);
      },
      (V{z}));
  CHECK_THROWS_AS((void)dropout(x, 1.0, true), Error);
}

TEST_CASE("zero op") {
  Tensor x = Tensor::ones({2, 3}).set_requires_grad();
  Tensor z = zeros_like(x);
  CHECK(z.shape() == x.shape());
  CHECK_FALSE(z.requires_grad());
  CHECK(sum(z).item() == 0);
}
