#include "kernels/cpu/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>

namespace mp::cpu {
namespace {

// C[m, n] *= beta, the k == 0 case that BLAS refuses (its leading-dimension checks need k >= 1).
void ScaleRows(float* c, int64_t ldc, int64_t m, int64_t n, float beta) {
  for (int64_t i = 0; i < m; ++i) {
    float* row = c + i * ldc;
    if (beta == 0.0f) {
      std::fill(row, row + n, 0.0f);
    } else {
      for (int64_t j = 0; j < n; ++j) row[j] *= beta;
    }
  }
}

}  // namespace

void Linear(const float* x, const float* w, const float* bias, int64_t n, int64_t in, int64_t out,
            float* y) {
  float beta = 0.0f;
  if (bias != nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(y + i * out, bias, static_cast<size_t>(out) * sizeof(float));
    }
    beta = 1.0f;
  }
  GemmNT(x, in, w, in, y, out, n, out, in, 1.0f, beta);
}

void GemmNT(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
            int64_t m, int64_t n, int64_t k, float alpha, float beta) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    ScaleRows(c, ldc, m, n, beta);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a, static_cast<blasint>(lda),
              b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

void GemmNN(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
            int64_t m, int64_t n, int64_t k, float alpha, float beta) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    ScaleRows(c, ldc, m, n, beta);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a, static_cast<blasint>(lda),
              b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

}  // namespace mp::cpu
