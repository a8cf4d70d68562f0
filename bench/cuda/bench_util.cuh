// Helpers shared by the CUDA kernel benchmarks: a CUDA status check that exits, random bf16
// fills on the device, and a non-finite counter.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

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

}  // namespace mp::bench
