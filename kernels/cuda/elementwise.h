// Row-wise and elementwise ops of a transformer layer on bf16 tensors, fp32 math, results rounded
// to nearest even. The same functions as kernels/cpu/elementwise.h. Callers validate shapes and
// ids; everything runs on `stream` and returns the launch status without synchronizing. 16-byte
// vector accesses are used when the pointers and row lengths allow, scalar ones otherwise.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mp::cuda {

// out[i, :] = table[ids[i], :]; every id must be in [0, vocab).
cudaError_t Embedding(const int32_t* ids,           // [n] device
                      int64_t n,
                      const __nv_bfloat16* table,  // [vocab, hidden]
                      int64_t hidden,
                      __nv_bfloat16* out,  // [n, hidden]
                      cudaStream_t stream);

// out[i, :] = w * (x[i, :] / sqrt(mean(x[i, :]^2) + eps)); out may be x.
cudaError_t RmsNorm(const __nv_bfloat16* x,  // [n, d]
                    const __nv_bfloat16* w,  // [d]
                    int64_t n, int64_t d, float eps,
                    __nv_bfloat16* out,  // [n, d]
                    cudaStream_t stream);

// x += y.
cudaError_t AddInPlace(__nv_bfloat16* x,        // [count]
                       const __nv_bfloat16* y,  // [count]
                       int64_t count, cudaStream_t stream);

// out[i, j] = silu(gate_up[i, j]) * gate_up[i, inter + j], silu(g) = g / (1 + exp(-g)).
cudaError_t SiluMul(const __nv_bfloat16* gate_up,  // [n, 2 * inter]
                    int64_t n, int64_t inter,
                    __nv_bfloat16* out,  // [n, inter]
                    cudaStream_t stream);

}  // namespace mp::cuda
