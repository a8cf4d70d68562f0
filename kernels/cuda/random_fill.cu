#include "kernels/cuda/random_fill.h"

#include "kernels/cuda/launch_util.cuh"

namespace mp::cuda {
namespace {

using internal::GlobalThread;
using internal::GridFor;
using internal::GridStride;
using internal::kThreads;

__device__ __forceinline__ uint64_t SplitMix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// 1.0f / 37837.2261f rounded as the host computes it: the inverse standard deviation of a sum of
// four uniforms on {0, ..., 65535}.
constexpr float kInvStd = 0x1.bb67bp-16f;

__global__ void FillRandomNormalishKernel(__nv_bfloat16* out, int64_t count, uint64_t key,
                                          float scale, float offset) {
  for (int64_t i = GlobalThread(); i < count; i += GridStride()) {
    const uint64_t r = SplitMix64(key + (static_cast<uint64_t>(i) + 1) * 0x9E3779B97F4A7C15ull);
    const int64_t sum = static_cast<int64_t>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) +
                                             ((r >> 32) & 0xFFFF) + (r >> 48));
    const float z = __fmul_rn(static_cast<float>(sum - 131070), kInvStd);
    // Separate roundings (no fused multiply-add), as on the host.
    out[i] = __float2bfloat16_rn(__fadd_rn(offset, __fmul_rn(scale, z)));
  }
}

}  // namespace

cudaError_t FillRandomNormalishBf16(__nv_bfloat16* out, int64_t count, uint64_t key, float scale,
                                    float offset, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  FillRandomNormalishKernel<<<GridFor(count), kThreads, 0, stream>>>(out, count, key, scale,
                                                                     offset);
  return cudaGetLastError();
}

}  // namespace mp::cuda
