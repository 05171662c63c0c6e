// op_set: the candidate operations of one edge, as a flat list of operator types.
//
// represents: an ordered set of Operators; the position of an op is its index everywhere (the
//   column of the architecture weights alpha, the index a controller samples, the slot of a
//   supernet's MixedOp).
// requires: at least one operator, no two with the same name.
// ensures: each operator type is instantiated once, whatever the number of edges: run-time
//   calls (build, params, flops by index) go through tables of function pointers made by one
//   pack expansion, never by recursion over the list, so compile time stays flat as spaces
//   grow (STYLE.md, "Spaces as flat type lists").
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "tnas/core/error.hpp"
#include "tnas/space/ops.hpp"

namespace tnas::space {

namespace detail {
template <std::size_t N>
constexpr bool distinct(const std::array<std::string_view, N>& names) {
  for (std::size_t i = 0; i < N; ++i)
    for (std::size_t j = i + 1; j < N; ++j)
      if (names[i] == names[j]) return false;
  return true;
}

// "a, b, c": the known names, for error messages.
inline std::string join(std::span<const std::string_view> names) {
  std::string s;
  for (std::size_t i = 0; i < names.size(); ++i) (s += i ? ", " : "") += names[i];
  return s;
}
}  // namespace detail

template <op::Operator... Ops>
struct op_set {
  static_assert(sizeof...(Ops) > 0, "An op_set needs at least one operator.");

  static constexpr int size = int(sizeof...(Ops));
  static constexpr std::array<std::string_view, sizeof...(Ops)> names{Ops::name...};
  static constexpr std::array<bool, sizeof...(Ops)> parametric{Ops::parametric...};

  static_assert(detail::distinct(names),
                "An op_set lists two operators with the same name (the same operator twice?): "
                "an edge's candidates must be distinct.");

  // The I-th operator type.
  template <std::size_t I>
  using op = std::tuple_element_t<I, std::tuple<Ops...>>;

  // Whether Op is one of the candidates, and its index (-1 when absent).
  template <class Op>
  static constexpr bool contains = (std::is_same_v<Op, Ops> || ...);
  template <class Op>
  static constexpr int index_of_op = [] {
    int i = 0, found = -1;
    ((std::is_same_v<Op, Ops>&& found < 0 ? found = i : 0, ++i), ...);
    return found;
  }();

  // The index of the op called `name`, or -1.
  static constexpr int index_of(std::string_view name) {
    for (int i = 0; i < size; ++i)
      if (names[i] == name) return i;
    return -1;
  }

  // DARTS keeps `none` in the mixture but never derives it; derivation needs to know where it is.
  static constexpr bool has_none = contains<::tnas::op::none>;
  static constexpr int none_index = index_of_op<::tnas::op::none>;
  // The number of ops a derived (DARTS) genotype may put on an edge: all but `none`.
  static constexpr int derivable = size - (has_none ? 1 : 0);
  // A binary space's op set (BATS): it holds a binary operator.
  static constexpr bool binary = (::tnas::op::is_binary<Ops> || ...);

  static constexpr std::string_view name(int i) {
    check_index(i, "name");
    return names[i];
  }

  // The module of op i (or of the op called `name`) for C channels at `stride`.
  static std::shared_ptr<nn::Module> build(int i, int64_t C, int stride, bool affine, Rng& rng) {
    check_index(i, "build");
    TNAS_CHECK(C >= 1 && (stride == 1 || stride == 2), "op_set::build(", names[i],
               "): need C >= 1 and stride 1 or 2, got C = ", C, ", stride = ", stride);
    return builders[i](C, stride, affine, rng);
  }
  static std::shared_ptr<nn::Module> build(std::string_view name, int64_t C, int stride,
                                           bool affine, Rng& rng) {
    const int i = index_of(name);
    TNAS_CHECK(i >= 0, "op_set::build: unknown op '", name, "'; known ops: ", known());
    return build(i, C, stride, affine, rng);
  }

  static constexpr int64_t params(int i, int64_t C, int stride = 1, bool affine = true) {
    check_index(i, "params");
    return param_fns[i](C, stride, affine);
  }
  static constexpr int64_t flops(int i, int64_t C, int64_t H, int64_t W, int stride = 1) {
    check_index(i, "flops");
    return flop_fns[i](C, H, W, stride);
  }

  // Calls f(std::type_identity<Op>{}, std::integral_constant<int, I>{}) for each op in order:
  // the compile-time walk for code that needs the types (a MixedOp's constructor, a fused
  // kernel's dispatch).
  template <class F>
  static constexpr void for_each(F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (f(std::type_identity<op<I>>{}, std::integral_constant<int, int(I)>{}), ...);
    }
    (std::make_index_sequence<sizeof...(Ops)>{});
  }

  // "none, max_pool_3x3, ...", for messages.
  static std::string known() { return detail::join(names); }

 private:
  static constexpr void check_index(int i, const char* what) {
    TNAS_CHECK(i >= 0 && i < size, "op_set::", what, ": op index ", i, " is out of range for ",
               size, " ops (", known(), ")");
  }

  using builder_fn = std::shared_ptr<nn::Module> (*)(int64_t, int, bool, Rng&);
  using params_fn = int64_t (*)(int64_t, int, bool);
  using flops_fn = int64_t (*)(int64_t, int64_t, int64_t, int);
  static constexpr std::array<builder_fn, sizeof...(Ops)> builders{&Ops::build...};
  static constexpr std::array<params_fn, sizeof...(Ops)> param_fns{&Ops::params...};
  static constexpr std::array<flops_fn, sizeof...(Ops)> flop_fns{&Ops::flops...};
};

// True for op_set<...> (so topologies can say "this must be an op_set" in a sentence).
template <class T>
inline constexpr bool is_op_set = false;
template <op::Operator... Ops>
inline constexpr bool is_op_set<op_set<Ops...>> = true;

}  // namespace tnas::space
