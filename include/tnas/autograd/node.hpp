// The autograd graph: a Node per op result that needs a gradient.
//
// represents: the backward of one op. `next[i]` is the node that receives the gradient for
//   the op's i-th input (null when that input needs none); `backward(g)` maps the gradient of
//   the op's output to one gradient per input (an undefined Tensor where none flows).
// Ownership runs from results to inputs only: a result holds its node, a node holds its
//   inputs' nodes and what its backward reads. So the graph is freed when the last result
//   goes, and a backward closure must never capture its own output with its history (capture
//   out.detach()); record() below is the one way ops build nodes.
#pragma once

#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "tnas/autograd/grad_mode.hpp"
#include "tnas/core/tensor.hpp"

namespace tnas::autograd {

struct Node {
  explicit Node(const char* n) : name(n) {}
  // Releases the chain behind this node iteratively: a graph thousands of ops deep would
  // otherwise be freed by as many nested destructor calls.
  virtual ~Node() {
    std::vector<std::shared_ptr<Node>> stack = std::move(next);
    while (!stack.empty()) {
      std::shared_ptr<Node> n = std::move(stack.back());
      stack.pop_back();
      if (n && n.use_count() == 1) {
        for (auto& m : n->next) stack.push_back(std::move(m));
        n->next.clear();
      }
    }
  }
  virtual std::vector<Tensor> backward(const Tensor& grad) = 0;
  const char* name;
  std::vector<std::shared_ptr<Node>> next;
  Shape out_shape;  // the shape the incoming gradient must have (checked by the engine)
};

// The sink of a leaf: adds the incoming gradient to leaf.grad().
struct AccumulateGrad final : Node {
  explicit AccumulateGrad(std::weak_ptr<TensorImpl> l)
      : Node("AccumulateGrad"), leaf(std::move(l)) {}
  std::vector<Tensor> backward(const Tensor&) override { return {}; }
  std::weak_ptr<TensorImpl> leaf;
};

template <class F>
struct FnNode final : Node {
  FnNode(const char* n, F&& fn) : Node(n), f(std::move(fn)) {}
  std::vector<Tensor> backward(const Tensor& grad) override { return f(grad); }
  F f;
};

// The node that receives gradients for t, or null when t needs none.
inline std::shared_ptr<Node> edge_of(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return nullptr;
  TensorImpl* impl = t.impl_ptr();
  if (impl->grad_fn) return impl->grad_fn;
  if (!impl->accumulator) impl->accumulator = std::make_shared<AccumulateGrad>(t.impl_shared());
  return impl->accumulator;
}

// True when an op on `inputs` must record a node: grad mode is on and an input needs a gradient.
inline bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}
inline bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

// Makes `out` the result of op `name` on `inputs`, whose backward is `fn(grad_out)` returning
// one gradient per input (std::vector<Tensor>, undefined where none flows). Does nothing when
// no input needs a gradient or grad mode is off, so callers may call it unconditionally; they
// should test needs_grad() first only to skip saving tensors for backward.
template <class F>
void record(const char* name, Tensor& out, std::vector<const Tensor*> inputs, F&& fn) {
  if (!grad_enabled()) return;
  bool any = false;
  for (const Tensor* t : inputs) any |= t->defined() && t->requires_grad();
  if (!any) return;
  auto node = std::make_shared<FnNode<std::decay_t<F>>>(name, std::forward<F>(fn));
  node->next.reserve(inputs.size());
  for (const Tensor* t : inputs) node->next.push_back(edge_of(*t));
  node->out_shape = out.shape();
  out.impl_ptr()->grad_fn = std::move(node);
  out.impl_ptr()->requires_grad = true;
}
inline void record_vec(const char* name, Tensor& out, const std::vector<Tensor>& inputs,
                       std::function<std::vector<Tensor>(const Tensor&)> fn) {
  std::vector<const Tensor*> ptrs;
  for (auto& t : inputs) ptrs.push_back(&t);
  record(name, out, std::move(ptrs), std::move(fn));
}

}  // namespace tnas::autograd
