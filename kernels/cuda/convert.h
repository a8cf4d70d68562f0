// Element-type conversions on the device. The one place that dispatches on the source type.
// Everything runs on `stream` and returns the launch status; nothing synchronizes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/element_type.h"

namespace mp::cuda {

// dst[i] = bf16(src[i]), rounding to nearest even (f16 goes through its exact fp32 value; bf16
// is a copy). src and dst must not overlap unless they are the same bf16 buffer.
cudaError_t ConvertToBf16(const void* src,  // [count] of src_type
                          ElementType src_type,
                          __nv_bfloat16* dst,  // [count]
                          int64_t count, cudaStream_t stream);

// dst[i] = float(src[i]) (exact).
cudaError_t Bf16ToF32(const __nv_bfloat16* src,  // [count]
                      float* dst,                // [count]
                      int64_t count, cudaStream_t stream);

}  // namespace mp::cuda
