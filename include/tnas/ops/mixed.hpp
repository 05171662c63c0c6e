// The mixed-op weighted sum of weight-sharing NAS: out = sum_k w[k] * y[k], as one op over all
// candidate outputs. One pass over the candidates in forward, and one in backward that yields
// both the candidates' gradients (w[k] * g) and the weights' (<g, y[k]>), instead of K
// broadcast multiplies and K - 1 adds each with its own node and temporaries.
#pragma once

#include <vector>

#include "tnas/backend/cpu/mixed.hpp"
#include "tnas/ops/common.hpp"

namespace tnas {

// ys[k] may be undefined: a candidate known to output zeros (the `none` op), which adds
// nothing and whose weight gets a zero gradient. w is a [K] vector.
inline Tensor weighted_sum(const std::vector<Tensor>& ys, const Tensor& w) {
  TNAS_CHECK(!ys.empty(), "weighted_sum: no candidates");
  TNAS_CHECK(w.defined() && w.rank() == 1 && w.dim(0) == int64_t(ys.size()),
             "weighted_sum: weights of shape ", w.defined() ? w.shape().str() : "undefined",
             " for ", ys.size(), " candidates");
  const Tensor* first = nullptr;
  for (const Tensor& y : ys) {
    if (!y.defined()) continue;
    if (!first) first = &y;
    ops::detail::require_same("weighted_sum", *first, y);
    TNAS_CHECK(y.shape() == first->shape(), "weighted_sum: candidate shapes differ, ",
               first->shape(), " and ", y.shape());
  }
  TNAS_CHECK(first, "weighted_sum: every candidate is undefined (all `none`); the output shape is ",
             "unknown");
  ops::detail::require_same("weighted_sum", *first, w);
  const size_t K = ys.size();
  std::vector<Tensor> yc(K);
  for (size_t k = 0; k < K; ++k)
    if (ys[k].defined()) yc[k] = ys[k].contiguous();
  Tensor wc = w.contiguous();
  Tensor out = Tensor::empty(first->shape(), first->dtype(), first->device());
  const int64_t n = out.numel();
  using Kt = backend::Kernels;
  if (out.device() != Device::cpu) {
    std::vector<const float*> py(K, nullptr);
    auto f =
        backend::kernel_f32("weighted_sum", out.device(), out.dtype(), &Kt::weighted_sum_forward);
    for (size_t k = 0; k < K; ++k)
      if (yc[k].defined()) py[k] = yc[k].data<float>();
    f(int(K), py.data(), wc.data<float>(), out.data<float>(), n);
  } else
    dispatch(out.dtype(), [&]<class T>() {
      std::vector<const T*> py(K, nullptr);
      for (size_t k = 0; k < K; ++k)
        if (yc[k].defined()) py[k] = yc[k].data<T>();
      cpu::weighted_sum_forward<T>(int(K), py.data(), wc.data<T>(), out.data<T>(), n);
    });
  std::vector<Tensor> inputs = ys;
  inputs.push_back(w);
  if (autograd::needs_grad(inputs)) {
    std::vector<Tensor> yd(K);
    std::vector<bool> need(K);
    for (size_t k = 0; k < K; ++k) {
      need[k] = ys[k].defined() && ys[k].requires_grad();
      if (yc[k].defined() && w.requires_grad()) yd[k] = yc[k].detach();
    }
    Tensor wd = wc.detach();
    const bool need_w = w.requires_grad();
    autograd::record_vec("weighted_sum", out, inputs, [yd, need, wd, need_w, K](const Tensor& g0) {
      Tensor g = g0.contiguous();
      std::vector<Tensor> grads(K + 1);
      const int64_t n = g.numel();
      if (g.device() != Device::cpu) {
        auto f = backend::kernel_f32("weighted_sum backward", g.device(), g.dtype(),
                                     &Kt::weighted_sum_backward);
        std::vector<const float*> py(K, nullptr);
        std::vector<float*> pgy(K, nullptr);
        for (size_t k = 0; k < K; ++k) {
          if (yd[k].defined()) py[k] = yd[k].data<float>();
          if (need[k]) {
            grads[k] = Tensor::empty(g.shape(), g.dtype(), g.device());
            pgy[k] = grads[k].data<float>();
          }
        }
        if (need_w) grads[K] = Tensor::empty(wd.shape(), g.dtype(), g.device());
        f(int(K), py.data(), wd.data<float>(), g.data<float>(), pgy.data(),
          need_w ? grads[K].data<float>() : nullptr, n);
        return grads;
      }
      dispatch(g.dtype(), [&]<class T>() {
        std::vector<const T*> py(K, nullptr);
        std::vector<T*> pgy(K, nullptr);
        for (size_t k = 0; k < K; ++k) {
          if (yd[k].defined()) py[k] = yd[k].data<T>();
          if (need[k]) {
            grads[k] = Tensor::empty(g.shape(), g.dtype(), g.device());
            pgy[k] = grads[k].data<T>();
          }
        }
        if (need_w) grads[K] = Tensor::empty(wd.shape(), g.dtype(), g.device());
        cpu::weighted_sum_backward<T>(int(K), py.data(), wd.data<T>(), g.data<T>(), pgy.data(),
                                      need_w ? grads[K].data<T>() : nullptr, n);
      });
      return grads;
    });
  }
  return out;
}

}  // namespace tnas
