#include <doctest/doctest.h>

#include "testing.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;

TEST_CASE("shape basics and errors") {
  Shape s{2, 3, 4};
  CHECK(s.rank() == 3);
  CHECK(s.numel() == 24);
  CHECK(s.dim(-1) == 4);
  CHECK(s.str() == "[2, 3, 4]");
  CHECK(testing::throws_with([&] { (void)s.dim(3); }, {"axis 3", "[2, 3, 4]"}));
  CHECK_THROWS_AS((Shape{1, 2, 3, 4, 5, 6, 7}), Error);
}

TEST_CASE("tensor factories, views and copies") {
  Tensor a = Tensor::from({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(a.at({1, 2}) == 6);
  CHECK(a.is_contiguous());
  Tensor col = slice(a, 1, 1, 2);  // [2, 1]
  CHECK(col.shape() == Shape{2, 1});
  CHECK(col.at({0, 0}) == 2);
  CHECK(col.at({1, 0}) == 5);
  CHECK(col.shares_storage(a));
  Tensor strided = slice(a, 1, 0, 3, 2);  // columns 0 and 2
  CHECK_FALSE(strided.is_contiguous());
  CHECK(strided.contiguous().to_vector() == std::vector<double>{1, 3, 4, 6});
  Tensor c = a.clone();
  c.fill_(7);
  CHECK(a.at({0, 0}) == 1);
  Tensor d = a.to(DType::f64);
  CHECK(d.dtype() == DType::f64);
  CHECK(d.to_vector() == a.to_vector());
  CHECK(testing::throws_with([&] { (void)d.data<float>(); }, {"float64", "float32"}));
  CHECK(testing::throws_with(
      [&] {
        (void)Tensor::from({1, 2, 3}, {2, 2});
      },
      {"3 values", "[2, 2]"}));
  CHECK(testing::throws_with([&] { (void)a.to(Device::cuda); }, {"cuda"}));
}

TEST_CASE("caching allocator reuses freed blocks") {
  auto& alloc = allocator(Device::cpu);
  { Tensor warm = Tensor::empty({1000, 100}); }
  size_t before = alloc.stats().system_allocs;
  for (int i = 0; i < 100; ++i) {
    Tensor t = Tensor::empty({1000, 100});
    Tensor u = Tensor::empty({999, 100});  // same size class
  }
  CHECK(alloc.stats().system_allocs <= before + 1);
  CHECK(size_class(4097) >= 4097);
  CHECK(size_class(100000) <= 125000);
}

TEST_CASE("rng is reproducible and its state restores") {
  Rng a(42), b(42);
  for (int i = 0; i < 10; ++i) CHECK(a.next_u64() == b.next_u64());
  (void)a.normal();  // leaves a spare normal cached
  std::string st = a.state();
  std::vector<double> x;
  for (int i = 0; i < 5; ++i) x.push_back(a.normal());
  Rng c;
  c.set_state(st);
  for (int i = 0; i < 5; ++i) CHECK(c.normal() == x[i]);
  CHECK_THROWS_AS(c.set_state("garbage"), Error);
}

TEST_CASE("allclose and max_abs_diff") {
  Tensor a = Tensor::from({1, 2, 3}, {3});
  Tensor b = Tensor::from({1, 2, 3.0000001}, {3});
  CHECK(allclose(a, b));
  Tensor n = Tensor::from({1, 2, NAN}, {3});
  CHECK_FALSE(allclose(a, n));
  CHECK(max_abs_diff(a, n) == INFINITY);
}
