// The standard layers as modules: Conv2d, BatchNorm2d, Linear, ReLU, Identity, Zero, pooling,
// Dropout, Flatten, GlobalAvgPool and Sequential.
//
// Initialisation is PyTorch's default, drawn from the Rng passed in, so one seed gives one
// network: conv and linear weights ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with
// a = sqrt(5)), biases the same, BatchNorm gamma = 1, beta = 0, running mean 0 and variance 1.
// Tensors are drawn in registration order (weight, then bias), each in row-major order.
// Parameter and buffer names are PyTorch's ("weight", "bias", "running_mean", "running_var").
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tnas/nn/module.hpp"
#include "tnas/ops/conv.hpp"
#include "tnas/ops/elementwise.hpp"
#include "tnas/ops/linear.hpp"
#include "tnas/ops/norm.hpp"
#include "tnas/ops/pool.hpp"
#include "tnas/ops/shape.hpp"

namespace tnas::nn {

namespace detail {
using tnas::detail::cat;

// Checks that x is [N, C, H, W] with the channel count a layer was built for.
inline void require_nchw(const Module& m, const Tensor& x, int64_t channels) {
  TNAS_CHECK(x.defined(), m.name(), ": undefined input");
  TNAS_CHECK(x.rank() == 4, m.name(), ": input must be [N, C, H, W], got shape ", x.shape());
  TNAS_CHECK(channels < 0 || x.dim(1) == channels, m.name(), ": input ", x.shape(), " has ",
             x.dim(1), " channels, expected ", channels);
}
inline const char* py_bool(bool b) {
  return b ? "True" : "False";
}
}  // namespace detail

// ---- Conv2d ---------------------------------------------------------------------------------

struct Conv2dConfig {
  int stride = 1;
  int padding = 0;
  int dilation = 1;
  int groups = 1;
  bool bias = false;  // NAS cells follow every conv with BatchNorm, which makes a bias redundant
};

// weight [out, in / groups, k, k], bias [out] when cfg.bias. final, as ReLU: Sequential runs
// some patterns of the two as one op (Sequential::forward), which a subclass's forward would miss.
class Conv2d final : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int kernel, const Conv2dConfig& cfg, Rng& rng)
      : Module(detail::cat("Conv2d(", in_channels, ", ", out_channels, ", kernel_size=", kernel,
                           ", stride=", cfg.stride, ", padding=", cfg.padding,
                           cfg.dilation != 1 ? detail::cat(", dilation=", cfg.dilation) : "",
                           cfg.groups != 1 ? detail::cat(", groups=", cfg.groups) : "",
                           ", bias=", detail::py_bool(cfg.bias), ")")),
        in_(in_channels),
        out_(out_channels),
        kernel_(kernel),
        cfg_(cfg) {
    TNAS_CHECK(in_channels >= 1 && out_channels >= 1 && kernel >= 1, name(),
               ": channels and kernel size must be positive");
    TNAS_CHECK(cfg.groups >= 1 && in_channels % cfg.groups == 0 && out_channels % cfg.groups == 0,
               name(), ": groups ", cfg.groups, " must divide in_channels ", in_channels,
               " and out_channels ", out_channels);
    const double bound = 1.0 / std::sqrt(double(in_channels / cfg.groups * kernel * kernel));
    weight_ = register_parameter(
        "weight", Tensor::uniform({out_channels, in_channels / cfg.groups, kernel, kernel}, rng,
                                  -bound, bound));
    if (cfg.bias)
      bias_ = register_parameter("bias", Tensor::uniform({out_channels}, rng, -bound, bound));
  }
  Tensor forward(const Tensor& x) override {
    detail::require_nchw(*this, x, in_);
    return conv2d(x, weight_, {cfg_.stride, cfg_.padding, cfg_.dilation, cfg_.groups}, bias_);
  }
  // forward(relu(x)), keeping x rather than relu(x) for the backward (ops::relu_conv2d).
  Tensor forward_relu(const Tensor& x) {
    detail::require_nchw(*this, x, in_);
    return relu_conv2d(x, weight_, {cfg_.stride, cfg_.padding, cfg_.dilation, cfg_.groups}, bias_);
  }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }  // undefined without cfg.bias
  int64_t in_channels() const { return in_; }
  int64_t out_channels() const { return out_; }
  int kernel_size() const { return kernel_; }
  const Conv2dConfig& config() const { return cfg_; }

 private:
  int64_t in_, out_;
  int kernel_;
  Conv2dConfig cfg_;
  Tensor weight_, bias_;
};

// ---- BatchNorm2d ----------------------------------------------------------------------------

struct BatchNorm2dConfig {
  bool affine = true;  // learn gamma/beta; DARTS' search phase turns this off
  double momentum = 0.1;
  double eps = 1e-5;
};

// Normalises with batch statistics (and updates the running ones) in training mode, with the
// running statistics in evaluation mode.
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t channels, const BatchNorm2dConfig& cfg = {})
      : Module(detail::cat("BatchNorm2d(", channels, ", eps=", cfg.eps, ", momentum=", cfg.momentum,
                           ", affine=", detail::py_bool(cfg.affine), ")")),
        channels_(channels),
        cfg_(cfg) {
    TNAS_CHECK(channels >= 1, name(), ": channels must be positive");
    if (cfg.affine) {
      weight_ = register_parameter("weight", Tensor::ones({channels}));
      bias_ = register_parameter("bias", Tensor::zeros({channels}));
    }
    running_mean_ = register_buffer("running_mean", Tensor::zeros({channels}));
    running_var_ = register_buffer("running_var", Tensor::ones({channels}));
  }
  Tensor forward(const Tensor& x) override {
    detail::require_nchw(*this, x, channels_);
    return batch_norm(x, weight_, bias_, running_mean_, running_var_,
                      {is_training(), cfg_.momentum, cfg_.eps});
  }
  const Tensor& weight() const { return weight_; }  // undefined without affine
  const Tensor& bias() const { return bias_; }
  const Tensor& running_mean() const { return running_mean_; }
  const Tensor& running_var() const { return running_var_; }
  int64_t channels() const { return channels_; }

 private:
  int64_t channels_;
  BatchNorm2dConfig cfg_;
  Tensor weight_, bias_, running_mean_, running_var_;
};

// ---- Linear ---------------------------------------------------------------------------------

// y = x W^T + b with W [out, in], b [out]; x is [N, in].
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias, Rng& rng)
      : Module(detail::cat("Linear(in_features=", in_features, ", out_features=", out_features,
                           ", bias=", detail::py_bool(bias), ")")),
        in_(in_features),
        out_(out_features) {
    TNAS_CHECK(in_features >= 1 && out_features >= 1, name(), ": features must be positive");
    const double bound = 1.0 / std::sqrt(double(in_features));
    weight_ = register_parameter("weight",
                                 Tensor::uniform({out_features, in_features}, rng, -bound, bound));
    if (bias)
      bias_ = register_parameter("bias", Tensor::uniform({out_features}, rng, -bound, bound));
  }
  Linear(int64_t in_features, int64_t out_features, Rng& rng)
      : Linear(in_features, out_features, true, rng) {}
  Tensor forward(const Tensor& x) override {
    TNAS_CHECK(x.defined() && x.rank() == 2 && x.dim(1) == in_, name(), ": input must be [N, ", in_,
               "], got shape ", x.defined() ? x.shape().str() : "undefined");
    return linear(x, weight_, bias_);
  }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  int64_t in_, out_;
  Tensor weight_, bias_;
};

// ---- parameter-free layers ------------------------------------------------------------------

class ReLU final : public Module {
 public:
  ReLU() : Module("ReLU()") {}
  Tensor forward(const Tensor& x) override { return relu(x); }
};

// The NAS `skip_connect` op at stride 1.
class Identity : public Module {
 public:
  Identity() : Module("Identity()") {}
  Tensor forward(const Tensor& x) override { return x; }
};

// The NAS `none` op: zeros of the shape a stride-s 3x3 conv with padding 1 would give,
// [N, C, ceil(H / s), ceil(W / s)], the same as DARTS' x[:, :, ::s, ::s].mul(0.). The result is
// connected to nothing, so no gradient flows through the edge (DARTS' would be all zeros).
class Zero : public Module {
 public:
  explicit Zero(int stride = 1)
      : Module(detail::cat("Zero(stride=", stride, ")")), stride_(stride) {
    TNAS_CHECK(stride >= 1, name(), ": stride must be >= 1");
  }
  Tensor forward(const Tensor& x) override {
    detail::require_nchw(*this, x, -1);
    const int64_t s = stride_;
    return Tensor::zeros({x.dim(0), x.dim(1), (x.dim(2) + s - 1) / s, (x.dim(3) + s - 1) / s},
                         x.dtype(), x.device());
  }
  int stride() const { return stride_; }

 private:
  int stride_;
};

class MaxPool2d : public Module {
 public:
  MaxPool2d(int kernel, int stride, int padding)
      : Module(detail::cat("MaxPool2d(kernel_size=", kernel, ", stride=", stride,
                           ", padding=", padding, ")")),
        opt_{kernel, stride, padding, false} {}
  Tensor forward(const Tensor& x) override {
    detail::require_nchw(*this, x, -1);
    return max_pool2d(x, opt_);
  }

 private:
  Pool2dOptions opt_;
};

// count_include_pad = false divides each window by its in-bounds count, as DARTS does.
class AvgPool2d : public Module {
 public:
  AvgPool2d(int kernel, int stride, int padding, bool count_include_pad = false)
      : Module(detail::cat("AvgPool2d(kernel_size=", kernel, ", stride=", stride,
                           ", padding=", padding,
                           ", count_include_pad=", detail::py_bool(count_include_pad), ")")),
        opt_{kernel, stride, padding, count_include_pad} {}
  Tensor forward(const Tensor& x) override {
    detail::require_nchw(*this, x, -1);
    return avg_pool2d(x, opt_);
  }

 private:
  Pool2dOptions opt_;
};

// Inverted dropout in training mode, the identity in evaluation mode. Draws its masks from the
// Rng it was given, which must outlive it: sharing the trainer's generator keeps a run
// reproducible and its checkpointed Rng state covers dropout too.
class Dropout : public Module {
 public:
  explicit Dropout(double p, Rng& rng = default_rng())
      : Module(detail::cat("Dropout(p=", p, ")")), p_(p), rng_(&rng) {
    TNAS_CHECK(p >= 0 && p < 1, name(), ": p must be in [0, 1)");
  }
  Tensor forward(const Tensor& x) override { return dropout(x, p_, is_training(), *rng_); }
  double p() const { return p_; }

 private:
  double p_;
  Rng* rng_;
};

// [N, ...] -> [N, rest].
class Flatten : public Module {
 public:
  Flatten() : Module("Flatten()") {}
  Tensor forward(const Tensor& x) override { return flatten(x); }
};

// [N, C, H, W] -> [N, C] (the mean of each feature map).
class GlobalAvgPool : public Module {
 public:
  GlobalAvgPool() : Module("GlobalAvgPool()") {}
  Tensor forward(const Tensor& x) override {
    detail::require_nchw(*this, x, -1);
    return global_avg_pool(x);
  }
};

// ---- Sequential -----------------------------------------------------------------------------

// Whether Sequential runs a depthwise Conv2d followed by a pointwise one as one
// separable_conv2d, which recomputes the depthwise output in the backward instead of holding it
// from the forward (see Sequential::forward). On by default; the setting is per thread and
// applies to the forwards run while it holds. Off trades that memory (about 40% of a DARTS
// search step's) for one depthwise forward per pair fewer in each backward.
inline bool& recompute_depthwise_flag() {
  thread_local bool on = true;
  return on;
}
class RecomputeDepthwise {
 public:
  explicit RecomputeDepthwise(bool on) : prev_(recompute_depthwise_flag()) {
    recompute_depthwise_flag() = on;
  }
  ~RecomputeDepthwise() { recompute_depthwise_flag() = prev_; }
  RecomputeDepthwise(const RecomputeDepthwise&) = delete;
  RecomputeDepthwise& operator=(const RecomputeDepthwise&) = delete;

 private:
  bool prev_;
};

// Applies its children in order; they are named "0", "1", ... as in PyTorch.
class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  template <class... Ms>
  explicit Sequential(std::shared_ptr<Ms>... ms) : Module("Sequential") {
    (push_back(std::move(ms)), ...);
  }
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    register_module(std::to_string(layers_.size()), m);
    layers_.push_back(m);
    return m;
  }
  // Two patterns run as one op, so that the backward keeps fewer tensors: a ReLU followed by a
  // Conv2d runs as one relu_conv2d, which keeps the ReLU's input instead of its output (the
  // input is usually kept anyway: a BN output or a cell state), and a depthwise Conv2d followed
  // by a pointwise one (both without bias; the DARTS sep_conv / dil_conv pattern, with or
  // without the ReLU before) runs as one separable_conv2d, which recomputes the depthwise
  // output in the backward instead of holding it.
  Tensor forward(const Tensor& x) override {
    TNAS_CHECK(!layers_.empty(), "Sequential: forward of an empty Sequential");
    return forward_from(0, x);
  }
  bool begins_with_relu() const override {
    return !layers_.empty() && dynamic_cast<const ReLU*>(layers_.front().get()) != nullptr;
  }
  Tensor forward_after_relu(const Tensor& rx) override {
    TNAS_CHECK(begins_with_relu(), "Sequential: forward_after_relu, but layer 0 is not a ReLU");
    return forward_from(1, rx);
  }
  size_t size() const { return layers_.size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const {
    TNAS_CHECK(i < layers_.size(), "Sequential: index ", i, " out of range (", layers_.size(),
               " layers)");
    return layers_[i];
  }
  // Layer i as a M, or an Error naming what it is.
  template <class M>
  std::shared_ptr<M> at(size_t i) const {
    auto m = std::dynamic_pointer_cast<M>((*this)[i]);
    TNAS_CHECK(m, "Sequential: layer ", i, " is ", layers_[i]->name(), ", not the type asked for");
    return m;
  }

 private:
  Conv2d* conv_at(size_t i) const {
    return i < layers_.size() ? dynamic_cast<Conv2d*>(layers_[i].get()) : nullptr;
  }
  // Layers i and i + 1 are a depthwise and a pointwise Conv2d, neither with a bias, to be run
  // as one op (recompute_depthwise_flag()).
  bool separable_at(size_t i) const {
    const Conv2d* dw = conv_at(i);
    const Conv2d* pw = conv_at(i + 1);
    if (!dw || !pw || !recompute_depthwise_flag()) return false;
    const Conv2dConfig &a = dw->config(), &b = pw->config();
    return !a.bias && !b.bias && a.groups == dw->in_channels() &&
           dw->out_channels() == dw->in_channels() && pw->kernel_size() == 1 && b.stride == 1 &&
           b.padding == 0 && b.groups == 1 && pw->in_channels() == dw->out_channels();
  }
  Tensor forward_from(size_t i, Tensor y) {
    while (i < layers_.size()) {
      const bool relu = dynamic_cast<const ReLU*>(layers_[i].get()) && conv_at(i + 1);
      const size_t c = relu ? i + 1 : i;  // the first conv of a fused pattern
      if (separable_at(c)) {
        const Conv2d &dw = *conv_at(c), &pw = *conv_at(c + 1);
        detail::require_nchw(dw, y, dw.in_channels());
        const Conv2dConfig& a = dw.config();
        const Conv2dOptions o{a.stride, a.padding, a.dilation, a.groups};
        y = relu ? relu_separable_conv2d(y, dw.weight(), pw.weight(), o)
                 : separable_conv2d(y, dw.weight(), pw.weight(), o);
        i = c + 2;
      } else if (relu) {
        y = conv_at(c)->forward_relu(y);
        i = c + 1;
      } else {
        y = layers_[i]->forward(y);
        ++i;
      }
    }
    return y;
  }

  std::vector<std::shared_ptr<Module>> layers_;
};

}  // namespace tnas::nn
