// Binary layers and the binary cell operations of BATS-style search spaces.
//
// BinaryConv2d: sign(x) convolved with real weights (BATS' search and the first training phase)
//   or with XNOR-Net-binarised weights sgn(w) * mean|w|_k (set_binary_weights(true): the fully
//   binary network). In evaluation mode without autograd, a binary-weight layer runs the XNOR /
//   popcount kernel (xnor_conv2d) and multiplies by the per-channel scale afterwards; in
//   training it runs the float form (binary_conv2d) so gradients flow through the
//   straight-through estimators.
// BinConvBN: sign -> BinaryConv2d -> BN, with a real-valued identity shortcut when the shape
//   allows (stride 1, C_in == C_out), as Bi-Real Net does: without it a stack of binary layers
//   loses the real-valued signal and trains poorly.
// BinSepConv / BinDilConv: the binary versions of DARTS' separable and dilated convolutions.
//   A depthwise binary conv sums 9 or 25 one-bit products per output, far too coarse, so, as in
//   BATS, the spatial conv is grouped (kBinGroupWidth channels per group) instead of depthwise,
//   followed by a binary 1x1.
// BinReduce: a binary-friendly stride-2 reduction (skip connection of a reduction cell, and the
//   preprocessing after one): 3x3 average pooling at stride 2 keeps the real-valued information
//   that a strided binary conv throws away, then a binary 1x1 conv sets the channel count.
#pragma once

#include <memory>

#include "tnas/nn/layers.hpp"
#include "tnas/ops/binary.hpp"
#include "tnas/ops/pool.hpp"

namespace tnas::nn {

// Channels per group of the binary spatial convolutions (all channels when fewer).
inline constexpr int64_t kBinGroupWidth = 16;
constexpr int64_t bin_groups(int64_t C) {
  return C % kBinGroupWidth == 0 ? C / kBinGroupWidth : 1;
}

class BinaryConv2d : public Module {
 public:
  BinaryConv2d(int64_t in_channels, int64_t out_channels, int kernel, const Conv2dConfig& cfg,
               Rng& rng)
      : Module(detail::cat("BinaryConv2d(", in_channels, ", ", out_channels, ", kernel_size=",
                           kernel, ", stride=", cfg.stride, ", padding=", cfg.padding,
                           cfg.dilation != 1 ? detail::cat(", dilation=", cfg.dilation) : "",
                           cfg.groups != 1 ? detail::cat(", groups=", cfg.groups) : "", ")")),
        in_(in_channels),
        out_(out_channels),
        opts_{cfg.stride, cfg.padding, cfg.dilation, cfg.groups} {
    TNAS_CHECK(in_channels >= 1 && out_channels >= 1 && kernel >= 1 && !cfg.bias, name(),
               ": channels and kernel size must be positive, and a binary conv has no bias");
    TNAS_CHECK(cfg.groups >= 1 && in_channels % cfg.groups == 0 && out_channels % cfg.groups == 0,
               name(), ": groups ", cfg.groups, " must divide in_channels ", in_channels,
               " and out_channels ", out_channels);
    const double bound = 1.0 / std::sqrt(double(in_channels / cfg.groups * kernel * kernel));
    weight_ = register_parameter(
        "weight", Tensor::uniform({out_channels, in_channels / cfg.groups, kernel, kernel}, rng,
                                  -bound, bound));
  }
  Tensor forward(const Tensor& x) override {
    detail::require_nchw(*this, x, in_);
    if (binary_weights_ && !is_training() && !grad_enabled() && x.dtype() == DType::f32)
      return forward_xnor(x);
    return binary_conv2d(x, weight_, opts_, {.binary_weights = binary_weights_});
  }
  // The inference path: xnor_conv2d(x, w) * mean|w|_k (bit for bit the same integers as the
  // float path before the scale).
  Tensor forward_xnor(const Tensor& x) const {
    NoGrad ng;
    Tensor y = xnor_conv2d(x, weight_, opts_);
    return mul(y, reshape(weight_scale(weight_), {1, out_, 1, 1}));
  }
  void set_binary_weights(bool on) { binary_weights_ = on; }
  bool binary_weights() const { return binary_weights_; }
  const Tensor& weight() const { return weight_; }
  const Conv2dOptions& options() const { return opts_; }
  // Bytes of the weights when stored as bits (+ one float scale per output channel).
  int64_t binary_weight_bytes() const {
    return (weight_.numel() + 7) / 8 + out_ * int64_t(sizeof(float));
  }

 private:
  int64_t in_, out_;
  Conv2dOptions opts_;
  Tensor weight_;
  bool binary_weights_ = false;
};

// sign -> binary conv -> BN (+ x when stride 1 and C_in == C_out).
class BinConvBN : public Module {
 public:
  BinConvBN(int64_t C_in, int64_t C_out, int kernel, int stride, int padding, int dilation,
            int groups, bool affine, Rng& rng)
      : Module(detail::cat("BinConvBN(", C_in, ", ", C_out, ", kernel_size=", kernel,
                           ", stride=", stride, ", padding=", padding, ", dilation=", dilation,
                           ", groups=", groups, ")")),
        shortcut_(stride == 1 && C_in == C_out) {
    conv_ = register_module(
        "conv",
        std::make_shared<BinaryConv2d>(
            C_in, C_out, kernel,
            Conv2dConfig{
                .stride = stride, .padding = padding, .dilation = dilation, .groups = groups},
            rng));
    bn_ = register_module(
        "bn", std::make_shared<BatchNorm2d>(C_out, BatchNorm2dConfig{.affine = affine}));
  }
  Tensor forward(const Tensor& x) override {
    Tensor y = bn_->forward(conv_->forward(x));
    return shortcut_ ? add(y, x) : y;
  }

 private:
  bool shortcut_;
  std::shared_ptr<BinaryConv2d> conv_;
  std::shared_ptr<BatchNorm2d> bn_;
};

// bin_sep_conv_KxK: grouped K x K binary conv at `stride`, then a binary 1x1, each with BN.
class BinSepConv : public Module {
 public:
  BinSepConv(int64_t C_in, int64_t C_out, int kernel, int stride, int dilation, bool affine,
             Rng& rng)
      : Module(detail::cat(dilation == 1 ? "BinSepConv(" : "BinDilConv(", C_in, ", ", C_out,
                           ", kernel_size=", kernel, ", stride=", stride, ", dilation=", dilation,
                           ")")) {
    spatial_ = register_module(
        "spatial",
        std::make_shared<BinConvBN>(C_in, C_in, kernel, stride, dilation * (kernel - 1) / 2,
                                    dilation, int(bin_groups(C_in)), affine, rng));
    point_ = register_module("point",
                             std::make_shared<BinConvBN>(C_in, C_out, 1, 1, 0, 1, 1, affine, rng));
  }
  Tensor forward(const Tensor& x) override { return point_->forward(spatial_->forward(x)); }

 private:
  std::shared_ptr<BinConvBN> spatial_, point_;
};

// Binary-friendly stride-2 reduction: 3x3 average pool at stride 2 (ceil(H / 2) x ceil(W / 2),
// as every reduction-cell op), then sign -> binary 1x1 conv -> BN.
class BinReduce : public Module {
 public:
  BinReduce(int64_t C_in, int64_t C_out, bool affine, Rng& rng)
      : Module(detail::cat("BinReduce(", C_in, ", ", C_out, ")")) {
    conv_ = register_module("conv",
                            std::make_shared<BinConvBN>(C_in, C_out, 1, 1, 0, 1, 1, affine, rng));
  }
  Tensor forward(const Tensor& x) override {
    return conv_->forward(
        avg_pool2d(x, {.kernel = 3, .stride = 2, .padding = 1, .count_include_pad = false}));
  }

 private:
  std::shared_ptr<BinConvBN> conv_;
};

// Switches every BinaryConv2d under m to binarised weights (or back to real ones); returns
// how many it switched.
inline int set_binary_weights(Module& m, bool on) {
  int n = 0;
  if (auto* b = dynamic_cast<BinaryConv2d*>(&m)) b->set_binary_weights(on), ++n;
  for (auto& [name, c] : m.named_modules()) {
    (void)name;
    if (auto* b = dynamic_cast<BinaryConv2d*>(c.get())) b->set_binary_weights(on), ++n;
  }
  return n;
}

// Weight memory of a network whose BinaryConv2d layers store bits (plus a scale per output
// channel) and whose other parameters stay float32, and the same network all in float32.
struct WeightMemory {
  int64_t binary_bytes = 0, float_bytes = 0;
  int64_t binary_params = 0, real_params = 0;
};
inline WeightMemory weight_memory(const Module& m) {
  WeightMemory r;
  int64_t bin_numel = 0;
  for (auto& [name, c] : m.named_modules()) {
    (void)name;
    if (auto* b = dynamic_cast<const BinaryConv2d*>(c.get())) {
      r.binary_bytes += b->binary_weight_bytes();
      bin_numel += b->weight().numel();
    }
  }
  const int64_t total = m.num_parameters();
  r.binary_params = bin_numel;
  r.real_params = total - bin_numel;
  r.binary_bytes += r.real_params * int64_t(sizeof(float));
  r.float_bytes = total * int64_t(sizeof(float));
  return r;
}

}  // namespace tnas::nn
