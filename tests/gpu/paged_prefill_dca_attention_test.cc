// GPU test of mp::cuda::PagedPrefillDcaAttention (fused DCA prefill) against an independent
// reference (attention_reference.h), literally after qwen1m-spec.md §2.5: per query, the query
// rotated on the host for each key region (CPU reference RoPE), a dense softmax per region in
// double, and the LSE merge of the parts (§2.4). Tiny DCA configs (C = 192 = chunk_size 256 - local 64, C = 64,
// C = 256) cover 1, 2, 3+ DCA chunks, query chunks that straddle DCA boundaries, the boundary
// queries of spec §9.2, and the Qwen constants. Needs an sm_90 GPU (label gpu); fails without one.
#include "kernels/cuda/paged_prefill_dca_attention.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tests/gpu/attention_reference.h"
#include "tests/gpu/kernel_test_util.h"

namespace mp::cuda {
namespace {

using testing::Bf;
using testing::DeviceBuffer;
using testing::PagedCache;

struct DcaCase {
  int64_t head_dim = 128;
  int64_t q_heads = 28;
  int64_t kv_heads = 4;
  int64_t num_queries = 0;
  int64_t key_begin = 0;
  int64_t key_end = 0;
  int64_t block_size = 64;
  DcaParams dca = {.chunk_len = 192, .chunk_size = 256, .rope_theta = 10000.0};
  float key_std = 1.0f;
  uint64_t seed = 1;
  std::vector<int64_t> probes;  // query positions whose rows are also checked one by one
};

std::string Describe(const DcaCase& c) {
  return "hd" + std::to_string(c.head_dim) + " heads " + std::to_string(c.q_heads) + "/" +
         std::to_string(c.kv_heads) + " C=" + std::to_string(c.dca.chunk_len) +
         " S=" + std::to_string(c.dca.chunk_size) + " n=" + std::to_string(c.num_queries) +
         " keys [" + std::to_string(c.key_begin) + ", " + std::to_string(c.key_end) +
         ") block " + std::to_string(c.block_size);
}

// Reference out [n, q_heads, d] (row = i * q_heads + h) and lse [q_heads, n].
void ComputeReference(const DcaCase& c, const PagedCache& cache,
                      const std::vector<__nv_bfloat16>& q, std::vector<double>* ref_out,
                      std::vector<double>* ref_lse) {
  testing::ReferenceProblem pr;
  pr.cache = &cache;
  pr.q = &q;
  pr.q_heads = c.q_heads;
  pr.num_queries = c.num_queries;
  pr.key_begin = c.key_begin;
  pr.key_end = c.key_end;
  testing::DcaReference(pr, c.dca, ref_out, ref_lse);
}

void RunCase(const DcaCase& c) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const PagedCache cache = testing::MakePagedCache({{c.key_begin, c.key_end}}, c.kv_heads,
                                                   c.head_dim, c.block_size, c.key_std, c.seed);
  std::mt19937_64 rng(c.seed + 1000);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<__nv_bfloat16> q(static_cast<size_t>(c.num_queries * c.q_heads * c.head_dim));
  for (auto& x : q) x = __float2bfloat16(normal(rng));
  std::vector<double> ref_out, ref_lse;
  ComputeReference(c, cache, q, &ref_out, &ref_lse);

  DeviceBuffer<__nv_bfloat16> dq(q.size()), dk(cache.k.size()), dv(cache.v.size());
  DeviceBuffer<int32_t> table(cache.tables.size());
  DeviceBuffer<__nv_bfloat16> out(q.size());
  DeviceBuffer<float> lse(c.q_heads * c.num_queries);
  MP_CUDA_ASSERT(dq.Upload(q));
  MP_CUDA_ASSERT(dk.Upload(cache.k));
  MP_CUDA_ASSERT(dv.Upload(cache.v));
  MP_CUDA_ASSERT(table.Upload(cache.tables));
  MP_CUDA_ASSERT(out.Poison());
  MP_CUDA_ASSERT(lse.Poison());
  PagedPrefillAttentionArgs a;
  a.q = dq.get();
  a.k_cache = dk.get();
  a.v_cache = dv.get();
  a.block_table = table.get();
  a.out = out.get();
  a.lse = lse.get();
  a.num_queries = c.num_queries;
  a.q_heads = c.q_heads;
  a.kv_heads = c.kv_heads;
  a.head_dim = c.head_dim;
  a.num_blocks = cache.num_blocks;
  a.block_size = c.block_size;
  a.key_begin = c.key_begin;
  a.key_end = c.key_end;
  a.causal = true;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  ASSERT_EQ(PagedPrefillDcaAttentionUnsupported(a, c.dca), "");
  MP_CUDA_ASSERT(PagedPrefillDcaAttention(a, c.dca, nullptr));
  MP_CUDA_ASSERT(cudaDeviceSynchronize());
  std::vector<__nv_bfloat16> got_out;
  std::vector<float> got_lse;
  MP_CUDA_ASSERT(out.Download(&got_out));
  MP_CUDA_ASSERT(lse.Download(&got_lse));

  const int64_t n = c.num_queries, heads = c.q_heads;
  auto lse_index = [n, heads](int64_t row) { return (row % heads) * n + row / heads; };
  testing::ExpectAttentionNear(ref_out, ref_lse, got_out, got_lse, n * heads, c.head_dim,
                               lse_index, Describe(c));
  // The boundary queries one by one (all heads of the query's row).
  for (int64_t pos : c.probes) {
    const int64_t i = pos - (c.key_end - n);
    ASSERT_TRUE(i >= 0 && i < n) << "probe " << pos << " is not a query of " << Describe(c);
    const size_t first = static_cast<size_t>(i * heads * c.head_dim);
    const size_t count = static_cast<size_t>(heads * c.head_dim);
    std::vector<double> ro(ref_out.begin() + first, ref_out.begin() + first + count);
    std::vector<__nv_bfloat16> go(got_out.begin() + first, got_out.begin() + first + count);
    std::vector<double> rl(heads);
    std::vector<float> gl(heads);
    for (int64_t h = 0; h < heads; ++h) {
      rl[h] = ref_lse[h * n + i];
      gl[h] = got_lse[h * n + i];
    }
    testing::ExpectAttentionNear(ro, rl, go, gl, heads, c.head_dim,
                                 [](int64_t row) { return row; },
                                 Describe(c) + " probe p=" + std::to_string(pos));
  }
}

// Spec §9.2 boundary queries for C = 192, W = 64: C-1, C, C+W-1, C+W, C+W+1, 2C-1, 2C, 3C.
const std::vector<int64_t> kProbes192 = {191, 192, 255, 256, 257, 383, 384, 576};

TEST(PagedPrefillDcaAttentionTest, OneDcaChunkEqualsPlainRopeRangeHd128) {
  RunCase({.num_queries = 150, .key_end = 150, .seed = 11});
}

TEST(PagedPrefillDcaAttentionTest, OneShotFourDcaChunksProbesHd128) {
  RunCase({.num_queries = 600, .key_end = 600, .seed = 12, .probes = kProbes192});
}

TEST(PagedPrefillDcaAttentionTest, TwoDcaChunksHd128) {
  RunCase({.num_queries = 300, .key_end = 300, .seed = 13, .probes = {191, 192, 255, 256, 257}});
}

TEST(PagedPrefillDcaAttentionTest, ChunkedPrefillStraddlingBoundaryHd128) {
  // Queries 400..699 after 400 cached keys: the 128-row query tiles cross p = 576, and key
  // tiles [512, 640) hold the DCA boundary 576.
  RunCase({.num_queries = 300, .key_end = 700, .block_size = 128, .seed = 14,
           .probes = {576}});
}

TEST(PagedPrefillDcaAttentionTest, SingleQueryManyChunksHd128) {
  RunCase({.num_queries = 1, .key_end = 1601, .seed = 15});
}

TEST(PagedPrefillDcaAttentionTest, KeyBeginCutsThePrefixHd128) {
  RunCase({.num_queries = 200, .key_begin = 130, .key_end = 650, .seed = 16});
}

TEST(PagedPrefillDcaAttentionTest, PeakySoftmaxGqa9x3Hd128) {
  RunCase({.q_heads = 9, .kv_heads = 3, .num_queries = 500, .key_end = 900, .key_std = 3.0f,
           .seed = 17});
}

TEST(PagedPrefillDcaAttentionTest, ChunkLenMultipleOf128Gqa9x3Hd64) {
  RunCase({.head_dim = 64, .q_heads = 9, .kv_heads = 3, .num_queries = 1100, .key_end = 1100,
           .block_size = 128,
           .dca = {.chunk_len = 256, .chunk_size = 320, .rope_theta = 500000.0}, .seed = 18,
           .probes = {255, 256, 319, 320, 321, 511, 512, 768}});
}

TEST(PagedPrefillDcaAttentionTest, ChunkLen64ManyBoundariesPerTileGqa4x2Hd128) {
  // C = 64: every key tile holds a DCA boundary and a 128-row query tile spans 2-3 DCA chunks.
  RunCase({.q_heads = 4, .kv_heads = 2, .num_queries = 333, .key_end = 500,
           .dca = {.chunk_len = 64, .chunk_size = 96, .rope_theta = 10000.0}, .seed = 19});
}

TEST(PagedPrefillDcaAttentionTest, TinyChunksGqa28x4Hd64) {
  // Queries are the positions [327, 777): the boundaries of DCA chunks 1-4 (C = 192, W = 64).
  RunCase({.head_dim = 64, .num_queries = 450, .key_end = 777, .block_size = 192, .seed = 20,
           .probes = {383, 384, 447, 448, 449, 575, 576, 767, 768}});
}

TEST(PagedPrefillDcaAttentionTest, RowsWithoutKeys) {
  // More queries than keys: rows 0..99 precede key 0 and see nothing (0, -inf).
  RunCase({.q_heads = 4, .kv_heads = 2, .num_queries = 400, .key_end = 300, .seed = 21});
}

TEST(PagedPrefillDcaAttentionTest, QwenConstantsSuccAndIntraHd128) {
  // Qwen2.5-1M constants; queries at positions 519872..520000 (third DCA chunk) over the keys
  // [500000, 520000): succ region [500000, 507904) at the saturated position S, intra beyond.
  RunCase({.q_heads = 8, .kv_heads = 1, .num_queries = 128, .key_begin = 500000,
           .key_end = 520000,
           .dca = {.chunk_len = 253952, .chunk_size = 262144, .rope_theta = 1e7}, .seed = 22});
}

// Runs the DCA kernel for the queries [key_end - n, key_end) of one sequence whose keys
// [0, total) are in `cache`; returns out [n, q_heads, d] and lse [q_heads, n].
void RunChunk(const DcaCase& c, const PagedCache& cache, const DeviceBuffer<__nv_bfloat16>& dk,
              const DeviceBuffer<__nv_bfloat16>& dv, const DeviceBuffer<int32_t>& table,
              const std::vector<__nv_bfloat16>& q_all, int64_t key_end, int64_t n,
              std::vector<__nv_bfloat16>* out_host, std::vector<float>* lse_host) {
  const int64_t row = c.q_heads * c.head_dim;
  std::vector<__nv_bfloat16> q(q_all.begin() + (key_end - n) * row, q_all.begin() + key_end * row);
  DeviceBuffer<__nv_bfloat16> dq(q.size()), out(q.size());
  DeviceBuffer<float> lse(c.q_heads * n);
  MP_CUDA_ASSERT(dq.Upload(q));
  MP_CUDA_ASSERT(out.Poison());
  PagedPrefillAttentionArgs a;
  a.q = dq.get();
  a.k_cache = dk.get();
  a.v_cache = dv.get();
  a.block_table = table.get();
  a.out = out.get();
  a.lse = lse.get();
  a.num_queries = n;
  a.q_heads = c.q_heads;
  a.kv_heads = c.kv_heads;
  a.head_dim = c.head_dim;
  a.num_blocks = cache.num_blocks;
  a.block_size = c.block_size;
  a.key_begin = 0;
  a.key_end = key_end;
  a.causal = true;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  MP_CUDA_ASSERT(PagedPrefillDcaAttention(a, c.dca, nullptr));
  MP_CUDA_ASSERT(cudaDeviceSynchronize());
  MP_CUDA_ASSERT(out.Download(out_host));
  MP_CUDA_ASSERT(lse.Download(lse_host));
}

TEST(PagedPrefillDcaAttentionTest, ChunkedPrefillMatchesOneShot) {
  // Spec §9.4: prefilling L tokens in engine chunks of sizes {1, 7, 64, C-1, C, C+1, rest}
  // gives the rows of a one-shot prefill.
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const DcaCase c{.q_heads = 4, .kv_heads = 2, .seed = 23};
  const int64_t total = 1000, d = c.head_dim, heads = c.q_heads;
  const PagedCache cache = testing::MakePagedCache({{0, total}}, c.kv_heads, d, c.block_size,
                                                   c.key_std, c.seed);
  std::mt19937_64 rng(c.seed + 1000);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<__nv_bfloat16> q(static_cast<size_t>(total * heads * d));
  for (auto& x : q) x = __float2bfloat16(normal(rng));
  DeviceBuffer<__nv_bfloat16> dk(cache.k.size()), dv(cache.v.size());
  DeviceBuffer<int32_t> table(cache.tables.size());
  MP_CUDA_ASSERT(dk.Upload(cache.k));
  MP_CUDA_ASSERT(dv.Upload(cache.v));
  MP_CUDA_ASSERT(table.Upload(cache.tables));
  std::vector<__nv_bfloat16> whole_out;
  std::vector<float> whole_lse;
  RunChunk(c, cache, dk, dv, table, q, total, total, &whole_out, &whole_lse);
  if (HasFatalFailure()) return;
  const int64_t C = c.dca.chunk_len;
  int64_t begin = 0;
  double worst = 0, worst_lse = 0;
  for (int64_t size : {int64_t{1}, int64_t{7}, int64_t{64}, C - 1, C, C + 1, total}) {
    const int64_t end = std::min(total, begin + size);
    if (end <= begin) break;
    std::vector<__nv_bfloat16> out;
    std::vector<float> lse;
    RunChunk(c, cache, dk, dv, table, q, end, end - begin, &out, &lse);
    if (HasFatalFailure()) return;
    for (int64_t i = 0; i < end - begin; ++i) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t x = 0; x < d; ++x) {
          const double got = Bf(out[(i * heads + h) * d + x]);
          const double want = Bf(whole_out[((begin + i) * heads + h) * d + x]);
          worst = std::max(worst, std::fabs(got - want));
        }
        worst_lse = std::max(
            worst_lse, std::fabs(double(lse[h * (end - begin) + i]) - whole_lse[h * total + begin + i]));
      }
    }
    begin = end;
  }
  EXPECT_EQ(begin, total);
  // Each row is computed from the same keys in the same order either way: equal up to the
  // rounding of its output.
  EXPECT_LE(worst, 1e-2);
  EXPECT_LE(worst_lse, 1e-4);
  std::printf("[ stats    ] chunked vs one-shot: max |dout| %.2e, max |dlse| %.2e\n", worst,
              worst_lse);
}

TEST(PagedPrefillDcaAttentionTest, RejectsUnsupportedArguments) {
  PagedPrefillAttentionArgs a;
  a.num_queries = 4;
  a.q_heads = 4;
  a.kv_heads = 2;
  a.head_dim = 128;
  a.num_blocks = 1;
  a.block_size = 64;
  a.key_end = 10;
  a.scale = 0.1f;
  alignas(16) static __nv_bfloat16 dummy[64];
  static int32_t table[4];
  a.q = a.k_cache = a.v_cache = a.out = dummy;
  a.block_table = table;
  DcaParams dca{.chunk_len = 192, .chunk_size = 256, .rope_theta = 1e4};
  EXPECT_EQ(PagedPrefillDcaAttentionUnsupported(a, dca), "");
  a.causal = false;
  EXPECT_NE(PagedPrefillDcaAttentionUnsupported(a, dca).find("causal"), std::string::npos);
  EXPECT_EQ(PagedPrefillDcaAttention(a, dca, nullptr), cudaErrorInvalidValue);
  a.causal = true;
  dca.chunk_len = 200;
  EXPECT_NE(PagedPrefillDcaAttentionUnsupported(a, dca).find("dca.chunk_len 200"),
            std::string::npos);
  dca.chunk_len = 192;
  dca.chunk_size = 100;
  EXPECT_NE(PagedPrefillDcaAttentionUnsupported(a, dca).find("dca.chunk_size 100"),
            std::string::npos);
  dca.chunk_size = 256;
  dca.rope_theta = 0.0;
  EXPECT_NE(PagedPrefillDcaAttentionUnsupported(a, dca).find("rope_theta"), std::string::npos);
  dca.rope_theta = 1e4;
  a.head_dim = 96;
  EXPECT_NE(PagedPrefillDcaAttentionUnsupported(a, dca).find("head_dim 96"), std::string::npos);
}

}  // namespace
}  // namespace mp::cuda
