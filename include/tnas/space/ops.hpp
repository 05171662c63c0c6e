// Operators as types: the candidate operations of a cell edge.
//
// represents: one kind of edge operation (sep_conv_3x3, skip_connect, ...). The type carries
//   what a search space needs to know without building anything: its name as the papers spell
//   it, whether it has weights, and its cost as constexpr functions of the channel count and
//   input size, so spaces can be counted and constrained at compile time. build() makes the
//   DARTS reference module (operations.py in the DARTS code base) for a given width and stride.
// requires: every operator maps C channels to C channels; stride is 1 or 2 (reduction cells);
//   spatial sizes follow "same" padding, so the output is ceil(H / stride) x ceil(W / stride).
// ensures: build(C, stride, affine, rng)'s num_parameters() == params(C, stride, affine).
//
// Cost convention (flops): multiply-accumulates (MACs) of one forward pass for one C x H x W
// input (batch 1), as DARTS and NAS-Bench-201 report "FLOPs":
//   - a convolution costs (its kernel area x input channels per group) MACs per output
//     element;
//   - a K x K pooling window costs K*K per output element (one add or compare each), as
//     NAS-Bench-201's FLOP counter does;
//   - ReLU, BatchNorm (it folds into the conv at inference), identity, zero and concatenation
//     cost nothing.
#pragma once

#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <type_traits>

#include "tnas/core/rng.hpp"
#include "tnas/nn/binary.hpp"
#include "tnas/nn/module.hpp"
#include "tnas/nn/nas_blocks.hpp"

namespace tnas::op {

namespace detail {

// A string usable as a template argument, for names built at compile time ("sep_conv_" + K).
template <std::size_t N>
struct fixed_string {
  char data[N]{};
  constexpr fixed_string(const char (&s)[N]) { std::copy_n(s, N, data); }
  constexpr std::string_view view() const { return {data, N - 1}; }
};

constexpr int digits(int v) {
  return v < 10 ? 1 : 1 + digits(v / 10);
}

// Storage for Prefix + "KxK" + Suffix (+ "_d" D when D > 0): a variable template gives each
// spelling one object with static storage, so a string_view into it is a constant.
template <fixed_string Prefix, int K, int D>
inline constexpr auto kxk_storage = [] {
  constexpr std::size_t n = Prefix.view().size() + 2 * digits(K) + 1 + (D > 0 ? 2 + digits(D) : 0);
  std::array<char, n + 1> out{};
  std::size_t at = 0;
  auto put_int = [&](int v) {
    const int d = digits(v);
    for (int i = d - 1; i >= 0; --i, v /= 10) out[at + i] = char('0' + v % 10);
    at += d;
  };
  for (char c : Prefix.view()) out[at++] = c;
  put_int(K);
  out[at++] = 'x';
  put_int(K);
  if (D > 0) {
    out[at++] = '_';
    out[at++] = 'd';
    put_int(D);
  }
  return out;
}();

// "sep_conv_3x3"; with D > 0, "dil_conv_3x3_d3".
template <fixed_string Prefix, int K, int D = 0>
inline constexpr std::string_view kxk_name{kxk_storage<Prefix, K, D>.data(),
                                           kxk_storage<Prefix, K, D>.size() - 1};

// Output extent of a "same"-padded window at `stride`: ceil(n / stride).
constexpr int64_t out_extent(int64_t n, int stride) {
  return (n - 1) / stride + 1;
}
constexpr int64_t out_area(int64_t H, int64_t W, int stride) {
  return out_extent(H, stride) * out_extent(W, stride);
}
constexpr int64_t bn_params(int64_t C, bool affine) {
  return affine ? 2 * C : 0;
}

}  // namespace detail

// ---- the operators -----------------------------------------------------------------------------

// The zero op: no connection. DARTS keeps it in the search so an edge can learn to vanish and
// drops it when deriving a genotype.
struct none {
  static constexpr std::string_view name = "none";
  static constexpr bool parametric = false;
  static std::shared_ptr<nn::Module> build(int64_t /*C*/, int stride, bool /*affine*/,
                                           Rng& /*rng*/) {
    return std::make_shared<nn::Zero>(stride);
  }
  static constexpr int64_t params(int64_t /*C*/, int /*stride*/ = 1, bool /*affine*/ = true) {
    return 0;
  }
  static constexpr int64_t flops(int64_t /*C*/, int64_t /*H*/, int64_t /*W*/, int /*stride*/ = 1) {
    return 0;
  }
};

// skip_connect: the identity at stride 1; at stride 2 DARTS' FactorizedReduce (two 1x1 convs
// with C/2 outputs each, on x and on x shifted by one pixel, concatenated, then BN), because an
// identity cannot halve the resolution. `parametric` is false: it names the stride-1 op, the
// one whose growing weight is the DARTS collapse symptom.
struct skip {
  static constexpr std::string_view name = "skip_connect";
  static constexpr bool parametric = false;
  static std::shared_ptr<nn::Module> build(int64_t C, int stride, bool affine, Rng& rng) {
    if (stride == 1) return std::make_shared<nn::Identity>();
    return std::make_shared<nn::FactorizedReduce>(C, C, affine, rng);
  }
  static constexpr int64_t params(int64_t C, int stride = 1, bool affine = true) {
    return stride == 1 ? 0 : 2 * (C / 2) * C + detail::bn_params(C, affine);
  }
  static constexpr int64_t flops(int64_t C, int64_t H, int64_t W, int stride = 1) {
    return stride == 1 ? 0 : 2 * (C / 2) * C * detail::out_area(H, W, stride);
  }
};

// K x K max pooling, padding K / 2 (DARTS: nn.MaxPool2d(3, stride, padding=1)).
template <int K>
struct max_pool {
  static_assert(K >= 1 && K % 2 == 1,
                "A pooling window must have an odd size, so that padding K/2 keeps the spatial "
                "size at stride 1.");
  static constexpr std::string_view name = detail::kxk_name<"max_pool_", K>;
  static constexpr bool parametric = false;
  static std::shared_ptr<nn::Module> build(int64_t /*C*/, int stride, bool /*affine*/,
                                           Rng& /*rng*/) {
    return std::make_shared<nn::MaxPool2d>(K, stride, K / 2);
  }
  static constexpr int64_t params(int64_t /*C*/, int /*stride*/ = 1, bool /*affine*/ = true) {
    return 0;
  }
  static constexpr int64_t flops(int64_t C, int64_t H, int64_t W, int stride = 1) {
    return C * K * K * detail::out_area(H, W, stride);
  }
};

// K x K average pooling, padding K / 2, dividing by the in-bounds count (DARTS and NB201:
// count_include_pad=False).
template <int K>
struct avg_pool {
  static_assert(K >= 1 && K % 2 == 1,
                "A pooling window must have an odd size, so that padding K/2 keeps the spatial "
                "size at stride 1.");
  static constexpr std::string_view name = detail::kxk_name<"avg_pool_", K>;
  static constexpr bool parametric = false;
  static std::shared_ptr<nn::Module> build(int64_t /*C*/, int stride, bool /*affine*/,
                                           Rng& /*rng*/) {
    return std::make_shared<nn::AvgPool2d>(K, stride, K / 2, /*count_include_pad=*/false);
  }
  static constexpr int64_t params(int64_t /*C*/, int /*stride*/ = 1, bool /*affine*/ = true) {
    return 0;
  }
  static constexpr int64_t flops(int64_t C, int64_t H, int64_t W, int stride = 1) {
    return C * K * K * detail::out_area(H, W, stride);
  }
};

// Separable convolution, DARTS style: (ReLU, depthwise K x K at `stride`, pointwise 1x1, BN)
// twice, the second at stride 1.
template <int K>
struct sep_conv {
  static_assert(K >= 1 && K % 2 == 1,
                "A convolution kernel must have an odd size, so that padding keeps the spatial "
                "size at stride 1.");
  static constexpr std::string_view name = detail::kxk_name<"sep_conv_", K>;
  static constexpr bool parametric = true;
  static std::shared_ptr<nn::Module> build(int64_t C, int stride, bool affine, Rng& rng) {
    return std::make_shared<nn::SepConv>(C, C, K, stride, K / 2, affine, rng);
  }
  static constexpr int64_t params(int64_t C, int /*stride*/ = 1, bool affine = true) {
    return 2 * (C * K * K + C * C + detail::bn_params(C, affine));
  }
  static constexpr int64_t flops(int64_t C, int64_t H, int64_t W, int stride = 1) {
    return 2 * C * (K * K + C) * detail::out_area(H, W, stride);
  }
};

// Dilated separable convolution, DARTS style: ReLU, depthwise K x K with dilation D at `stride`
// (padding D * (K - 1) / 2), pointwise 1x1, BN. DARTS' dil_conv_3x3 / dil_conv_5x5 use D = 2;
// other dilations get "_dD" appended to the name so they cannot be confused with those.
template <int K, int D = 2>
struct dil_conv {
  static_assert(K >= 1 && K % 2 == 1,
                "A convolution kernel must have an odd size, so that padding keeps the spatial "
                "size at stride 1.");
  static_assert(D >= 1, "A dilation must be at least 1.");
  static constexpr std::string_view name = detail::kxk_name < "dil_conv_", K, D == 2 ? 0 : D > ;
  static constexpr bool parametric = true;
  static std::shared_ptr<nn::Module> build(int64_t C, int stride, bool affine, Rng& rng) {
    return std::make_shared<nn::DilConv>(C, C, K, stride, D * (K - 1) / 2, D, affine, rng);
  }
  static constexpr int64_t params(int64_t C, int /*stride*/ = 1, bool affine = true) {
    return C * K * K + C * C + detail::bn_params(C, affine);
  }
  static constexpr int64_t flops(int64_t C, int64_t H, int64_t W, int stride = 1) {
    return C * (K * K + C) * detail::out_area(H, W, stride);
  }
};

// Dense convolution as ReLU, K x K conv (no bias), BN: NAS-Bench-201's nor_conv_KxK (and
// DARTS' ReLUConvBN).
template <int K>
struct conv {
  static_assert(K >= 1 && K % 2 == 1,
                "A convolution kernel must have an odd size, so that padding keeps the spatial "
                "size at stride 1.");
  static constexpr std::string_view name = detail::kxk_name<"nor_conv_", K>;
  static constexpr bool parametric = true;
  static std::shared_ptr<nn::Module> build(int64_t C, int stride, bool affine, Rng& rng) {
    return std::make_shared<nn::ReLUConvBN>(C, C, K, stride, K / 2, affine, rng);
  }
  static constexpr int64_t params(int64_t C, int /*stride*/ = 1, bool affine = true) {
    return C * C * K * K + detail::bn_params(C, affine);
  }
  static constexpr int64_t flops(int64_t C, int64_t H, int64_t W, int stride = 1) {
    return C * C * K * K * detail::out_area(H, W, stride);
  }
};

// ---- binary operators (BATS) ------------------------------------------------------------------
//
// Their cost counts binary multiply-accumulates (one XNOR + popcount bit each) as MACs; divide
// by 64 for the word operations the XNOR kernels execute. `binary` marks them: a space whose op
// set has one is a binary space (binary cell preprocessing, BinReduce after reductions).

namespace detail {
constexpr int64_t bin_groups(int64_t C) {
  return nn::bin_groups(C);
}
// BinConvBN(C -> C, K x K, groups g) weights and BN.
constexpr int64_t bin_conv_params(int64_t C, int K, int64_t g, bool affine) {
  return C * (C / g) * K * K + bn_params(C, affine);
}
}  // namespace detail

// Binary separable convolution: grouped K x K binary conv at `stride`, binary 1x1, BN after
// each (nn::BinSepConv).
template <int K>
struct bin_sep_conv {
  static_assert(K >= 1 && K % 2 == 1,
                "A convolution kernel must have an odd size, so that padding keeps the spatial "
                "size at stride 1.");
  static constexpr std::string_view name = detail::kxk_name<"bin_sep_conv_", K>;
  static constexpr bool parametric = true;
  static constexpr bool binary = true;
  static std::shared_ptr<nn::Module> build(int64_t C, int stride, bool affine, Rng& rng) {
    return std::make_shared<nn::BinSepConv>(C, C, K, stride, 1, affine, rng);
  }
  static constexpr int64_t params(int64_t C, int /*stride*/ = 1, bool affine = true) {
    return detail::bin_conv_params(C, K, detail::bin_groups(C), affine) +
           detail::bin_conv_params(C, 1, 1, affine);
  }
  static constexpr int64_t flops(int64_t C, int64_t H, int64_t W, int stride = 1) {
    return C * (C / detail::bin_groups(C) * K * K + C) * detail::out_area(H, W, stride);
  }
};

// Binary dilated convolution: as bin_sep_conv with dilation D (padding D * (K - 1) / 2).
template <int K, int D = 2>
struct bin_dil_conv {
  static_assert(K >= 1 && K % 2 == 1,
                "A convolution kernel must have an odd size, so that padding keeps the spatial "
                "size at stride 1.");
  static_assert(D >= 1, "A dilation must be at least 1.");
  static constexpr std::string_view name = detail::kxk_name < "bin_dil_conv_", K, D == 2 ? 0 : D > ;
  static constexpr bool parametric = true;
  static constexpr bool binary = true;
  static std::shared_ptr<nn::Module> build(int64_t C, int stride, bool affine, Rng& rng) {
    return std::make_shared<nn::BinSepConv>(C, C, K, stride, D, affine, rng);
  }
  static constexpr int64_t params(int64_t C, int /*stride*/ = 1, bool affine = true) {
    return bin_sep_conv<K>::params(C, 1, affine);
  }
  static constexpr int64_t flops(int64_t C, int64_t H, int64_t W, int stride = 1) {
    return bin_sep_conv<K>::flops(C, H, W, stride);
  }
};

// The skip connection of a binary space: the identity at stride 1, the binary-friendly
// reduction (3x3 average pool at stride 2, binary 1x1, BN: nn::BinReduce) at stride 2.
struct bin_skip {
  static constexpr std::string_view name = "bin_skip_connect";
  static constexpr bool parametric = false;
  static constexpr bool binary = true;
  static std::shared_ptr<nn::Module> build(int64_t C, int stride, bool affine, Rng& rng) {
    if (stride == 1) return std::make_shared<nn::Identity>();
    return std::make_shared<nn::BinReduce>(C, C, affine, rng);
  }
  static constexpr int64_t params(int64_t C, int stride = 1, bool affine = true) {
    return stride == 1 ? 0 : detail::bin_conv_params(C, 1, 1, affine);
  }
  static constexpr int64_t flops(int64_t C, int64_t H, int64_t W, int stride = 1) {
    return stride == 1 ? 0 : (9 * C + C * C) * detail::out_area(H, W, stride);
  }
};

// Whether Op is a binary operator.
template <class Op>
inline constexpr bool is_binary = requires {
  requires Op::binary;
};

// ---- the concept -------------------------------------------------------------------------------

// An edge operator: a name, a constexpr `parametric` flag, build(C, stride, affine, rng) making
// its module, and constexpr params(C, stride, affine) / flops(C, H, W, stride). The
// std::integral_constant / std::bool_constant terms make the requirement "usable at compile
// time", not only "callable".
template <class T>
concept Operator = requires(int64_t C, int stride, bool affine, Rng& rng) {
  { T::name } -> std::convertible_to<std::string_view>;
  typename std::bool_constant<T::parametric>;
  typename std::integral_constant<std::size_t, T::name.size()>;
  typename std::integral_constant<int64_t, T::params(16, 2, true)>;
  typename std::integral_constant<int64_t, T::flops(16, 8, 8, 2)>;
  { T::build(C, stride, affine, rng) } -> std::same_as<std::shared_ptr<nn::Module>>;
  { T::params(C, stride, affine) } -> std::same_as<int64_t>;
  { T::flops(C, C, C, stride) } -> std::same_as<int64_t>;
};

// ---- the registry ------------------------------------------------------------------------------

// Every operator tnas knows by name, so that a genotype read from text can be classified (is
// this op parameter-free?) without naming its space. Adding an operator type means adding it
// here and bumping the count below: the static_asserts keep the table and the types in step.
struct OpInfo {
  std::string_view name;
  bool parametric;
};

template <Operator... Ops>
inline constexpr std::array<OpInfo, sizeof...(Ops)> make_registry() {
  return {OpInfo{Ops::name, Ops::parametric}...};
}

inline constexpr auto registry =
    make_registry<none, skip, max_pool<3>, avg_pool<3>, sep_conv<3>, sep_conv<5>, sep_conv<7>,
                  dil_conv<3>, dil_conv<5>, conv<1>, conv<3>, conv<7>, bin_skip, bin_sep_conv<3>,
                  bin_sep_conv<5>, bin_dil_conv<3>, bin_dil_conv<5>>();
static_assert(registry.size() == 17,
              "The operator registry changed size: update this count and the tests that list "
              "the known operators.");
static_assert(
    [] {
      for (std::size_t i = 0; i < registry.size(); ++i)
        for (std::size_t j = i + 1; j < registry.size(); ++j)
          if (registry[i].name == registry[j].name) return false;
      return true;
    }(),
    "Two registered operators share a name.");
static_assert(registry[0].name == "none" && registry[4].name == "sep_conv_3x3" &&
                  registry[7].name == "dil_conv_3x3" && registry[10].name == "nor_conv_3x3",
              "Operator names must be spelled as the papers spell them.");

// The registry entry for `name`, or nullptr.
constexpr const OpInfo* find(std::string_view name) {
  for (const OpInfo& e : registry)
    if (e.name == name) return &e;
  return nullptr;
}

}  // namespace tnas::op
