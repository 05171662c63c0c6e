// Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_).
#pragma once

#include <cmath>
#include <vector>

#include "tnas/autograd/grad_mode.hpp"
#include "tnas/core/tensor.hpp"

namespace tnas::optim {

// Returns the L2 norm of all gradients of `params` taken together (parameters without a
// gradient count as zero) and, when max_norm / (norm + 1e-6) < 1, scales every gradient in
// place by that factor, so the clipped norm is just under max_norm.
//
// A non-finite gradient (NaN or Inf) makes the returned norm non-finite and leaves the
// gradients untouched: scaling would only smear the NaN over every parameter. Callers check
// std::isfinite(norm) and skip the step (or stop), which is the decision that needs context.
inline double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  TNAS_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got ", max_norm);
  NoGrad no_grad;
  double sq = 0;
  for (auto& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    TNAS_CHECK(g.device() == Device::cpu, "clip_grad_norm: gradient of a parameter of shape ",
               p.shape(), " is on ", g.device(), "; this build clips CPU tensors only");
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
