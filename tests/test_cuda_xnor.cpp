// The CUDA binary (XNOR / popcount) kernels against the CPU: xnor_conv2d must equal, exactly,
// the float conv2d of sign(x) and sign(w) (zero padding), and xnor_gemm the float product of the
// signs, on random inputs of odd sizes with exact zeros and negative zeros mixed in (sgn(0) =
// sgn(-0) = +1), with the device cache poisoned with NaN first (so an output element left
// unwritten fails). Both kernels are checked: the bit-wise one (TNAS_XNOR_PATH=simt) and the
// tensor-core one (TNAS_XNOR_PATH=mma), plus the default choice and the pre-packed-weights
// entry point. Without a CUDA device every case says so and skips; the file is only built when
// the backend is (TNAS_HAVE_CUDA).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "testing.hpp"
#include "tnas/backend/cuda/cuda.hpp"
#include "tnas/backend/registry.hpp"
#include "tnas/tnas.hpp"

using namespace tnas;

namespace {

// Sets TNAS_XNOR_PATH for the scope (nullptr: unset, the kernels choose).
struct PathScope : testing::EnvScope {
  explicit PathScope(const char* path) : EnvScope("TNAS_XNOR_PATH", path) {}
};

const char* const kPaths[] = {"simt", "mma", nullptr};
std::string path_name(const char* p) {
  return p ? p : "auto";
}

// Fills the device cache with NaN blocks of n floats, so the next tensor of that size starts NaN.
void poison(int64_t n) {
  std::vector<Tensor> keep;
  for (int i = 0; i < 4; ++i)
    keep.push_back(
        Tensor::full({n}, std::numeric_limits<double>::quiet_NaN(), DType::f32, Device::cuda));
}

// normal(0, 1) floats with every 7th element +0 and every 11th -0 (both have sign +1).
Tensor signed_input(const Shape& s, uint64_t seed) {
  Rng rng(seed);
  Tensor t = Tensor::randn(s, rng);
  float* d = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (i % 7 == 3) d[i] = 0.f;
    if (i % 11 == 5) d[i] = -0.f;
  }
  return t;
}

// Exact equality, reporting the first mismatch (NaN never equals).
void check_exact(const Tensor& want, const Tensor& got) {
  REQUIRE(want.shape() == got.shape());
  const std::vector<double> a = want.to_vector(), b = got.to_vector();
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i])) {
      if (first < 0) first = int64_t(i);
      ++bad;
    }
  if (bad) {
    INFO("first mismatch at flat index ", first, ": want ", a[size_t(first)], ", got ",
         b[size_t(first)], " (", bad, " of ", a.size(), " differ)");
    CHECK(bad == 0);
  } else {
    CHECK(bad == 0);
  }
}

struct ConvCase {
  int64_t N, C, H, W, K, R, S;
  int stride, pad, dil, groups;
};

backend::ConvShape conv_shape(const ConvCase& c) {
  const int64_t P = (c.H + 2 * c.pad - c.dil * (c.R - 1) - 1) / c.stride + 1;
  const int64_t Q = (c.W + 2 * c.pad - c.dil * (c.S - 1) - 1) / c.stride + 1;
  return {c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.pad, c.dil, c.groups, P, Q, false};
}

std::string describe(const ConvCase& c) {
  char b[160];
  std::snprintf(b, sizeof b, "N%lld C%lld %lldx%lld -> K%lld %lldx%lld s%d p%d d%d g%d",
                (long long)c.N, (long long)c.C, (long long)c.H, (long long)c.W, (long long)c.K,
                (long long)c.R, (long long)c.S, c.stride, c.pad, c.dil, c.groups);
  return b;
}

// The reference: the CPU float conv of the signs.
Tensor reference_conv(const Tensor& x, const Tensor& w, const ConvCase& c) {
  NoGrad ng;
  return conv2d(sign_ste(x), sign_ste(w),
                {.stride = c.stride, .padding = c.pad, .dilation = c.dil, .groups = c.groups});
}

// The shapes: odd channel counts (3, 37, 65, 130, 300), groups 1 / 2 / 4 and depthwise, stride
// 2, dilation 2 with padding 2, 1x1 and 5x5, N = 1 and 3, odd H / W, more than one 128-row and
// 128-column tile, padding so wide that border outputs have no tap inside the image.
const std::vector<ConvCase> kConvCases = {
    {1, 3, 7, 9, 5, 3, 3, 1, 1, 1, 1},       {3, 37, 11, 13, 19, 3, 3, 2, 1, 1, 1},
    {3, 65, 9, 7, 33, 5, 5, 1, 2, 1, 1},     {1, 130, 8, 11, 40, 3, 3, 1, 2, 2, 2},
    {3, 132, 7, 7, 36, 1, 1, 1, 0, 1, 4},    {3, 148, 9, 9, 96, 3, 3, 2, 1, 1, 4},
    {3, 37, 9, 11, 37, 3, 3, 1, 1, 1, 37},   {3, 65, 9, 9, 17, 1, 1, 2, 0, 1, 1},
    {1, 256, 6, 5, 150, 3, 3, 1, 1, 1, 1},   {1, 300, 5, 7, 20, 3, 3, 1, 1, 1, 1},
    {1, 37, 4, 5, 7, 3, 3, 1, 3, 1, 1},      {3, 64, 13, 15, 130, 5, 5, 2, 4, 2, 1},
    {1, 256, 28, 28, 256, 3, 3, 1, 1, 1, 1}, {3, 3, 17, 19, 129, 3, 3, 1, 1, 1, 1},
};

}  // namespace

TEST_CASE("cuda xnor_conv2d: equals the float conv of the signs, both kernels, exactly") {
  TNAS_SKIP_WITHOUT_GPU();
  const auto& k = backend::kernels(Device::cuda);
  REQUIRE(bool(k.xnor_conv2d));
  uint64_t seed = 100;
  for (const ConvCase& c : kConvCases) {
    const backend::ConvShape p = conv_shape(c);
    Tensor x = signed_input({c.N, c.C, c.H, c.W}, seed++);
    Tensor w = signed_input({c.K, c.C / c.groups, c.R, c.S}, seed++);
    const Tensor want = reference_conv(x, w, c);
    REQUIRE(want.shape() == tnas::Shape{p.N, p.K, p.P, p.Q});
    const Tensor xd = x.to(Device::cuda), wd = w.to(Device::cuda);
    for (const char* path : kPaths) {
      INFO(describe(c), " path ", path_name(path));
      PathScope scope(path);
      poison(want.numel());
      Tensor y = Tensor::empty(want.shape(), DType::f32, Device::cuda);
      k.xnor_conv2d(p, xd.data<float>(), wd.data<float>(), y.data<float>());
      check_exact(want, y.cpu());
    }
  }
}

TEST_CASE("cuda xnor_conv2d: pre-packed weights give the same result on both kernels") {
  TNAS_SKIP_WITHOUT_GPU();
  uint64_t seed = 300;
  for (const ConvCase& c : {kConvCases[1], kConvCases[3], kConvCases[8], kConvCases[11]}) {
    const backend::ConvShape p = conv_shape(c);
    Tensor x = signed_input({c.N, c.C, c.H, c.W}, seed++);
    Tensor w = signed_input({c.K, c.C / c.groups, c.R, c.S}, seed++);
    const Tensor want = reference_conv(x, w, c);
    const Tensor xd = x.to(Device::cuda), wd = w.to(Device::cuda);
    const int64_t bytes = int64_t(cuda::xnor_packed_weights_bytes(p));
    Tensor packed = Tensor::empty({(bytes + 3) / 4}, DType::f32, Device::cuda);
    cuda::xnor_pack_weights(p, wd.data<float>(), packed.raw());
    for (const char* path : kPaths) {
      INFO(describe(c), " path ", path_name(path));
      PathScope scope(path);
      poison(want.numel());
      Tensor y = Tensor::empty(want.shape(), DType::f32, Device::cuda);
      cuda::xnor_conv2d_packed(p, xd.data<float>(), packed.raw(), y.data<float>());
      check_exact(want, y.cpu());
    }
  }
}

TEST_CASE("cuda xnor_gemm: equals the product of the signs, both kernels, exactly") {
  TNAS_SKIP_WITHOUT_GPU();
  const auto& k = backend::kernels(Device::cuda);
  REQUIRE(bool(k.xnor_gemm));
  struct G {
    int64_t M, N, K;
  };
  uint64_t seed = 500;
  for (const G g : {G{1, 1, 1}, G{7, 5, 3}, G{37, 19, 65}, G{130, 77, 300}, G{200, 150, 1000},
                    G{129, 257, 256}}) {
    Tensor a = signed_input({g.M, g.K}, seed++), b = signed_input({g.N, g.K}, seed++);
    // C[m, n] = sum_k sgn(A[m, k]) sgn(B[n, k]), by plain loops.
    std::vector<double> ref(size_t(g.M * g.N));
    const std::vector<double> va = a.to_vector(), vb = b.to_vector();
    for (int64_t m = 0; m < g.M; ++m)
      for (int64_t n = 0; n < g.N; ++n) {
        double s = 0;
        for (int64_t i = 0; i < g.K; ++i)
          s += (va[size_t(m * g.K + i)] >= 0 ? 1 : -1) * (vb[size_t(n * g.K + i)] >= 0 ? 1 : -1);
        ref[size_t(m * g.N + n)] = s;
      }
    const Tensor want = Tensor::from(std::span<const double>(ref), {g.M, g.N});
    const Tensor ad = a.to(Device::cuda), bd = b.to(Device::cuda);
    for (const char* path : kPaths) {
      INFO("M ", g.M, " N ", g.N, " K ", g.K, " path ", path_name(path));
      PathScope scope(path);
      poison(g.M * g.N);
      Tensor c = Tensor::empty({g.M, g.N}, DType::f32, Device::cuda);
      k.xnor_gemm(g.M, g.N, g.K, ad.data<float>(), bd.data<float>(), c.data<float>());
      check_exact(want.to(DType::f32), c.cpu());
    }
  }
}

TEST_CASE("cuda xnor: a bad TNAS_XNOR_PATH is reported") {
  TNAS_SKIP_WITHOUT_GPU();
  const ConvCase c{1, 3, 5, 5, 2, 3, 3, 1, 1, 1, 1};
  const backend::ConvShape p = conv_shape(c);
  Tensor x = Tensor::zeros({1, 3, 5, 5}, DType::f32, Device::cuda);
  Tensor w = Tensor::zeros({2, 3, 3, 3}, DType::f32, Device::cuda);
  Tensor y = Tensor::empty({1, 2, 5, 5}, DType::f32, Device::cuda);
  PathScope scope("tensorcore");
  CHECK(testing::throws_with(
      [&] {
        backend::kernels(Device::cuda)
            .xnor_conv2d(p, x.data<float>(), w.data<float>(), y.data<float>());
      },
      {"TNAS_XNOR_PATH", "tensorcore"}));
}

#if __has_include("tnas/ops/binary.hpp")
#include "tnas/ops/binary.hpp"
// The Tensor-level op (ops/binary.hpp) runs the same on both devices.
TEST_CASE("cuda xnor: the xnor_conv2d op on CUDA tensors equals its CPU result") {
  TNAS_SKIP_WITHOUT_GPU();
  uint64_t seed = 700;
  for (const ConvCase& c : {kConvCases[2], kConvCases[5], kConvCases[12]}) {
    INFO(describe(c));
    Tensor x = signed_input({c.N, c.C, c.H, c.W}, seed++);
    Tensor w = signed_input({c.K, c.C / c.groups, c.R, c.S}, seed++);
    const Conv2dOptions o{
        .stride = c.stride, .padding = c.pad, .dilation = c.dil, .groups = c.groups};
    NoGrad ng;
    const Tensor want = xnor_conv2d(x, w, o);
    const Tensor got = xnor_conv2d(x.to(Device::cuda), w.to(Device::cuda), o);
    REQUIRE(got.device() == Device::cuda);
    check_exact(want, got.cpu());
  }
}
#endif
