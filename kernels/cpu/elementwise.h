// Embedding lookup, RMSNorm, residual add, the SwiGLU activation, a vectorized exp and the
// online-softmax step of tiled attention (fp32, CPU reference). Shapes are the caller's
// responsibility; nothing here checks or allocates.
#pragma once

#include <cstdint>

namespace mp::cpu {

// out[i, :] = table[ids[i], :]. Caller guarantees 0 <= ids[i] < vocab.
void Embedding(const int32_t* ids,  // [n]
               int64_t n,
               const float* table,  // [vocab, hidden]
               int64_t hidden,
               float* out);  // [n, hidden]

// y[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * w. x and y may alias.
void RmsNorm(const float* x,  // [n, d]
             const float* w,  // [d]
             int64_t n, int64_t d, float eps,
             float* y);  // [n, d]

// x[i] += y[i].
void AddInPlace(float* x, const float* y, int64_t count);

// out[i, j] = silu(gate_up[i, j]) * gate_up[i, inter + j]  (gate first, then up).
void SiluMul(const float* gate_up,  // [n, 2 * inter]
             int64_t n, int64_t inter,
             float* out);  // [n, inter]

// x[i] = exp(x[i]) in place; relative error <= 2e-7 on [-87, 88], 0 below, +inf above.
void ExpInPlace(float* x, int64_t count);

// One step of the online softmax of tiled attention, for each row r of a block of logits:
//   m = max(row_max[r], max_c s[r, c]);  a = exp(row_max[r] - m);  s[r, c] = exp(s[r, c] - m);
//   row_sum[r] = a * row_sum[r] + sum_c s[r, c];  acc[r, :] *= a;  row_max[r] = m.
// -inf marks a masked logit (its p is exactly 0). A row with m = -inf (nothing visible yet) gets
// s = 0 and keeps its state. exp as in ExpInPlace; sums in fp32.
void OnlineSoftmaxStep(float* s,  // [rows, cols], logits in, unnormalized p out
                       int64_t rows, int64_t cols,
                       float* row_max,  // [rows], -inf initially
                       float* row_sum,  // [rows], 0 initially
                       float* acc,      // [rows, acc_cols], the running p V
                       int64_t acc_cols);

}  // namespace mp::cpu
