// Shared helpers for the tnas tests.
#pragma once

#include <doctest/doctest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "tnas/autograd/gradcheck.hpp"
#include "tnas/core/rng.hpp"
#include "tnas/core/tensor.hpp"
#include "tnas/data/dataset.hpp"
#if defined(TNAS_HAVE_CUDA)
#include "tnas/backend/cuda/cuda.hpp"
#endif

namespace tnas::testing {

// Sets the environment variable `name` to `value` (nullptr: unsets it) for a scope, and gives
// back what it was before (scopes nest).
class EnvScope {
 public:
  EnvScope(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    set(value);
  }
  ~EnvScope() { set(old_ ? old_->c_str() : nullptr); }
  EnvScope(const EnvScope&) = delete;
  EnvScope& operator=(const EnvScope&) = delete;

 private:
  void set(const char* value) {
    if (value)
      setenv(name_.c_str(), value, 1);
    else
      unsetenv(name_.c_str());
  }
  std::string name_;
  std::optional<std::string> old_;
};

// A float64 leaf with normal(0, 1) values that requires grad.
inline Tensor param(const Shape& s, Rng& rng, double stddev = 1.0) {
  Tensor t = Tensor::randn(s, rng, stddev, DType::f64);
  t.set_requires_grad();
  return t;
}

// A copy of the CPU tensor t with every `every`-th element exactly 0 (where relu'(0) = 0 is
// the convention every ReLU path must keep).
inline Tensor with_zeros(const Tensor& t, int64_t every = 5) {
  Tensor z = t.contiguous().clone();
  for (int64_t i = 0; i < z.numel(); i += every) {
    if (z.dtype() == DType::f32)
      z.data<float>()[i] = 0.f;
    else
      z.data<double>()[i] = 0.0;
  }
  return z;
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

// Four classes of 1 x 8 x 8 images: class k lights quadrant k, plus noise (a toy set that a
// tiny network learns in a few epochs).
inline data::Dataset quadrants(int64_t n, uint64_t seed) {
  Rng rng(seed);
  data::Dataset ds;
  ds.num_classes = 4;
  ds.images = Tensor::randn({n, 1, 8, 8}, rng, 0.3);
  float* p = ds.images.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int32_t k = int32_t(rng.below(4));
    ds.labels.push_back(k);
    for (int y = 0; y < 4; ++y)
      for (int x = 0; x < 4; ++x) p[i * 64 + (y + 4 * (k / 2)) * 8 + x + 4 * (k % 2)] += 1.0f;
  }
  return ds;
}

// DARTS_V2, the normal and reduction cells of the DARTS paper, in its notation.
inline constexpr const char* kDartsV2 =
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])";

#if defined(TNAS_HAVE_CUDA)
// Whether a CUDA device is there to test on (asked once).
inline bool have_gpu() {
  static const bool ok = cuda::device_count() > 0 && cuda::available();
  return ok;
}
#endif

}  // namespace tnas::testing

#if defined(TNAS_HAVE_CUDA)
// Ends a CUDA test case with a message where there is no GPU.
#define TNAS_SKIP_WITHOUT_GPU()           \
  do {                                    \
    if (!::tnas::testing::have_gpu()) {   \
      MESSAGE("skipped: no CUDA device"); \
      return;                             \
    }                                     \
  } while (0)
#endif
