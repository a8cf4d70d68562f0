// Embedding lookup, RMSNorm, residual add and the SwiGLU activation (fp32, CPU reference).
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

}  // namespace mp::cpu
