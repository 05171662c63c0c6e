// Cell topologies as types: which edges a cell has, which ops may sit on them, and how many
// architectures that makes, all known at compile time.
//
// Two kinds:
//   darts_cell<OpSet, Nodes, Keep>  DARTS (Liu et al. 2019): a cell takes the outputs of the two
//       previous cells (states 0 and 1, "c_{k-2}" and "c_{k-1}"); intermediate node i (state
//       i + 2) has an edge from every earlier state, 2 + i edges; the search mixes all ops on
//       every edge, and derivation keeps `Keep` incoming edges per node, each with one op other
//       than `none`. A network has a normal and a reduction cell of this shape.
//   nb201_cell<OpSet, Nodes>        NAS-Bench-201 (Dong & Yang 2020): nodes 0..Nodes-1, node 0
//       the input, an edge j -> i for every j < i, each edge holding exactly one op (`none`
//       included, which removes the edge); one cell type.
//
// States are numbered as the reference code numbers them: for DARTS, 0 and 1 are the cell
// inputs and 2.. the intermediate nodes (the numbers a DARTS genotype writes); for NB201, node
// indices (the "~j" of an NB201 string).
#pragma once

#include <array>
#include <cstdint>
#include <optional>

#include "tnas/space/op_set.hpp"

namespace tnas::space {

// Tells darts-like spaces (two cell types, Keep inputs per node derived from a mixture) from
// nb201-like ones (one cell type, one op on every edge).
enum class SpaceKind { darts, nb201 };

// An edge of a cell: from state `from` into state `to` (numbering above).
struct Edge {
  int from;
  int to;
  friend constexpr bool operator==(Edge, Edge) = default;
};

struct DartsGenotype;  // genotype.hpp
struct Nb201Genotype;  // genotype.hpp

namespace detail {
constexpr uint64_t choose(int n, int k) {
  if (k < 0 || k > n) return 0;
  uint64_t r = 1;
  for (int i = 1; i <= k; ++i) r = r * uint64_t(n - k + i) / uint64_t(i);  // exact at each step
  return r;
}
// a * b, or nullopt when either is nullopt or the product does not fit in 64 bits.
constexpr std::optional<uint64_t> mul(std::optional<uint64_t> a, std::optional<uint64_t> b) {
  if (!a || !b) return std::nullopt;
  if (*b != 0 && *a > UINT64_MAX / *b) return std::nullopt;
  return *a * *b;
}
constexpr std::optional<uint64_t> pow(uint64_t base, int e) {
  std::optional<uint64_t> r = 1;
  for (int i = 0; i < e; ++i) r = mul(r, base);
  return r;
}
constexpr double pow_d(double base, int e) {
  double r = 1;
  for (int i = 0; i < e; ++i) r *= base;
  return r;
}
}  // namespace detail

// ---- DARTS -------------------------------------------------------------------------------------

// represents: the DARTS cell search space over OpSet: Nodes intermediate nodes, Keep inputs kept
//   per node at derivation, a normal and a reduction cell.
// requires: OpSet an op_set with at least one op other than none; Nodes >= 1; 1 <= Keep <= 2
//   (node 0 has only two inputs to keep).
// ensures: edge_table lists the edges in the order DARTS' code walks them (node 0's edges from
//   states 0, 1; node 1's from 0, 1, 2; ...), so edge e here is row e of DARTS' alpha matrices.
template <class OpSet, int Nodes = 4, int Keep = 2>
struct darts_cell {
  static_assert(is_op_set<OpSet>,
                "darts_cell's first argument must be an op_set<...> of operator types.");
  static_assert(Nodes >= 1, "A darts_cell needs at least one intermediate node (Nodes >= 1).");
  static_assert(Keep >= 1, "A darts_cell must keep at least one input per node (Keep >= 1).");
  static_assert(Keep <= 2,
                "A darts_cell cannot keep more than 2 inputs per node: its first node has only "
                "the two cell inputs to choose from.");
  static_assert(OpSet::derivable >= 1,
                "A darts_cell needs an op other than none: a derived genotype never uses none.");

  static constexpr SpaceKind kind = SpaceKind::darts;
  using ops = OpSet;
  using genotype = DartsGenotype;
  static constexpr int nodes = Nodes;
  static constexpr int keep = Keep;
  static constexpr int inputs = 2;                       // c_{k-2}, c_{k-1}
  static constexpr int states = inputs + Nodes;          // inputs and intermediate nodes
  static constexpr int cell_types = 2;                   // normal, reduce
  static constexpr int edges = Nodes * (Nodes + 3) / 2;  // sum over i < Nodes of (2 + i)
  static constexpr int kept_edges = Nodes * Keep;

  // Index of the first edge into intermediate node `node` (0-based), and of the edge from
  // state `from` into it.
  static constexpr int first_edge(int node) { return 2 * node + node * (node - 1) / 2; }
  static constexpr int edge_index(int node, int from) { return first_edge(node) + from; }

  // edge_table[e] = {from state, to state}; `to` is node + 2.
  static constexpr std::array<Edge, edges> edge_table = [] {
    std::array<Edge, edges> t{};
    int e = 0;
    for (int i = 0; i < Nodes; ++i)
      for (int j = 0; j < inputs + i; ++j) t[e++] = Edge{j, inputs + i};
    return t;
  }();

  // Architectures per cell: for each node, a choice of Keep of its 2 + i inputs, and an op
  // other than none on each kept edge: prod_i C(2 + i, Keep) * derivable^Keep. The space is
  // the (normal, reduce) pair, the square: about 1.08e18 for DARTS, as its paper says (~1e18).
  static constexpr double cell_space_size = [] {
    double r = 1;
    for (int i = 0; i < Nodes; ++i)
      r *= double(detail::choose(inputs + i, Keep)) * detail::pow_d(OpSet::derivable, Keep);
    return r;
  }();
  static constexpr double space_size = cell_space_size * cell_space_size;
  // The same counts exactly, where they fit in 64 bits.
  static constexpr std::optional<uint64_t> cell_space_size_exact = [] {
    std::optional<uint64_t> r = 1;
    for (int i = 0; i < Nodes; ++i)
      r = detail::mul(detail::mul(r, detail::choose(inputs + i, Keep)),
                      detail::pow(uint64_t(OpSet::derivable), Keep));
    return r;
  }();
  static constexpr std::optional<uint64_t> space_size_exact =
      detail::mul(cell_space_size_exact, cell_space_size_exact);
};

// DESIGN.md's spelling.
template <class OpSet, int Nodes = 4, int Keep = 2>
using cell = darts_cell<OpSet, Nodes, Keep>;

// ---- NAS-Bench-201 -----------------------------------------------------------------------------

// represents: the NAS-Bench-201 cell space over OpSet: Nodes nodes, every edge j -> i (j < i)
//   holding one op of OpSet.
// requires: OpSet a non-empty op_set; Nodes >= 2.
// ensures: edge_table is NB201's order (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2), the order of the
//   ops in its arch strings and of its benchmark's index.
template <class OpSet, int Nodes = 4>
struct nb201_cell {
  static_assert(is_op_set<OpSet>,
                "nb201_cell's first argument must be an op_set<...> of operator types.");
  static_assert(Nodes >= 2,
                "An nb201_cell needs at least two nodes: the input node and one node fed by it.");

  static constexpr SpaceKind kind = SpaceKind::nb201;
  using ops = OpSet;
  using genotype = Nb201Genotype;
  static constexpr int nodes = Nodes;
  static constexpr int cell_types = 1;
  static constexpr int edges = Nodes * (Nodes - 1) / 2;
  static constexpr int kept_edges = edges;

  // Index of the edge from node `from` into node `to` (from < to).
  static constexpr int edge_index(int to, int from) { return to * (to - 1) / 2 + from; }

  static constexpr std::array<Edge, edges> edge_table = [] {
    std::array<Edge, edges> t{};
    int e = 0;
    for (int i = 1; i < Nodes; ++i)
      for (int j = 0; j < i; ++j) t[e++] = Edge{j, i};
    return t;
  }();

  static constexpr double cell_space_size = detail::pow_d(OpSet::size, edges);
  static constexpr double space_size = cell_space_size;
  static constexpr std::optional<uint64_t> cell_space_size_exact =
      detail::pow(uint64_t(OpSet::size), edges);
  static constexpr std::optional<uint64_t> space_size_exact = cell_space_size_exact;
};

template <class S>
concept DartsSpace = S::kind == SpaceKind::darts;
template <class S>
concept Nb201Space = S::kind == SpaceKind::nb201;

// ---- the published spaces ----------------------------------------------------------------------

// DARTS' PRIMITIVES, in its order (genotypes.py): the order of the columns of its alphas.
using DartsOps = op_set<op::none, op::max_pool<3>, op::avg_pool<3>, op::skip, op::sep_conv<3>,
                        op::sep_conv<5>, op::dil_conv<3, 2>, op::dil_conv<5, 2>>;
using Darts = darts_cell<DartsOps, 4, 2>;

// NAS-Bench-201's search space ops, in its order (NAS-Bench-201 / AutoDL-Projects
// SearchSpaceNames["nas-bench-201"]).
using Nb201Ops = op_set<op::none, op::skip, op::conv<1>, op::conv<3>, op::avg_pool<3>>;
using Nb201 = nb201_cell<Nb201Ops, 4>;

// A binary cell space (BATS): DARTS' topology with binary separable / dilated convolutions, a
// binary-friendly skip (nn::BinReduce at stride 2) and the pools. Its supernet and networks use
// binary preprocessing (sign -> binary 1x1 -> BN, BinReduce after a reduction cell).
using BatsOps =
    op_set<op::none, op::max_pool<3>, op::avg_pool<3>, op::bin_skip, op::bin_sep_conv<3>,
           op::bin_sep_conv<5>, op::bin_dil_conv<3, 2>, op::bin_dil_conv<5, 2>>;
using Bats = darts_cell<BatsOps, 4, 2>;
static_assert(BatsOps::binary && !DartsOps::binary && Bats::edges == 14);

static_assert(Darts::edges == 14 && Darts::kept_edges == 8 && DartsOps::size == 8);
static_assert(Nb201::edges == 6 && Nb201::space_size_exact == 15625);

}  // namespace tnas::space
