// Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_).
#pragma once

#include <cmath>
#include <vector>

#include "tnas/autograd/grad_mode.hpp"
#include "tnas/backend/registry.hpp"
#include "tnas/core/tensor.hpp"

namespace tnas::optim {

// Returns the L2 norm of all gradients of `params` taken together (parameters without a
// gradient count as zero) and, when max_norm / (norm + 1e-6) < 1, scales every gradient in
// place by that factor, so the clipped norm is just under max_norm.
//
// A non-finite gradient (NaN or Inf) makes the returned norm non-finite and leaves the
// gradients untouched: scaling would only smear the NaN over every parameter. Callers check
// std::isfinite(norm) and skip the step (or stop), which is the decision that needs context.
//
// clip_grad_norm_async is the same clipping for gradients on a device (CUDA): it returns the
// squared norm as a one-element float32 tensor on that device, and the decision to scale is
// taken there, so a training step need not wait for the device. clip_grad_norm on device
// gradients calls it and reads the norm back (one synchronisation).
inline Tensor clip_grad_norm_async(const std::vector<Tensor>& params, double max_norm) {
  TNAS_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got ", max_norm);
  NoGrad no_grad;
  std::vector<Tensor> gs;
  for (Tensor p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (!g.is_contiguous()) {  // a view into something else: scale a copy of our own instead
      g = g.clone();
      p.set_grad(g);
    }
    TNAS_CHECK(gs.empty() || g.device() == gs[0].device(), "clip_grad_norm: gradients on ",
               gs[0].device(), " and ", g.device());
    gs.push_back(g);
  }
  const Device d = gs.empty() ? Device::cpu : gs[0].device();
  TNAS_CHECK(d != Device::cpu, "clip_grad_norm_async: the gradients are on the CPU (or there ",
             "are none); use clip_grad_norm");
  using K = backend::Kernels;
  auto sumsq = backend::kernel_f32("clip_grad_norm", d, gs[0].dtype(), &K::sum_squares);
  auto scale = backend::kernel_f32("clip_grad_norm", d, gs[0].dtype(), &K::clip_scale);
  std::vector<int64_t> numel;
  std::vector<float*> ptr;
  for (auto& g : gs) {
    TNAS_CHECK(g.dtype() == DType::f32, "clip_grad_norm: the ", d, " kernels take float32, got ",
               g.dtype());
    numel.push_back(g.numel());
    ptr.push_back(g.data<float>());
  }
  Tensor sq = Tensor::empty({1}, DType::f32, d);
  sumsq(int(ptr.size()), numel.data(), ptr.data(), sq.data<float>());
  scale(int(ptr.size()), numel.data(), ptr.data(), sq.data<float>(), float(max_norm));
  return sq;
}

inline double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  TNAS_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got ", max_norm);
  for (auto& p : params)
    if (p.grad().defined() && p.grad().device() != Device::cpu)
      return std::sqrt(clip_grad_norm_async(params, max_norm).item());
  NoGrad no_grad;
  double sq = 0;
  for (auto& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    Tensor gc = g.contiguous();
    dispatch(gc.dtype(), [&]<class T>() {
      const T* pg = gc.data<T>();
      for (int64_t i = 0; i < gc.numel(); ++i) sq += double(pg[i]) * double(pg[i]);
    });
  }
  const double norm = std::sqrt(sq);
  const double coef = max_norm / (norm + 1e-6);
  if (!(coef < 1) || !std::isfinite(norm)) return norm;
  for (Tensor p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (!g.is_contiguous()) {  // a view into something else: scale a copy of our own instead
      g = g.clone();
      p.set_grad(g);
    }
    dispatch(g.dtype(), [&]<class T>() {
      T* pg = g.data<T>();
      const T c = T(coef);
      for (int64_t i = 0; i < g.numel(); ++i) pg[i] *= c;
    });
  }
  return norm;
}

}  // namespace tnas::optim
