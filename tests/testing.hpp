// Shared helpers for the tnas tests.
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "tnas/autograd/gradcheck.hpp"
#include "tnas/core/tensor.hpp"

namespace tnas::testing {

// A float64 leaf with normal(0, 1) values that requires grad.
inline Tensor param(const Shape& s, Rng& rng, double stddev = 1.0) {
  Tensor t = Tensor::randn(s, rng, stddev, DType::f64);
  t.set_requires_grad();
  return t;
}

// Checks gradients of f at inputs, reporting the worst element on failure.
#define TNAS_CHECK_GRADS(f, inputs, ...)                             \
  do {                                                               \
    auto _r = ::tnas::check_gradients((f), (inputs), ##__VA_ARGS__); \
    INFO(_r.message);                                                \
    CHECK(_r.ok);                                                    \
  } while (0)

// True when running `f` throws tnas::Error whose message contains every one of `parts`.
template <class F>
bool throws_with(F&& f, std::vector<std::string> parts) {
  try {
    f();
  } catch (const Error& e) {
    std::string m = e.what();
    for (auto& p : parts)
      if (m.find(p) == std::string::npos) {
        MESSAGE("error message '", m, "' lacks '", p, "'");
        return false;
      }
    return true;
  }
  return false;
}

}  // namespace tnas::testing
