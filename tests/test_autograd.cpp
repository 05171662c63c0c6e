#include <doctest/doctest.h>

#include "testing.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;

TEST_CASE("backward through a small expression") {
  Tensor x = Tensor::from({2.0}, {1}, DType::f64).set_requires_grad();
  Tensor y = Tensor::from({3.0}, {1}, DType::f64).set_requires_grad();
  Tensor z = sum(x * y + x * x);  // dz/dx = y + 2x = 7, dz/dy = x = 2
  backward(z);
  CHECK(x.grad().item() == doctest::Approx(7));
  CHECK(y.grad().item() == doctest::Approx(2));
}

TEST_CASE("gradients accumulate across uses and across calls") {
  Tensor x = Tensor::from({1.0, -2.0}, {2}, DType::f64).set_requires_grad();
  Tensor z = sum(x + x + x);
  backward(z);
  CHECK(x.grad().to_vector() == std::vector<double>{3, 3});
  backward(sum(x));
  CHECK(x.grad().to_vector() == std::vector<double>{4, 4});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("gradients the caller still holds are never written: only sole-owned ones are reused") {
  Tensor x = Tensor::from({1, 2, 3}, {3}).set_requires_grad();
  Tensor g = Tensor::from({0.5, -1, 2}, {3});
  const std::vector<double> g0 = g.to_vector();
  // add passes its incoming gradient through to both inputs: the leaf's first gradient is the
  // caller's own tensor, which must be copied before the second is added to it.
  backward(add(x, x), g);
  CHECK(g.to_vector() == g0);
  CHECK(x.grad().to_vector() == std::vector<double>{1, -2, 4});
  // A leaf whose whole gradient is the caller's tensor gets a copy: clipping it in place
  // (as optimizers do) leaves the caller's tensor alone.
  Tensor y = Tensor::from({1, 2, 3}, {3}).set_requires_grad();
  backward(add_scalar(y, 1.0), g);
  Tensor gy = y.grad();
  CHECK(!gy.same(g));
  gy.data<float>()[0] = 100;
  CHECK(g.to_vector() == g0);
  // A gradient made by an op's backward and held by nobody else is taken over, not copied.
  Tensor z = Tensor::from({1, 2, 3}, {3}).set_requires_grad();
  backward(sum(mul(z, z)));
  CHECK(z.grad().to_vector() == std::vector<double>{2, 4, 6});
}

TEST_CASE("no_grad records nothing; detach cuts the graph") {
  Tensor x = Tensor::from({1.0}, {1}, DType::f64).set_requires_grad();
  {
    NoGrad ng;
    Tensor y = x * x;
    CHECK_FALSE(y.requires_grad());
  }
  Tensor d = x.detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.shares_storage(x));
  Tensor y = sum(x * d);  // gradient flows only through the first factor
  backward(y);
  CHECK(x.grad().item() == doctest::Approx(1));
}

TEST_CASE("backward errors are clear") {
  Tensor x = Tensor::from({1.0, 2.0}, {2}, DType::f64).set_requires_grad();
  Tensor y = x * x;
  CHECK(testing::throws_with([&] { backward(y); }, {"one-element", "[2]"}));
  Tensor c = Tensor::from({1.0}, {1});
  CHECK(testing::throws_with([&] { backward(c); }, {"does not require grad"}));
  CHECK(testing::throws_with([&] { y.set_requires_grad(); }, {"only leaves"}));
}

TEST_CASE("deep chains do not overflow the stack and free their graph") {
  Tensor x = Tensor::from({1.0}, {1}, DType::f64).set_requires_grad();
  std::weak_ptr<autograd::Node> first;
  {
    Tensor y = x;
    for (int i = 0; i < 20000; ++i) {
      y = y * 1.0;
      if (i == 0) first = y.grad_fn();
    }
    backward(sum(y));
    CHECK(x.grad().item() == doctest::Approx(1));
    CHECK_FALSE(first.expired());
  }
  CHECK(first.expired());  // the graph went with its last result
}

TEST_CASE("check_gradients catches a wrong gradient") {
  Rng rng(3);
  Tensor x = testing::param({3}, rng);
  // A deliberately wrong op: forward x^2, backward claims 3x.
  auto bad = [](const std::vector<Tensor>& in) {
    Tensor out = in[0].detach().clone();
    for (double& v : std::span(out.data<double>(), 3)) v = v * v;
    Tensor xd = in[0].detach();
    autograd::record("bad", out, {&in[0]},
                     [xd](const Tensor& g) { return std::vector<Tensor>{mul(g, xd * 3.0)}; });
    return out;
  };
  auto r = check_gradients(bad, {x});
  CHECK_FALSE(r.ok);
  CHECK(r.message.find("element") != std::string::npos);
}
