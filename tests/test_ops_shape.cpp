// Reductions and shape ops: values, errors and finite-difference gradients (float64).
#include <doctest/doctest.h>

#include "testing.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;
using testing::param;
using V = std::vector<Tensor>;

TEST_CASE("sum and mean values") {
  Tensor a = Tensor::from({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(sum(a).item() == 21);
  CHECK(sum(a, {0}).to_vector() == std::vector<double>{5, 7, 9});
  CHECK(sum(a, {-1}, true).shape() == Shape{2, 1});
  CHECK(mean(a, {1}).to_vector() == std::vector<double>{2, 5});
  CHECK(testing::throws_with([&] { (void)sum(a, {2}); }, {"sum", "axis 2", "[2, 3]"}));
}

TEST_CASE("gradients: reductions") {
  Rng rng(1);
  Tensor x = param({2, 3, 4, 5}, rng);
  TNAS_CHECK_GRADS([](const V& v) { return sum(v[0]); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return sum(v[0], {1, 3}); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return mean(v[0], {0, 2}, true); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return mean(v[0]); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return global_avg_pool(v[0]); }, (V{x}));
}

TEST_CASE("slicing is a view; FactorizedReduce's x[:, :, 1:, 1:]") {
  Tensor a = Tensor::from({0, 1, 2, 3, 4, 5, 6, 7, 8}, {1, 1, 3, 3});
  Tensor s = slice(slice(a, 2, 1, 3), 3, 1, 3);
  CHECK(s.shape() == Shape{1, 1, 2, 2});
  CHECK(s.contiguous().to_vector() == std::vector<double>{4, 5, 7, 8});
  Tensor t = slice(a, 3, 0, 3, 2);
  CHECK(t.contiguous().to_vector() == std::vector<double>{0, 2, 3, 5, 6, 8});
  CHECK(testing::throws_with([&] { (void)slice(a, 2, 2, 1); }, {"slice", "[2, 1)"}));
  CHECK(testing::throws_with([&] { (void)slice(a, 5, 0, 1); }, {"axis 5"}));
}

TEST_CASE("gradients: slice, reshape, concat, split") {
  Rng rng(2);
  Tensor x = param({2, 3, 5, 5}, rng), y = param({2, 2, 5, 5}, rng);
  TNAS_CHECK_GRADS([](const V& v) { return slice(slice(v[0], 2, 1, 5), 3, 1, 5); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return slice(v[0], 3, 0, 5, 2); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return reshape(v[0], {6, -1}); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return flatten(slice(v[0], 1, 1, 3)); }, (V{x}));
  TNAS_CHECK_GRADS([](const V& v) { return concat({v[0], v[1], v[0]}, 1); }, (V{x, y}));
  TNAS_CHECK_GRADS(
      [](const V& v) {
        auto parts = split(v[0], {1, 2}, 1);
        return parts[1] * parts[1] + sum(parts[0]);
      },
      (V{x}));
}

TEST_CASE("shape op errors name the shapes") {
  Tensor a = Tensor::zeros({2, 3, 4, 4}), b = Tensor::zeros({2, 3, 5, 4});
  CHECK(testing::throws_with(
      [&] {
        (void)concat({a, b}, 1);
      },
      {"concat", "[2, 3, 4, 4]", "[2, 3, 5, 4]"}));
  CHECK(testing::throws_with([&] { (void)reshape(a, {5, -1}); }, {"reshape"}));
  CHECK(testing::throws_with([&] { (void)split(a, {1, 1}, 1); }, {"split", "add up to 2"}));
  CHECK(testing::throws_with(
      [&] {
        (void)global_avg_pool(Tensor::zeros({2, 3}));
      },
      {"global_avg_pool", "rank 4"}));
}
