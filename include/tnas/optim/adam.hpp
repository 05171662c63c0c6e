// Adam, following torch.optim.Adam (amsgrad off) exactly:
//   t = t + 1 (per parameter)
//   g = g + weight_decay * p            (L2 penalty added to the gradient, not AdamW)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// DARTS trains its architecture parameters with Adam(lr 3e-4, betas (0.5, 0.999), wd 1e-3).
#pragma once

#include <cmath>

#include "tnas/optim/optimizer.hpp"

namespace tnas::optim {

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
};

class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, const AdamOptions& o)
      : Optimizer("Adam", std::move(params), o.lr), o_(o) {
    TNAS_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1, "Adam: betas must ",
               "be in [0, 1), got (", o.beta1, ", ", o.beta2, ")");
    TNAS_CHECK(o.eps >= 0 && o.weight_decay >= 0, "Adam: eps (", o.eps, ") and weight_decay (",
               o.weight_decay, ") must be >= 0");
  }
  explicit Adam(std::vector<Tensor> params, double lr = 1e-3,
                std::pair<double, double> betas = {0.9, 0.999}, double eps = 1e-8,
                double weight_decay = 0)
      : Adam(std::move(params), AdamOptions{lr, betas.first, betas.second, eps, weight_decay}) {}

  void step() override {
    const double lr = this->lr();
    if (grad_device() != Device::cpu) return step_device();
    for_each_with_grad([&](Tensor& p, const Tensor& g, ParamState& s) {
      for (auto& b : s.buf)
        if (!b.defined()) b = Tensor::zeros(p.shape(), p.dtype(), p.device());
      // The scalar factors in double, as PyTorch computes them on the host.
      const double bc1 = 1 - std::pow(o_.beta1, double(s.step));
      const double bc2_sqrt = std::sqrt(1 - std::pow(o_.beta2, double(s.step)));
      dispatch(p.dtype(), [&]<class T>() {
        T* pp = p.data<T>();
        const T* pg = g.data<T>();
        T* m = s.buf[0].data<T>();
        T* v = s.buf[1].data<T>();
        const T w1 = T(1 - o_.beta1), w2 = T(1 - o_.beta2), b2 = T(o_.beta2);
        const T wd = T(o_.weight_decay), eps = T(o_.eps);
        const T step_size = T(lr / bc1), c2 = T(bc2_sqrt);
        const int64_t n = p.numel();
        for (int64_t i = 0; i < n; ++i) {
          T d = pg[i];
          if (o_.weight_decay != 0) d += wd * pp[i];
          // m.lerp_(d, 1 - beta1), v.mul_(beta2).addcmul_(d, d, 1 - beta2),
          // p.addcdiv_(m, sqrt(v) / c2 + eps, -step_size): PyTorch's operation order.
          m[i] = w1 < T(0.5) ? m[i] + w1 * (d - m[i]) : d - (d - m[i]) * (T(1) - w1);
          v[i] = v[i] * b2 + w2 * (d * d);
          pp[i] += -step_size * (m[i] / (std::sqrt(v[i]) / c2 + eps));
        }
      });
    });
  }
  const AdamOptions& options() const { return o_; }

 protected:
  std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq"}; }
  std::vector<std::pair<std::string, double>> hyperparameters() const override {
    return {{"beta1", o_.beta1},
            {"beta2", o_.beta2},
            {"eps", o_.eps},
            {"weight_decay", o_.weight_decay}};
  }

  // The device path (optimizer.hpp): per tensor, the step size and the second moment's bias
  // correction, in double on the host as on the CPU path.
  size_t scalars_per_step(size_t n) const override { return 2 * n; }
  void step_scalars(const std::vector<Item>& items, float* out) const override {
    for (size_t i = 0; i < items.size(); ++i) {
      const double t = double(items[i].s->step);
      out[2 * i] = float(lr() / (1 - std::pow(o_.beta1, t)));
      out[2 * i + 1] = float(std::sqrt(1 - std::pow(o_.beta2, t)));
    }
  }
  void launch(std::vector<Item>& items, const float* scalars, bool capturing) override {
    const Device d = items[0].p.device();
    auto f = backend::kernel_f32("Adam step", d, items[0].p.dtype(), &backend::Kernels::adam_step);
    const size_t n = items.size();
    std::vector<float*> m(n), v(n);
    for (size_t i = 0; i < n; ++i) {
      Item& it = items[i];
      for (auto& b : it.s->buf) {
        TNAS_CHECK(!(capturing && !b.defined()), "Adam: capture a step after one eager step, so ",
                   "the moment buffers exist (parameter ", it.index, " has none)");
        if (!b.defined()) b = Tensor::zeros(it.p.shape(), it.p.dtype(), d);
      }
      m[i] = it.s->buf[0].data<float>();
      v[i] = it.s->buf[1].data<float>();
    }
    ItemLists l = item_lists(items);
    f(int(n), l.numel.data(), l.p.data(), l.g.data(), m.data(), v.data(),
      backend::AdamStep{float(o_.beta1), float(o_.beta2), float(o_.eps), float(o_.weight_decay)},
      scalars);
  }

 private:
  AdamOptions o_;
};

}  // namespace tnas::optim
