// Token sampling from one row of bf16 logits on the device, the same functions as
// kernels/cpu/sampling.h (the result is written to device memory; nothing synchronizes).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace mp::cuda {

// *out = index of the largest logit, the lowest index on ties. vocab in [1, 2^31).
cudaError_t ArgmaxBf16(const __nv_bfloat16* logits,  // [vocab]
                       int64_t vocab,
                       int32_t* out,  // [1] device
                       cudaStream_t stream);

// Bytes of device workspace TopPSampleBf16 needs for `vocab` logits.
size_t TopPSampleWorkspaceBytes(int64_t vocab);

// Nucleus sampling: weights exp((l - max) / temperature) in fp64, tokens ordered by decreasing
// weight (the lower index first among equals), the shortest prefix whose weight reaches top_p of
// the total (at least one token; top_p >= 1 keeps all), then the token whose cumulative weight
// interval holds uniform * (kept weight). temperature must be > 0; uniform in [0, 1) is
// clamped. `workspace` holds TopPSampleWorkspaceBytes(vocab) bytes, 256-byte aligned.
cudaError_t TopPSampleBf16(const __nv_bfloat16* logits,  // [vocab]
                           int64_t vocab, float temperature, float top_p, double uniform,
                           void* workspace, size_t workspace_bytes,
                           int32_t* out,  // [1] device
                           cudaStream_t stream);

}  // namespace mp::cuda
