// GPU test of mp::cuda::PagedPrefillAttention against the double-precision reference of
// attention_reference.h, computed from the same bf16 inputs. Needs an sm_90 GPU (label gpu).
#include "kernels/cuda/paged_prefill_attention.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tests/gpu/attention_reference.h"
#include "tests/gpu/kernel_test_util.h"
#include "tests/gpu/prefill_test_util.h"

namespace mp::cuda {
namespace {

using testing::PagedCache;
using testing::PrefillOutputs;
using Case = testing::PrefillCase;

// Inputs on the host: the queries and the cache of sequence 0, and the reference results
// (double): out [n, q_heads, d], lse [q_heads, n].
struct Problem {
  Case c;
  std::vector<__nv_bfloat16> q;
  PagedCache cache;
  std::vector<double> ref_out, ref_lse;
};

Problem MakeProblem(const Case& c) {
  Problem p;
  p.c = c;
  std::mt19937_64 rng(c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t d = c.head_dim;
  const int64_t needed = std::max<int64_t>(1, (c.key_end + c.block_size - 1) / c.block_size);
  PagedCache& cache = p.cache;
  cache.kv_heads = c.kv_heads;
  cache.head_dim = d;
  cache.block_size = c.block_size;
  cache.num_blocks = needed + c.extra_blocks;
  cache.table_stride = needed;

  p.q.resize(c.num_queries * c.q_heads * d);
  for (auto& x : p.q) x = __float2bfloat16(normal(rng));

  // Shuffled block table over a pool with unused blocks.
  std::vector<int32_t> perm(cache.num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  cache.tables.assign(perm.begin(), perm.begin() + needed);

  // Every cache row starts as NaN; only keys [key_begin, key_end) get real values, so any read
  // of another row that reaches the result shows up as NaN.
  const __nv_bfloat16 nan = __float2bfloat16(std::numeric_limits<float>::quiet_NaN());
  const size_t cache_elems = cache.num_blocks * c.kv_heads * c.block_size * d;
  cache.k.assign(cache_elems, nan);
  cache.v.assign(cache_elems, nan);
  for (int64_t pos = c.key_begin; pos < c.key_end; ++pos) {
    for (int64_t h = 0; h < c.kv_heads; ++h) {
      const size_t off = cache.Offset(0, pos, h);
      for (int64_t i = 0; i < d; ++i) {
        cache.k[off + i] = __float2bfloat16(c.key_std * normal(rng));
        cache.v[off + i] = __float2bfloat16(normal(rng));
      }
    }
  }
  return p;
}

// Runs the kernel with NaN-poisoned outputs.
void RunGpu(const Problem& p, PrefillOutputs* result) {
  testing::DevicePagedCache cache(p.cache);
  MP_CUDA_ASSERT(cache.Upload());
  testing::RunPrefill(testing::PlainPrefillKernel{}, cache, p.q, p.c, result);
}

void RunCase(const Case& c) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  Problem p = MakeProblem(c);
  testing::PlainReference(testing::MakeReferenceProblem(c, p.cache, p.q), c.causal, &p.ref_out,
                          &p.ref_lse);
  PrefillOutputs r;
  RunGpu(p, &r);
  if (::testing::Test::HasFatalFailure()) return;
  testing::ExpectPrefillNear(p.ref_out, p.ref_lse, r, c, testing::Describe(c, false));
}

TEST(PagedPrefillAttentionTest, Gqa28x4CausalSquareHd128) {
  RunCase({.head_dim = 128, .q_heads = 28, .kv_heads = 4, .num_queries = 300, .key_begin = 0,
           .key_end = 300, .block_size = 64, .causal = true, .seed = 11});
}

TEST(PagedPrefillAttentionTest, Gqa28x4CausalChunkAfterCacheHd128) {
  RunCase({.head_dim = 128, .q_heads = 28, .kv_heads = 4, .num_queries = 200, .key_begin = 0,
           .key_end = 1000, .block_size = 128, .causal = true, .seed = 12});
}

TEST(PagedPrefillAttentionTest, Gqa4x2NonCausalUnalignedKeyBeginHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 257, .key_begin = 130,
           .key_end = 700, .block_size = 64, .causal = false, .seed = 13});
}

TEST(PagedPrefillAttentionTest, Gqa4x2CausalKeyBeginHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 190, .key_begin = 333,
           .key_end = 1111, .block_size = 192, .causal = true, .seed = 14});
}

TEST(PagedPrefillAttentionTest, SingleQueryHd128) {
  RunCase({.head_dim = 128, .q_heads = 28, .kv_heads = 4, .num_queries = 1, .key_begin = 0,
           .key_end = 999, .block_size = 64, .causal = true, .seed = 15});
}

TEST(PagedPrefillAttentionTest, SingleQueryFewKeysHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 1, .key_begin = 500,
           .key_end = 517, .block_size = 256, .causal = false, .seed = 16});
}

TEST(PagedPrefillAttentionTest, PeakySoftmaxLongKeysHd128) {
  // Logits with std 4 over 16 key tiles: the running max changes across tiles.
  RunCase({.head_dim = 128, .q_heads = 28, .kv_heads = 4, .num_queries = 260, .key_begin = 0,
           .key_end = 2000, .block_size = 64, .causal = true, .key_std = 4.0f, .seed = 17});
}

TEST(PagedPrefillAttentionTest, ManyTilesNonCausalHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 130, .key_begin = 64,
           .key_end = 4100, .block_size = 64, .causal = false, .seed = 18});
}

TEST(PagedPrefillAttentionTest, RowsWithoutKeysHd128) {
  // Row i sees keys [200, 101 + i): rows 0..99 see none.
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 300, .key_begin = 200,
           .key_end = 400, .block_size = 64, .causal = true, .seed = 19});
}

TEST(PagedPrefillAttentionTest, MoreQueriesThanKeysHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 300, .key_begin = 0,
           .key_end = 100, .block_size = 64, .causal = true, .seed = 20});
}

TEST(PagedPrefillAttentionTest, EmptyKeyRangeHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 70, .key_begin = 64,
           .key_end = 64, .block_size = 64, .causal = false, .seed = 21});
}

TEST(PagedPrefillAttentionTest, Gqa4x2CausalHd64) {
  RunCase({.head_dim = 64, .q_heads = 4, .kv_heads = 2, .num_queries = 333, .key_begin = 70,
           .key_end = 900, .block_size = 64, .causal = true, .seed = 22});
}

TEST(PagedPrefillAttentionTest, Gqa28x4NonCausalHd64) {
  RunCase({.head_dim = 64, .q_heads = 28, .kv_heads = 4, .num_queries = 129, .key_begin = 0,
           .key_end = 129, .block_size = 192, .causal = false, .seed = 23});
}

TEST(PagedPrefillAttentionTest, Gqa28x4CausalChunkHd64) {
  RunCase({.head_dim = 64, .q_heads = 28, .kv_heads = 4, .num_queries = 250, .key_begin = 0,
           .key_end = 1300, .block_size = 128, .causal = true, .key_std = 3.0f, .seed = 24});
}

// Small case kept separate so a memory checker can run it alone (filter *Sanitizer*).
TEST(PagedPrefillAttentionTest, SanitizerSmallCausal) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 150, .key_begin = 70,
           .key_end = 420, .block_size = 64, .causal = true, .seed = 25});
}

TEST(PagedPrefillAttentionTest, RepeatedRunsAreBitIdentical) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  Case c{.head_dim = 128, .q_heads = 28, .kv_heads = 4, .num_queries = 512, .key_begin = 0,
         .key_end = 1536, .block_size = 64, .causal = true, .seed = 26};
  Problem p = MakeProblem(c);
  PrefillOutputs a, b;
  RunGpu(p, &a);
  RunGpu(p, &b);
  if (HasFatalFailure()) return;
  EXPECT_EQ(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(a.out[0])), 0);
  EXPECT_EQ(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)), 0);
}

TEST(PagedPrefillAttentionTest, RejectsUnsupportedArguments) {
  PagedPrefillAttentionArgs a;
  a.num_queries = 4;
  a.q_heads = 4;
  a.kv_heads = 2;
  a.head_dim = 96;
  a.num_blocks = 1;
  a.block_size = 64;
  a.key_end = 10;
  a.scale = 0.1f;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("head_dim 96"), std::string::npos);
  EXPECT_EQ(PagedPrefillAttention(a, nullptr), cudaErrorInvalidValue);
  a.head_dim = 128;
  a.block_size = 32;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("block_size 32"), std::string::npos);
  a.block_size = 64;
  a.q_heads = 3;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("q_heads (3)"), std::string::npos);
  a.q_heads = 4;
  a.key_begin = 11;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("key range"), std::string::npos);
  a.key_begin = 0;
  a.scale = 0.0f;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("scale"), std::string::npos);
  a.scale = 0.1f;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("non-null"), std::string::npos);
}

}  // namespace
}  // namespace mp::cuda
