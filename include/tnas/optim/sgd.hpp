// Stochastic gradient descent with momentum, dampening, weight decay and Nesterov momentum,
// following torch.optim.SGD's update exactly:
//   d = g + weight_decay * p
//   with momentum: b = d on the first step, b = momentum * b + (1 - dampening) * d after;
//                  d = nesterov ? d + momentum * b : b
//   p = p - lr * d
#pragma once

#include "tnas/optim/optimizer.hpp"

namespace tnas::optim {

struct SGDOptions {
  double lr = 0.01;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, const SGDOptions& o)
      : Optimizer("SGD", std::move(params), o.lr), o_(o) {
    TNAS_CHECK(o.momentum >= 0 && o.weight_decay >= 0, "SGD: momentum (", o.momentum,
               ") and weight_decay (", o.weight_decay, ") must be >= 0");
    TNAS_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0), "SGD: Nesterov momentum ",
               "needs momentum > 0 and dampening == 0, got momentum ", o.momentum, ", dampening ",
               o.dampening);
  }
  SGD(std::vector<Tensor> params, double lr, double momentum = 0, double dampening = 0,
      double weight_decay = 0, bool nesterov = false)
      : SGD(std::move(params), SGDOptions{lr, momentum, dampening, weight_decay, nesterov}) {}

  void step() override {
    const double lr = this->lr();
    if (grad_device() != Device::cpu) return step_device();
    for_each_with_grad([&](Tensor& p, const Tensor& g, ParamState& s) {
      const bool first = !s.buf[0].defined();
      if (o_.momentum != 0 && first) s.buf[0] = Tensor::empty(p.shape(), p.dtype(), p.device());
      dispatch(p.dtype(), [&]<class T>() {
        T* pp = p.data<T>();
        const T* pg = g.data<T>();
        T* pb = o_.momentum != 0 ? s.buf[0].data<T>() : nullptr;
        const T wd = T(o_.weight_decay), mom = T(o_.momentum), damp = T(1 - o_.dampening);
        const T step = T(lr);
        const int64_t n = p.numel();
        for (int64_t i = 0; i < n; ++i) {
          T d = pg[i];
          if (o_.weight_decay != 0) d += wd * pp[i];
          if (pb) {
            pb[i] = first ? d : mom * pb[i] + damp * d;
            d = o_.nesterov ? d + mom * pb[i] : pb[i];
          }
          pp[i] -= step * d;
        }
      });
    });
  }
  const SGDOptions& options() const { return o_; }

 protected:
  std::vector<std::string> buffer_names() const override { return {"momentum_buffer"}; }
  std::vector<std::pair<std::string, double>> hyperparameters() const override {
    return {{"momentum", o_.momentum},
            {"dampening", o_.dampening},
            {"weight_decay", o_.weight_decay},
            {"nesterov", o_.nesterov ? 1.0 : 0.0}};
  }

 protected:
  // The device path (optimizer.hpp): the learning rate is the one per-step value.
  size_t scalars_per_step(size_t) const override { return 1; }
  void step_scalars(const std::vector<Item>&, float* out) const override { out[0] = float(lr()); }
  void launch(std::vector<Item>& items, const float* scalars, bool capturing) override {
    const Device d = items[0].p.device();
    auto f = backend::kernel_f32("SGD step", d, items[0].p.dtype(), &backend::Kernels::sgd_step);
    const size_t n = items.size();
    std::vector<float*> buf(n, nullptr);
    std::vector<uint8_t> first(n, 0);
    for (size_t i = 0; i < n; ++i) {
      Item& it = items[i];
      Tensor& b = it.s->buf[0];
      if (o_.momentum != 0) {
        first[i] = !b.defined();
        TNAS_CHECK(!(capturing && first[i]), "SGD: capture a step after one eager step, so the ",
                   "momentum buffers exist (parameter ", it.index, " has none)");
        if (first[i]) b = Tensor::empty(it.p.shape(), it.p.dtype(), d);
        buf[i] = b.data<float>();
      }
    }
    ItemLists l = item_lists(items);
    f(int(n), l.numel.data(), l.p.data(), l.g.data(), buf.data(), first.data(),
      backend::SgdStep{float(o_.momentum), float(o_.dampening), float(o_.weight_decay),
                       o_.nesterov},
      scalars);
  }

 private:
  SGDOptions o_;
};

}  // namespace tnas::optim
