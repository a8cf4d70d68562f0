#include "kernels/cuda/elementwise.h"

#include "kernels/cuda/launch_util.cuh"

namespace mp::cuda {
namespace {

using internal::Aligned16;
using internal::BlockSum;
using internal::GlobalThread;
using internal::GridFor;
using internal::GridStride;
using internal::kThreads;
using internal::kVec;
using internal::Load8;
using internal::Store8;

// One block per row; units of kVec elements (vector) or single elements.
template <bool kVector>
__global__ void EmbeddingKernel(const int32_t* ids, const __nv_bfloat16* table, int64_t hidden,
                                __nv_bfloat16* out) {
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* src = table + static_cast<int64_t>(ids[row]) * hidden;
  __nv_bfloat16* dst = out + row * hidden;
  if constexpr (kVector) {
    for (int64_t c = threadIdx.x * int64_t{kVec}; c < hidden; c += blockDim.x * int64_t{kVec}) {
      *reinterpret_cast<uint4*>(dst + c) = *reinterpret_cast<const uint4*>(src + c);
    }
  } else {
    for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x) dst[c] = src[c];
  }
}

template <bool kVector>
__global__ void RmsNormKernel(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t d, float eps,
                              __nv_bfloat16* out) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* xr = x + row * d;
  __nv_bfloat16* yr = out + row * d;
  float sum_sq = 0.0f;
  if constexpr (kVector) {
    for (int64_t c = threadIdx.x * int64_t{kVec}; c < d; c += blockDim.x * int64_t{kVec}) {
      float f[kVec];
      Load8(xr + c, f);
#pragma unroll
      for (int e = 0; e < kVec; ++e) sum_sq += f[e] * f[e];
    }
  } else {
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      const float v = __bfloat162float(xr[c]);
      sum_sq += v * v;
    }
  }
  // Every read of the row happens before the reduction's barrier, so out may alias x.
  sum_sq = BlockSum(sum_sq, scratch);
  const float inv_rms = 1.0f / sqrtf(sum_sq / static_cast<float>(d) + eps);
  if constexpr (kVector) {
    for (int64_t c = threadIdx.x * int64_t{kVec}; c < d; c += blockDim.x * int64_t{kVec}) {
      float f[kVec], g[kVec];
      Load8(xr + c, f);
      Load8(w + c, g);
#pragma unroll
      for (int e = 0; e < kVec; ++e) f[e] = g[e] * (f[e] * inv_rms);
      Store8(yr + c, f);
    }
  } else {
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      yr[c] = __float2bfloat16_rn(__bfloat162float(w[c]) * (__bfloat162float(xr[c]) * inv_rms));
    }
  }
}

__global__ void AddVectorKernel(__nv_bfloat16* x, const __nv_bfloat16* y, int64_t groups) {
  for (int64_t g = GlobalThread(); g < groups; g += GridStride()) {
    float a[kVec], b[kVec];
    Load8(x + g * kVec, a);
    Load8(y + g * kVec, b);
#pragma unroll
    for (int e = 0; e < kVec; ++e) a[e] += b[e];
    Store8(x + g * kVec, a);
  }
}

__global__ void AddScalarKernel(__nv_bfloat16* x, const __nv_bfloat16* y, int64_t count) {
  for (int64_t i = GlobalThread(); i < count; i += GridStride()) {
    x[i] = __float2bfloat16_rn(__bfloat162float(x[i]) + __bfloat162float(y[i]));
  }
}

__device__ __forceinline__ float Silu(float g) { return g / (1.0f + expf(-g)); }

// Units of kVec columns (vector) or single columns of the [n, inter] output.
template <bool kVector>
__global__ void SiluMulKernel(const __nv_bfloat16* gate_up, int64_t n, int64_t inter,
                              __nv_bfloat16* out) {
  const int64_t width = kVector ? kVec : 1;
  const int64_t units_per_row = inter / width;
  const int64_t units = n * units_per_row;
  for (int64_t u = GlobalThread(); u < units; u += GridStride()) {
    const int64_t row = u / units_per_row;
    const int64_t col = (u % units_per_row) * width;
    const __nv_bfloat16* gate = gate_up + row * 2 * inter + col;
    const __nv_bfloat16* up = gate + inter;
    __nv_bfloat16* o = out + row * inter + col;
    if constexpr (kVector) {
      float g[kVec], v[kVec];
      Load8(gate, g);
      Load8(up, v);
#pragma unroll
      for (int e = 0; e < kVec; ++e) g[e] = Silu(g[e]) * v[e];
      Store8(o, g);
    } else {
      *o = __float2bfloat16_rn(Silu(__bfloat162float(*gate)) * __bfloat162float(*up));
    }
  }
}

}  // namespace

cudaError_t Embedding(const int32_t* ids, int64_t n, const __nv_bfloat16* table, int64_t hidden,
                      __nv_bfloat16* out, cudaStream_t stream) {
  if (n <= 0 || hidden <= 0) return cudaSuccess;
  if (n > 0x7fffffff) return cudaErrorInvalidValue;
  const bool vector = hidden % kVec == 0 && Aligned16(table) && Aligned16(out);
  if (vector) {
    EmbeddingKernel<true><<<static_cast<unsigned>(n), 128, 0, stream>>>(ids, table, hidden, out);
  } else {
    EmbeddingKernel<false><<<static_cast<unsigned>(n), 128, 0, stream>>>(ids, table, hidden, out);
  }
  return cudaGetLastError();
}

cudaError_t RmsNorm(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t n, int64_t d,
                    float eps, __nv_bfloat16* out, cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;
  if (n > 0x7fffffff) return cudaErrorInvalidValue;
  const bool vector = d % kVec == 0 && Aligned16(x) && Aligned16(w) && Aligned16(out);
  if (vector) {
    RmsNormKernel<true><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(x, w, d, eps, out);
  } else {
    RmsNormKernel<false><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(x, w, d, eps, out);
  }
  return cudaGetLastError();
}

cudaError_t AddInPlace(__nv_bfloat16* x, const __nv_bfloat16* y, int64_t count,
                       cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  int64_t done = 0;
  if (Aligned16(x) && Aligned16(y) && count >= kVec) {
    const int64_t groups = count / kVec;
    AddVectorKernel<<<GridFor(groups), kThreads, 0, stream>>>(x, y, groups);
    done = groups * kVec;
  }
  if (done < count) {
    AddScalarKernel<<<GridFor(count - done), kThreads, 0, stream>>>(x + done, y + done,
                                                                     count - done);
  }
  return cudaGetLastError();
}

cudaError_t SiluMul(const __nv_bfloat16* gate_up, int64_t n, int64_t inter, __nv_bfloat16* out,
                    cudaStream_t stream) {
  if (n <= 0 || inter <= 0) return cudaSuccess;
  const bool vector = inter % kVec == 0 && Aligned16(gate_up) && Aligned16(out);
  if (vector) {
    SiluMulKernel<true><<<GridFor(n * inter / kVec), kThreads, 0, stream>>>(gate_up, n, inter, out);
  } else {
    SiluMulKernel<false><<<GridFor(n * inter), kThreads, 0, stream>>>(gate_up, n, inter, out);
  }
  return cudaGetLastError();
}

}  // namespace mp::cuda
