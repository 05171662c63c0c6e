// Evaluation networks built from a genotype: the discrete architectures a search finds, built
// layer for layer like the reference code bases, to be trained from scratch by train::fit.
//
//   DartsNetwork   DARTS' NetworkCIFAR (model.py in github.com/quark0/darts): stem, `cells`
//                  cells with reductions at 1/3 and 2/3 of the depth, drop path, an optional
//                  auxiliary head at 2/3 depth, global pooling and a linear classifier.
//   Nb201Network   NAS-Bench-201's TinyNetwork (xautodl/models/cell_infers/tiny_network.py):
//                  stem, three stages of N cells joined by residual reduction blocks, BN+ReLU,
//                  global pooling and a linear classifier.
//
// Parameter names follow the reference state dicts ("cells.3._ops.1.op.2.weight",
// "auxiliary_head.features.2.weight", "cells.6.downsample.1.weight", ...), so weights can be
// carried between tnas and the PyTorch code with a renaming-free converter. Initialisation
// differs (tnas draws from its own Rng; see nn/layers.hpp).
//
// FLOP convention (flops()): multiply-accumulates of one inference forward of one image
// (batch 1), as DARTS and NAS-Bench-201 report "FLOPs" and as space/ops.hpp counts its ops:
// a convolution costs (kernel area x input channels per group) per output element, a K x K
// pooling window K*K per output element, a linear layer in x out; ReLU, BatchNorm, additions,
// concatenation, global average pooling and biases cost nothing. The auxiliary head and drop
// path run only in training and are not counted.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tnas/nn/binary.hpp"
#include "tnas/nn/layers.hpp"
#include "tnas/nn/module.hpp"
#include "tnas/nn/nas_blocks.hpp"
#include "tnas/ops/elementwise.hpp"
#include "tnas/ops/shape.hpp"
#include "tnas/space/cell.hpp"
#include "tnas/space/genotype.hpp"

namespace tnas::train {

namespace detail {
using tnas::detail::cat;

// Children named "0", "1", ... with no forward of its own (PyTorch's nn.ModuleList), so that
// state-dict keys read "cells.3.<...>" as in the reference code.
class ModuleList : public nn::Module {
 public:
  ModuleList() : nn::Module("ModuleList") {}
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    register_module(std::to_string(size_++), m);
    return m;
  }
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
};

// ceil(n / 2): the spatial extent after every stride-2 op of a DARTS cell (space/ops.hpp).
constexpr int64_t half_up(int64_t n) {
  return (n + 1) / 2;
}

// MACs of a dense or grouped convolution producing C_out x H_out x W_out.
constexpr int64_t conv_flops(int64_t C_in, int64_t C_out, int64_t kernel, int64_t H_out,
                             int64_t W_out, int64_t groups = 1) {
  return C_in / groups * kernel * kernel * C_out * H_out * W_out;
}
// MACs of FactorizedReduce(C_in -> C_out): two 1x1 convs with C_out / 2 outputs each at half
// resolution (the shifted branch counted at full size, as its zero padding makes it).
constexpr int64_t factorized_reduce_flops(int64_t C_in, int64_t C_out, int64_t H, int64_t W) {
  return 2 * conv_flops(C_in, C_out / 2, 1, half_up(H), half_up(W));
}

// DARTS' drop path: each sample's x is zeroed with probability p and the others are scaled by
// 1 / (1 - p), so the expectation is unchanged. mask [N, 1, 1, 1] drawn from rng, N draws.
inline Tensor drop_path(const Tensor& x, double p, Rng& rng) {
  TNAS_CHECK(p >= 0 && p < 1, "drop_path: probability must be in [0, 1), got ", p);
  if (p == 0) return x;
  TNAS_CHECK(x.rank() == 4, "drop_path: input must be [N, C, H, W], got ", x.shape());
  const double keep = 1 - p;
  Tensor mask = Tensor::empty({x.dim(0), 1, 1, 1}, x.dtype(), Device::cpu);
  dispatch(x.dtype(), [&]<class T>() {
    T* m = mask.data<T>();
    for (int64_t n = 0; n < x.dim(0); ++n) m[n] = rng.uniform() < keep ? T(1 / keep) : T(0);
  });
  return mul(x, mask.to(x.device()));
}
}  // namespace detail

// ---- DARTS ------------------------------------------------------------------------------------

// The operator family a DartsNetwork builds its cells' ops from (DARTS' by default; BATS'
// binary ops for space::BatsOps, which also switches the cell preprocessing to binary layers).
struct CellOps {
  std::shared_ptr<nn::Module> (*build)(std::string_view name, int64_t C, int stride, bool affine,
                                       Rng& rng);
  int (*index_of)(std::string_view name);
  int64_t (*flops)(int op, int64_t C, int64_t H, int64_t W, int stride);
  std::span<const std::string_view> names;
  bool binary;
};
template <class OpSet>
CellOps cell_ops() {
  return {[](std::string_view name, int64_t C, int stride, bool affine, Rng& rng) {
            return OpSet::build(name, C, stride, affine, rng);
          },
          &OpSet::index_of,
          [](int op, int64_t C, int64_t H, int64_t W, int stride) {
            return OpSet::flops(op, C, H, W, stride);
          },
          OpSet::names, OpSet::binary};
}

struct DartsNetworkConfig {
  int64_t in_channels = 3;
  int64_t channels = 36;  // C of the first cells (DARTS' --init_channels)
  int64_t cells = 20;     // DARTS' --layers
  int64_t classes = 10;
  bool auxiliary = false;       // auxiliary head at 2/3 depth (DARTS' --auxiliary)
  double drop_path_prob = 0.2;  // the initial drop-path probability; fit() ramps it per epoch
  int64_t stem_multiplier = 3;  // the stem outputs stem_multiplier * channels
  int64_t image_size = 32;      // input height = width the auxiliary head is sized for
  uint64_t seed = 0;            // initialisation and the drop-path generator
  DType dtype = DType::f32;     // float64 for gradient checks
  CellOps ops = cell_ops<space::DartsOps>();  // the cells' operator family
};

// One cell of a DartsNetwork: a fixed op on each of the genotype's kept edges.
//
// represents: DARTS' model.py Cell: preprocess0 (FactorizedReduce after a reduction cell,
//   ReLUConvBN 1x1 otherwise) and preprocess1 (ReLUConvBN 1x1) bring the two inputs to C
//   channels; node i is op_{2i}(state[in_{2i}]) + op_{2i+1}(state[in_{2i+1}]); the output is
//   the concatenation of the `concat` states (multiplier() * C channels).
// requires: a genotype entry list of 2 * nodes (op, input) pairs valid for space::DartsOps.
// ensures: in a reduction cell the edges from the two inputs have stride 2, so the output is
//   ceil(H / 2) x ceil(W / 2); every op other than the identity is followed, in training with
//   drop_prob > 0, by drop path.
class DartsInferCell : public nn::Module {
 public:
  DartsInferCell(const std::vector<space::DartsGenotype::Entry>& entries,
                 const std::vector<int>& concat, int64_t C_pp, int64_t C_p, int64_t C,
                 bool reduction, bool reduction_prev, Rng& rng,
                 const CellOps& cell_ops = train::cell_ops<space::DartsOps>())
      : nn::Module(detail::cat(reduction ? "DartsReductionCell(" : "DartsNormalCell(", C_pp, ", ",
                               C_p, ", ", C, ")")),
        reduction_(reduction),
        reduction_prev_(reduction_prev),
        C_(C),
        concat_(concat),
        ops_info_(cell_ops) {
    TNAS_CHECK(!entries.empty() && entries.size() % 2 == 0, name(), ": needs an even, non-zero ",
               "number of (op, input) entries, got ", entries.size());
    if (cell_ops.binary) {
      if (reduction_prev)
        pre0_ = register_module("preprocess0", std::make_shared<nn::BinReduce>(C_pp, C, true, rng));
      else
        pre0_ = register_module("preprocess0",
                                std::make_shared<nn::BinConvBN>(C_pp, C, 1, 1, 0, 1, 1, true, rng));
      pre1_ = register_module("preprocess1",
                              std::make_shared<nn::BinConvBN>(C_p, C, 1, 1, 0, 1, 1, true, rng));
    } else {
      if (reduction_prev)
        pre0_ = register_module("preprocess0",
                                std::make_shared<nn::FactorizedReduce>(C_pp, C, true, rng));
      else
        pre0_ = register_module("preprocess0",
                                std::make_shared<nn::ReLUConvBN>(C_pp, C, 1, 1, 0, true, rng));
      pre1_ = register_module("preprocess1",
                              std::make_shared<nn::ReLUConvBN>(C_p, C, 1, 1, 0, true, rng));
    }
    auto list = register_module("_ops", std::make_shared<detail::ModuleList>());
    for (auto& [op, from] : entries) {
      const int stride = reduction && from < 2 ? 2 : 1;
      auto m = list->push_back(cell_ops.build(op, C, stride, /*affine=*/true, rng));
      ops_.push_back(m);
      identity_.push_back(dynamic_cast<nn::Identity*>(m.get()) != nullptr);
      op_index_.push_back(cell_ops.index_of(op));
      inputs_.push_back(from);
    }
  }

  bool reduction() const { return reduction_; }
  int64_t multiplier() const { return int64_t(concat_.size()); }
  int64_t out_channels() const { return multiplier() * C_; }

  // s0, s1: the outputs of the previous two cells. drop_prob > 0 applies drop path (training).
  Tensor forward_cell(const Tensor& s0, const Tensor& s1, double drop_prob, Rng& rng) {
    std::vector<Tensor> states{pre0_->forward(s0), pre1_->forward(s1)};
    for (size_t e = 0; e < ops_.size(); e += 2) {
      Tensor h[2];
      for (size_t k = 0; k < 2; ++k) {
        const int from = inputs_[e + k];
        TNAS_CHECK(from >= 0 && from < int(states.size()), name(), ": edge ", e + k,
                   " reads state ", from, " before it exists");
        h[k] = ops_[e + k]->forward(states[size_t(from)]);
        if (drop_prob > 0 && !identity_[e + k]) h[k] = detail::drop_path(h[k], drop_prob, rng);
      }
      states.push_back(add(h[0], h[1]));
    }
    std::vector<Tensor> out;
    for (int i : concat_) out.push_back(states[size_t(i)]);
    return out.size() == 1 ? out[0] : concat(out, 1);
  }

  // MACs of one forward whose input s1 is H x W (s0 is 2H x 2W after a reduction cell).
  int64_t flops(int64_t C_pp, int64_t C_p, int64_t H, int64_t W) const {
    int64_t f = reduction_prev_ ? detail::factorized_reduce_flops(C_pp, C_, 2 * H, 2 * W)
                                : detail::conv_flops(C_pp, C_, 1, H, W);
    f += detail::conv_flops(C_p, C_, 1, H, W);
    for (size_t e = 0; e < ops_.size(); ++e) {
      const int from = inputs_[e];
      const int stride = reduction_ && from < 2 ? 2 : 1;
      // Inputs are H x W; intermediate nodes are at the cell's output size.
      const int64_t h = from < 2 || !reduction_ ? H : detail::half_up(H);
      const int64_t w = from < 2 || !reduction_ ? W : detail::half_up(W);
      f += ops_info_.flops(op_index_[e], C_, h, w, stride);
    }
    return f;
  }

 private:
  bool reduction_, reduction_prev_;
  int64_t C_;
  std::vector<int> concat_;
  CellOps ops_info_;
  std::shared_ptr<nn::Module> pre0_, pre1_;
  std::vector<std::shared_ptr<nn::Module>> ops_;
  std::vector<bool> identity_;
  std::vector<int> op_index_, inputs_;
};

// DARTS' AuxiliaryHeadCIFAR: ReLU, AvgPool 5x5 stride 3 (count_include_pad = false), conv 1x1
// to 128, BN, ReLU, conv to 768, BN, ReLU, linear.
//
// DARTS sizes it for the 8x8 map of 32x32 inputs (pool to 2x2, then a 2x2 conv to 1x1). Here
// the second conv's kernel is the pooled size, so any map size works and 8x8 is DARTS' head
// exactly: a 7x7 map (28x28 inputs) pools to 1x1 and gets a 1x1 conv; a map smaller than 5x5
// pools with a window the size of the map.
class AuxiliaryHead : public nn::Module {
 public:
  AuxiliaryHead(int64_t C, int64_t classes, int64_t map_size, Rng& rng)
      : nn::Module(detail::cat("AuxiliaryHead(", C, ", ", classes, ", map_size=", map_size, ")")),
        map_size_(map_size) {
    TNAS_CHECK(map_size >= 1, name(), ": map size must be >= 1");
    const int pool = int(std::min<int64_t>(5, map_size));
    const int64_t pooled = (map_size - pool) / 3 + 1;
    features_ = register_module("features", std::make_shared<nn::Sequential>());
    features_->push_back(std::make_shared<nn::ReLU>());
    features_->push_back(std::make_shared<nn::AvgPool2d>(pool, 3, 0, false));
    features_->push_back(std::make_shared<nn::Conv2d>(C, 128, 1, nn::Conv2dConfig{}, rng));
    features_->push_back(std::make_shared<nn::BatchNorm2d>(128));
    features_->push_back(std::make_shared<nn::ReLU>());
    features_->push_back(
        std::make_shared<nn::Conv2d>(128, 768, int(pooled), nn::Conv2dConfig{}, rng));
    features_->push_back(std::make_shared<nn::BatchNorm2d>(768));
    features_->push_back(std::make_shared<nn::ReLU>());
    classifier_ = register_module("classifier", std::make_shared<nn::Linear>(768, classes, rng));
  }
  Tensor forward(const Tensor& x) override {
    TNAS_CHECK(x.rank() == 4 && x.dim(2) == map_size_ && x.dim(3) == map_size_, name(),
               ": input must be [N, C, ", map_size_, ", ", map_size_, "], got ", x.shape());
    return classifier_->forward(flatten(features_->forward(x)));
  }
  int64_t map_size() const { return map_size_; }

 private:
  int64_t map_size_;
  std::shared_ptr<nn::Sequential> features_;
  std::shared_ptr<nn::Linear> classifier_;
};

// DartsNetwork
//
// represents: DARTS' NetworkCIFAR for a DartsGenotype: stem (conv 3x3 to stem_multiplier * C,
//   BN), `cells` DartsInferCells with reduction cells (doubling C) at cells / 3 and
//   2 * cells / 3, an optional AuxiliaryHead after cell 2 * cells / 3, global average pooling
//   and a linear classifier.
// requires: a genotype valid for space::DartsOps (any number of nodes, 2 inputs each); inputs
//   [N, in_channels, H, W]; with the auxiliary head, H = W = image_size in training.
// ensures: forward() returns the logits [N, classes]. In training mode it also computes the
//   auxiliary logits (when configured), kept until the next forward or clear_aux_logits(), and
//   applies drop path with drop_path_prob() to every non-identity op output, drawing the masks
//   from drop_path_rng() (checkpoint its state to resume exactly). In evaluation mode there is
//   neither.
class DartsNetwork : public nn::Module {
 public:
  DartsNetwork(const space::DartsGenotype& genotype, const DartsNetworkConfig& cfg)
      : nn::Module(detail::cat("DartsNetwork(C=", cfg.channels, ", cells=", cfg.cells, ", classes=",
                               cfg.classes, ", auxiliary=", cfg.auxiliary ? "True" : "False", ")")),
        cfg_(cfg),
        genotype_(genotype),
        drop_prob_(cfg.drop_path_prob),
        drop_rng_(cfg.seed ^ 0xD209'0A7Dull) {  // a stream apart from initialisation's
    TNAS_CHECK(cfg.cells >= 1 && cfg.channels >= 1 && cfg.classes >= 2 && cfg.in_channels >= 1 &&
                   cfg.stem_multiplier >= 1 && cfg.image_size >= 1,
               name(),
               ": need cells >= 1, channels >= 1, classes >= 2, in_channels >= 1, stem_multiplier "
               ">= 1 and image_size >= 1; got ",
               "cells ", cfg.cells, ", channels ", cfg.channels, ", classes ", cfg.classes,
               ", in_channels ", cfg.in_channels, ", stem_multiplier ", cfg.stem_multiplier,
               ", image_size ", cfg.image_size);
    set_drop_path_prob(cfg.drop_path_prob);
    TNAS_CHECK(genotype.normal.size() == genotype.reduce.size() && genotype.normal.size() >= 2 &&
                   genotype.normal.size() % 2 == 0,
               name(), ": the genotype's normal and reduce cells must have the same even number ",
               "of entries (2 per node), got ", genotype.normal.size(), " and ",
               genotype.reduce.size(), ": ", genotype.str());
    genotype.validate(cfg.ops.names, int(genotype.normal.size() / 2), 2);

    Rng rng(cfg.seed);
    int64_t C_curr = cfg.stem_multiplier * cfg.channels;
    stem_ = register_module("stem", std::make_shared<nn::Sequential>());
    stem_->push_back(std::make_shared<nn::Conv2d>(cfg.in_channels, C_curr, 3,
                                                  nn::Conv2dConfig{.padding = 1}, rng));
    stem_->push_back(std::make_shared<nn::BatchNorm2d>(C_curr));
    stem_channels_ = C_curr;
    auto list = register_module("cells", std::make_shared<detail::ModuleList>());
    int64_t C_pp = C_curr, C_p = C_curr, map = cfg.image_size, C_aux = 0;
    C_curr = cfg.channels;
    bool reduction_prev = false;
    for (int64_t i = 0; i < cfg.cells; ++i) {
      const bool reduction = i == cfg.cells / 3 || i == 2 * cfg.cells / 3;
      if (reduction) {
        C_curr *= 2;
        map = detail::half_up(map);
      }
      const auto ct = reduction ? space::CellType::reduce : space::CellType::normal;
      auto cell = list->push_back(
          std::make_shared<DartsInferCell>(genotype.cell(ct), genotype.concat(ct), C_pp, C_p,
                                           C_curr, reduction, reduction_prev, rng, cfg.ops));
      cells_.push_back(cell);
      in_channels_.push_back({C_pp, C_p});
      reduction_prev = reduction;
      C_pp = C_p;
      C_p = cell->out_channels();
      if (i == 2 * cfg.cells / 3) {
        C_aux = C_p;
        aux_map_ = map;
      }
    }
    aux_index_ = 2 * cfg.cells / 3;
    if (cfg.auxiliary)
      aux_ = register_module("auxiliary_head",
                             std::make_shared<AuxiliaryHead>(C_aux, cfg.classes, aux_map_, rng));
    classifier_ =
        register_module("classifier", std::make_shared<nn::Linear>(C_p, cfg.classes, rng));
    out_channels_ = C_p;
    to(cfg.dtype);
  }

  Tensor forward(const Tensor& x) override {
    TNAS_CHECK(x.defined() && x.rank() == 4 && x.dim(1) == cfg_.in_channels, name(),
               ": input must be [N, ", cfg_.in_channels, ", H, W], got ",
               x.defined() ? x.shape().str() : "undefined");
    aux_logits_ = Tensor();
    const bool train = is_training();
    const bool aux = aux_ && train;
    if (aux)
      TNAS_CHECK(x.dim(2) == cfg_.image_size && x.dim(3) == cfg_.image_size, name(),
                 ": the auxiliary head was built for ", cfg_.image_size, "x", cfg_.image_size,
                 " inputs (config.image_size), got ", x.shape());
    const double p = train ? drop_prob_ : 0.0;
    Tensor s0 = stem_->forward(x), s1 = s0;
    for (size_t i = 0; i < cells_.size(); ++i) {
      Tensor s2 = cells_[i]->forward_cell(s0, s1, p, drop_rng_);
      s0 = std::move(s1);
      s1 = std::move(s2);
      if (aux && int64_t(i) == aux_index_) aux_logits_ = aux_->forward(s1);
    }
    return classifier_->forward(global_avg_pool(s1));
  }

  // The auxiliary logits of the last training-mode forward (undefined without the head, in
  // evaluation mode, or after clear_aux_logits()). Holding them keeps that forward's graph.
  const Tensor& last_aux_logits() const { return aux_logits_; }
  void clear_aux_logits() { aux_logits_ = Tensor(); }
  bool has_auxiliary() const { return aux_ != nullptr; }

  double drop_path_prob() const { return drop_prob_; }
  void set_drop_path_prob(double p) {
    TNAS_CHECK(p >= 0 && p < 1, name(), ": drop_path_prob must be in [0, 1), got ", p);
    drop_prob_ = p;
  }
  Rng& drop_path_rng() { return drop_rng_; }

  const DartsNetworkConfig& config() const { return cfg_; }
  const space::DartsGenotype& genotype() const { return genotype_; }
  int64_t num_cells() const { return int64_t(cells_.size()); }
  const std::shared_ptr<DartsInferCell>& cell(size_t i) const { return cells_.at(i); }
  // Parameters of the auxiliary head (0 without one): DARTS' reported size excludes them.
  int64_t num_auxiliary_parameters() const { return aux_ ? aux_->num_parameters() : 0; }
  // The spatial size of the map the auxiliary head reads, for image_size inputs.
  int64_t auxiliary_map_size() const { return aux_map_; }

  // MACs of one inference forward of an H x W image (see the convention at the top).
  int64_t flops(int64_t H, int64_t W) const {
    int64_t f = detail::conv_flops(cfg_.in_channels, stem_channels_, 3, H, W);
    for (size_t i = 0; i < cells_.size(); ++i) {
      f += cells_[i]->flops(in_channels_[i].first, in_channels_[i].second, H, W);
      if (cells_[i]->reduction()) H = detail::half_up(H), W = detail::half_up(W);
    }
    return f + out_channels_ * cfg_.classes;
  }
  int64_t flops() const { return flops(cfg_.image_size, cfg_.image_size); }

 private:
  DartsNetworkConfig cfg_;
  space::DartsGenotype genotype_;
  double drop_prob_;
  Rng drop_rng_;
  std::shared_ptr<nn::Sequential> stem_;
  std::vector<std::shared_ptr<DartsInferCell>> cells_;
  std::vector<std::pair<int64_t, int64_t>> in_channels_;  // (C_pp, C_p) of each cell
  std::shared_ptr<AuxiliaryHead> aux_;
  std::shared_ptr<nn::Linear> classifier_;
  int64_t stem_channels_ = 0, out_channels_ = 0, aux_index_ = 0, aux_map_ = 0;
  Tensor aux_logits_;
};

// ---- NAS-Bench-201 ----------------------------------------------------------------------------

struct Nb201NetworkConfig {
  int64_t in_channels = 3;
  int64_t channels = 16;  // C of the first stage (NB201: 16)
  int64_t cells = 5;      // cells per stage (NB201: N = 5)
  int64_t classes = 10;
  uint64_t seed = 0;
  DType dtype = DType::f32;
};

// NAS-Bench-201's residual reduction block (ResNetBasicblock with stride 2): conv_a
// (ReLUConvBN 3x3 stride 2), conv_b (ReLUConvBN 3x3), plus a shortcut AvgPool 2x2 stride 2 ->
// conv 1x1. The same block as search/supernet.hpp's, which train/ cannot include (search/
// builds on train/).
// requires: an input with even H and W (the two paths then agree on H / 2 x W / 2).
class ResidualReduction : public nn::Module {
 public:
  ResidualReduction(int64_t C_in, int64_t C_out, Rng& rng)
      : nn::Module(detail::cat("ResNetBasicblock(", C_in, ", ", C_out, ", stride=2)")),
        C_in_(C_in),
        C_out_(C_out) {
    a_ = register_module("conv_a",
                         std::make_shared<nn::ReLUConvBN>(C_in, C_out, 3, 2, 1, true, rng));
    b_ = register_module("conv_b",
                         std::make_shared<nn::ReLUConvBN>(C_out, C_out, 3, 1, 1, true, rng));
    down_ = register_module("downsample", std::make_shared<nn::Sequential>());
    down_->push_back(std::make_shared<nn::AvgPool2d>(2, 2, 0));
    down_->push_back(std::make_shared<nn::Conv2d>(C_in, C_out, 1, nn::Conv2dConfig{}, rng));
  }
  Tensor forward(const Tensor& x) override {
    TNAS_CHECK(x.rank() == 4 && x.dim(2) % 2 == 0 && x.dim(3) % 2 == 0, name(),
               ": input must be [N, C, H, W] with even H and W (the shortcut's 2x2 pooling and ",
               "the stride-2 conv must agree on the output size), got ", x.shape());
    return add(b_->forward(a_->forward(x)), down_->forward(x));
  }
  // MACs for an H x W input.
  int64_t flops(int64_t H, int64_t W) const {
    const int64_t h = H / 2, w = W / 2;
    return detail::conv_flops(C_in_, C_out_, 3, h, w) +
           detail::conv_flops(C_out_, C_out_, 3, h, w) + C_in_ * 4 * h * w +
           detail::conv_flops(C_in_, C_out_, 1, h, w);
  }

 private:
  int64_t C_in_, C_out_;
  std::shared_ptr<nn::Module> a_, b_;
  std::shared_ptr<nn::Sequential> down_;
};

// One NAS-Bench-201 cell with a fixed op on each of its 6 edges (NB201's InferCell).
//
// represents: node 0 is the input; node i = sum over j < i of op_{i<-j}(node j); the output is
//   the last node. Every edge's module is registered as "layers.<e>" in NB201's edge order
//   (`none` as a parameter-free Zero, so the keys line up with the reference), but `none` edges
//   are skipped in forward; a node whose inputs are all `none` is zeros.
// requires: a genotype whose ops are in space::Nb201Ops.
class Nb201InferCell : public nn::Module {
 public:
  Nb201InferCell(const space::Nb201Genotype& g, int64_t C, Rng& rng)
      : nn::Module(detail::cat("Nb201InferCell(", C, ", '", g.str(), "')")), C_(C) {
    g.validate(space::Nb201Ops::names);
    auto list = register_module("layers", std::make_shared<detail::ModuleList>());
    for (int e = 0; e < space::Nb201Genotype::edges; ++e) {
      ops_.push_back(list->push_back(space::Nb201Ops::build(g.ops[e], C, 1, true, rng)));
      op_index_[e] = space::Nb201Ops::index_of(g.ops[e]);
    }
  }
  Tensor forward(const Tensor& x) override {
    std::vector<Tensor> nodes{x};
    int e = 0;
    for (int i = 1; i < space::Nb201::nodes; ++i) {
      Tensor s;
      for (int j = 0; j < i; ++j, ++e) {
        if (op_index_[e] == space::Nb201Ops::none_index) continue;
        Tensor h = ops_[size_t(e)]->forward(nodes[size_t(j)]);
        s = s.defined() ? add(s, h) : h;
      }
      nodes.push_back(s.defined() ? s : zeros_like(x));
    }
    return nodes.back();
  }
  // MACs for an H x W input.
  int64_t flops(int64_t H, int64_t W) const {
    int64_t f = 0;
    for (int e = 0; e < space::Nb201Genotype::edges; ++e)
      f += space::Nb201Ops::flops(op_index_[e], C_, H, W, 1);
    return f;
  }

 private:
  int64_t C_;
  std::vector<std::shared_ptr<nn::Module>> ops_;
  std::array<int, space::Nb201Genotype::edges> op_index_{};
};

// Nb201Network
//
// represents: NAS-Bench-201's TinyNetwork: stem (conv 3x3 to C, BN), N cells at C, a
//   ResidualReduction to 2C, N cells at 2C, a ResidualReduction to 4C, N cells at 4C, lastact
//   (BN, ReLU), global average pooling, a linear classifier. `cells` is numbered as in the
//   reference: cells.0 .. cells.N-1, cells.N the first reduction block, and so on.
// requires: inputs [N, in_channels, H, W] with H and W divisible by 4.
// ensures: forward() returns the logits [N, classes]. At C = 16, N = 5, 10 classes the
//   parameter count is NAS-Bench-201's (1,531,546 for the all-nor_conv_3x3 cell).
class Nb201Network : public nn::Module {
 public:
  Nb201Network(const space::Nb201Genotype& genotype, const Nb201NetworkConfig& cfg)
      : nn::Module(detail::cat("Nb201Network(C=", cfg.channels, ", N=", cfg.cells,
                               ", classes=", cfg.classes, ", '", genotype.str(), "')")),
        cfg_(cfg),
        genotype_(genotype) {
    TNAS_CHECK(cfg.cells >= 1 && cfg.channels >= 1 && cfg.classes >= 2 && cfg.in_channels >= 1,
               name(), ": need cells >= 1 per stage, channels >= 1, classes >= 2, in_channels ",
               ">= 1; got cells ", cfg.cells, ", channels ", cfg.channels, ", classes ",
               cfg.classes, ", in_channels ", cfg.in_channels);
    genotype.validate(space::Nb201Ops::names);
    Rng rng(cfg.seed);
    int64_t C = cfg.channels;
    stem_ = register_module("stem", std::make_shared<nn::Sequential>());
    stem_->push_back(
        std::make_shared<nn::Conv2d>(cfg.in_channels, C, 3, nn::Conv2dConfig{.padding = 1}, rng));
    stem_->push_back(std::make_shared<nn::BatchNorm2d>(C));
    auto list = register_module("cells", std::make_shared<detail::ModuleList>());
    for (int stage = 0; stage < 3; ++stage) {
      if (stage > 0) {
        layers_.push_back(
            {list->push_back(std::make_shared<ResidualReduction>(C, 2 * C, rng)), nullptr});
        C *= 2;
      }
      for (int64_t i = 0; i < cfg.cells; ++i)
        layers_.push_back(
            {nullptr, list->push_back(std::make_shared<Nb201InferCell>(genotype, C, rng))});
    }
    lastact_ = register_module("lastact", std::make_shared<nn::Sequential>());
    lastact_->push_back(std::make_shared<nn::BatchNorm2d>(C));
    lastact_->push_back(std::make_shared<nn::ReLU>());
    classifier_ = register_module("classifier", std::make_shared<nn::Linear>(C, cfg.classes, rng));
    out_channels_ = C;
    to(cfg.dtype);
  }

  Tensor forward(const Tensor& x) override {
    TNAS_CHECK(x.defined() && x.rank() == 4 && x.dim(1) == cfg_.in_channels, name(),
               ": input must be [N, ", cfg_.in_channels, ", H, W], got ",
               x.defined() ? x.shape().str() : "undefined");
    Tensor h = stem_->forward(x);
    for (auto& [block, cell] : layers_) h = block ? block->forward(h) : cell->forward(h);
    return classifier_->forward(global_avg_pool(lastact_->forward(h)));
  }

  const Nb201NetworkConfig& config() const { return cfg_; }
  const space::Nb201Genotype& genotype() const { return genotype_; }

  // MACs of one inference forward of an H x W image (see the convention at the top).
  int64_t flops(int64_t H, int64_t W) const {
    int64_t f = detail::conv_flops(cfg_.in_channels, cfg_.channels, 3, H, W);
    for (auto& [block, cell] : layers_) {
      if (block) {
        f += block->flops(H, W);
        H /= 2, W /= 2;
      } else {
        f += cell->flops(H, W);
      }
    }
    return f + out_channels_ * cfg_.classes;
  }

 private:
  Nb201NetworkConfig cfg_;
  space::Nb201Genotype genotype_;
  std::shared_ptr<nn::Sequential> stem_, lastact_;
  std::vector<std::pair<std::shared_ptr<ResidualReduction>, std::shared_ptr<Nb201InferCell>>>
      layers_;
  std::shared_ptr<nn::Linear> classifier_;
  int64_t out_channels_ = 0;
};

}  // namespace tnas::train
