// Helpers of the GPU prefill attention tests (the dense, DCA and candidate-configuration kernels):
// the case, its random inputs and description, one kernel launch on NaN-poisoned outputs, and the
// comparison of the launch's rows with the double-precision references of attention_reference.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/paged_prefill_attention.h"
#include "kernels/cuda/paged_prefill_dca_attention.h"
#include "tests/gpu/attention_reference.h"
#include "tests/gpu/kernel_test_util.h"

namespace mp::cuda::testing {

// Keys [begin, end) of every KV head scaled by `scale` (logits that jump far above the running
// max when their tile is visited: the key walk goes from the last tile down).
struct KeySpike {
  int64_t begin = 0;
  int64_t end = 0;
  float scale = 1.0f;
};

// The queries [key_end - num_queries, key_end) of sequence 0 over its keys [key_begin, key_end),
// in a paged cache of kv_heads x head_dim rows in blocks of block_size.
struct PrefillCase {
  int64_t head_dim = 128;
  int64_t q_heads = 28;
  int64_t kv_heads = 4;
  int64_t num_queries = 0;
  int64_t key_begin = 0;
  int64_t key_end = 0;
  int64_t block_size = 64;
  bool causal = true;
  DcaParams dca = {.chunk_len = 192, .chunk_size = 256, .rope_theta = 10000.0};  // DCA kernels
  int64_t extra_blocks = 3;  // unused cache blocks (filled with NaN) mixed into the pool
  float key_std = 1.0f;      // larger values make the softmax peakier
  std::vector<KeySpike> spikes;
  uint64_t seed = 1;
};

// The case in one line; with `dca`, also its DCA chunk length and chunk size.
inline std::string Describe(const PrefillCase& c, bool dca) {
  std::string s = "hd" + std::to_string(c.head_dim) + " heads " + std::to_string(c.q_heads) + "/" +
                  std::to_string(c.kv_heads) + " n=" + std::to_string(c.num_queries) + " keys [" +
                  std::to_string(c.key_begin) + ", " + std::to_string(c.key_end) + ") block " +
                  std::to_string(c.block_size) + (c.causal ? " causal" : " non-causal");
  if (dca) {
    s += " C=" + std::to_string(c.dca.chunk_len) + " S=" + std::to_string(c.dca.chunk_size);
  }
  for (const KeySpike& k : c.spikes) {
    s += " keys [" + std::to_string(k.begin) + ", " + std::to_string(k.end) + ") x" +
         std::to_string(static_cast<int>(k.scale));
  }
  return s;
}

// The case's keys in a PagedCache (MakePagedCache with seed c.seed), spikes applied.
inline PagedCache MakeCaseCache(const PrefillCase& c) {
  PagedCache cache = MakePagedCache({{c.key_begin, c.key_end}}, c.kv_heads, c.head_dim,
                                    c.block_size, c.key_std, c.seed, c.extra_blocks);
  for (const KeySpike& k : c.spikes) {
    for (int64_t pos = std::max(k.begin, c.key_begin); pos < std::min(k.end, c.key_end); ++pos) {
      for (int64_t h = 0; h < c.kv_heads; ++h) {
        __nv_bfloat16* key = &cache.k[cache.Offset(0, pos, h)];
        for (int64_t x = 0; x < c.head_dim; ++x) key[x] = __float2bfloat16(Bf(key[x]) * k.scale);
      }
    }
  }
  return cache;
}

// The case's queries [num_queries, q_heads, head_dim] (seed c.seed + 1000).
inline std::vector<__nv_bfloat16> MakeCaseQueries(const PrefillCase& c) {
  return RandomBf16(c.num_queries * c.q_heads * c.head_dim, c.seed + 1000);
}

inline ReferenceProblem MakeReferenceProblem(const PrefillCase& c, const PagedCache& cache,
                                             const std::vector<__nv_bfloat16>& q) {
  return ReferenceProblem{&cache, &q, c.q_heads, c.num_queries, c.key_begin, c.key_end};
}

// The library's kernels as RunPrefill's `kernel`: Unsupported(args) ("" when supported) and
// Launch(args) on the default stream.
struct PlainPrefillKernel {
  std::string Unsupported(const PagedPrefillAttentionArgs& a) const {
    return PagedPrefillAttentionUnsupported(a);
  }
  cudaError_t Launch(const PagedPrefillAttentionArgs& a) const {
    return PagedPrefillAttention(a, nullptr);
  }
};
struct DcaPrefillKernel {
  DcaParams dca;
  std::string Unsupported(const PagedPrefillAttentionArgs& a) const {
    return PagedPrefillDcaAttentionUnsupported(a, dca);
  }
  cudaError_t Launch(const PagedPrefillAttentionArgs& a) const {
    return PagedPrefillDcaAttention(a, dca, nullptr);
  }
};

struct PrefillOutputs {
  std::vector<__nv_bfloat16> out;  // [num_queries, q_heads, head_dim]
  std::vector<float> lse;          // [q_heads, num_queries]
};

// Runs `kernel` for the case's queries q [num_queries, q_heads, head_dim] over `cache` (a device
// copy of a cache with the case's geometry) on NaN-poisoned outputs, asserting first that the
// kernel supports the arguments; scale 1 / sqrt(head_dim).
template <class Kernel>
void RunPrefill(const Kernel& kernel, const DevicePagedCache& cache,
                const std::vector<__nv_bfloat16>& q, const PrefillCase& c, PrefillOutputs* result) {
  ASSERT_EQ(q.size(), static_cast<size_t>(c.num_queries * c.q_heads * c.head_dim));
  DeviceBuffer<__nv_bfloat16> dq(q.size()), out(q.size());
  DeviceBuffer<float> lse(static_cast<size_t>(c.q_heads * c.num_queries));
  MP_CUDA_ASSERT(dq.Upload(q));
  MP_CUDA_ASSERT(out.Poison());
  MP_CUDA_ASSERT(lse.Poison());
  const PagedPrefillAttentionArgs args{.q = dq.get(),
                                       .k_cache = cache.k.get(),
                                       .v_cache = cache.v.get(),
                                       .block_table = cache.tables.get(),
                                       .out = out.get(),
                                       .lse = lse.get(),
                                       .num_queries = c.num_queries,
                                       .q_heads = c.q_heads,
                                       .kv_heads = c.kv_heads,
                                       .head_dim = c.head_dim,
                                       .num_blocks = cache.host->num_blocks,
                                       .block_size = c.block_size,
                                       .key_begin = c.key_begin,
                                       .key_end = c.key_end,
                                       .causal = c.causal,
                                       .scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  ASSERT_EQ(kernel.Unsupported(args), "");
  MP_CUDA_ASSERT(kernel.Launch(args));
  MP_CUDA_ASSERT(cudaDeviceSynchronize());
  MP_CUDA_ASSERT(out.Download(&result->out));
  MP_CUDA_ASSERT(lse.Download(&result->lse));
}

// ExpectAttentionNear over the rows of a prefill: row i * q_heads + h has its output at
// out[(i * q_heads + h) * head_dim] and its LSE at lse[h * num_queries + i].
inline void ExpectPrefillNear(const std::vector<double>& ref_out,
                              const std::vector<double>& ref_lse, const PrefillOutputs& got,
                              const PrefillCase& c, const std::string& what,
                              double lse_tolerance = 1e-2) {
  const int64_t n = c.num_queries, heads = c.q_heads;
  ExpectAttentionNear(
      ref_out, ref_lse, got.out, got.lse, n * heads, c.head_dim,
      [n, heads](int64_t row) { return (row % heads) * n + row / heads; }, what, lse_tolerance);
}

}  // namespace mp::cuda::testing
