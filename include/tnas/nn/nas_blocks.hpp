// The candidate operations of the DARTS family, as modules, built layer for layer like the
// reference `operations.py` (github.com/quark0/darts). Each keeps its layers in a Sequential
// named "op" (FactorizedReduce: relu, conv_1, conv_2, bn), so parameter names match the
// reference's state dicts ("op.1.weight", "op.3.running_mean", ...).
//
// Output shapes: with padding = dilation * (k - 1) / 2, as every DARTS op uses, a stride-s op
// maps H to ceil(H / s), the same as Zero(s), the pools and FactorizedReduce, so every candidate
// on an edge agrees even on odd sizes such as 7x7.
#pragma once

#include <memory>

#include "tnas/nn/layers.hpp"

namespace tnas::nn {

// A block whose layers are one Sequential registered as "op" (ReLUConvBN, DilConv, SepConv):
// forward, the ReLU-first protocol and op() come from that Sequential.
class OpBlock : public Module {
 public:
  explicit OpBlock(std::string name) : Module(std::move(name)) {
    op_ = register_module("op", std::make_shared<Sequential>());
  }
  Tensor forward(const Tensor& x) override { return op_->forward(x); }
  bool begins_with_relu() const override { return op_->begins_with_relu(); }
  Tensor forward_after_relu(const Tensor& rx) override { return op_->forward_after_relu(rx); }
  const std::shared_ptr<Sequential>& op() const { return op_; }

 protected:
  std::shared_ptr<Sequential> op_;
};

// ReLU -> Conv(k, stride, pad) -> BN: the preprocessing of cell inputs.
class ReLUConvBN : public OpBlock {
 public:
  ReLUConvBN(int64_t C_in, int64_t C_out, int kernel, int stride, int padding, bool affine,
             Rng& rng)
      : OpBlock(detail::cat("ReLUConvBN(", C_in, ", ", C_out, ", kernel_size=", kernel,
                            ", stride=", stride, ", padding=", padding,
                            ", affine=", detail::py_bool(affine), ")")) {
    op_->push_back(std::make_shared<ReLU>());
    op_->push_back(std::make_shared<Conv2d>(
        C_in, C_out, kernel, Conv2dConfig{.stride = stride, .padding = padding}, rng));
    op_->push_back(std::make_shared<BatchNorm2d>(C_out, BatchNorm2dConfig{.affine = affine}));
  }
};

// ReLU -> depthwise conv (k, stride, pad, dilation) -> pointwise 1x1 conv -> BN: `dil_conv_*`.
class DilConv : public OpBlock {
 public:
  DilConv(int64_t C_in, int64_t C_out, int kernel, int stride, int padding, int dilation,
          bool affine, Rng& rng)
      : OpBlock(detail::cat("DilConv(", C_in, ", ", C_out, ", kernel_size=", kernel,
                            ", stride=", stride, ", padding=", padding, ", dilation=", dilation,
                            ", affine=", detail::py_bool(affine), ")")) {
    append(*op_, C_in, C_out, kernel, stride, padding, dilation, affine, rng);
  }

  // Appends the four layers of one DilConv to `seq` (SepConv is two of these in one Sequential,
  // as in the reference, so its layers are numbered 0..7).
  static void append(Sequential& seq, int64_t C_in, int64_t C_out, int kernel, int stride,
                     int padding, int dilation, bool affine, Rng& rng) {
    seq.push_back(std::make_shared<ReLU>());
    seq.push_back(std::make_shared<Conv2d>(C_in, C_in, kernel,
                                           Conv2dConfig{.stride = stride,
                                                        .padding = padding,
                                                        .dilation = dilation,
                                                        .groups = static_cast<int>(C_in)},
                                           rng));
    seq.push_back(std::make_shared<Conv2d>(C_in, C_out, 1, Conv2dConfig{}, rng));
    seq.push_back(std::make_shared<BatchNorm2d>(C_out, BatchNorm2dConfig{.affine = affine}));
  }
};

// Two separable convolutions in a row, `sep_conv_*`: the first DilConv(C_in -> C_in, stride)
// with dilation 1, the second DilConv(C_in -> C_out, stride 1).
class SepConv : public OpBlock {
 public:
  SepConv(int64_t C_in, int64_t C_out, int kernel, int stride, int padding, bool affine, Rng& rng)
      : OpBlock(detail::cat("SepConv(", C_in, ", ", C_out, ", kernel_size=", kernel,
                            ", stride=", stride, ", padding=", padding,
                            ", affine=", detail::py_bool(affine), ")")) {
    DilConv::append(*op_, C_in, C_in, kernel, stride, padding, 1, affine, rng);
    DilConv::append(*op_, C_in, C_out, kernel, 1, padding, 1, affine, rng);
  }
};

// Halves the spatial size without losing every other pixel: ReLU, then two 1x1 stride-2 convs
// with C_out / 2 channels each, the second on x[:, :, 1:, 1:] (the other phase of the grid),
// concatenated along channels, then BN. Used as `skip_connect` at stride 2 and to match the
// sizes of a reduction cell's inputs.
//
// On odd H or W the reference's torch.cat fails (the shifted branch is one smaller). We give
// the shifted branch a zero row / column at the end instead, as NAS-Bench-201's version does
// (it zero-pads x before the shift): the same result on even sizes, ceil(H / 2) on odd ones.
class FactorizedReduce : public Module {
 public:
  FactorizedReduce(int64_t C_in, int64_t C_out, bool affine, Rng& rng)
      : Module(detail::cat("FactorizedReduce(", C_in, ", ", C_out,
                           ", affine=", detail::py_bool(affine), ")")),
        C_in_(C_in) {
    TNAS_CHECK(C_out >= 2 && C_out % 2 == 0, name(), ": C_out must be even (each of the two ",
               "branches gets C_out / 2 channels), got ", C_out);
    relu_ = register_module("relu", std::make_shared<ReLU>());
    conv_1_ = register_module(
        "conv_1", std::make_shared<Conv2d>(C_in, C_out / 2, 1, Conv2dConfig{.stride = 2}, rng));
    conv_2_ = register_module(
        "conv_2", std::make_shared<Conv2d>(C_in, C_out / 2, 1, Conv2dConfig{.stride = 2}, rng));
    bn_ = register_module(
        "bn", std::make_shared<BatchNorm2d>(C_out, BatchNorm2dConfig{.affine = affine}));
  }
  Tensor forward(const Tensor& x0) override {
    detail::require_nchw(*this, x0, C_in_);
    return reduce(x0, /*apply_relu=*/true);
  }
  bool begins_with_relu() const override { return true; }
  Tensor forward_after_relu(const Tensor& x) override {
    detail::require_nchw(*this, x, C_in_);
    return reduce(x, /*apply_relu=*/false);
  }

 private:
  // The ReLU runs inside the convolutions (relu_conv2d) when apply_relu, so it is not held.
  Tensor reduce(const Tensor& x, bool apply_relu) {
    const int64_t H = x.dim(2), W = x.dim(3);
    TNAS_CHECK(H >= 2 && W >= 2, name(), ": input ", x.shape(),
               " is too small to reduce (needs H, W >= 2)");
    Tensor shifted = slice(slice(x, 2, 1, H), 3, 1, W);
    Tensor a = apply_relu ? conv_1_->forward_relu(x) : conv_1_->forward(x);
    Tensor b = apply_relu ? conv_2_->forward_relu(shifted) : conv_2_->forward(shifted);
    if (b.dim(2) < a.dim(2))
      b = concat({b, Tensor::zeros({b.dim(0), b.dim(1), a.dim(2) - b.dim(2), b.dim(3)}, b.dtype(),
                                   b.device())},
                 2);
    if (b.dim(3) < a.dim(3))
      b = concat({b, Tensor::zeros({b.dim(0), b.dim(1), b.dim(2), a.dim(3) - b.dim(3)}, b.dtype(),
                                   b.device())},
                 3);
    return bn_->forward(concat({a, b}, 1));
  }

  int64_t C_in_;
  std::shared_ptr<ReLU> relu_;
  std::shared_ptr<Conv2d> conv_1_, conv_2_;
  std::shared_ptr<BatchNorm2d> bn_;
};

}  // namespace tnas::nn
