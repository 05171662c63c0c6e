// Matrix product and the fully connected layer's op.
#pragma once

#include "tnas/backend/cpu/gemm.hpp"
#include "tnas/ops/common.hpp"

namespace tnas {

namespace ops::detail {
// C = op(A) op(B) for 2-D contiguous tensors (op = transpose when the flag is set).
inline Tensor mm(const Tensor& A, bool ta, const Tensor& B, bool tb) {
  const int64_t M = ta ? A.dim(1) : A.dim(0), K = ta ? A.dim(0) : A.dim(1);
  const int64_t N = tb ? B.dim(0) : B.dim(1);
  Tensor C = Tensor::empty({M, N}, A.dtype(), A.device());
  if (A.device() != Device::cpu) {
    backend::kernel_f32("matmul", A.device(), A.dtype(), &backend::Kernels::gemm)(
        ta, tb, M, N, K, 1.f, A.data<float>(), A.dim(1), B.data<float>(), B.dim(1), 0.f,
        C.data<float>(), N);
    return C;
  }
  dispatch(A.dtype(), [&]<class T>() {
    cpu::gemm<T>(ta, tb, M, N, K, T(1), A.data<T>(), A.dim(1), B.data<T>(), B.dim(1), T(0),
                 C.data<T>(), N);
  });
  return C;
}
}  // namespace ops::detail

// [M, K] x [K, N] -> [M, N].
inline Tensor matmul(const Tensor& a0, const Tensor& b0) {
  ops::detail::require_same("matmul", a0, b0);
  ops::detail::require_rank("matmul", a0, 2, "left operand");
  ops::detail::require_rank("matmul", b0, 2, "right operand");
  TNAS_CHECK(a0.dim(1) == b0.dim(0), "matmul: inner extents differ, ", a0.shape(), " x ",
             b0.shape());
  Tensor a = a0.contiguous(), b = b0.contiguous();
  Tensor out = ops::detail::mm(a, false, b, false);
  if (autograd::needs_grad({&a0, &b0})) {
    Tensor ad = a.detach(), bd = b.detach();
    bool ga = a0.requires_grad(), gb = b0.requires_grad();
    autograd::record("matmul", out, {&a0, &b0}, [ad, bd, ga, gb](const Tensor& g0) {
      Tensor g = g0.contiguous();
      return std::vector<Tensor>{ga ? ops::detail::mm(g, false, bd, true) : Tensor(),
                                 gb ? ops::detail::mm(ad, true, g, false) : Tensor()};
    });
  }
  return out;
}

// y = x w^T + b, with x [B, in], w [out, in], b [out] (b may be undefined).
inline Tensor linear(const Tensor& x0, const Tensor& w0, const Tensor& b = {}) {
  ops::detail::require_same("linear", x0, w0);
  ops::detail::require_rank("linear", x0, 2, "input");
  ops::detail::require_rank("linear", w0, 2, "weight");
  TNAS_CHECK(x0.dim(1) == w0.dim(1), "linear: input ", x0.shape(), " has ", x0.dim(1),
             " features but weight ", w0.shape(), " expects ", w0.dim(1));
  if (b.defined()) {
    ops::detail::require_same("linear", x0, b);
    TNAS_CHECK(b.rank() == 1 && b.dim(0) == w0.dim(0), "linear: bias of shape ", b.shape(),
               " for weight ", w0.shape());
  }
  Tensor x = x0.contiguous(), w = w0.contiguous();
  Tensor out = ops::detail::mm(x, false, w, true);
  const int64_t B = x.dim(0), O = w.dim(0);
  if (b.defined()) {
    Tensor bc = b.contiguous();
    if (out.device() != Device::cpu) {  // out += b broadcast over the rows
      const int64_t st[2] = {0, 1}, so[2] = {O, 1};
      backend::kernel("linear", out.device(), &backend::Kernels::binary)(
          backend::BinaryOp::add, out.dtype(), out.raw(), backend::make_view(out.shape(), so),
          bc.raw(), backend::make_view(out.shape(), st), out.raw());
    } else
      dispatch(out.dtype(), [&]<class T>() {
        T* o = out.data<T>();
        const T* pb = bc.data<T>();
        for (int64_t i = 0; i < B; ++i)
          for (int64_t j = 0; j < O; ++j) o[i * O + j] += pb[j];
      });
  }
  if (autograd::needs_grad({&x0, &w0, &b})) {
    Tensor xd = x.detach(), wd = w.detach();
    bool gx = x0.requires_grad(), gw = w0.requires_grad(), gb = b.defined() && b.requires_grad();
    autograd::record("linear", out, {&x0, &w0, &b}, [=](const Tensor& g0) {
      Tensor g = g0.contiguous();
      Tensor db;
      if (gb) {
        db = Tensor::zeros({O}, g.dtype(), g.device());
        if (g.device() != Device::cpu)
          backend::kernel("linear backward", g.device(), &backend::Kernels::reduce_sum)(
              g.dtype(), g.raw(), backend::make_view(g.shape(), g.strides().data()), 0b1u, db.raw(),
              1.0);
        else
          dispatch(g.dtype(), [&]<class T>() {
            const T* pg = g.data<T>();
            T* o = db.data<T>();
            for (int64_t i = 0; i < B; ++i)
              for (int64_t j = 0; j < O; ++j) o[j] += pg[i * O + j];
          });
      }
      return std::vector<Tensor>{gx ? ops::detail::mm(g, false, wd, false) : Tensor(),
                                 gw ? ops::detail::mm(g, true, xd, false) : Tensor(), db};
    });
  }
  return out;
}

}  // namespace tnas
