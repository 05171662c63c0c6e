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

TEST_CASE("contiguous() of strided views matches an element-by-element gather") {
  // Channel slices, permutations, broadcast (stride 0) and reversed-order views of a
  // [3, 5, 4, 6] tensor; contiguous() merges dimensions and copies whole rows where it can.
  const Shape base{3, 5, 4, 6};
  std::vector<double> v(size_t(base.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = double(i) * 0.5 - 7;
  Tensor a = Tensor::from(std::span<const double>(v), base);
  struct View {
    Shape shape;
    Strides strides;
    int64_t offset;
  };
  const std::vector<View> views = {
      {{3, 2, 4, 6}, {120, 24, 6, 1}, 48},  // channels 2..3 of every image
      {{3, 6, 4, 5}, {120, 1, 6, 24}, 0},   // NCHW -> NWHC
      {{3, 5, 4, 6}, {120, 24, 0, 1}, 6},   // row 1 broadcast over H
      {{2, 5, 3, 2}, {120, 24, 6, 3}, 1},   // every third column from column 1
      {{1, 1, 1, 1}, {120, 24, 6, 1}, 37},  // one element
      {{3, 1, 4, 6}, {120, 24, 6, 1}, 24},  // a size-1 channel
      {{0, 5, 4, 6}, {120, 24, 6, 1}, 0}};  // empty
  for (const View& w : views) {
    CAPTURE(w.shape);
    Tensor t = a.as_strided(w.shape, w.strides, w.offset);
    Tensor c = t.contiguous();
    REQUIRE(c.shape() == w.shape);
    CHECK(c.is_contiguous());
    std::vector<double> want;
    const Shape& s = w.shape;
    for (int64_t i = 0; i < s[0]; ++i)
      for (int64_t j = 0; j < s[1]; ++j)
        for (int64_t k = 0; k < s[2]; ++k)
          for (int64_t l = 0; l < s[3]; ++l)
            want.push_back(v[size_t(w.offset + i * w.strides[0] + j * w.strides[1] +
                                    k * w.strides[2] + l * w.strides[3])]);
    CHECK(c.to_vector() == want);
    CHECK(t.clone().to_vector() == want);
  }
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

TEST_CASE("caching allocator: a private pool keeps its blocks to itself until released") {
  // A local allocator over malloc/free, so the counts are this test's own.
  CachingAllocator a([](size_t n) { return std::malloc(n); }, [](void* p) { std::free(p); });
  void* outside = a.allocate(1000);
  a.deallocate(outside, 1000);  // cached in the general lists
  const int pool = a.begin_pool();
  CHECK_THROWS_AS(a.begin_pool(), Error);  // no nesting
  void* in1 = a.allocate(1000);
  CHECK(in1 == outside);  // the pool may take from the general cache...
  void* in2 = a.allocate(1000);
  a.deallocate(in2, 1000);
  void* in3 = a.allocate(1000);
  CHECK(in3 == in2);  // ...and reuses its own blocks while active
  a.end_pool();
  a.deallocate(in1, 1000);  // freed after the capture: back to the pool, not to the world
  a.deallocate(in3, 1000);
  void* after = a.allocate(1000);
  CHECK(after != in1);
  CHECK(after != in3);
  a.deallocate(after, 1000);
  const size_t sys = a.stats().system_allocs;
  a.release_pool(pool);  // the graph is gone: its blocks serve everyone again
  void* x = a.allocate(1000);
  void* y = a.allocate(1000);
  void* z = a.allocate(1000);
  CHECK(a.stats().system_allocs == sys);  // all three from the cache
  for (void* p : {x, y, z}) a.deallocate(p, 1000);
  CHECK(a.stats().live_bytes == 0);
  // The CPU allocator of the library has pools too; an allocator without them says so.
  struct Plain : Allocator {
    void* allocate(size_t) override { return nullptr; }
    void deallocate(void*, size_t) override {}
    AllocatorStats stats() const override { return {}; }
    void reset_peak() override {}
    void release_cache() override {}
  } plain;
  CHECK(testing::throws_with([&] { plain.begin_pool(); }, {"no private pools"}));
}

TEST_CASE("caching allocator: out of memory releases the cache, except during a capture") {
  // A system allocator that refuses blocks over 64 KiB and counts what it frees.
  static int frees = 0;
  CachingAllocator a([](size_t n) { return n > (64 << 10) ? nullptr : std::malloc(n); },
                     [](void* p) { ++frees, std::free(p); });
  void* small = a.allocate(1000);
  a.deallocate(small, 1000);  // cached
  const int pool = a.begin_pool();
  // cudaFree would synchronise a capturing stream: the cache stays, the error says why
  CHECK(testing::throws_with([&] { (void)a.allocate(1 << 20); },
                             {"out of memory", "not released during a graph capture"}));
  CHECK(frees == 0);
  a.end_pool();
  CHECK(testing::throws_with([&] { (void)a.allocate(1 << 20); }, {"out of memory"}));
  CHECK(frees == 1);  // outside a capture the cache went back before the retry
  a.release_pool(pool);
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
