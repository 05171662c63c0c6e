// Optimizer: the base of SGD and Adam.
//
// represents: an update rule over a fixed list of parameter tensors (handles: the optimizer
//   updates the caller's tensors in place), with per-parameter state (up to two buffers and a
//   step count) and a learning rate that schedules change between steps.
// requires: parameters are distinct, contiguous tensors, all on one device (the CPU updates them
//   inline; other devices with their backend's fused kernels, one launch for all parameters);
//   a gradient, when present, has its parameter's shape, dtype and device.
// ensures: step() touches only parameters that have a gradient (so unused branches of a
//   supernet keep their state) and records nothing on the autograd tape. state() captures
//   everything a resumed run needs to continue bit for bit; load_state() checks that the state
//   fits (same optimizer, hyperparameters, parameter count and shapes) before changing
//   anything.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tnas/autograd/grad_mode.hpp"
#include "tnas/backend/registry.hpp"
#include "tnas/core/error.hpp"
#include "tnas/core/tensor.hpp"
#include "tnas/io/archive.hpp"

namespace tnas::optim {

namespace detail {
using tnas::detail::cat;

// Doubles travel through archive metadata as hexfloat text, which round-trips exactly.
inline std::string encode(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", v);
  return buf;
}
inline double decode(const std::string& s, const std::string& what) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  TNAS_CHECK(!s.empty() && end == s.c_str() + s.size(), "optimizer state: '", what,
             "' is not a number: '", s, "'");
  return v;
}
}  // namespace detail

class Optimizer {
 public:
  // Per-parameter state. Which buffers exist, and what they are called in state(), is up to
  // the subclass (buffer_names()); a buffer is undefined until the first step that needs it.
  struct ParamState {
    Tensor buf[2];
    int64_t step = 0;  // updates applied to this parameter
  };

  Optimizer(std::string name, std::vector<Tensor> params, double lr)
      : name_(std::move(name)), params_(std::move(params)), state_(params_.size()) {
    TNAS_CHECK(!params_.empty(), name_, ": got an empty parameter list");
    set_lr(lr);
    std::set<const TensorImpl*> seen;
    for (size_t i = 0; i < params_.size(); ++i) {
      const Tensor& p = params_[i];
      TNAS_CHECK(p.defined(), name_, ": parameter ", i, " is undefined");
      TNAS_CHECK(seen.insert(p.impl_ptr()).second, name_, ": parameter ", i, " ", p.shape(),
                 " appears twice in the list (it would be updated twice per step)");
    }
  }
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Applies one update to every parameter that has a gradient.
  virtual void step() = 0;

  // Drops every gradient (set to none, as PyTorch's default): cheaper than writing zeros, and a
  // parameter that the next backward() does not reach is then skipped by step().
  void zero_grad() {
    for (auto& p : params_) p.zero_grad();
  }

  double lr() const { return lr_; }
  void set_lr(double lr) {
    TNAS_CHECK(lr >= 0, name_, ": learning rate must be >= 0, got ", lr);
    lr_ = lr;
  }
  const std::vector<Tensor>& params() const { return params_; }
  const std::string& name() const { return name_; }
  const ParamState& param_state(size_t i) const { return state_.at(i); }

  // Everything needed to resume: tensors "state.<i>.<buffer>" and metadata "optimizer",
  // "num_params", "lr", the hyperparameters and "state.<i>.step". Tensors are copies.
  io::Archive state() const {
    io::Archive a;
    a.meta["optimizer"] = name_;
    a.meta["num_params"] = std::to_string(params_.size());
    a.meta["lr"] = detail::encode(lr_);
    for (auto& [k, v] : hyperparameters()) a.meta[k] = detail::encode(v);
    const auto names = buffer_names();
    for (size_t i = 0; i < state_.size(); ++i) {
      const std::string pre = "state." + std::to_string(i) + ".";
      if (state_[i].step) a.meta[pre + "step"] = std::to_string(state_[i].step);
      for (size_t b = 0; b < names.size(); ++b)
        if (state_[i].buf[b].defined())
          a.tensors.emplace_back(pre + names[b], state_[i].buf[b].clone());
    }
    return a;
  }

  // Restores what state() saved. Throws, changing nothing, when it does not fit.
  void load_state(const io::Archive& a) {
    const std::string& kind = a.meta_at("optimizer");
    TNAS_CHECK(kind == name_, name_, ": cannot load the state of a ", kind, " optimizer");
    const std::string& n = a.meta_at("num_params");
    TNAS_CHECK(n == std::to_string(params_.size()), name_, ": the state is for ", n,
               " parameters, this optimizer has ", params_.size());
    for (auto& [k, mine] : hyperparameters()) {
      const double saved = detail::decode(a.meta_at(k), k);
      TNAS_CHECK(saved == mine || (saved != saved && mine != mine), name_, ": the state was saved ",
                 "with ", k, " = ", saved, ", this optimizer has ", k, " = ", mine,
                 "; construct it with the same options to resume");
    }
    const double lr = detail::decode(a.meta_at("lr"), "lr");

    std::vector<ParamState> fresh(params_.size());
    const auto names = buffer_names();
    for (auto& [key, t] : a.tensors) {
      size_t i = 0, b = names.size();
      parse_key(key, i, b, names);
      const Tensor& p = params_[i];
      TNAS_CHECK(t.shape() == p.shape(), name_, ": state '", key, "' has shape ", t.shape(),
                 " but parameter ", i, " has shape ", p.shape());
      fresh[i].buf[b] = t.to(p.dtype()).to(p.device()).clone();
    }
    for (size_t i = 0; i < fresh.size(); ++i) {
      auto it = a.meta.find("state." + std::to_string(i) + ".step");
      if (it != a.meta.end()) fresh[i].step = int64_t(detail::decode(it->second, it->first));
    }
    state_ = std::move(fresh);
    lr_ = lr;
  }

 protected:
  // The names of buf[0], buf[1] in state() (at most two).
  virtual std::vector<std::string> buffer_names() const = 0;
  // Hyperparameters other than lr, saved with the state and checked on load.
  virtual std::vector<std::pair<std::string, double>> hyperparameters() const = 0;

  // The device of the parameters that have a gradient (the CPU when none has one). Updates
  // run where the parameters are; parameters on two devices are an error.
  Device grad_device() const {
    const Tensor* first = nullptr;
    for (size_t i = 0; i < params_.size(); ++i) {
      if (!params_[i].grad().defined()) continue;
      if (!first) first = &params_[i];
      TNAS_CHECK(params_[i].device() == first->device(), name_, ": parameter ", i, " is on ",
                 params_[i].device(), " but others are on ", first->device(),
                 "; move the whole model with Module::to(device)");
    }
    return first ? first->device() : Device::cpu;
  }

  // Calls f(p, g, state) for every parameter p that has a gradient g (contiguous), with
  // recording off.
  template <class F>
  void for_each_with_grad(F&& f) {
    NoGrad no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      Tensor g;
      if (!prepare(i, g, true)) continue;
      f(params_[i], g, state_[i]);
    }
  }

  // ---- the device path -------------------------------------------------------------------
  // On a device, step() enqueues one fused update for all parameters with a gradient
  // (backend::Kernels::sgd_step and friends) and reads nothing back. The values that change
  // between steps (learning rate, Adam's bias corrections) live in a small device buffer that
  // the host writes before the update, so the update itself can be captured in a DeviceGraph:
  // inside the capture call capture_step() instead of step(), and stage_replay() before every
  // replay (it counts the step and writes that buffer).
 public:
  void capture_step() {
    TNAS_CHECK(grad_device() != Device::cpu, name_, ": capture_step needs device parameters");
    std::vector<Item> items = collect(false);
    captured_.clear();
    for (auto& it : items) captured_.push_back(it.index);
    TNAS_CHECK(!items.empty(), name_, ": capture_step: no parameter has a gradient");
    launch(items, scalars_buffer(scalars_per_step(items.size()), items[0].p.device()), true);
  }
  void stage_replay() {
    TNAS_CHECK(!captured_.empty(), name_, ": stage_replay before capture_step");
    std::vector<Item> items;
    for (size_t i : captured_) {
      ++state_[i].step;
      items.push_back({i, params_[i], Tensor(), &state_[i]});
    }
    upload(items);
  }

 protected:
  struct Item {
    size_t index;
    Tensor p, g;
    ParamState* s;
  };
  // The lists a fused update takes: each item's element count, parameter and gradient.
  struct ItemLists {
    std::vector<int64_t> numel;
    std::vector<float*> p;
    std::vector<const float*> g;
  };
  static ItemLists item_lists(const std::vector<Item>& items) {
    ItemLists l;
    for (const Item& it : items) {
      l.numel.push_back(it.p.numel());
      l.p.push_back(it.p.data<float>());
      l.g.push_back(it.g.data<float>());
    }
    return l;
  }
  // The device path's two halves, for the subclasses: the per-step values (scalars_per_step
  // floats, written in order), and the fused update reading them from device memory. With
  // capturing set, launch() must not create buffers (a fill would be replayed every step).
  virtual size_t scalars_per_step(size_t n_items) const = 0;
  virtual void step_scalars(const std::vector<Item>& items, float* out) const = 0;
  virtual void launch(std::vector<Item>& items, const float* scalars, bool capturing) = 0;

  // The eager device step: count, stage, launch.
  void step_device() {
    std::vector<Item> items = collect(true);
    if (items.empty()) return;
    upload(items);
    launch(items, scalars_.data<float>(), false);
  }

 private:
  std::vector<Item> collect(bool count) {
    NoGrad no_grad;
    std::vector<Item> items;
    for (size_t i = 0; i < params_.size(); ++i) {
      Tensor g;
      if (prepare(i, g, count)) items.push_back({i, params_[i], g, &state_[i]});
    }
    return items;
  }
  // Writes the step's values into scalars_ (one small host-to-device copy).
  void upload(const std::vector<Item>& items) {
    const size_t m = scalars_per_step(items.size());
    Tensor host = Tensor::empty({int64_t(m)}, DType::f32);
    step_scalars(items, host.data<float>());
    scalars_buffer(m, items[0].p.device());
    scalars_.copy_(host);
  }
  // scalars_ as m floats on device d (made anew when it is not).
  float* scalars_buffer(size_t m, Device d) {
    if (!scalars_.defined() || size_t(scalars_.numel()) != m || scalars_.device() != d)
      scalars_ = Tensor::empty({int64_t(m)}, DType::f32, d);
    return scalars_.data<float>();
  }

 private:
  // Checks parameter i and its gradient, brings its buffers to the parameter's dtype and
  // counts the step (with count); false (nothing done) when it has no gradient.
  bool prepare(size_t i, Tensor& g, bool count) {
    Tensor& p = params_[i];
    g = p.grad();
    if (!g.defined()) return false;
    TNAS_CHECK(p.is_contiguous(), name_, ": parameter ", i, " ", p.shape(), " is not contiguous");
    TNAS_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype() && g.device() == p.device(), name_,
               ": parameter ", i, " is ", p.dtype(), " ", p.shape(), " on ", p.device(),
               " but its gradient is ", g.dtype(), " ", g.shape(), " on ", g.device());
    ParamState& s = state_[i];
    for (auto& b : s.buf) {
      if (b.defined() && b.dtype() != p.dtype()) b = b.to(p.dtype());     // after Module::to(dtype)
      if (b.defined() && b.device() != p.device()) b = b.to(p.device());  // after Module::to(dev)
    }
    if (count) ++s.step;
    g = g.contiguous();
    return true;
  }

  void parse_key(const std::string& key, size_t& i, size_t& b,
                 const std::vector<std::string>& names) const {
    const std::string bad = detail::cat(name_, ": unexpected tensor '", key, "' in the state");
    TNAS_CHECK(key.starts_with("state."), bad);
    const size_t dot = key.find('.', 6);
    TNAS_CHECK(dot != std::string::npos && dot > 6, bad);
    char* end = nullptr;
    const unsigned long long idx = std::strtoull(key.c_str() + 6, &end, 10);
    TNAS_CHECK(end == key.c_str() + dot && idx < params_.size(), bad, " (parameter index out of ",
               "range or malformed; ", params_.size(), " parameters)");
    i = size_t(idx);
    const std::string buf = key.substr(dot + 1);
    for (b = 0; b < names.size(); ++b)
      if (names[b] == buf) return;
    TNAS_FAIL(bad, " (", name_, " keeps no buffer '", buf, "')");
  }

  std::string name_;
  std::vector<Tensor> params_;
  double lr_ = 0;
  std::vector<ParamState> state_;
  Tensor scalars_;                // the device path's per-step values
  std::vector<size_t> captured_;  // the parameters a captured step updates
};

}  // namespace tnas::optim
