// Optimizers against reference updates written here in plain doubles from PyTorch's documented
// algorithms, hand-computed values, the cosine schedule, gradient clipping, and
// checkpoint/resume continuing bit for bit.
#include <doctest/doctest.h>

#include <unistd.h>
#include <cmath>
#include <filesystem>
#include <numbers>

#include "testing.hpp"
#include "tnas/io/archive.hpp"
#include "tnas/optim/adam.hpp"
#include "tnas/optim/clip.hpp"
#include "tnas/optim/schedule.hpp"
#include "tnas/optim/sgd.hpp"

using namespace tnas;
using Vec = std::vector<double>;

namespace {

// The gradient the tests feed the optimizers: a fixed nonlinear function of the parameter.
Vec grad_of(const Vec& p) {
  return {2 * p[0] + 1, p[1] * p[1] - 0.5};
}

// torch.optim.SGD's documented algorithm.
struct RefSGD {
  double lr, momentum, dampening, wd;
  bool nesterov;
  Vec buf;  // empty until the first step
  void step(Vec& p, Vec g) {
    const bool first = buf.empty();
    if (first) buf.assign(p.size(), 0);
    for (size_t i = 0; i < p.size(); ++i) {
      if (wd != 0) g[i] += wd * p[i];
      if (momentum != 0) {
        buf[i] = first ? g[i] : momentum * buf[i] + (1 - dampening) * g[i];
        g[i] = nesterov ? g[i] + momentum * buf[i] : buf[i];
      }
      p[i] -= lr * g[i];
    }
  }
};

// torch.optim.Adam's documented algorithm.
struct RefAdam {
  double lr, b1, b2, eps, wd;
  Vec m, v;
  int t = 0;
  void step(Vec& p, Vec g) {
    if (m.empty()) m.assign(p.size(), 0), v.assign(p.size(), 0);
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      if (wd != 0) g[i] += wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      const double mhat = m[i] / (1 - std::pow(b1, t));
      const double vhat = v[i] / (1 - std::pow(b2, t));
      p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

Tensor param2(const Vec& v) {
  Tensor t = Tensor::from(std::span<const double>(v), {2}, DType::f64);
  t.set_requires_grad();
  return t;
}

// Runs `opt` and `ref` side by side for 3 steps from p0 and checks they agree.
template <class Ref>
void compare(optim::Optimizer& opt, Ref ref, Tensor p, Vec pref) {
  for (int s = 0; s < 3; ++s) {
    Vec cur = p.to_vector();
    p.set_grad(Tensor::from(std::span<const double>(grad_of(cur)), {2}, DType::f64));
    opt.step();
    ref.step(pref, grad_of(pref));
    Vec got = p.to_vector();
    for (size_t i = 0; i < 2; ++i) {
      INFO("step " << s + 1 << ", element " << i);
      CHECK(got[i] == doctest::Approx(pref[i]).epsilon(1e-13));
    }
  }
}

// Steps with a constant gradient g and returns the value after each step.
Vec constant_grad_run(optim::Optimizer& opt, Tensor p, double g) {
  Vec out;
  for (int s = 0; s < 3; ++s) {
    p.set_grad(Tensor::full({1}, g, DType::f64));
    opt.step();
    out.push_back(p.item());
  }
  return out;
}

}  // namespace

TEST_CASE("SGD matches PyTorch's algorithm: plain, momentum, dampening, weight decay, Nesterov") {
  for (auto o :
       {optim::SGDOptions{.lr = 0.1}, optim::SGDOptions{.lr = 0.1, .momentum = 0.9},
        optim::SGDOptions{.lr = 0.05, .momentum = 0.8, .dampening = 0.3},
        optim::SGDOptions{.lr = 0.1, .weight_decay = 0.01},
        optim::SGDOptions{.lr = 0.025, .momentum = 0.9, .weight_decay = 3e-4},
        optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true}}) {
    INFO("lr " << o.lr << " momentum " << o.momentum << " dampening " << o.dampening << " wd "
               << o.weight_decay << " nesterov " << o.nesterov);
    Vec p0{1.0, -2.0};
    Tensor p = param2(p0);
    optim::SGD opt({p}, o);
    compare(opt, RefSGD{o.lr, o.momentum, o.dampening, o.weight_decay, o.nesterov, {}}, p, p0);
  }
}

TEST_CASE("SGD: hand-computed values") {
  auto run = [](optim::SGDOptions o, double g) {
    Tensor p = Tensor::ones({1}, DType::f64).set_requires_grad();
    optim::SGD opt({p}, o);
    return constant_grad_run(opt, p, g);
  };
  auto near = [](const Vec& a, const Vec& b) {
    for (size_t i = 0; i < a.size(); ++i)
      if (std::abs(a[i] - b[i]) > 1e-14) return false;
    return true;
  };
  // buffers 1, 1.9, 2.71
  CHECK(near(run({.lr = 0.1, .momentum = 0.9}, 1.0), {0.9, 0.71, 0.439}));
  // steps 1 + 0.9 * (1, 1.9, 2.71)
  CHECK(near(run({.lr = 0.1, .momentum = 0.9, .nesterov = true}, 1.0), {0.81, 0.539, 0.1951}));
  // pure decay: p *= 1 - lr * wd
  CHECK(near(run({.lr = 0.1, .weight_decay = 0.1}, 0.0), {0.99, 0.9801, 0.970299}));
  // dampening applies from the second step on: buffers 1, 0.5 + 0.5, 0.5 + 0.5
  CHECK(near(run({.lr = 0.1, .momentum = 0.5, .dampening = 0.5}, 1.0), {0.9, 0.8, 0.7}));
}

TEST_CASE("Adam matches PyTorch's algorithm") {
  for (auto o : {optim::AdamOptions{}, optim::AdamOptions{.lr = 0.1},
                 optim::AdamOptions{.lr = 3e-4, .beta1 = 0.5, .beta2 = 0.999, .weight_decay = 1e-3},
                 optim::AdamOptions{
                     .lr = 0.01, .beta1 = 0.8, .beta2 = 0.9, .eps = 1e-3, .weight_decay = 0.1}}) {
    INFO("lr " << o.lr << " betas " << o.beta1 << ", " << o.beta2 << " eps " << o.eps << " wd "
               << o.weight_decay);
    Vec p0{1.0, -2.0};
    Tensor p = param2(p0);
    optim::Adam opt({p}, o);
    compare(opt, RefAdam{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, {}, {}, 0}, p, p0);
  }
  // With a constant gradient the bias-corrected moments are g and g^2: each step moves
  // lr * g / (|g| + eps).
  Tensor p = Tensor::ones({1}, DType::f64).set_requires_grad();
  optim::Adam opt({p}, 0.01);
  Vec v = constant_grad_run(opt, p, 2.0);
  const double d = 0.01 * 2 / (2 + 1e-8);
  CHECK(std::abs(v[0] - (1 - d)) < 1e-15);
  CHECK(std::abs(v[2] - (1 - 3 * d)) < 1e-14);
  CHECK(opt.param_state(0).step == 3);
}

TEST_CASE("optimizers skip parameters without a gradient; zero_grad drops gradients") {
  Tensor p = param2({1, 1}), q = param2({3, 3});
  optim::SGD opt({p, q}, {.lr = 0.1, .momentum = 0.9});
  p.set_grad(Tensor::ones({2}, DType::f64));
  opt.step();
  CHECK(p.to_vector() == Vec{0.9, 0.9});
  CHECK(q.to_vector() == Vec{3, 3});
  CHECK_FALSE(opt.param_state(1).buf[0].defined());
  CHECK(opt.state().tensors.size() == 1);
  CHECK(opt.state().tensors[0].first == "state.0.momentum_buffer");
  CHECK(p.is_leaf());
  opt.zero_grad();
  CHECK_FALSE(p.grad().defined());
  opt.step();  // no gradients: nothing moves
  CHECK(p.to_vector() == Vec{0.9, 0.9});
}

TEST_CASE("optimizer argument errors") {
  Tensor p = param2({1, 1});
  CHECK(testing::throws_with([] { optim::SGD({}, 0.1); }, {"SGD", "empty parameter list"}));
  CHECK(testing::throws_with([&] { optim::SGD({p, p}, 0.1); }, {"parameter 1", "twice"}));
  CHECK(testing::throws_with([&] { optim::SGD({p}, {.lr = 0.1, .nesterov = true}); },
                             {"Nesterov", "momentum > 0"}));
  CHECK(testing::throws_with([&] { optim::Adam({p}, {.beta1 = 1.0}); }, {"betas", "[0, 1)"}));
  CHECK(testing::throws_with([&] { optim::SGD({p}, -1.0); }, {"learning rate"}));
  optim::SGD opt({p}, 0.1);
  p.set_grad(Tensor::ones({3}, DType::f64));
  CHECK(testing::throws_with([&] { opt.step(); }, {"parameter 0", "[2]", "gradient", "[3]"}));
}

TEST_CASE("CosineAnnealingLR") {
  Tensor p = param2({0, 0});
  optim::SGD opt({p}, 0.1);
  optim::CosineAnnealingLR sched(opt, 10, 0.001);
  CHECK(opt.lr() == 0.1);
  sched.step(), sched.step(), sched.step();
  CHECK(sched.t() == 3);
  // 0.001 + 0.099 * (1 + cos(0.3 pi)) / 2
  CHECK(opt.lr() == doctest::Approx(0.0795953699884774).epsilon(1e-14));
  sched.set_t(5);
  CHECK(opt.lr() == doctest::Approx(0.0505).epsilon(1e-14));
  sched.set_t(10);
  CHECK(opt.lr() == doctest::Approx(0.001).epsilon(1e-14));
  for (int t = 0; t <= 10; ++t)
    CHECK(sched.lr_at(t) ==
          doctest::Approx(0.001 + 0.099 * (1 + std::cos(std::numbers::pi * t / 10)) / 2));
  // Resuming: a fresh schedule set to the saved t gives the same lr.
  Tensor q = param2({0, 0});
  optim::SGD opt2({q}, 0.1);
  optim::CosineAnnealingLR s2(opt2, 10, 0.001);
  s2.set_t(3);
  CHECK(opt2.lr() == sched.lr_at(3));
  CHECK(testing::throws_with([&] { optim::CosineAnnealingLR(opt2, 0); }, {"T_max"}));
}

TEST_CASE("clip_grad_norm") {
  Tensor a = param2({0, 0}), b = Tensor::zeros({1}, DType::f64).set_requires_grad();
  Tensor c = param2({0, 0});  // no gradient: counts as zero
  a.set_grad(Tensor::from({3, 0}, {2}, DType::f64));
  b.set_grad(Tensor::from({4}, {1}, DType::f64));
  CHECK(optim::clip_grad_norm({a, b, c}, 10) == 5);
  CHECK(a.grad().to_vector() == Vec{3, 0});  // under the limit: untouched
  CHECK(optim::clip_grad_norm({a, b, c}, 1) == 5);
  const double k = 1 / (5 + 1e-6);
  CHECK(a.grad().to_vector()[0] == doctest::Approx(3 * k).epsilon(1e-15));
  CHECK(b.grad().to_vector()[0] == doctest::Approx(4 * k).epsilon(1e-15));
  CHECK(std::hypot(a.grad().to_vector()[0], b.grad().to_vector()[0]) < 1);

  b.set_grad(Tensor::from({NAN}, {1}, DType::f64));
  const double n = optim::clip_grad_norm({a, b}, 1);
  CHECK(std::isnan(n));
  CHECK(a.grad().to_vector()[0] == doctest::Approx(3 * k));  // left alone for the caller
  b.set_grad(Tensor::from({INFINITY}, {1}, DType::f64));
  CHECK(std::isinf(optim::clip_grad_norm({a, b}, 1)));
}

namespace {

// Two float32 parameters and a deterministic gradient of their values.
struct Problem {
  Tensor w, b;
  explicit Problem(uint64_t seed) {
    Rng rng(seed);
    w = Tensor::randn({3, 4}, rng).set_requires_grad();
    b = Tensor::randn({4}, rng).set_requires_grad();
  }
  Problem(const Problem& o)
      : w(o.w.clone().set_requires_grad()), b(o.b.clone().set_requires_grad()) {}
  std::vector<Tensor> params() { return {w, b}; }
  void set_grads() {
    for (Tensor t : {w, b}) {
      Tensor g = Tensor::empty(t.shape());
      for (int64_t i = 0; i < t.numel(); ++i)
        g.data<float>()[i] = std::sin(t.data<float>()[i]) + 0.01f * float(i);
      t.set_grad(g);
    }
  }
};

std::string temp_path(const char* stem) {
  return (std::filesystem::temp_directory_path() /
          (std::string(stem) + "_" + std::to_string(::getpid()) + ".tnas"))
      .string();
}

template <class Make>
void check_resume(Make make) {
  const std::string path = temp_path("optim_state");
  Problem a(21);
  auto opt = make(a.params());
  optim::CosineAnnealingLR sched(*opt, 20, 1e-4);
  for (int s = 0; s < 3; ++s) a.set_grads(), opt->step(), sched.step();
  io::Archive ckpt = opt->state();
  ckpt.meta["sched.t"] = std::to_string(sched.t());
  io::write(path, ckpt);
  Problem saved(a);  // the parameters a checkpoint would hold
  for (int s = 0; s < 3; ++s) a.set_grads(), opt->step(), sched.step();

  Problem b(saved);
  auto opt2 = make(b.params());
  optim::CosineAnnealingLR sched2(*opt2, 20, 1e-4);
  io::Archive st = io::read(path);
  opt2->load_state(st);
  sched2.set_t(std::stoll(st.meta.at("sched.t")));
  for (int s = 0; s < 3; ++s) b.set_grads(), opt2->step(), sched2.step();
  CHECK(a.w.to_vector() == b.w.to_vector());  // bit for bit
  CHECK(a.b.to_vector() == b.b.to_vector());
  CHECK(opt->lr() == opt2->lr());
  std::filesystem::remove(path);
}

}  // namespace

TEST_CASE("optimizer state: save, restore, continue bit for bit") {
  SUBCASE("SGD with Nesterov momentum and weight decay") {
    check_resume([](std::vector<Tensor> ps) {
      return std::make_unique<optim::SGD>(
          ps,
          optim::SGDOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 3e-4, .nesterov = true});
    });
  }
  SUBCASE("Adam") {
    check_resume([](std::vector<Tensor> ps) {
      return std::make_unique<optim::Adam>(
          ps, optim::AdamOptions{.lr = 3e-3, .beta1 = 0.5, .weight_decay = 1e-3});
    });
  }
}

TEST_CASE("optimizer state that does not fit is refused, naming why") {
  Problem pr(22);
  optim::SGD sgd(pr.params(), {.lr = 0.1, .momentum = 0.9});
  pr.set_grads();
  sgd.step();
  io::Archive st = sgd.state();
  CHECK(st.meta.at("optimizer") == "SGD");
  CHECK(st.meta.at("state.1.step") == "1");

  optim::Adam adam(pr.params());
  CHECK(testing::throws_with([&] { adam.load_state(st); }, {"Adam", "state of a SGD"}));
  optim::SGD other(pr.params(), {.lr = 0.1, .momentum = 0.5});
  CHECK(testing::throws_with([&] { other.load_state(st); },
                             {"momentum = 0.9", "momentum = 0.5", "same options"}));
  optim::SGD fewer({pr.w}, {.lr = 0.1, .momentum = 0.9});
  CHECK(testing::throws_with([&] { fewer.load_state(st); }, {"2 parameters", "has 1"}));
  Problem swapped(23);
  optim::SGD shapes({swapped.b, swapped.w}, {.lr = 0.1, .momentum = 0.9});
  CHECK(testing::throws_with([&] { shapes.load_state(st); },
                             {"'state.0.momentum_buffer'", "[3, 4]", "parameter 0", "[4]"}));
  io::Archive junk = st;
  junk.tensors.emplace_back("state.0.exp_avg", Tensor::zeros({3, 4}));
  CHECK(testing::throws_with([&] { sgd.load_state(junk); }, {"'state.0.exp_avg'", "no buffer"}));
}
