// Whether ops record the autograd graph (per thread). NoGrad is the scope guard that turns
// recording off, for evaluation and for optimizer updates.
#pragma once

namespace tnas {

namespace detail {
inline bool& grad_enabled_flag() {
  static thread_local bool enabled = true;
  return enabled;
}
}  // namespace detail

inline bool grad_enabled() {
  return detail::grad_enabled_flag();
}

class NoGrad {
 public:
  NoGrad() : prev_(detail::grad_enabled_flag()) { detail::grad_enabled_flag() = false; }
  ~NoGrad() { detail::grad_enabled_flag() = prev_; }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool prev_;
};

}  // namespace tnas
