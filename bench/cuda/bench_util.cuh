// Helpers shared by the CUDA kernel benchmarks: a CUDA status check that exits, random bf16
// fills on the device, a non-finite counter, and the dense prefill arguments of a paged cache.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/paged_prefill_attention.h"

#define BENCH_CHECK(expr)                                                              \
  do {                                                                                 \
    const cudaError_t e_ = (expr);                                                     \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr,                \
                   cudaGetErrorString(e_));                                            \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

namespace mp::bench {

// x[i] ~ N(0, stddev^2), deterministic for a seed (two splitmix64 draws -> Box-Muller).
__global__ inline void FillRandomBf16(__nv_bfloat16* x, int64_t n, uint64_t seed, float stddev) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed + uint64_t(i) * 0x9E3779B97F4A7C15ull;
    auto mix = [](uint64_t v) {
      v = (v ^ (v >> 30)) * 0xBF58476D1CE4E5B9ull;
      v = (v ^ (v >> 27)) * 0x94D049BB133111EBull;
      return v ^ (v >> 31);
    };
    const uint64_t a = mix(z), b = mix(z + 0x632BE59BD9B4E019ull);
    const float u1 = (float(a >> 40) + 1.0f) / 16777217.0f;
    const float u2 = float(b >> 40) / 16777216.0f;
    x[i] = __float2bfloat16(stddev * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
  }
}

__global__ inline void CountNonFinite(const __nv_bfloat16* x, int64_t n,
                                      unsigned long long* count) {
  unsigned long long local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    local += !isfinite(__bfloat162float(x[i]));
  }
  if (local) atomicAdd(count, local);
}

// Causal prefill of the n queries `q` [n, q_heads, head_dim] against keys [0, key_end) of a paged
// bf16 cache [num_blocks, kv_heads, block_size, head_dim] (bottom-right: the queries are the last
// n positions); no lse.
inline mp::cuda::PagedPrefillAttentionArgs CausalPrefillArgs(
    const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const int32_t* table,
    __nv_bfloat16* out, int64_t n, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
    int64_t num_blocks, int64_t block_size, int64_t key_end, float scale) {
  mp::cuda::PagedPrefillAttentionArgs d;
  d.q = q;
  d.k_cache = k;
  d.v_cache = v;
  d.block_table = table;
  d.out = out;
  d.num_queries = n;
  d.q_heads = q_heads;
  d.kv_heads = kv_heads;
  d.head_dim = head_dim;
  d.num_blocks = num_blocks;
  d.block_size = block_size;
  d.key_begin = 0;
  d.key_end = key_end;
  d.causal = true;
  d.scale = scale;
  return d;
}

}  // namespace mp::bench
