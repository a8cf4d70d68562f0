// Bulk tensor copy (TMA) descriptors for bf16 tensors, encoded through the driver entry point
// fetched at run time (no link against libcuda).
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mp::cuda::sm90 {

// Encodes a bf16 tensor map with 128-byte swizzle and zero fill outside the tensor. dims and
// box are innermost first; byte_strides[i] is the stride of dimension i + 1 in bytes.
// cudaErrorNotSupported when the driver lacks the entry point, cudaErrorInvalidValue when the
// driver rejects the description (alignment, sizes).
cudaError_t EncodeBf16TensorMap(CUtensorMap* map, const void* base, int rank,
                                const uint64_t* dims, const uint64_t* byte_strides,
                                const uint32_t* box);

}  // namespace mp::cuda::sm90
