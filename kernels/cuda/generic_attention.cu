#include "kernels/cuda/generic_attention.h"

#include <cmath>

namespace mp::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

// kPerLane = head_dim elements per lane (head_dim <= 32 * kPerLane).
template <int kPerLane>
__global__ void GenericAttentionKernel(GenericAttentionArgs a) {
  const int lane = threadIdx.x % 32;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (item >= a.num_queries * a.q_heads) return;
  const int64_t row = item / a.q_heads, h = item % a.q_heads;
  const int64_t kvh = h / (a.q_heads / a.kv_heads);
  const int64_t d = a.head_dim;

  float q[kPerLane], acc[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int64_t c = lane + 32 * e;
    q[e] = c < d ? __bfloat162float(a.q[(row * a.q_heads + h) * d + c]) : 0.0f;
    acc[e] = 0.0f;
  }
  int64_t hi = a.key_end;
  if (a.causal) hi = min(hi, a.key_end - a.num_queries + row + 1);
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = a.key_begin; j < hi; ++j) {
    const int64_t block = a.block_table[j / a.block_size];
    const bool valid = block >= 0 && block < a.num_blocks;
    const int64_t base = ((block * a.kv_heads + kvh) * a.block_size + j % a.block_size) * d;
    float kv[kPerLane];
    float dot = 0.0f;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int64_t c = lane + 32 * e;
      kv[e] = valid && c < d ? __bfloat162float(a.k_cache[base + c]) : 0.0f;
      dot += q[e] * kv[e];
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    const float s = dot * a.scale;
    const float m_new = fmaxf(m, s);
    const float alpha = expf(m - m_new);  // 0 while m = -inf
    const float p = expf(s - m_new);
    l = l * alpha + p;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int64_t c = lane + 32 * e;
      const float v = valid && c < d ? __bfloat162float(a.v_cache[base + c]) : 0.0f;
      acc[e] = acc[e] * alpha + p * v;
    }
    m = m_new;
  }
  const bool empty = hi <= a.key_begin;
  const float inv_l = empty ? 0.0f : 1.0f / l;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int64_t c = lane + 32 * e;
    if (c < d) a.out[(row * a.q_heads + h) * d + c] = __float2bfloat16_rn(acc[e] * inv_l);
  }
  if (a.lse != nullptr && lane == 0) {
    a.lse[h * a.num_queries + row] = empty ? -INFINITY : m + logf(l);
  }
}

}  // namespace

std::string GenericAttentionUnsupported(const GenericAttentionArgs& a) {
  if (a.head_dim <= 0 || a.head_dim > kGenericAttentionMaxHeadDim) {
    return "head_dim " + std::to_string(a.head_dim) + " is outside [1, " +
           std::to_string(kGenericAttentionMaxHeadDim) + "]";
  }
  if (a.kv_heads <= 0 || a.q_heads <= 0 || a.q_heads % a.kv_heads != 0) {
    return "q_heads (" + std::to_string(a.q_heads) + ") must be a positive multiple of kv_heads (" +
           std::to_string(a.kv_heads) + ")";
  }
  if (a.block_size <= 0) return "block_size " + std::to_string(a.block_size) + " must be positive";
  if (a.key_begin < 0 || a.key_end < a.key_begin) {
    return "key range [" + std::to_string(a.key_begin) + ", " + std::to_string(a.key_end) +
           ") is invalid";
  }
  if (!std::isfinite(a.scale)) return "scale must be finite";
  if (a.num_queries < 0) return "num_queries must be >= 0";
  if (a.num_queries > 0 && (a.q == nullptr || a.out == nullptr ||
                            (a.key_end > a.key_begin &&
                             (a.k_cache == nullptr || a.v_cache == nullptr ||
                              a.block_table == nullptr)))) {
    return "q, out, k_cache, v_cache and block_table must be non-null";
  }
  return "";
}

cudaError_t GenericPagedAttention(const GenericAttentionArgs& a, cudaStream_t stream) {
  if (!GenericAttentionUnsupported(a).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  const int64_t items = a.num_queries * a.q_heads;
  const int64_t blocks = (items + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks)), block(32 * kWarpsPerBlock);
  // The one dispatch on head_dim.
  if (a.head_dim <= 64) {
    GenericAttentionKernel<2><<<grid, block, 0, stream>>>(a);
  } else if (a.head_dim <= 128) {
    GenericAttentionKernel<4><<<grid, block, 0, stream>>>(a);
  } else {
    GenericAttentionKernel<8><<<grid, block, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace mp::cuda
