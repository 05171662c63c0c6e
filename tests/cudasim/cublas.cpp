// cudasim's cuBLAS: the handle calls and the two SGEMMs cuda/conv.cu makes, column-major as
// cuBLAS, accumulated in double, enqueued on the handle's stream (so captured like kernels).
// See cudasim.hpp.
#include <algorithm>
#include <cstdint>

#include "include/cublas_v2.h"
#include "internal.hpp"

struct cublasContext {
  cudaStream_t stream = nullptr;
};

namespace {
struct Gemm {
  bool ta, tb;
  int m, n, k;
  float alpha, beta;
  const float* A;
  int lda;
  long long sA;
  const float* B;
  int ldb;
  long long sB;
  float* C;
  int ldc;
  long long sC;
  int batch;
};
void run_gemm(void* p) {
  const Gemm& g = *static_cast<Gemm*>(p);
  for (int b = 0; b < g.batch; ++b) {
    const float* A = g.A + b * g.sA;
    const float* B = g.B + b * g.sB;
    float* C = g.C + b * g.sC;
    for (int j = 0; j < g.n; ++j)
      for (int i = 0; i < g.m; ++i) {
        double acc = 0;
        for (int l = 0; l < g.k; ++l) {
          const float a = g.ta ? A[l + int64_t(i) * g.lda] : A[i + int64_t(l) * g.lda];
          const float bv = g.tb ? B[j + int64_t(l) * g.ldb] : B[l + int64_t(j) * g.ldb];
          acc += double(a) * double(bv);
        }
        float& c = C[i + int64_t(j) * g.ldc];
        // beta == 0: C is not read (it may hold NaN), as in cuBLAS.
        c = float(g.alpha * acc + (g.beta == 0.0f ? 0.0 : double(g.beta) * c));
      }
  }
}
cublasStatus_t gemm(cublasHandle_t h, const Gemm& g) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  const int rowsA = g.ta ? g.k : g.m, rowsB = g.tb ? g.n : g.k;
  if (g.lda < std::max(1, rowsA) || g.ldb < std::max(1, rowsB) || g.ldc < std::max(1, g.m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (g.m == 0 || g.n == 0 || g.batch == 0) return CUBLAS_STATUS_SUCCESS;
  const int colsA = g.ta ? g.m : g.k, colsB = g.tb ? g.k : g.n;
  const auto span = [](int ld, int rows, int cols, long long stride, int batch) {
    return size_t((batch - 1) * stride + int64_t(ld) * (cols - 1) + rows) * sizeof(float);
  };
  if ((g.k > 0 && (!cudasim::is_device(g.A, span(g.lda, rowsA, colsA, g.sA, g.batch)) ||
                   !cudasim::is_device(g.B, span(g.ldb, rowsB, colsB, g.sB, g.batch)))) ||
      !cudasim::is_device(g.C, span(g.ldc, g.m, g.n, g.sC, g.batch)))
    cudasim::fail("a cuBLAS GEMM operand is not (all) device memory");
  cudasim::enqueue(h->stream, run_gemm, new Gemm(g), [](void* p) { delete static_cast<Gemm*>(p); });
  return CUBLAS_STATUS_SUCCESS;
}
}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void* ws, size_t bytes) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes && !cudasim::is_device(ws, bytes)) return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float* alpha, const float* A, int lda,
                           const float* B, int ldb, const float* beta, float* C, int ldc) {
  return gemm(h, {ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, *alpha, *beta, A, lda, 0, B, ldb,
                  0, C, ldc, 0, 1});
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float* alpha, const float* A, int lda,
                                         long long strideA, const float* B, int ldb,
                                         long long strideB, const float* beta, float* C, int ldc,
                                         long long strideC, int batch) {
  return gemm(h, {ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, *alpha, *beta, A, lda, strideA, B,
                  ldb, strideB, C, ldc, strideC, batch});
}
