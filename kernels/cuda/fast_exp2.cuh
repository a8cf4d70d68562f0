// 2^x by the special function unit (ex2.approx.ftz: an approximation, denormal inputs and results
// flushed to zero, -inf -> +0), for the softmax of the attention kernels and the estimation's
// score passes. Device code; include from .cu files only.
#pragma once

namespace mp::cuda::internal {

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace mp::cuda::internal
