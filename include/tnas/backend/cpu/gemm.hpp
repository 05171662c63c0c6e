// Dense matrix product on raw row-major buffers (Eigen inside; Eigen never appears in the
// signature). The conv kernels and the op layer build on this.
#pragma once

#include <cstdint>

#include "tnas/backend/cpu/simd.hpp"
#include "tnas/core/error.hpp"

namespace tnas::cpu {

// Row-major C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, where op(X) is X or X^T.
//   A: trans_a ? [K, M] : [M, K], row stride lda (elements)
//   B: trans_b ? [N, K] : [K, N], row stride ldb
//   C: [M, N], row stride ldc
// beta == 0 means C is not read (it may hold garbage or NaN). Called from inside an OpenMP
// parallel region, the product runs on the calling thread only (Eigen does not nest).
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;
  using MMap = Eigen::Map<Mat, 0, Eigen::OuterStride<>>;
  TNAS_CHECK(M >= 0 && N >= 0 && K >= 0, "cpu::gemm: negative size M=", M, " N=", N, " K=", K);
  if (M == 0 || N == 0) return;
  TNAS_CHECK(ldc >= N, "cpu::gemm: ldc=", ldc, " < N=", N);
  MMap c(C, M, N, Eigen::OuterStride<>(ldc));
  if (K == 0 || alpha == T(0)) {
    if (beta == T(0)) {
      c.setZero();
    } else if (beta != T(1)) {
      c *= beta;
    }
    return;
  }
  const int64_t ar = trans_a ? K : M, ac = trans_a ? M : K;
  const int64_t br = trans_b ? N : K, bc = trans_b ? K : N;
  TNAS_CHECK(lda >= ac && ldb >= bc, "cpu::gemm: lda=", lda, " (need >= ", ac, "), ldb=", ldb,
             " (need >= ", bc, ")");
  CMap a(A, ar, ac, Eigen::OuterStride<>(lda));
  CMap b(B, br, bc, Eigen::OuterStride<>(ldb));
  if (beta != T(0) && beta != T(1)) c *= beta;
  const bool acc = beta != T(0);
  auto run = [&](const auto& opa, const auto& opb) {
    if (acc) {
      c.noalias() += alpha * opa * opb;
    } else {
      c.noalias() = alpha * opa * opb;
    }
  };
  if (!trans_a && !trans_b) {
    run(a, b);
  } else if (!trans_a && trans_b) {
    run(a, b.transpose());
  } else if (trans_a && !trans_b) {
    run(a.transpose(), b);
  } else {
    run(a.transpose(), b.transpose());
  }
}

}  // namespace tnas::cpu
