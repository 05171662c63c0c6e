// Weight-sharing supernets generated from a space type.
//
// Supernet<Space> is the DARTS search network for a darts_cell space (stem, cells with
// preprocessing and FactorizedReduce, reduction cells at 1/3 and 2/3 of the depth, global
// pooling, classifier) and the NAS-Bench-201 search network for an nb201_cell space (stem, three
// stages of cells joined by residual reduction blocks). Every edge holds a MixedOp over the
// space's operator set. The architecture parameters (alpha, one row of logits per edge) are
// kept apart from the weights: parameters() holds only weights, arch_parameters() the alphas.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "tnas/nn/binary.hpp"
#include "tnas/nn/layers.hpp"
#include "tnas/nn/nas_blocks.hpp"
#include "tnas/ops/elementwise.hpp"
#include "tnas/ops/loss.hpp"
#include "tnas/ops/mixed.hpp"
#include "tnas/ops/shape.hpp"
#include "tnas/space/cell.hpp"
#include "tnas/space/genotype.hpp"

namespace tnas::search {

struct SupernetConfig {
  int64_t in_channels = 1;
  int64_t channels = 16;  // C of the first cells
  int64_t cells = 8;      // DARTS: total cells; NB201: cells per stage
  int64_t classes = 10;
  int64_t stem_multiplier = 3;  // DARTS stem outputs stem_multiplier * C channels
  uint64_t seed = 0;
  DType dtype = DType::f32;  // float64 for gradient checks
};

// How alpha becomes mixing weights: DARTS' softmax (optionally sharpened by a temperature
// T < 1, as BATS does) or Fair DARTS' independent sigmoids.
enum class Mixing { softmax, sigmoid };

struct MixingConfig {
  Mixing kind = Mixing::softmax;
  double temperature = 1.0;
};

inline Tensor mixing_weights(const Tensor& alpha, const MixingConfig& m) {
  if (m.kind == Mixing::sigmoid) return tnas::sigmoid(alpha);
  return tnas::softmax(m.temperature == 1.0 ? alpha : scale(alpha, 1.0 / m.temperature));
}

// A candidate op on one edge together with the flag the forward needs about it.
struct Candidate {
  std::shared_ptr<nn::Module> module;  // null for `none`
};

// MixedOp: every op of the set applied to the edge's input, combined by weighted_sum.
template <class OpSet>
class MixedOp : public nn::Module {
 public:
  MixedOp(int64_t C, int stride, bool bn_after_pool, Rng& rng) : nn::Module("MixedOp") {
    for (size_t k = 0; k < OpSet::size; ++k) {
      const std::string_view name = OpSet::names[k];
      if (name == "none") {
        ops_.push_back(nullptr);
        continue;
      }
      std::shared_ptr<nn::Module> m = OpSet::build(k, C, stride, /*affine=*/false, rng);
      // DARTS follows a pooling candidate with a non-affine BN, so its scale matches the
      // convolutions' normalised outputs.
      if (bn_after_pool && name.find("pool") != std::string_view::npos) {
        auto seq = std::make_shared<nn::Sequential>();
        seq->push_back(m);
        seq->push_back(
            std::make_shared<nn::BatchNorm2d>(C, nn::BatchNorm2dConfig{.affine = false}));
        m = seq;
      }
      register_module(std::string(name), m);
      ops_.push_back(m);
    }
  }
  // weights: [K] mixing weights of this edge. Candidates whose weight is exactly zero (pruned
  // ops) and `none` are skipped.
  Tensor forward_mixed(const Tensor& x, const Tensor& weights, const std::vector<bool>* active) {
    std::vector<Tensor> ys(ops_.size());
    // Candidates starting with ReLU -> Conv run it as relu_conv2d (see nn::Sequential), so
    // relu(x) is recomputed per candidate rather than shared and held for the backward: a
    // little more arithmetic for a supernet that fits in half of libtorch's memory.
    for (size_t k = 0; k < ops_.size(); ++k)
      if (ops_[k] && (!active || (*active)[k])) ys[k] = ops_[k]->forward(x);
    bool any = false;
    for (auto& y : ys) any |= y.defined();
    if (!any) {  // only `none` is left on this edge
      return Tensor::zeros(none_shape(x), x.dtype(), x.device());
    }
    return weighted_sum(ys, weights);
  }
  void set_stride(int s) { stride_ = s; }

 private:
  Shape none_shape(const Tensor& x) const {
    return {x.dim(0), x.dim(1), (x.dim(2) + stride_ - 1) / stride_,
            (x.dim(3) + stride_ - 1) / stride_};
  }
  std::vector<std::shared_ptr<nn::Module>> ops_;
  int stride_ = 1;
};

namespace detail {
// Row e of a [E, K] tensor as a [K] tensor (differentiable).
inline Tensor row(const Tensor& w, int64_t e) {
  return reshape(slice(w, 0, e, e + 1), {-1});
}
}  // namespace detail

// ---- DARTS ---------------------------------------------------------------------------------

template <class Space>
class DartsCell : public nn::Module {
 public:
  using OpSet = typename Space::ops;
  static constexpr int kNodes = Space::nodes;

  DartsCell(int64_t C_pp, int64_t C_p, int64_t C, bool reduction, bool reduction_prev, Rng& rng)
      : nn::Module(reduction ? "ReductionCell" : "NormalCell"), reduction_(reduction) {
    if constexpr (OpSet::binary) {  // BATS: binary preprocessing, binary-friendly reduction
      if (reduction_prev)
        pre0_ =
            register_module("preprocess0", std::make_shared<nn::BinReduce>(C_pp, C, false, rng));
      else
        pre0_ = register_module(
            "preprocess0", std::make_shared<nn::BinConvBN>(C_pp, C, 1, 1, 0, 1, 1, false, rng));
      pre1_ = register_module("preprocess1",
                              std::make_shared<nn::BinConvBN>(C_p, C, 1, 1, 0, 1, 1, false, rng));
    } else {
      if (reduction_prev)
        pre0_ = register_module("preprocess0",
                                std::make_shared<nn::FactorizedReduce>(C_pp, C, false, rng));
      else
        pre0_ = register_module("preprocess0",
                                std::make_shared<nn::ReLUConvBN>(C_pp, C, 1, 1, 0, false, rng));
      pre1_ = register_module("preprocess1",
                              std::make_shared<nn::ReLUConvBN>(C_p, C, 1, 1, 0, false, rng));
    }
    for (int i = 0; i < kNodes; ++i)
      for (int j = 0; j < 2 + i; ++j) {
        const int stride = reduction && j < 2 ? 2 : 1;
        auto op = std::make_shared<MixedOp<OpSet>>(C, stride, true, rng);
        op->set_stride(stride);
        edges_.push_back(register_module("edge" + std::to_string(edges_.size()), op));
      }
  }
  bool reduction() const { return reduction_; }

  // weights: [E, K]. active: per edge, which candidates run (null = all).
  Tensor forward_cell(const Tensor& s0_in, const Tensor& s1_in, const Tensor& weights,
                      const std::vector<std::vector<bool>>* active) {
    std::vector<Tensor> states{pre0_->forward(s0_in), pre1_->forward(s1_in)};
    size_t e = 0;
    for (int i = 0; i < kNodes; ++i) {
      Tensor s;
      for (int j = 0; j < 2 + i; ++j, ++e) {
        Tensor h = edges_[e]->forward_mixed(states[j], detail::row(weights, int64_t(e)),
                                            active ? &(*active)[e] : nullptr);
        s = s.defined() ? add(s, h) : h;
      }
      states.push_back(s);
    }
    return concat(std::vector<Tensor>(states.end() - kNodes, states.end()), 1);
  }

 private:
  bool reduction_;
  std::shared_ptr<nn::Module> pre0_, pre1_;
  std::vector<std::shared_ptr<MixedOp<OpSet>>> edges_;
};

template <class Space>
class DartsSupernet : public nn::Module {
 public:
  using OpSet = typename Space::ops;
  static constexpr int kNodes = Space::nodes;
  static constexpr int64_t kEdges = Space::edges;
  static constexpr int64_t kOps = OpSet::size;

  explicit DartsSupernet(const SupernetConfig& cfg) : nn::Module("DartsSupernet"), cfg_(cfg) {
    TNAS_CHECK(cfg.cells >= 1 && cfg.channels >= 2 && cfg.classes >= 2 && cfg.in_channels >= 1,
               "DartsSupernet: need cells >= 1, channels >= 2, classes >= 2, got cells ", cfg.cells,
               ", channels ", cfg.channels, ", classes ", cfg.classes);
    Rng rng(cfg.seed);
    int64_t C_curr = cfg.stem_multiplier * cfg.channels;
    auto stem = std::make_shared<nn::Sequential>();
    stem->push_back(std::make_shared<nn::Conv2d>(cfg.in_channels, C_curr, 3,
                                                 nn::Conv2dConfig{.padding = 1}, rng));
    stem->push_back(std::make_shared<nn::BatchNorm2d>(C_curr));
    stem_ = register_module("stem", stem);
    int64_t C_pp = C_curr, C_p = C_curr;
    C_curr = cfg.channels;
    bool reduction_prev = false;
    for (int64_t i = 0; i < cfg.cells; ++i) {
      bool reduction = false;
      if (cfg.cells >= 3 && (i == cfg.cells / 3 || i == 2 * cfg.cells / 3)) {
        C_curr *= 2;
        reduction = true;
      }
      auto cell =
          std::make_shared<DartsCell<Space>>(C_pp, C_p, C_curr, reduction, reduction_prev, rng);
      cells_.push_back(register_module("cell" + std::to_string(i), cell));
      reduction_prev = reduction;
      C_pp = C_p;
      C_p = kNodes * C_curr;
    }
    classifier_ =
        register_module("classifier", std::make_shared<nn::Linear>(C_p, cfg.classes, rng));
    alpha_normal_ = Tensor::randn({kEdges, kOps}, rng, 1e-3, cfg.dtype).set_requires_grad();
    alpha_reduce_ = Tensor::randn({kEdges, kOps}, rng, 1e-3, cfg.dtype).set_requires_grad();
    to(cfg.dtype);
  }

  Tensor forward(const Tensor& x) override {
    TNAS_CHECK(x.rank() == 4 && x.dim(1) == cfg_.in_channels, "DartsSupernet: input must be [N, ",
               cfg_.in_channels, ", H, W], got ", x.shape());
    Tensor wn = mixing_weights(alpha_normal_, mixing_);
    Tensor wr = mixing_weights(alpha_reduce_, mixing_);
    Tensor s0 = stem_->forward(x), s1 = s0;
    for (auto& c : cells_) {
      const bool red = c->reduction();
      Tensor s2 = c->forward_cell(s0, s1, red ? wr : wn, active_ptr(red));
      s0 = s1;
      s1 = s2;
    }
    return classifier_->forward(global_avg_pool(s1));
  }

  std::vector<Tensor> arch_parameters() const { return {alpha_normal_, alpha_reduce_}; }
  const Tensor& alpha_normal() const { return alpha_normal_; }
  const Tensor& alpha_reduce() const { return alpha_reduce_; }
  void set_mixing(const MixingConfig& m) { mixing_ = m; }
  const MixingConfig& mixing() const { return mixing_; }
  const SupernetConfig& config() const { return cfg_; }

  // Candidates to run per edge (normal, reduce); pruned ones are skipped entirely.
  void set_active(std::vector<std::vector<bool>> normal, std::vector<std::vector<bool>> reduce) {
    active_normal_ = std::move(normal);
    active_reduce_ = std::move(reduce);
  }

  // Mixing weights of each cell type as plain [E, K] values.
  Tensor weights_normal() const {
    NoGrad ng;
    return mixing_weights(alpha_normal_, mixing_);
  }
  Tensor weights_reduce() const {
    NoGrad ng;
    return mixing_weights(alpha_reduce_, mixing_);
  }

  // DARTS' derivation: per intermediate node, the Keep incoming edges whose strongest
  // non-`none` op weighs most, each with that op.
  space::DartsGenotype genotype() const {
    space::DartsGenotype g;
    g.normal = parse_cell(weights_normal());
    g.reduce = parse_cell(weights_reduce());
    for (int i = 0; i < kNodes; ++i) {
      g.normal_concat.push_back(2 + i);
      g.reduce_concat.push_back(2 + i);
    }
    return g;
  }

 protected:
  void extra_tensors(const std::function<void(Tensor&)>& f) override {
    f(alpha_normal_);
    f(alpha_reduce_);
  }

 private:
  const std::vector<std::vector<bool>>* active_ptr(bool reduction) const {
    const auto& a = reduction ? active_reduce_ : active_normal_;
    return a.empty() ? nullptr : &a;
  }
  static std::vector<std::pair<std::string, int>> parse_cell(const Tensor& w) {
    auto v = w.to_vector();
    constexpr int none = OpSet::index_of("none");
    std::vector<std::pair<std::string, int>> genes;
    int64_t start = 0;
    for (int i = 0; i < kNodes; ++i) {
      const int n_in = 2 + i;
      std::vector<std::pair<double, int>> edge_strength;  // (weight, input)
      std::vector<int> best_op(n_in);
      for (int j = 0; j < n_in; ++j) {
        const double* row = v.data() + (start + j) * kOps;
        int best = -1;
        for (int k = 0; k < kOps; ++k)
          if (k != none && (best < 0 || row[k] > row[best])) best = k;
        best_op[j] = best;
        edge_strength.push_back({row[best], j});
      }
      std::stable_sort(edge_strength.begin(), edge_strength.end(),
                       [](auto& a, auto& b) { return a.first > b.first; });
      for (int k = 0; k < Space::keep && k < n_in; ++k) {
        const int j = edge_strength[k].second;
        genes.push_back({std::string(OpSet::names[best_op[j]]), j});
      }
      start += n_in;
    }
    return genes;
  }

  SupernetConfig cfg_;
  MixingConfig mixing_;
  std::shared_ptr<nn::Module> stem_;
  std::vector<std::shared_ptr<DartsCell<Space>>> cells_;
  std::shared_ptr<nn::Module> classifier_;
  Tensor alpha_normal_, alpha_reduce_;
  std::vector<std::vector<bool>> active_normal_, active_reduce_;
};

// ---- NAS-Bench-201 -------------------------------------------------------------------------

// NAS-Bench-201's residual reduction block between stages.
class ResNetBasicBlock : public nn::Module {
 public:
  ResNetBasicBlock(int64_t C_in, int64_t C_out, Rng& rng) : nn::Module("ResNetBasicBlock") {
    a_ = register_module("conv_a",
                         std::make_shared<nn::ReLUConvBN>(C_in, C_out, 3, 2, 1, true, rng));
    b_ = register_module("conv_b",
                         std::make_shared<nn::ReLUConvBN>(C_out, C_out, 3, 1, 1, true, rng));
    auto down = std::make_shared<nn::Sequential>();
    down->push_back(std::make_shared<nn::AvgPool2d>(2, 2, 0));
    down->push_back(std::make_shared<nn::Conv2d>(C_in, C_out, 1, nn::Conv2dConfig{}, rng));
    down_ = register_module("downsample", down);
  }
  Tensor forward(const Tensor& x) override {
    return add(b_->forward(a_->forward(x)), down_->forward(x));
  }

 private:
  std::shared_ptr<nn::Module> a_, b_, down_;
};

template <class Space>
class Nb201Cell : public nn::Module {
 public:
  using OpSet = typename Space::ops;
  static constexpr int kNodes = Space::nodes;
  Nb201Cell(int64_t C, Rng& rng) : nn::Module("SearchCell") {
    for (int i = 1; i < kNodes; ++i)
      for (int j = 0; j < i; ++j)
        edges_.push_back(register_module(std::to_string(i) + "<-" + std::to_string(j),
                                         std::make_shared<MixedOp<OpSet>>(C, 1, false, rng)));
  }
  Tensor forward_cell(const Tensor& x, const Tensor& weights,
                      const std::vector<std::vector<bool>>* active) {
    std::vector<Tensor> nodes{x};
    size_t e = 0;
    for (int i = 1; i < kNodes; ++i) {
      Tensor s;
      for (int j = 0; j < i; ++j, ++e) {
        Tensor h = edges_[e]->forward_mixed(nodes[j], detail::row(weights, int64_t(e)),
                                            active ? &(*active)[e] : nullptr);
        s = s.defined() ? add(s, h) : h;
      }
      nodes.push_back(s);
    }
    return nodes.back();
  }

 private:
  std::vector<std::shared_ptr<MixedOp<OpSet>>> edges_;
};

template <class Space>
class Nb201Supernet : public nn::Module {
 public:
  using OpSet = typename Space::ops;
  static constexpr int64_t kEdges = Space::edges;
  static constexpr int64_t kOps = OpSet::size;

  explicit Nb201Supernet(const SupernetConfig& cfg) : nn::Module("Nb201Supernet"), cfg_(cfg) {
    TNAS_CHECK(cfg.cells >= 1 && cfg.channels >= 1 && cfg.classes >= 2,
               "Nb201Supernet: need cells >= 1 per stage, channels >= 1, classes >= 2");
    Rng rng(cfg.seed);
    int64_t C = cfg.channels;
    auto stem = std::make_shared<nn::Sequential>();
    stem->push_back(
        std::make_shared<nn::Conv2d>(cfg.in_channels, C, 3, nn::Conv2dConfig{.padding = 1}, rng));
    stem->push_back(std::make_shared<nn::BatchNorm2d>(C));
    stem_ = register_module("stem", stem);
    for (int stage = 0; stage < 3; ++stage) {
      if (stage > 0) {
        blocks_.push_back(register_module("cell" + std::to_string(layers_.size()),
                                          std::make_shared<ResNetBasicBlock>(C, 2 * C, rng)));
        layers_.push_back(-int(blocks_.size()));
        C *= 2;
      }
      for (int64_t i = 0; i < cfg.cells; ++i) {
        cells_.push_back(register_module("cell" + std::to_string(layers_.size()),
                                         std::make_shared<Nb201Cell<Space>>(C, rng)));
        layers_.push_back(int(cells_.size()) - 1);
      }
    }
    auto last = std::make_shared<nn::Sequential>();
    last->push_back(std::make_shared<nn::BatchNorm2d>(C));
    last->push_back(std::make_shared<nn::ReLU>());
    lastact_ = register_module("lastact", last);
    classifier_ = register_module("classifier", std::make_shared<nn::Linear>(C, cfg.classes, rng));
    alpha_ = Tensor::randn({kEdges, kOps}, rng, 1e-3, cfg.dtype).set_requires_grad();
    to(cfg.dtype);
  }

  Tensor forward(const Tensor& x) override {
    TNAS_CHECK(x.rank() == 4 && x.dim(1) == cfg_.in_channels, "Nb201Supernet: input must be [N, ",
               cfg_.in_channels, ", H, W], got ", x.shape());
    Tensor w = mixing_weights(alpha_, mixing_);
    Tensor h = stem_->forward(x);
    for (int l : layers_)
      h = l >= 0 ? cells_[l]->forward_cell(h, w, active_.empty() ? nullptr : &active_)
                 : blocks_[-l - 1]->forward(h);
    return classifier_->forward(global_avg_pool(lastact_->forward(h)));
  }

  std::vector<Tensor> arch_parameters() const { return {alpha_}; }
  void set_mixing(const MixingConfig& m) { mixing_ = m; }
  const MixingConfig& mixing() const { return mixing_; }
  const SupernetConfig& config() const { return cfg_; }
  void set_active(std::vector<std::vector<bool>> a) { active_ = std::move(a); }
  Tensor weights() const {
    NoGrad ng;
    return mixing_weights(alpha_, mixing_);
  }

  // NAS-Bench-201's derivation: the strongest op on every edge.
  space::Nb201Genotype genotype() const {
    auto v = weights().to_vector();
    space::Nb201Genotype g;
    for (int64_t e = 0; e < kEdges; ++e) {
      int best = 0;
      for (int k = 1; k < kOps; ++k)
        if (v[e * kOps + k] > v[e * kOps + best]) best = k;
      g.ops[e] = std::string(OpSet::names[best]);
    }
    return g;
  }

 protected:
  void extra_tensors(const std::function<void(Tensor&)>& f) override { f(alpha_); }

 private:
  SupernetConfig cfg_;
  MixingConfig mixing_;
  std::shared_ptr<nn::Module> stem_, lastact_, classifier_;
  std::vector<std::shared_ptr<Nb201Cell<Space>>> cells_;
  std::vector<std::shared_ptr<ResNetBasicBlock>> blocks_;
  std::vector<int> layers_;  // >= 0: cell index; < 0: -(block index + 1)
  Tensor alpha_;
  std::vector<std::vector<bool>> active_;
};

// The supernet type of a space.
template <class Space>
using Supernet = std::conditional_t<Space::kind == space::SpaceKind::nb201, Nb201Supernet<Space>,
                                    DartsSupernet<Space>>;

}  // namespace tnas::search
