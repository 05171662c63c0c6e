// CPU kernels (backend/cpu) against naive double-precision references: every output poisoned
// with NaN before the call, odd sizes, strides 1-3, dilation 1-2, groups 1 / between / C.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tnas/backend/cpu/conv.hpp"
#include "tnas/backend/cpu/gemm.hpp"
#include "tnas/backend/cpu/norm.hpp"
#include "tnas/backend/cpu/pool.hpp"
#include "tnas/core/rng.hpp"

using tnas::Rng;
using Vec = std::vector<double>;

namespace {

template <class T>
constexpr double tol() {
  return std::is_same_v<T, float> ? 1e-4 : 1e-10;
}

Vec randn(Rng& rng, int64_t n, double offset = 0) {
  Vec v(static_cast<size_t>(n));
  for (auto& e : v) e = offset + rng.normal();
  return v;
}

// Round through T so the reference sees exactly what the kernel sees.
template <class T>
std::vector<T> to(const Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}
template <class T>
Vec from(const std::vector<T>& v) {
  return Vec(v.begin(), v.end());
}
template <class T>
std::vector<T> poisoned(int64_t n) {
  return std::vector<T>(static_cast<size_t>(n), std::numeric_limits<T>::quiet_NaN());
}

// max |got - want| <= tol * max(1, max |want|), NaN fails.
template <class T>
bool close(const std::vector<T>& got, const Vec& want, const std::string& what) {
  REQUIRE(got.size() == want.size());
  double scale = 1, worst = 0;
  size_t at = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(d <= worst)) {
      worst = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
      at = i;
    }
  }
  const bool ok = worst <= tol<T>() * scale;
  if (!ok) {
    MESSAGE(what << ": max error " << worst << " at " << at << " (got " << got[at] << ", want "
                 << want[at] << ", scale " << scale << ")");
  }
  return ok;
}

// ---- naive references -------------------------------------------------------------------------
using tnas::cpu::Conv2dParams;
using tnas::cpu::Pool2dParams;

// Calls f(n, k, c, r, s, p, q, ih, iw) for every in-bounds term of the convolution sum.
template <class F>
void conv_terms(const Conv2dParams& p, F f) {
  const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups, P = p.P(), Q = p.Q();
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t k = 0; k < p.K; ++k)
      for (int64_t cg = 0; cg < Cg; ++cg)
        for (int64_t r = 0; r < p.R; ++r)
          for (int64_t s = 0; s < p.S; ++s)
            for (int64_t i = 0; i < P; ++i)
              for (int64_t j = 0; j < Q; ++j) {
                const int64_t ih = i * p.stride_h - p.pad_h + r * p.dil_h;
                const int64_t iw = j * p.stride_w - p.pad_w + s * p.dil_w;
                if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
                const int64_t c = (k / Kg) * Cg + cg;
                f(((n * p.K + k) * P + i) * Q + j, ((n * p.C + c) * p.H + ih) * p.W + iw,
                  ((k * Cg + cg) * p.R + r) * p.S + s);
              }
}

Vec conv_ref(const Conv2dParams& p, const Vec& x, const Vec& w) {
  Vec y(static_cast<size_t>(p.N * p.K * p.P() * p.Q()), 0.0);
  conv_terms(p, [&](int64_t yi, int64_t xi, int64_t wi) { y[yi] += x[xi] * w[wi]; });
  return y;
}
Vec conv_bwd_input_ref(const Conv2dParams& p, const Vec& gy, const Vec& w) {
  Vec gx(static_cast<size_t>(p.N * p.C * p.H * p.W), 0.0);
  conv_terms(p, [&](int64_t yi, int64_t xi, int64_t wi) { gx[xi] += gy[yi] * w[wi]; });
  return gx;
}
Vec conv_bwd_weight_ref(const Conv2dParams& p, const Vec& x, const Vec& gy) {
  Vec gw(static_cast<size_t>(p.K * (p.C / p.groups) * p.R * p.S), 0.0);
  conv_terms(p, [&](int64_t yi, int64_t xi, int64_t wi) { gw[wi] += gy[yi] * x[xi]; });
  return gw;
}

std::string describe(const Conv2dParams& p) {
  std::ostringstream os;
  os << "conv N=" << p.N << " C=" << p.C << " H=" << p.H << " W=" << p.W << " K=" << p.K
     << " RxS=" << p.R << "x" << p.S << " stride=" << p.stride_h << "," << p.stride_w
     << " pad=" << p.pad_h << "," << p.pad_w << " dil=" << p.dil_h << "," << p.dil_w
     << " groups=" << p.groups;
  return os.str();
}

bool valid(const Conv2dParams& p) {
  return p.H + 2 * p.pad_h >= p.dil_h * (p.R - 1) + 1 &&
         p.W + 2 * p.pad_w >= p.dil_w * (p.S - 1) + 1;
}

template <class T>
void check_conv(const Conv2dParams& p, Rng& rng) {
  const std::string what = describe(p);
  const int64_t xs = p.N * p.C * p.H * p.W, ws = p.K * (p.C / p.groups) * p.R * p.S;
  const int64_t ys = p.N * p.K * p.P() * p.Q();
  const Vec x = from(to<T>(randn(rng, xs))), w = from(to<T>(randn(rng, ws)));
  const Vec gy = from(to<T>(randn(rng, ys)));
  const std::vector<T> xt = to<T>(x), wt = to<T>(w), gyt = to<T>(gy);

  auto y = poisoned<T>(ys);
  tnas::cpu::conv2d_forward(p, xt.data(), wt.data(), y.data());
  CHECK_MESSAGE(close(y, conv_ref(p, x, w), what + " forward"), what);

  auto gx = poisoned<T>(xs);
  tnas::cpu::conv2d_backward_input(p, gyt.data(), wt.data(), gx.data());
  CHECK_MESSAGE(close(gx, conv_bwd_input_ref(p, gy, w), what + " backward_input"), what);

  auto gw = poisoned<T>(ws);
  tnas::cpu::conv2d_backward_weight(p, xt.data(), gyt.data(), gw.data());
  CHECK_MESSAGE(close(gw, conv_bwd_weight_ref(p, x, gy), what + " backward_weight"), what);
}

}  // namespace

// ---- GEMM -----------------------------------------------------------------------------------
TEST_CASE_TEMPLATE("cpu::gemm: all transposes, alpha/beta, strides", T, float, double) {
  Rng rng(1);
  const int64_t sizes[][3] = {{7, 5, 3}, {1, 9, 4}, {70, 65, 33}, {4, 1, 1}, {3, 4, 0}};
  for (const auto& [M, N, K] : sizes) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        for (double beta : {0.0, 1.0, 0.5}) {
          const double alpha = beta == 0.5 ? 2.0 : 1.0;
          const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
          const int64_t arows = ta ? K : M, brows = tb ? N : K;
          const Vec A = from(to<T>(randn(rng, arows * lda))),
                    B = from(to<T>(randn(rng, brows * ldb)));
          Vec C0 = from(to<T>(randn(rng, M * ldc)));
          std::vector<T> Ct = to<T>(C0);
          if (beta == 0) {
            std::fill(Ct.begin(), Ct.end(), std::numeric_limits<T>::quiet_NaN());
          }
          Vec want(static_cast<size_t>(M * ldc));
          for (int64_t i = 0; i < M; ++i) {
            for (int64_t j = 0; j < ldc; ++j) {
              const size_t ci = static_cast<size_t>(i * ldc + j);
              if (j >= N) {  // padding columns must be left alone
                want[ci] = beta == 0 ? std::numeric_limits<double>::quiet_NaN() : C0[ci];
                continue;
              }
              double s = 0;
              for (int64_t k = 0; k < K; ++k)
                s += A[ta ? k * lda + i : i * lda + k] * B[tb ? j * ldb + k : k * ldb + j];
              want[ci] = alpha * s + (beta == 0 ? 0.0 : beta * C0[ci]);
            }
          }
          tnas::cpu::gemm<T>(ta, tb, M, N, K, T(alpha), to<T>(A).data(), lda, to<T>(B).data(), ldb,
                             T(beta), Ct.data(), ldc);
          std::vector<T> got;
          Vec exp;
          for (int64_t i = 0; i < M; ++i) {
            for (int64_t j = 0; j < N; ++j) {
              got.push_back(Ct[static_cast<size_t>(i * ldc + j)]);
              exp.push_back(want[static_cast<size_t>(i * ldc + j)]);
            }
            if (beta != 0) {
              for (int64_t j = N; j < ldc; ++j)
                CHECK(Ct[static_cast<size_t>(i * ldc + j)] ==
                      T(C0[static_cast<size_t>(i * ldc + j)]));
            }
          }
          std::ostringstream os;
          os << "gemm M=" << M << " N=" << N << " K=" << K << " ta=" << ta << " tb=" << tb
             << " beta=" << beta;
          CHECK_MESSAGE(close(got, exp, os.str()), os.str());
        }
      }
    }
  }
}

// ---- convolution ----------------------------------------------------------------------------
TEST_CASE_TEMPLATE("cpu::conv2d: depthwise, dense, grouped and pointwise vs naive", T, float,
                   double) {
  Rng rng(2);
  struct Cfg {
    int64_t C, K, groups;
  };
  const Cfg cfgs[] = {{3, 3, 3}, {5, 5, 5}, {3, 4, 1}, {6, 9, 3}, {6, 4, 2}, {4, 8, 4}};
  const int64_t dims[][2] = {{7, 9}, {8, 8}};
  int cases = 0;
  for (auto cfg : cfgs) {
    for (const auto& [H, W] : dims) {
      for (int64_t k : {1, 3, 5}) {
        for (int64_t st : {1, 2}) {
          for (int64_t dil : {1, 2}) {
            for (int64_t pad : {0, 1, 2}) {
              Conv2dParams p{.N = cases % 3 == 0 ? 1 : 3,
                             .C = cfg.C,
                             .H = H,
                             .W = W,
                             .K = cfg.K,
                             .R = k,
                             .S = k,
                             .stride_h = st,
                             .stride_w = st,
                             .pad_h = pad,
                             .pad_w = pad,
                             .dil_h = dil,
                             .dil_w = dil,
                             .groups = cfg.groups};
              if (!valid(p)) continue;
              check_conv<T>(p, rng);
              ++cases;
            }
          }
        }
      }
    }
  }
  CHECK(cases > 300);
}

TEST_CASE_TEMPLATE("cpu::conv2d: asymmetric kernels, strides, paddings and dilations", T, float,
                   double) {
  Rng rng(3);
  const Conv2dParams ps[] = {
      {.N = 2,
       .C = 4,
       .H = 11,
       .W = 6,
       .K = 4,
       .R = 3,
       .S = 5,
       .stride_h = 1,
       .stride_w = 2,
       .pad_h = 1,
       .pad_w = 2,
       .dil_h = 2,
       .dil_w = 1,
       .groups = 4},
      {.N = 3,
       .C = 4,
       .H = 11,
       .W = 6,
       .K = 6,
       .R = 5,
       .S = 3,
       .stride_h = 2,
       .stride_w = 1,
       .pad_h = 2,
       .pad_w = 0,
       .dil_h = 1,
       .dil_w = 2,
       .groups = 2},
      {.N = 2,
       .C = 3,
       .H = 13,
       .W = 10,
       .K = 3,
       .R = 3,
       .S = 3,
       .stride_h = 3,
       .stride_w = 3,
       .pad_h = 1,
       .pad_w = 1,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 3},
      {.N = 2,
       .C = 2,
       .H = 12,
       .W = 12,
       .K = 2,
       .R = 7,
       .S = 7,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 3,
       .pad_w = 3,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 2},
      {.N = 2,
       .C = 2,
       .H = 9,
       .W = 9,
       .K = 2,
       .R = 1,
       .S = 1,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 1,
       .pad_w = 1,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 2},
      {.N = 4,
       .C = 8,
       .H = 9,
       .W = 7,
       .K = 6,
       .R = 1,
       .S = 1,
       .stride_h = 2,
       .stride_w = 2,
       .pad_h = 0,
       .pad_w = 0,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 1},
      {.N = 1,
       .C = 1,
       .H = 5,
       .W = 40,
       .K = 1,
       .R = 3,
       .S = 3,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 1,
       .pad_w = 1,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 1},
      // DARTS-like plane sizes (Fashion-MNIST 28 / 14 / 7 and CIFAR 32 / 16 / 8).
      {.N = 2,
       .C = 3,
       .H = 28,
       .W = 28,
       .K = 3,
       .R = 5,
       .S = 5,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 4,
       .pad_w = 4,
       .dil_h = 2,
       .dil_w = 2,
       .groups = 3},
      {.N = 2,
       .C = 3,
       .H = 14,
       .W = 14,
       .K = 3,
       .R = 3,
       .S = 3,
       .stride_h = 2,
       .stride_w = 2,
       .pad_h = 2,
       .pad_w = 2,
       .dil_h = 2,
       .dil_w = 2,
       .groups = 3},
      {.N = 3,
       .C = 2,
       .H = 7,
       .W = 7,
       .K = 2,
       .R = 5,
       .S = 5,
       .stride_h = 2,
       .stride_w = 2,
       .pad_h = 2,
       .pad_w = 2,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 2},
      {.N = 2,
       .C = 2,
       .H = 32,
       .W = 32,
       .K = 2,
       .R = 3,
       .S = 3,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 1,
       .pad_w = 1,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 2},
      {.N = 2,
       .C = 16,
       .H = 8,
       .W = 8,
       .K = 16,
       .R = 1,
       .S = 1,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 0,
       .pad_w = 0,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 1},
      // Unit-stride engine: 16 / 32 / 8 wide planes, 3x3 and 5x5, dilation 1 and 2, and a
      // padding larger than the window (negative padding in backward-input).
      {.N = 2,
       .C = 3,
       .H = 16,
       .W = 16,
       .K = 3,
       .R = 5,
       .S = 5,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 2,
       .pad_w = 2,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 3},
      {.N = 2,
       .C = 2,
       .H = 32,
       .W = 32,
       .K = 2,
       .R = 5,
       .S = 5,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 4,
       .pad_w = 4,
       .dil_h = 2,
       .dil_w = 2,
       .groups = 2},
      {.N = 2,
       .C = 2,
       .H = 21,
       .W = 16,
       .K = 2,
       .R = 5,
       .S = 5,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 2,
       .pad_w = 2,
       .dil_h = 2,
       .dil_w = 1,
       .groups = 2},
      {.N = 2,
       .C = 2,
       .H = 8,
       .W = 8,
       .K = 2,
       .R = 3,
       .S = 3,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 2,
       .pad_w = 2,
       .dil_h = 2,
       .dil_w = 2,
       .groups = 2},
      {.N = 2,
       .C = 2,
       .H = 8,
       .W = 8,
       .K = 2,
       .R = 3,
       .S = 3,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 3,
       .pad_w = 3,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 2},
      {.N = 2,
       .C = 2,
       .H = 8,
       .W = 8,
       .K = 2,
       .R = 5,
       .S = 5,
       .stride_h = 1,
       .stride_w = 1,
       .pad_h = 5,
       .pad_w = 3,
       .dil_h = 1,
       .dil_w = 1,
       .groups = 2},
  };
  for (const auto& p : ps) check_conv<T>(p, rng);
}

// Depthwise "same" convolutions on small planes (the flat and tiny engines on AVX-512 builds):
// 8x8 (every compiled tiny geometry), odd and non-square planes, image counts that leave partial
// blocks of 8 and 2, one channel, and dilations that differ between rows and columns.
TEST_CASE_TEMPLATE("cpu::conv2d: depthwise same-size small planes", T, float, double) {
  Rng rng(5);
  const int64_t dims[][2] = {{8, 8}, {7, 7}, {4, 4}, {14, 14}, {6, 9}, {9, 5}, {1, 7}, {3, 12}};
  int cases = 0;
  for (const auto& [H, W] : dims) {
    for (int64_t k : {3, 5}) {
      for (const auto& [dh, dw] : {std::pair<int64_t, int64_t>{1, 1}, {2, 2}, {1, 2}, {2, 1}}) {
        for (int64_t N : {1, 3, 8, 17}) {
          const int64_t C = N == 17 ? 1 : 3;
          Conv2dParams p{.N = N,
                         .C = C,
                         .H = H,
                         .W = W,
                         .K = C,
                         .R = k,
                         .S = k,
                         .pad_h = dh * (k - 1) / 2,
                         .pad_w = dw * (k - 1) / 2,
                         .dil_h = dh,
                         .dil_w = dw,
                         .groups = C};
          if (!valid(p)) continue;
          check_conv<T>(p, rng);
          ++cases;
        }
      }
    }
  }
  CHECK(cases > 200);
}

// Masked-off lanes are never read or accumulated: an infinity in one input element reaches
// exactly the outputs whose window covers it (not, say, the next row's first column).
TEST_CASE("cpu::conv2d: depthwise small planes keep non-finite inputs in their windows") {
  // Plain variables, not structured bindings: CHECK_MESSAGE captures them in a lambda, which
  // Clang before 16 does not allow for bindings.
  for (const auto& hw : {std::pair<int64_t, int64_t>{8, 8}, {7, 7}}) {
    const int64_t H = hw.first, W = hw.second;
    for (int64_t k : {3, 5}) {
      for (int64_t d : {1, 2}) {
        Conv2dParams p{.N = 2,
                       .C = 2,
                       .H = H,
                       .W = W,
                       .K = 2,
                       .R = k,
                       .S = k,
                       .pad_h = d * (k - 1) / 2,
                       .pad_w = d * (k - 1) / 2,
                       .dil_h = d,
                       .dil_w = d,
                       .groups = 2};
        const int64_t HW = H * W, n = p.N * p.C * HW;
        for (const auto& pos : {std::pair<int64_t, int64_t>{2, W - 1}, {3, 0}, {0, 0}}) {
          const int64_t ih = pos.first, iw = pos.second;
          std::vector<float> x(static_cast<size_t>(n), 1.0f),
              w(static_cast<size_t>(2 * k * k), 1.0f);
          const int64_t at = 1 * p.C * HW + 1 * HW + ih * W + iw;  // image 1, channel 1
          x[static_cast<size_t>(at)] = std::numeric_limits<float>::infinity();
          auto y = poisoned<float>(n), gx = poisoned<float>(n);
          tnas::cpu::conv2d_forward(p, x.data(), w.data(), y.data());
          tnas::cpu::conv2d_backward_input(p, x.data(), w.data(), gx.data());
          int64_t bad = 0;
          for (int64_t i = 0; i < n; ++i) {
            const int64_t plane = i / HW, oi = (i % HW) / W, oj = i % W;
            const int64_t r = ih - oi + p.pad_h, s = iw - oj + p.pad_w;
            const bool covers = plane == at / HW && r >= 0 && s >= 0 && r % d == 0 && s % d == 0 &&
                                r / d < k && s / d < k;
            for (float v : {y[static_cast<size_t>(i)], gx[static_cast<size_t>(i)]})
              bad += covers ? !std::isinf(v) : !std::isfinite(v);
          }
          CHECK_MESSAGE(bad == 0, "H=", H, " k=", k, " d=", d, " inf at ", ih, ",", iw);
        }
      }
    }
  }
}

TEST_CASE("cpu::conv2d: invalid parameters throw") {
  std::vector<float> x(100), w(100), y(100);
  Conv2dParams p{.N = 1, .C = 3, .H = 4, .W = 4, .K = 4, .R = 3, .S = 3, .groups = 2};
  CHECK_THROWS_AS(tnas::cpu::conv2d_forward(p, x.data(), w.data(), y.data()), tnas::Error);
  p.groups = 1;
  p.R = 7;
  CHECK_THROWS_AS(tnas::cpu::conv2d_forward(p, x.data(), w.data(), y.data()), tnas::Error);
}

// ---- pooling --------------------------------------------------------------------------------
namespace {

std::string describe(const Pool2dParams& p) {
  std::ostringstream os;
  os << "pool N=" << p.N << " C=" << p.C << " H=" << p.H << " W=" << p.W << " k=" << p.kh << "x"
     << p.kw << " stride=" << p.stride_h << "," << p.stride_w << " pad=" << p.pad_h << ","
     << p.pad_w << " include_pad=" << p.count_include_pad;
  return os.str();
}

// Calls f(plane, i, j, first in-bounds window element..) per output: window bounds in input.
template <class F>
void pool_windows(const Pool2dParams& p, F f) {
  for (int64_t nc = 0; nc < p.N * p.C; ++nc)
    for (int64_t i = 0; i < p.P(); ++i)
      for (int64_t j = 0; j < p.Q(); ++j) {
        const int64_t h0 = i * p.stride_h - p.pad_h, w0 = j * p.stride_w - p.pad_w;
        f(nc, (nc * p.P() + i) * p.Q() + j, h0, w0);
      }
}

// Index (into x) of the first maximum of the window, row-major, in-bounds elements only.
int64_t argmax_ref(const Pool2dParams& p, const Vec& x, int64_t nc, int64_t h0, int64_t w0) {
  int64_t best = -1;
  for (int64_t r = 0; r < p.kh; ++r)
    for (int64_t s = 0; s < p.kw; ++s) {
      const int64_t ih = h0 + r, iw = w0 + s;
      if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
      const int64_t xi = (nc * p.H + ih) * p.W + iw;
      if (best < 0 || x[xi] > x[best]) best = xi;
    }
  return best;
}

double avg_divisor(const Pool2dParams& p, int64_t h0, int64_t w0) {
  if (p.count_include_pad) {
    return double((std::min(h0 + p.kh, p.H + p.pad_h) - h0) *
                  (std::min(w0 + p.kw, p.W + p.pad_w) - w0));
  }
  return double((std::min(h0 + p.kh, p.H) - std::max<int64_t>(h0, 0)) *
                (std::min(w0 + p.kw, p.W) - std::max<int64_t>(w0, 0)));
}

template <class T>
void check_pool(const Pool2dParams& p, const Vec& x, const Vec& gy) {
  const std::string what = describe(p);
  const int64_t xs = p.N * p.C * p.H * p.W, ys = p.N * p.C * p.P() * p.Q();
  const std::vector<T> xt = to<T>(x), gyt = to<T>(gy);
  Vec ymax(static_cast<size_t>(ys)), gmax(static_cast<size_t>(xs), 0.0);
  Vec yavg(static_cast<size_t>(ys), 0.0), gavg(static_cast<size_t>(xs), 0.0);
  pool_windows(p, [&](int64_t nc, int64_t yi, int64_t h0, int64_t w0) {
    const int64_t am = argmax_ref(p, x, nc, h0, w0);
    ymax[yi] = x[am];
    gmax[am] += gy[yi];
    const double div = avg_divisor(p, h0, w0);
    for (int64_t ih = std::max<int64_t>(h0, 0); ih < std::min(h0 + p.kh, p.H); ++ih)
      for (int64_t iw = std::max<int64_t>(w0, 0); iw < std::min(w0 + p.kw, p.W); ++iw) {
        const int64_t xi = (nc * p.H + ih) * p.W + iw;
        yavg[yi] += x[xi] / div;
        gavg[xi] += gy[yi] / div;
      }
  });
  auto y = poisoned<T>(ys);
  tnas::cpu::max_pool2d_forward(p, xt.data(), y.data());
  CHECK_MESSAGE(close(y, ymax, what + " max forward"), what);
  auto gx = poisoned<T>(xs);
  tnas::cpu::max_pool2d_backward(p, xt.data(), gyt.data(), gx.data());
  CHECK_MESSAGE(close(gx, gmax, what + " max backward"), what);
  y = poisoned<T>(ys);
  tnas::cpu::avg_pool2d_forward(p, xt.data(), y.data());
  CHECK_MESSAGE(close(y, yavg, what + " avg forward"), what);
  gx = poisoned<T>(xs);
  tnas::cpu::avg_pool2d_backward(p, gyt.data(), gx.data());
  CHECK_MESSAGE(close(gx, gavg, what + " avg backward"), what);
}

}  // namespace

TEST_CASE_TEMPLATE("cpu::pool2d: max and avg vs naive", T, float, double) {
  Rng rng(4);
  const int64_t dims[][2] = {{7, 9}, {8, 8}, {5, 6}, {14, 14}, {16, 16}, {13, 32}};
  int cases = 0;
  for (const auto& [H, W] : dims) {
    for (int64_t k : {1, 2, 3, 5}) {
      for (int64_t st : {1, 2, 3}) {
        for (int64_t pad = 0; 2 * pad <= k; ++pad) {
          for (bool inc : {false, true}) {
            Pool2dParams p{.N = 2,
                           .C = 3,
                           .H = H,
                           .W = W,
                           .kh = k,
                           .kw = k,
                           .stride_h = st,
                           .stride_w = st,
                           .pad_h = pad,
                           .pad_w = pad,
                           .count_include_pad = inc};
            if (H + 2 * pad < k || W + 2 * pad < k) continue;
            const int64_t xs = p.N * p.C * H * W, ys = p.N * p.C * p.P() * p.Q();
            const Vec x = from(to<T>(randn(rng, xs))), gy = from(to<T>(randn(rng, ys)));
            check_pool<T>(p, x, gy);
            ++cases;
          }
        }
      }
    }
  }
  // Asymmetric windows.
  Pool2dParams p{.N = 1,
                 .C = 2,
                 .H = 9,
                 .W = 11,
                 .kh = 3,
                 .kw = 2,
                 .stride_h = 2,
                 .stride_w = 1,
                 .pad_h = 1,
                 .pad_w = 1};
  check_pool<T>(p, from(to<T>(randn(rng, 2 * 9 * 11))), from(to<T>(randn(rng, 2 * p.P() * p.Q()))));
  CHECK(cases > 100);
}

TEST_CASE_TEMPLATE("cpu::max_pool2d: ties go to the first maximum in row-major order", T, float,
                   double) {
  Rng rng(5);
  // Values from {0, 1, 2}: most windows have tied maxima.
  for (int64_t st : {1, 2}) {
    Pool2dParams p{.N = 2,
                   .C = 2,
                   .H = 9,
                   .W = 7,
                   .kh = 3,
                   .kw = 3,
                   .stride_h = st,
                   .stride_w = st,
                   .pad_h = 1,
                   .pad_w = 1};
    Vec x(static_cast<size_t>(p.N * p.C * p.H * p.W));
    for (auto& v : x) v = double(rng.below(3));
    const Vec gy = from(to<T>(randn(rng, p.N * p.C * p.P() * p.Q())));
    check_pool<T>(p, x, gy);
  }
  // A constant plane: every window's gradient lands on its top-left in-bounds element.
  Pool2dParams p{.N = 1,
                 .C = 1,
                 .H = 4,
                 .W = 4,
                 .kh = 3,
                 .kw = 3,
                 .stride_h = 1,
                 .stride_w = 1,
                 .pad_h = 1,
                 .pad_w = 1};
  std::vector<T> x(16, T(5)), gy(16, T(1)), gx = poisoned<T>(16);
  tnas::cpu::max_pool2d_backward(p, x.data(), gy.data(), gx.data());
  // Window (i, j) starts at (max(i-1, 0), max(j-1, 0)): row starts 0,0,1,2, column starts
  // 0,0,1,2, so position (r, c) collects n(r) * n(c) windows with n = {2, 1, 1, 0}.
  const double want[16] = {4, 2, 2, 0, 2, 1, 1, 0, 2, 1, 1, 0, 0, 0, 0, 0};
  for (int i = 0; i < 16; ++i) CHECK(gx[static_cast<size_t>(i)] == T(want[i]));
}

TEST_CASE("cpu::max_pool2d: NaN propagates forward and takes the gradient") {
  Pool2dParams p{.N = 1,
                 .C = 2,
                 .H = 4,
                 .W = 4,
                 .kh = 2,
                 .kw = 2,
                 .stride_h = 1,
                 .stride_w = 1,
                 .pad_h = 0,
                 .pad_w = 0};
  // Plane 0 has a NaN at (1, 2); plane 1 has none (takes the fast path).
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[static_cast<size_t>(i)] = float((i * 7) % 11);
  x[1 * 4 + 2] = std::nanf("");
  std::vector<float> y = poisoned<float>(18), gy(18, 1.0f), gx = poisoned<float>(32);
  tnas::cpu::max_pool2d_forward(p, x.data(), y.data());
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      const bool has = (i == 0 || i == 1) && (j == 1 || j == 2);
      float m = -1;
      for (int64_t r = 0; r < 2; ++r)
        for (int64_t s = 0; s < 2; ++s)
          m = std::max(m, x[static_cast<size_t>((i + r) * 4 + j + s)]);
      const float got = y[static_cast<size_t>(i * 3 + j)];
      if (has) {
        CHECK(std::isnan(got));
      } else {
        CHECK(got == m);
      }
    }
  }
  tnas::cpu::max_pool2d_backward(p, x.data(), gy.data(), gx.data());
  CHECK(gx[1 * 4 + 2] == 4.0f);  // the four windows holding the NaN all pick it
  float total = 0;
  for (int i = 0; i < 16; ++i) total += gx[static_cast<size_t>(i)];
  CHECK(total == 9.0f);
  for (int i = 16; i < 32; ++i) CHECK(!std::isnan(gx[static_cast<size_t>(i)]));
}

// ---- batch norm -----------------------------------------------------------------------------
TEST_CASE_TEMPLATE("cpu::batch_norm: train, eval and backward vs naive", T, float, double) {
  Rng rng(6);
  const int64_t shapes[][3] = {{4, 3, 35}, {3, 5, 100}, {16, 7, 1}, {2, 2, 9}, {1, 3, 70}};
  for (const auto& [N, C, HW] : shapes) {
    for (bool affine : {true, false}) {
      const int64_t n = N * C * HW;
      const double M = double(N * HW);
      const Vec x = from(to<T>(randn(rng, n, 3.0))), gy = from(to<T>(randn(rng, n)));
      Vec gamma = from(to<T>(randn(rng, C, 1.0))), beta = from(to<T>(randn(rng, C)));
      if (!affine) {
        std::fill(gamma.begin(), gamma.end(), 1.0);
        std::fill(beta.begin(), beta.end(), 0.0);
      }
      const double eps = 1e-5;
      Vec mean(static_cast<size_t>(C), 0.0), var(static_cast<size_t>(C), 0.0), invstd(mean);
      for (int64_t i = 0; i < n; ++i) mean[static_cast<size_t>(i / HW % C)] += x[i] / M;
      for (int64_t i = 0; i < n; ++i) {
        const size_t c = static_cast<size_t>(i / HW % C);
        var[c] += (x[i] - mean[c]) * (x[i] - mean[c]) / M;
      }
      for (int64_t c = 0; c < C; ++c) invstd[c] = 1 / std::sqrt(var[c] + eps);
      Vec y(static_cast<size_t>(n)), gx(static_cast<size_t>(n));
      Vec ggamma(static_cast<size_t>(C), 0.0), gbeta(static_cast<size_t>(C), 0.0);
      for (int64_t i = 0; i < n; ++i) {
        const size_t c = static_cast<size_t>(i / HW % C);
        const double xhat = (x[i] - mean[c]) * invstd[c];
        y[i] = xhat * gamma[c] + beta[c];
        gbeta[c] += gy[i];
        ggamma[c] += gy[i] * xhat;
      }
      for (int64_t i = 0; i < n; ++i) {
        const size_t c = static_cast<size_t>(i / HW % C);
        const double xhat = (x[i] - mean[c]) * invstd[c];
        gx[i] = gamma[c] * invstd[c] / M * (M * gy[i] - gbeta[c] - xhat * ggamma[c]);
      }
      const std::vector<T> xt = to<T>(x), gyt = to<T>(gy), gt = to<T>(gamma), bt = to<T>(beta);
      const T* gp = affine ? gt.data() : nullptr;
      const T* bp = affine ? bt.data() : nullptr;
      std::ostringstream os;
      os << "bn N=" << N << " C=" << C << " HW=" << HW << " affine=" << affine;
      const std::string what = os.str();

      auto yt = poisoned<T>(n), mt = poisoned<T>(C), it = poisoned<T>(C);
      tnas::cpu::batch_norm_forward_train<T>(N, C, HW, xt.data(), gp, bp, T(eps), yt.data(),
                                             mt.data(), it.data());
      CHECK_MESSAGE(close(yt, y, what + " train y"), what);
      CHECK_MESSAGE(close(mt, mean, what + " mean"), what);
      CHECK_MESSAGE(close(it, invstd, what + " invstd"), what);

      // Eval with running statistics = some other values.
      const Vec rm = from(to<T>(randn(rng, C))), rvr = randn(rng, C);
      Vec rv(static_cast<size_t>(C));
      for (int64_t c = 0; c < C; ++c) rv[c] = double(T(0.5 + rvr[c] * rvr[c]));
      Vec ye(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const size_t c = static_cast<size_t>(i / HW % C);
        ye[i] = (x[i] - rm[c]) / std::sqrt(rv[c] + eps) * gamma[c] + beta[c];
      }
      auto yet = poisoned<T>(n);
      const std::vector<T> rmt = to<T>(rm), rvt = to<T>(rv);
      tnas::cpu::batch_norm_forward_eval<T>(N, C, HW, xt.data(), gp, bp, rmt.data(), rvt.data(),
                                            T(eps), yet.data());
      CHECK_MESSAGE(close(yet, ye, what + " eval y"), what);

      // Backward from the double-precision saved statistics, rounded through T.
      const std::vector<T> mT = to<T>(mean), iT = to<T>(invstd);
      auto gxt = poisoned<T>(n), ggt = poisoned<T>(C), gbt = poisoned<T>(C);
      tnas::cpu::batch_norm_backward<T>(N, C, HW, xt.data(), gyt.data(), gp, mT.data(), iT.data(),
                                        gxt.data(), ggt.data(), gbt.data());
      CHECK_MESSAGE(close(gxt, gx, what + " gx"), what);
      CHECK_MESSAGE(close(ggt, ggamma, what + " ggamma"), what);
      CHECK_MESSAGE(close(gbt, gbeta, what + " gbeta"), what);
      // ggamma / gbeta not wanted.
      auto gx2 = poisoned<T>(n);
      tnas::cpu::batch_norm_backward<T>(N, C, HW, xt.data(), gyt.data(), gp, mT.data(), iT.data(),
                                        gx2.data(), nullptr, nullptr);
      CHECK(std::equal(gx2.begin(), gx2.end(), gxt.begin()));
    }
  }
}
