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
#include <string>
#include <vector>

#include "tests/gpu/attention_reference.h"
#include "tests/gpu/kernel_test_util.h"
#include "tests/gpu/prefill_test_util.h"

namespace mp::cuda {
namespace {

using testing::Bf;
using testing::PagedCache;
using testing::PrefillOutputs;
using DcaCase = testing::PrefillCase;  // causal; dca: the DCA configuration

std::string Describe(const DcaCase& c) { return testing::Describe(c, true); }

// `probes`: query positions whose rows are also checked one by one.
void RunCase(const DcaCase& c, const std::vector<int64_t>& probes = {}) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const PagedCache cache = testing::MakeCaseCache(c);
  const std::vector<__nv_bfloat16> q = testing::MakeCaseQueries(c);
  // Reference out [n, q_heads, d] (row = i * q_heads + h) and lse [q_heads, n].
  std::vector<double> ref_out, ref_lse;
  testing::DcaReference(testing::MakeReferenceProblem(c, cache, q), c.dca, &ref_out, &ref_lse);

  testing::DevicePagedCache dcache(cache);
  MP_CUDA_ASSERT(dcache.Upload());
  PrefillOutputs got;
  testing::RunPrefill(testing::DcaPrefillKernel{c.dca}, dcache, q, c, &got);
  if (::testing::Test::HasFatalFailure()) return;

  const int64_t n = c.num_queries, heads = c.q_heads;
  testing::ExpectPrefillNear(ref_out, ref_lse, got, c, Describe(c));
  // The boundary queries one by one (all heads of the query's row).
  for (int64_t pos : probes) {
    const int64_t i = pos - (c.key_end - n);
    ASSERT_TRUE(i >= 0 && i < n) << "probe " << pos << " is not a query of " << Describe(c);
    const size_t first = static_cast<size_t>(i * heads * c.head_dim);
    const size_t count = static_cast<size_t>(heads * c.head_dim);
    std::vector<double> ro(ref_out.begin() + first, ref_out.begin() + first + count);
    std::vector<__nv_bfloat16> go(got.out.begin() + first, got.out.begin() + first + count);
    std::vector<double> rl(heads);
    std::vector<float> gl(heads);
    for (int64_t h = 0; h < heads; ++h) {
      rl[h] = ref_lse[h * n + i];
      gl[h] = got.lse[h * n + i];
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
  RunCase({.num_queries = 600, .key_end = 600, .seed = 12}, kProbes192);
}

TEST(PagedPrefillDcaAttentionTest, TwoDcaChunksHd128) {
  RunCase({.num_queries = 300, .key_end = 300, .seed = 13}, {191, 192, 255, 256, 257});
}

TEST(PagedPrefillDcaAttentionTest, ChunkedPrefillStraddlingBoundaryHd128) {
  // Queries 400..699 after 400 cached keys: the 128-row query tiles cross p = 576, and key
  // tiles [512, 640) hold the DCA boundary 576.
  RunCase({.num_queries = 300, .key_end = 700, .block_size = 128, .seed = 14}, {576});
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
  RunCase({.head_dim = 64,
           .q_heads = 9,
           .kv_heads = 3,
           .num_queries = 1100,
           .key_end = 1100,
           .block_size = 128,
           .dca = {.chunk_len = 256, .chunk_size = 320, .rope_theta = 500000.0},
           .seed = 18},
          {255, 256, 319, 320, 321, 511, 512, 768});
}

TEST(PagedPrefillDcaAttentionTest, ChunkLen64ManyBoundariesPerTileGqa4x2Hd128) {
  // C = 64: every key tile holds a DCA boundary and a 128-row query tile spans 2-3 DCA chunks.
  RunCase({.q_heads = 4, .kv_heads = 2, .num_queries = 333, .key_end = 500,
           .dca = {.chunk_len = 64, .chunk_size = 96, .rope_theta = 10000.0}, .seed = 19});
}

TEST(PagedPrefillDcaAttentionTest, TinyChunksGqa28x4Hd64) {
  // Queries are the positions [327, 777): the boundaries of DCA chunks 1-4 (C = 192, W = 64).
  RunCase({.head_dim = 64, .num_queries = 450, .key_end = 777, .block_size = 192, .seed = 20},
          {383, 384, 447, 448, 449, 575, 576, 767, 768});
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
// [0, total) are in `cache` and whose queries are q_all [total, q_heads, d]; returns out
// [n, q_heads, d] and lse [q_heads, n].
void RunChunk(const DcaCase& c, const testing::DevicePagedCache& cache,
              const std::vector<__nv_bfloat16>& q_all, int64_t key_end, int64_t n,
              PrefillOutputs* result) {
  const int64_t row = c.q_heads * c.head_dim;
  const std::vector<__nv_bfloat16> q(q_all.begin() + (key_end - n) * row,
                                     q_all.begin() + key_end * row);
  DcaCase chunk = c;
  chunk.num_queries = n;
  chunk.key_begin = 0;
  chunk.key_end = key_end;
  testing::RunPrefill(testing::DcaPrefillKernel{c.dca}, cache, q, chunk, result);
}

TEST(PagedPrefillDcaAttentionTest, ChunkedPrefillMatchesOneShot) {
  // Spec §9.4: prefilling L tokens in engine chunks of sizes {1, 7, 64, C-1, C, C+1, rest}
  // gives the rows of a one-shot prefill.
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  // The one-shot prefill: queries and keys [0, total).
  const DcaCase c{.q_heads = 4, .kv_heads = 2, .num_queries = 1000, .key_end = 1000, .seed = 23};
  const int64_t total = c.key_end, d = c.head_dim, heads = c.q_heads;
  const PagedCache cache = testing::MakeCaseCache(c);
  const std::vector<__nv_bfloat16> q = testing::MakeCaseQueries(c);
  testing::DevicePagedCache dcache(cache);
  MP_CUDA_ASSERT(dcache.Upload());
  PrefillOutputs whole;
  RunChunk(c, dcache, q, total, total, &whole);
  if (HasFatalFailure()) return;
  const int64_t C = c.dca.chunk_len;
  int64_t begin = 0;
  double worst = 0, worst_lse = 0;
  for (int64_t size : {int64_t{1}, int64_t{7}, int64_t{64}, C - 1, C, C + 1, total}) {
    const int64_t end = std::min(total, begin + size);
    if (end <= begin) break;
    PrefillOutputs part;
    RunChunk(c, dcache, q, end, end - begin, &part);
    if (HasFatalFailure()) return;
    // MaxOrNaN: an output left at its NaN poison fails the checks below.
    for (int64_t i = 0; i < end - begin; ++i) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t x = 0; x < d; ++x) {
          const double got = Bf(part.out[(i * heads + h) * d + x]);
          const double want = Bf(whole.out[((begin + i) * heads + h) * d + x]);
          worst = testing::MaxOrNaN(worst, std::fabs(got - want));
        }
        worst_lse = testing::MaxOrNaN(worst_lse, std::fabs(double(part.lse[h * (end - begin) + i]) -
                                                           whole.lse[h * total + begin + i]));
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
