// Module: the unit networks are built from.
//
// represents: a node of a tree of modules. Each module owns named parameters (tensors that
//   require grad and that an optimizer updates), named buffers (state that is saved but not
//   trained, e.g. BatchNorm's running statistics) and named child modules, all in the order
//   they were registered. The qualified name of a tensor is the path to it joined by dots,
//   "cells.3.ops.2.weight", as PyTorch spells it, so state dicts line up with the reference
//   code bases.
// requires: subclasses register everything in their constructor; names are non-empty, hold no
//   '.', and are unique within one module across parameters, buffers and children. Modules are
//   held by std::shared_ptr (a child may be shared, e.g. tied weights) and are not copyable,
//   because a copy would silently share every parameter with the original.
// ensures: parameters() and named_parameters() list each tensor once (the first path to it
//   wins), in registration order, depth first, so optimizer state indexed by position is
//   stable across runs. Subclasses keep their own Tensor handles to what they registered:
//   to(DType), to(Device) and load_state_dict() change tensors in place (same TensorImpl), so
//   those handles stay valid.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tnas/autograd/grad_mode.hpp"
#include "tnas/core/error.hpp"
#include "tnas/core/tensor.hpp"

namespace tnas::nn {

// Named tensors in registration order. A vector of pairs rather than std::map: the order of a
// state dict is part of what makes checkpoints diffable and matches PyTorch's OrderedDict;
// load_state_dict indexes it by name itself. The same type as io::NamedTensors, so state
// dicts go to archives and back without conversion.
using StateDict = std::vector<std::pair<std::string, Tensor>>;

// The tensor called `name` in `dict`, or nullptr.
inline const Tensor* find_tensor(const StateDict& dict, const std::string& name) {
  for (auto& [k, t] : dict)
    if (k == name) return &t;
  return nullptr;
}

class Module {
 public:
  explicit Module(std::string name) : name_(std::move(name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // What this module is, with its configuration ("Conv2d(16, 32, kernel_size=3, stride=2)"),
  // for error messages.
  const std::string& name() const { return name_; }

  // The single-input forward. Modules with several inputs (cells) define their own call and
  // leave this one throwing.
  virtual Tensor forward(const Tensor&) {
    TNAS_FAIL(name_, " has no single-input forward(x); call the forward it defines");
  }
  Tensor operator()(const Tensor& x) { return forward(x); }

  // A module whose first layer is a ReLU can take relu(x) computed elsewhere:
  // forward_after_relu(relu(x)) == forward(x), for callers that already hold relu(x). (The
  // supernet does not share relu(x) between candidates: relu_conv2d recomputes it and holds
  // less memory, see nn::Sequential::forward.)
  virtual bool begins_with_relu() const { return false; }
  virtual Tensor forward_after_relu(const Tensor&) {
    TNAS_FAIL(name_, " does not begin with a ReLU; call forward(x)");
  }

  // ---- registration ------------------------------------------------------------------------
  // Marks `t` as a parameter (requires_grad) and returns the same handle.
  Tensor register_parameter(const std::string& name, Tensor t) {
    check_new_name(name, "parameter");
    TNAS_CHECK(t.defined(), name_, ": parameter '", name, "' is an undefined tensor");
    TNAS_CHECK(t.is_leaf(), name_, ": parameter '", name, "' is the result of an op; register a ",
               "leaf (detach() it first)");
    t.set_requires_grad(true);
    params_.emplace_back(name, t);
    return t;
  }
  Tensor register_buffer(const std::string& name, Tensor t) {
    check_new_name(name, "buffer");
    TNAS_CHECK(t.defined(), name_, ": buffer '", name, "' is an undefined tensor");
    buffers_.emplace_back(name, t);
    return t;
  }
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    static_assert(std::is_base_of_v<Module, M>, "register_module takes a tnas::nn::Module");
    check_new_name(name, "child module");
    TNAS_CHECK(m, name_, ": child module '", name, "' is null");
    TNAS_CHECK(m.get() != this, name_, ": a module cannot be its own child ('", name, "')");
    children_.emplace_back(name, m);
    return m;
  }

  // ---- traversal ---------------------------------------------------------------------------
  std::vector<std::pair<std::string, Tensor>> named_parameters() const {
    std::vector<std::pair<std::string, Tensor>> out;
    std::set<const TensorImpl*> seen;
    collect(out, seen, "", /*params=*/true);
    return out;
  }
  std::vector<Tensor> parameters() const {
    std::vector<Tensor> out;
    for (auto& [n, t] : named_parameters()) out.push_back(t);
    return out;
  }
  std::vector<std::pair<std::string, Tensor>> named_buffers() const {
    std::vector<std::pair<std::string, Tensor>> out;
    std::set<const TensorImpl*> seen;
    collect(out, seen, "", /*params=*/false);
    return out;
  }
  std::vector<Tensor> buffers() const {
    std::vector<Tensor> out;
    for (auto& [n, t] : named_buffers()) out.push_back(t);
    return out;
  }
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const {
    return children_;
  }
  std::vector<std::shared_ptr<Module>> children() const {
    std::vector<std::shared_ptr<Module>> out;
    for (auto& [n, m] : children_) out.push_back(m);
    return out;
  }
  // Every module below this one (not this one), depth first, each once, with its path.
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules() const {
    std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
    std::set<const Module*> seen;
    collect_modules(out, seen, "");
    return out;
  }
  // This module's own parameters (not its children's), as registered.
  const std::vector<std::pair<std::string, Tensor>>& own_parameters() const { return params_; }
  const std::vector<std::pair<std::string, Tensor>>& own_buffers() const { return buffers_; }

  int64_t num_parameters() const {
    int64_t n = 0;
    for (auto& [k, t] : named_parameters()) n += t.numel();
    return n;
  }

  // ---- modes -------------------------------------------------------------------------------
  // Training mode (the default) vs evaluation mode, for this module and every module below.
  Module& train(bool on = true) {
    training_ = on;
    for (auto& [n, m] : children_) m->train(on);
    return *this;
  }
  Module& eval() { return train(false); }
  bool is_training() const { return training_; }

  // Drops every parameter's gradient (PyTorch's set_to_none): the next backward() writes a
  // fresh one, which costs nothing to clear and lets an optimizer skip unused parameters.
  void zero_grad() {
    for (auto& t : parameters()) t.zero_grad();
  }

  // Converts every parameter and buffer to dtype `t` in place: e.g. float64 for gradient
  // checks. Gradients are dropped (they would have the old dtype).
  Module& to(DType t) {
    auto f = [t](Tensor& x) {
      if (x.dtype() != t) replace_storage(x, x.to(t));
    };
    for_each_tensor(f);
    for_each_extra(f);
    return *this;
  }
  // Moves every parameter, buffer and extra tensor (extra_tensors()) to device d, in place:
  // handles held elsewhere (an optimizer's) follow. Gradients are dropped.
  Module& to(Device d) {
    auto f = [d](Tensor& x) {
      if (x.device() != d) replace_storage(x, x.to(d));
    };
    for_each_tensor(f);
    for_each_extra(f);
    return *this;
  }
  // The device of the first parameter or buffer (the CPU for a module without any): where
  // inputs must be for forward().
  Device device() {
    Device d = Device::cpu;
    bool found = false;
    for_each_tensor([&](Tensor& x) {
      if (!found) d = x.device();
      found = true;
    });
    return d;
  }

  // ---- state -------------------------------------------------------------------------------
  // Parameters, then buffers, of each module in turn (depth first), by qualified name. The
  // tensors share storage with the module: clone() them to keep a snapshot.
  StateDict state_dict() const {
    StateDict out;
    std::set<const TensorImpl*> seen;
    collect_state(out, seen, "");
    return out;
  }

  // Copies `dict`'s values into this module's tensors, in place (converting the dtype when it
  // differs). With strict, every key of state_dict() must be present and no other key; without,
  // missing and unexpected keys are skipped. A shape mismatch is always an error. Either every
  // value is copied or, on error, none is.
  void load_state_dict(const StateDict& dict, bool strict = true) {
    StateDict mine = state_dict();
    std::unordered_map<std::string, const Tensor*> given;
    for (auto& [k, t] : dict) {
      TNAS_CHECK(given.emplace(k, &t).second, name_, ": load_state_dict: key '", k,
                 "' appears twice in the state dict");
    }
    std::vector<std::string> missing, unexpected;
    std::set<std::string> known;
    for (auto& [k, t] : mine) {
      known.insert(k);
      auto it = given.find(k);
      if (it == given.end()) {
        missing.push_back(k);
        continue;
      }
      const Tensor& src = *it->second;
      TNAS_CHECK(src.defined(), name_, ": load_state_dict: '", k, "' is an undefined tensor");
      TNAS_CHECK(src.shape() == t.shape(), name_, ": load_state_dict: shape mismatch for '", k,
                 "': the state dict has ", src.shape(), ", the module has ", t.shape());
      TNAS_CHECK(t.is_contiguous(), name_, ": load_state_dict: '", k, "' is a non-contiguous ",
                 "view and cannot be written in place");
    }
    for (auto& [k, t] : dict)
      if (!known.count(k)) unexpected.push_back(k);
    if (strict) {
      TNAS_CHECK(missing.empty() && unexpected.empty(), name_,
                 ": load_state_dict (strict): ", describe_keys("missing", missing),
                 missing.empty() || unexpected.empty() ? "" : "; ",
                 describe_keys("unexpected", unexpected));
    }
    NoGrad no_grad;
    for (auto& [k, t] : mine) {
      auto it = given.find(k);
      if (it != given.end() && !it->second->same(t)) t.copy_(*it->second);
    }
  }

 protected:
  // Lets subclasses give a name built after member initialisation.
  void set_name(std::string n) { name_ = std::move(n); }
  // Tensors a subclass keeps outside its parameters and buffers (a supernet's architecture
  // parameters): to(DType) and to(Device) convert and move them with the rest.
  virtual void extra_tensors(const std::function<void(Tensor&)>&) {}

 private:
  void check_new_name(const std::string& n, const char* what) const {
    TNAS_CHECK(!n.empty() && n.find('.') == std::string::npos, name_, ": ", what, " name '", n,
               "' must be non-empty and hold no '.' (dots separate the levels of a path)");
    auto taken = [&](const auto& v) {
      for (auto& [k, x] : v)
        if (k == n) return true;
      return false;
    };
    TNAS_CHECK(!taken(params_) && !taken(buffers_) && !taken(children_), name_, ": ", what,
               " name '", n, "' is already used in this module");
  }

  void collect(std::vector<std::pair<std::string, Tensor>>& out, std::set<const TensorImpl*>& seen,
               const std::string& prefix, bool params) const {
    for (auto& [n, t] : params ? params_ : buffers_)
      if (seen.insert(t.impl_ptr()).second) out.emplace_back(prefix + n, t);
    for (auto& [n, m] : children_) m->collect(out, seen, prefix + n + ".", params);
  }
  void collect_state(StateDict& out, std::set<const TensorImpl*>& seen,
                     const std::string& prefix) const {
    for (auto* v : {&params_, &buffers_})
      for (auto& [n, t] : *v)
        if (seen.insert(t.impl_ptr()).second) out.emplace_back(prefix + n, t);
    for (auto& [n, m] : children_) m->collect_state(out, seen, prefix + n + ".");
  }
  void collect_modules(std::vector<std::pair<std::string, std::shared_ptr<Module>>>& out,
                       std::set<const Module*>& seen, const std::string& prefix) const {
    for (auto& [n, m] : children_) {
      if (!seen.insert(m.get()).second) continue;
      out.emplace_back(prefix + n, m);
      m->collect_modules(out, seen, prefix + n + ".");
    }
  }
  void for_each_extra(const std::function<void(Tensor&)>& f) {
    extra_tensors(f);
    for (auto& [n, m] : children_) m->for_each_extra(f);
  }
  template <class F>
  void for_each_tensor(F&& f) {
    std::set<const TensorImpl*> seen;
    visit_tensors(f, seen);
  }
  template <class F>
  void visit_tensors(F& f, std::set<const TensorImpl*>& seen) {
    for (auto* v : {&params_, &buffers_})
      for (auto& [n, t] : *v)
        if (seen.insert(t.impl_ptr()).second) f(t);
    for (auto& [n, m] : children_) m->visit_tensors(f, seen);
  }

  // Points x's TensorImpl at src's storage and layout, so every handle to x sees the new value.
  static void replace_storage(Tensor& x, const Tensor& src) {
    TensorImpl* d = x.impl_ptr();
    const TensorImpl* s = src.impl_ptr();
    d->storage = s->storage;
    d->shape = s->shape;
    d->strides = s->strides;
    d->offset = s->offset;
    d->dtype = s->dtype;
    d->device = s->device;
    d->grad.reset();
  }
  static std::string describe_keys(const char* what, const std::vector<std::string>& keys) {
    if (keys.empty()) return "";
    std::string s =
        std::to_string(keys.size()) + " " + what + " key" + (keys.size() == 1 ? "" : "s") + " (";
    for (size_t i = 0; i < keys.size() && i < 8; ++i) s += (i ? ", '" : "'") + keys[i] + "'";
    if (keys.size() > 8) s += ", ...";
    return s + ")";
  }

  std::string name_;
  bool training_ = true;
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

}  // namespace tnas::nn
