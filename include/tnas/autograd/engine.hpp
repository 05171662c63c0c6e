// backward(): reverse-mode differentiation over the graph recorded by ops.
//
// One topological sort per call (iterative, so deep graphs cannot overflow the stack); each
// node runs once, after every node that feeds it a gradient; gradients arriving at a node from
// several uses are summed; leaves accumulate into .grad() across calls (zero them with
// Tensor::zero_grad or an optimizer's zero_grad).
#pragma once

#include <unordered_map>
#include <vector>

#include "tnas/autograd/node.hpp"

namespace tnas {

namespace autograd::detail {

// dst += src (same shape, dtype, device; dst contiguous and owned by the caller).
inline void accumulate_into(const Tensor& dst, const Tensor& src) {
  TNAS_CHECK(
      dst.shape() == src.shape() && dst.dtype() == src.dtype() && dst.device() == src.device(),
      "autograd: cannot add a gradient of shape ", src.shape(), " ", src.dtype(), " ", src.device(),
      " to one of shape ", dst.shape(), " ", dst.dtype(), " ", dst.device());
  Tensor s = src.contiguous();
  if (dst.device() == Device::cpu) {
    dispatch(dst.dtype(), [&]<class T>() {
      T* d = dst.data<T>();
      const T* p = s.data<T>();
      const int64_t n = dst.numel();
#pragma omp parallel for simd if (n > 32768)
      for (int64_t i = 0; i < n; ++i) d[i] += p[i];
    });
  } else {
    TNAS_CHECK(device_hooks().accumulate, "autograd: no accumulate for ", dst.device());
    device_hooks().accumulate(dst.raw(), s.raw(), dst.dtype(), size_t(dst.numel()));
  }
}

struct Slot {
  Tensor grad;
  bool owned = false;  // grad is a buffer of the engine's own, safe to add into in place
};

inline void add_to_slot(Slot& slot, const Tensor& g) {
  if (!slot.grad.defined()) {
    slot.grad = g;
    return;
  }
  if (!slot.owned) {
    // A gradient nobody else holds (the usual case: an op's backward made it) is taken over;
    // one that may be shared (an op passing its incoming gradient through) is copied first.
    if (!(slot.grad.sole_owner() && slot.grad.is_contiguous())) slot.grad = slot.grad.clone();
    slot.owned = true;
  }
  accumulate_into(slot.grad, g);
}

}  // namespace autograd::detail

// Computes d(root)/d(leaf) for every leaf that requires grad and adds it to leaf.grad().
// `grad` is the gradient of root; it defaults to 1 and root must then have one element.
inline void backward(const Tensor& root, Tensor grad = {}) {
  using namespace autograd;
  TNAS_CHECK(root.defined(), "backward: undefined tensor");
  TNAS_CHECK(root.requires_grad(), "backward: the tensor does not require grad (no parameter ",
             "that requires grad was used to compute it, or it was computed under NoGrad)");
  if (!grad.defined()) {
    TNAS_CHECK(root.numel() == 1, "backward: implicit gradient needs a one-element tensor, got ",
               "shape ", root.shape(), "; pass the gradient explicitly");
    grad = Tensor::ones(root.shape(), root.dtype(), root.device());
  }
  TNAS_CHECK(grad.shape() == root.shape(), "backward: gradient of shape ", grad.shape(),
             " for a tensor of shape ", root.shape());
  NoGrad no_grad;  // backward functions compute plain values
  std::shared_ptr<Node> start = edge_of(root);

  // Count, for every reachable node, how many edges lead into it.
  std::unordered_map<Node*, int> deps;
  std::vector<Node*> stack{start.get()};
  deps[start.get()] = 0;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (auto& nx : n->next) {
      if (!nx) continue;
      auto [it, fresh] = deps.try_emplace(nx.get(), 0);
      ++it->second;
      if (fresh) stack.push_back(nx.get());
    }
  }

  std::unordered_map<Node*, autograd::detail::Slot> grads;
  grads[start.get()].grad = grad;
  std::vector<Node*> ready{start.get()};
  while (!ready.empty()) {
    Node* n = ready.back();
    ready.pop_back();
    autograd::detail::Slot slot = std::move(grads[n]);
    grads.erase(n);
    if (auto* acc = dynamic_cast<AccumulateGrad*>(n)) {
      if (auto leaf = acc->leaf.lock(); leaf && slot.grad.defined()) {
        TNAS_CHECK(slot.grad.shape() == leaf->shape, "backward: gradient of shape ",
                   slot.grad.shape(), " for a leaf of shape ", leaf->shape);
        if (!leaf->grad) {
          const bool own = slot.owned || (slot.grad.sole_owner() && slot.grad.is_contiguous());
          leaf->grad = (own ? slot.grad.contiguous() : slot.grad.clone()).impl_shared();
        } else {
          autograd::detail::accumulate_into(Tensor(leaf->grad), slot.grad);
        }
      }
      continue;
    }
    std::vector<Tensor> in_grads;
    if (slot.grad.defined()) {
      TNAS_CHECK(slot.grad.shape() == n->out_shape, "backward of ", n->name,
                 ": incoming gradient has shape ", slot.grad.shape(), ", expected ", n->out_shape);
      in_grads = n->backward(slot.grad);
      TNAS_CHECK(in_grads.size() == n->next.size(), "backward of ", n->name, " returned ",
                 in_grads.size(), " gradients for ", n->next.size(), " inputs");
    }
    for (size_t i = 0; i < n->next.size(); ++i) {
      Node* nx = n->next[i].get();
      if (!nx) continue;
      if (i < in_grads.size() && in_grads[i].defined())
        autograd::detail::add_to_slot(grads[nx], in_grads[i]);
      if (--deps[nx] == 0) ready.push_back(nx);
    }
  }
}

}  // namespace tnas
