// GEMMs through OpenBLAS (fp32, row-major). OpenBLAS threads each call over the machine's cores.
// Any of m, n, k may be 0; k = 0 gives C = beta C.
#pragma once

#include <cstdint>

namespace mp::cpu {

// y = x W^T (+ bias). W is a torch Linear weight, [out, in] row-major.
void Linear(const float* x,     // [n, in]
            const float* w,     // [out, in]
            const float* bias,  // [out] or nullptr
            int64_t n, int64_t in, int64_t out,
            float* y);  // [n, out]

// C[m, n] = alpha * A[m, k] B[n, k]^T + beta * C  (all row-major with the given leading dims).
void GemmNT(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
            int64_t m, int64_t n, int64_t k, float alpha, float beta);
// C[m, n] = alpha * A[m, k] B[k, n] + beta * C.
void GemmNN(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
            int64_t m, int64_t n, int64_t k, float alpha, float beta);

}  // namespace mp::cpu
