// check_gradients: compares the tape's gradients with central finite differences.
//
// requires: f maps the inputs to one tensor; the inputs are float64 (float32 differences are
//   too noisy to judge a gradient by). f must be deterministic (dropout etc. reseeded inside).
// ensures: for a fixed random weighting r of f's output, d(sum(r * f))/d(input) from backward()
//   matches (L(x + eps e_i) - L(x - eps e_i)) / (2 eps) for every element i of every input
//   that requires grad, within atol + rtol * |numeric|. The result names the worst element.
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "tnas/autograd/engine.hpp"
#include "tnas/core/rng.hpp"

namespace tnas {

struct GradCheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-5;
  uint64_t seed = 1234;
};

struct GradCheckResult {
  bool ok = true;
  double max_error = 0;  // max |analytic - numeric| - (atol + rtol |numeric|), clipped at 0
  std::string message;   // the worst element, when !ok
};

inline GradCheckResult check_gradients(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                                       std::vector<Tensor> inputs, GradCheckOptions opt = {}) {
  for (auto& t : inputs)
    TNAS_CHECK(t.dtype() == DType::f64 && t.device() == Device::cpu,
               "check_gradients: inputs must be float64 CPU tensors, got ", t.dtype(), " ",
               t.device());
  // A fixed random weighting turns any output into a scalar that depends on every element.
  Tensor out0;
  {
    NoGrad ng;
    out0 = f(inputs);
  }
  Rng rng(opt.seed);
  Tensor r = Tensor::uniform(out0.shape(), rng, 0.5, 1.5, DType::f64);
  auto loss_value = [&]() {
    NoGrad ng;
    Tensor o = f(inputs).contiguous();
    TNAS_CHECK(o.shape() == r.shape(), "check_gradients: f's output shape changed");
    const double* po = o.data<double>();
    const double* pr = r.data<double>();
    double s = 0;
    for (int64_t i = 0; i < o.numel(); ++i) s += po[i] * pr[i];
    return s;
  };
  for (auto& t : inputs)
    if (t.requires_grad()) t.zero_grad();
  Tensor out = f(inputs);
  TNAS_CHECK(out.requires_grad(), "check_gradients: f's output does not depend on an input ",
             "that requires grad");
  backward(out, r);

  GradCheckResult res;
  double worst = -1;
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& t = inputs[k];
    if (!t.requires_grad()) continue;
    TNAS_CHECK(t.is_contiguous(), "check_gradients: input ", k, " must be contiguous");
    Tensor g = t.grad();
    double* p = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double orig = p[i];
      p[i] = orig + opt.eps;
      const double lp = loss_value();
      p[i] = orig - opt.eps;
      const double lm = loss_value();
      p[i] = orig;
      const double num = (lp - lm) / (2 * opt.eps);
      const double ana = g.defined() ? g.contiguous().data<double>()[i] : 0.0;
      const double err = std::abs(ana - num) - (opt.atol + opt.rtol * std::abs(num));
      if (std::isnan(ana) || err > worst) {
        worst = std::isnan(ana) ? INFINITY : err;
        if (worst > 0) {
          res.ok = false;
          res.message = detail::cat("input ", k, " ", t.shape(), " element ", i, ": analytic ", ana,
                                    ", numeric ", num);
        }
      }
    }
  }
  res.max_error = std::max(0.0, worst);
  return res;
}

}  // namespace tnas
