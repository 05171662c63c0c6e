// Batch normalisation over the channel axis of [N, C] or [N, C, H, W].
#pragma once

#include "tnas/backend/cpu/norm.hpp"
#include "tnas/ops/common.hpp"

namespace tnas {

struct BatchNormOptions {
  bool training = true;
  double momentum = 0.1;  // running = (1 - momentum) * running + momentum * batch statistic
  double eps = 1e-5;
};

// In training, normalises with the batch statistics and, when running_mean / running_var are
// defined, updates them in place (the running variance uses the unbiased estimate, as PyTorch
// does). In evaluation, normalises with the running statistics. gamma / beta may be undefined
// (affine = false).
inline Tensor batch_norm(const Tensor& x0, const Tensor& gamma, const Tensor& beta,
                         const Tensor& running_mean, const Tensor& running_var,
                         const BatchNormOptions& o = {}) {
  TNAS_CHECK(x0.defined() && (x0.rank() == 2 || x0.rank() == 4), "batch_norm: input must be ",
             "[N, C] or [N, C, H, W], got ", x0.defined() ? x0.shape().str() : "undefined");
  const int64_t N = x0.dim(0), C = x0.dim(1), HW = x0.rank() == 4 ? x0.dim(2) * x0.dim(3) : 1;
  for (const Tensor* t : {&gamma, &beta, &running_mean, &running_var}) {
    if (!t->defined()) continue;
    ops::detail::require_same("batch_norm", x0, *t);
    TNAS_CHECK(t->rank() == 1 && t->dim(0) == C, "batch_norm: per-channel tensor of shape ",
               t->shape(), " for input ", x0.shape(), " (", C, " channels)");
  }
  TNAS_CHECK(gamma.defined() == beta.defined(), "batch_norm: gamma and beta go together");
  using K = backend::Kernels;
  Tensor x = x0.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor g = gamma.defined() ? gamma.contiguous() : Tensor();
  Tensor b = beta.defined() ? beta.contiguous() : Tensor();
  if (!o.training) {
    TNAS_CHECK(running_mean.defined() && running_var.defined(),
               "batch_norm: evaluation mode needs running statistics");
    if (x.device() != Device::cpu) {
      backend::kernel_f32("batch_norm", x.device(), x.dtype(), &K::batch_norm_forward_eval)(
          N, C, HW, x.data<float>(), g.defined() ? g.data<float>() : nullptr,
          b.defined() ? b.data<float>() : nullptr, running_mean.data<float>(),
          running_var.data<float>(), float(o.eps), y.data<float>());
    } else
      dispatch(x.dtype(), [&]<class T>() {
        cpu::batch_norm_forward_eval<T>(N, C, HW, x.data<T>(), g.defined() ? g.data<T>() : nullptr,
                                        b.defined() ? b.data<T>() : nullptr, running_mean.data<T>(),
                                        running_var.data<T>(), T(o.eps), y.data<T>());
      });
    if (autograd::needs_grad({&x0, &gamma, &beta})) {
      // y = x * s + t per channel, with s = gamma / sqrt(var + eps).
      Tensor xd = x.detach(), rm = running_mean.detach().clone(), rv = running_var.detach().clone();
      Tensor gd = g.defined() ? g.detach() : Tensor();
      double eps = o.eps;
      autograd::record("batch_norm_eval", y, {&x0, &gamma, &beta}, [=](const Tensor& go0) {
        Tensor go = go0.contiguous();
        Tensor dx = Tensor::empty(xd.shape(), go.dtype(), go.device());
        Tensor dg = gd.defined() ? Tensor::zeros({C}, go.dtype(), go.device()) : Tensor();
        Tensor dbeta = gd.defined() ? Tensor::zeros({C}, go.dtype(), go.device()) : Tensor();
        if (go.device() != Device::cpu) {
          backend::kernel_f32("batch_norm backward", go.device(), go.dtype(),
                              &K::batch_norm_backward_eval)(
              N, C, HW, xd.data<float>(), go.data<float>(),
              gd.defined() ? gd.data<float>() : nullptr, rm.data<float>(), rv.data<float>(),
              float(eps), dx.data<float>(), gd.defined() ? dg.data<float>() : nullptr,
              gd.defined() ? dbeta.data<float>() : nullptr);
          return std::vector<Tensor>{dx, dg, dbeta};
        }
        dispatch(go.dtype(), [&]<class T>() {
          cpu::batch_norm_backward_eval<T>(
              N, C, HW, xd.data<T>(), go.data<T>(), gd.defined() ? gd.data<T>() : nullptr,
              rm.data<T>(), rv.data<T>(), T(eps), dx.data<T>(),
              gd.defined() ? dg.data<T>() : nullptr, gd.defined() ? dbeta.data<T>() : nullptr);
        });
        return std::vector<Tensor>{dx, dg, dbeta};
      });
    }
    return y;
  }
  TNAS_CHECK(N * HW > 1, "batch_norm: training needs more than one value per channel, got input ",
             x0.shape());
  Tensor mean = Tensor::empty({C}, x.dtype(), x.device());
  Tensor invstd = Tensor::empty({C}, x.dtype(), x.device());
  if (x.device() != Device::cpu) {
    const bool run = running_mean.defined();
    backend::kernel_f32("batch_norm", x.device(), x.dtype(), &K::batch_norm_forward_train)(
        N, C, HW, x.data<float>(), g.defined() ? g.data<float>() : nullptr,
        b.defined() ? b.data<float>() : nullptr, float(o.eps), float(o.momentum), y.data<float>(),
        mean.data<float>(), invstd.data<float>(), run ? running_mean.data<float>() : nullptr,
        run ? running_var.data<float>() : nullptr);
  } else
    dispatch(x.dtype(), [&]<class T>() {
      cpu::batch_norm_forward_train<T>(N, C, HW, x.data<T>(), g.defined() ? g.data<T>() : nullptr,
                                       b.defined() ? b.data<T>() : nullptr, T(o.eps), y.data<T>(),
                                       mean.data<T>(), invstd.data<T>());
      if (running_mean.defined())
        cpu::batch_norm_update_running<T>(N * HW, C, mean.data<T>(), invstd.data<T>(), o.eps,
                                          o.momentum, running_mean.data<T>(),
                                          running_var.data<T>());
    });
  if (autograd::needs_grad({&x0, &gamma, &beta}) && !gamma.defined()) {
    // Non-affine (the DARTS search candidates): the output is x_hat, which is all the backward
    // needs, so the input is not kept alive by the tape.
    Tensor yd = y.detach();
    autograd::record("batch_norm", y, {&x0, &gamma, &beta}, [=](const Tensor& go0) {
      Tensor go = go0.contiguous();
      Tensor dx = Tensor::empty(yd.shape(), go.dtype(), go.device());
      if (go.device() != Device::cpu) {
        backend::kernel_f32("batch_norm backward", go.device(), go.dtype(),
                            &K::batch_norm_backward_from_output)(
            N, C, HW, yd.data<float>(), go.data<float>(), invstd.data<float>(), dx.data<float>());
        return std::vector<Tensor>{dx, Tensor(), Tensor()};
      }
      dispatch(go.dtype(), [&]<class T>() {
        cpu::batch_norm_backward_from_output<T>(N, C, HW, yd.data<T>(), go.data<T>(),
                                                invstd.data<T>(), dx.data<T>());
      });
      return std::vector<Tensor>{dx, Tensor(), Tensor()};
    });
  } else if (autograd::needs_grad({&x0, &gamma, &beta})) {
    Tensor xd = x.detach(), gd = g.defined() ? g.detach() : Tensor();
    const bool want_gb = gamma.defined() && (gamma.requires_grad() || beta.requires_grad());
    autograd::record("batch_norm", y, {&x0, &gamma, &beta}, [=](const Tensor& go0) {
      Tensor go = go0.contiguous();
      Tensor dx = Tensor::empty(xd.shape(), go.dtype(), go.device());
      Tensor dg = want_gb ? Tensor::empty({C}, go.dtype(), go.device()) : Tensor();
      Tensor dbeta = want_gb ? Tensor::empty({C}, go.dtype(), go.device()) : Tensor();
      if (go.device() != Device::cpu) {
        backend::kernel_f32("batch_norm backward", go.device(), go.dtype(),
                            &K::batch_norm_backward)(
            N, C, HW, xd.data<float>(), go.data<float>(), gd.defined() ? gd.data<float>() : nullptr,
            mean.data<float>(), invstd.data<float>(), dx.data<float>(),
            want_gb ? dg.data<float>() : nullptr, want_gb ? dbeta.data<float>() : nullptr);
        return std::vector<Tensor>{dx, dg, dbeta};
      }
      dispatch(go.dtype(), [&]<class T>() {
        cpu::batch_norm_backward<T>(
            N, C, HW, xd.data<T>(), go.data<T>(), gd.defined() ? gd.data<T>() : nullptr,
            mean.data<T>(), invstd.data<T>(), dx.data<T>(), want_gb ? dg.data<T>() : nullptr,
            want_gb ? dbeta.data<T>() : nullptr);
      });
      return std::vector<Tensor>{dx, dg, dbeta};
    });
  }
  return y;
}

}  // namespace tnas
