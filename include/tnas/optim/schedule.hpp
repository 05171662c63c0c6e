// Learning-rate schedules, stepped once per epoch.
#pragma once

#include <cmath>
#include <numbers>

#include "tnas/optim/optimizer.hpp"

namespace tnas::optim {

// Cosine annealing without restarts (torch.optim.lr_scheduler.CosineAnnealingLR, closed form):
//   lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2
// where base_lr is the optimizer's lr when the schedule is made and t counts step() calls.
// Past T_max the cosine continues (the lr rises again), as PyTorch's closed form does.
// The schedule holds a reference to the optimizer, which must outlive it. To resume, make the
// schedule with the same base lr and call set_t(saved t): the lr follows from t alone.
class CosineAnnealingLR {
 public:
  CosineAnnealingLR(Optimizer& opt, int64_t T_max, double eta_min = 0)
      : opt_(opt), base_lr_(opt.lr()), T_max_(T_max), eta_min_(eta_min) {
    TNAS_CHECK(T_max >= 1, "CosineAnnealingLR: T_max must be >= 1, got ", T_max);
    TNAS_CHECK(eta_min >= 0, "CosineAnnealingLR: eta_min must be >= 0, got ", eta_min);
  }
  // Ends an epoch: t += 1 and the optimizer gets lr(t).
  void step() { set_t(t_ + 1); }
  int64_t t() const { return t_; }
  void set_t(int64_t t) {
    TNAS_CHECK(t >= 0, "CosineAnnealingLR: t must be >= 0, got ", t);
    t_ = t;
    opt_.set_lr(lr_at(t));
  }
  double lr_at(int64_t t) const {
    return eta_min_ + (base_lr_ - eta_min_) *
                          (1 + std::cos(std::numbers::pi * double(t) / double(T_max_))) / 2;
  }
  double base_lr() const { return base_lr_; }
  int64_t T_max() const { return T_max_; }

 private:
  Optimizer& opt_;
  double base_lr_;
  int64_t T_max_;
  double eta_min_;
  int64_t t_ = 0;
};

}  // namespace tnas::optim
