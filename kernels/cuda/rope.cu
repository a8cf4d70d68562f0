#include "kernels/cuda/rope.h"

#include <cmath>

namespace mp::cuda {
namespace {

// One block per token: the cos/sin of its d/2 angles are computed once into shared memory and
// applied to every head.
__global__ void RopeNeoxKernel(__nv_bfloat16* x, const int32_t* positions, const float* inv_freq,
                               int64_t heads, int64_t half) {
  extern __shared__ float cos_sin[];  // [2 * half]
  float* cos_a = cos_sin;
  float* sin_a = cos_sin + half;
  const int64_t t = blockIdx.x;
  const float pos = static_cast<float>(positions[t]);
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = pos * inv_freq[i];
    sincosf(angle, &sin_a[i], &cos_a[i]);
  }
  __syncthreads();
  __nv_bfloat16* xt = x + t * heads * 2 * half;
  for (int64_t idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
    const int64_t h = idx / half, i = idx % half;
    __nv_bfloat16* v = xt + h * 2 * half;
    const float a = __bfloat162float(v[i]);
    const float b = __bfloat162float(v[i + half]);
    v[i] = __float2bfloat16_rn(a * cos_a[i] - b * sin_a[i]);
    v[i + half] = __float2bfloat16_rn(b * cos_a[i] + a * sin_a[i]);
  }
}

}  // namespace

void RopeInvFreq(double theta, int64_t head_dim, float* inv_freq) {
  // As kernels/cpu/rope.cc (and transformers): every step in fp32.
  const float base = static_cast<float>(theta);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(base, exponent);
  }
}

cudaError_t RopeNeox(__nv_bfloat16* x, const int32_t* positions, const float* inv_freq, int64_t n,
                     int64_t heads, int64_t head_dim, cudaStream_t stream) {
  if (n <= 0 || heads <= 0 || head_dim <= 0) return cudaSuccess;
  if (head_dim % 2 != 0 || head_dim > 8192 || n > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t half = head_dim / 2;
  const size_t smem = static_cast<size_t>(2 * half) * sizeof(float);
  RopeNeoxKernel<<<static_cast<unsigned>(n), 128, smem, stream>>>(x, positions, inv_freq, heads,
                                                                  half);
  return cudaGetLastError();
}

}  // namespace mp::cuda
