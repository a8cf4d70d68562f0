#include "kernels/cuda/convert.h"

#include <cuda_fp16.h>

#include "kernels/cuda/launch_util.cuh"

namespace mp::cuda {
namespace {

using internal::GlobalThread;
using internal::GridFor;
using internal::GridStride;
using internal::kThreads;

__global__ void F32ToBf16Kernel(const float* src, __nv_bfloat16* dst, int64_t count) {
  for (int64_t i = GlobalThread(); i < count; i += GridStride()) dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void F16ToBf16Kernel(const __half* src, __nv_bfloat16* dst, int64_t count) {
  for (int64_t i = GlobalThread(); i < count; i += GridStride()) {
    dst[i] = __float2bfloat16_rn(__half2float(src[i]));
  }
}

__global__ void Bf16ToF32Kernel(const __nv_bfloat16* src, float* dst, int64_t count) {
  for (int64_t i = GlobalThread(); i < count; i += GridStride()) dst[i] = __bfloat162float(src[i]);
}

}  // namespace

cudaError_t ConvertToBf16(const void* src, ElementType src_type, __nv_bfloat16* dst, int64_t count,
                          cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  switch (src_type) {
    case ElementType::kBF16:
      if (src == dst) return cudaSuccess;
      return cudaMemcpyAsync(dst, src, static_cast<size_t>(count) * sizeof(__nv_bfloat16),
                             cudaMemcpyDeviceToDevice, stream);
    case ElementType::kF32:
      F32ToBf16Kernel<<<GridFor(count), kThreads, 0, stream>>>(static_cast<const float*>(src), dst,
                                                              count);
      return cudaGetLastError();
    case ElementType::kF16:
      F16ToBf16Kernel<<<GridFor(count), kThreads, 0, stream>>>(static_cast<const __half*>(src),
                                                              dst, count);
      return cudaGetLastError();
  }
  return cudaErrorInvalidValue;
}

cudaError_t Bf16ToF32(const __nv_bfloat16* src, float* dst, int64_t count, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  Bf16ToF32Kernel<<<GridFor(count), kThreads, 0, stream>>>(src, dst, count);
  return cudaGetLastError();
}

}  // namespace mp::cuda
