// GPU test of mp::cuda::DecodeAttention and DcaDecodeAttention against double-precision
// references computed here from the same bf16 inputs (DCA: the query rotated per region with the
// CPU reference RoPE, one softmax per region, LSE merge as in qwen1m-spec.md §2.4 / §2.6). Needs
// an sm_90 GPU (label gpu); fails without one.
#include "kernels/cuda/decode_attention.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/rope.h"
#include "kernels/cuda/paged_prefill_dca_attention.h"
#include "tests/gpu/attention_reference.h"
#include "tests/gpu/kernel_test_util.h"
#include "tests/gpu/prefill_test_util.h"

namespace mp::cuda {
namespace {

using testing::Bf;
using testing::DeviceBuffer;
using testing::PagedCache;
using testing::RandomBf16;
using Ranges = std::vector<std::pair<int64_t, int64_t>>;

struct DecodeCase {
  int64_t head_dim = 128;
  int64_t q_heads = 28;
  int64_t kv_heads = 4;
  int64_t block_size = 64;
  Ranges ranges;          // (key_begin, key_end) per sequence
  int num_splits = 0;     // 0: DecodeAttentionDefaultSplits for this GPU
  bool null_key_begin = false;  // pass key_begin = null (ranges must start at 0)
  float key_std = 1.0f;   // larger values make the softmax peakier
  uint64_t seed = 1;
  const DcaParams* dca = nullptr;  // DCA decode: q un-rotated, ranges (0, n)
};

std::string Describe(const DecodeCase& c, int splits) {
  std::string s = std::string(c.dca ? "dca " : "") + "hd" + std::to_string(c.head_dim) +
                  " heads " + std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) +
                  " block " + std::to_string(c.block_size) + " splits " +
                  std::to_string(splits) + " seqs";
  for (const auto& [b, e] : c.ranges) s += " [" + std::to_string(b) + "," + std::to_string(e) + ")";
  return s;
}

struct DecodeResult {
  std::vector<__nv_bfloat16> out;
  std::vector<float> lse;
  int splits = 0;
};

// Runs the kernel on NaN-poisoned outputs.
void RunDecode(const DecodeCase& c, const PagedCache& cache, const std::vector<__nv_bfloat16>& q,
               DecodeResult* result) {
  const int64_t num_seqs = static_cast<int64_t>(c.ranges.size());
  std::vector<int32_t> key_begin, key_end;
  int64_t longest = 0;
  for (const auto& [b, e] : c.ranges) {
    key_begin.push_back(static_cast<int32_t>(b));
    key_end.push_back(static_cast<int32_t>(e));
    longest = std::max(longest, e - b);
  }
  testing::DevicePagedCache dcache(cache);
  DeviceBuffer<__nv_bfloat16> dq(q.size());
  DeviceBuffer<int32_t> kb(key_begin.size()), ke(key_end.size());
  DeviceBuffer<__nv_bfloat16> out(q.size());
  DeviceBuffer<float> lse(num_seqs * c.q_heads);
  MP_CUDA_ASSERT(dq.Upload(q));
  MP_CUDA_ASSERT(dcache.Upload());
  MP_CUDA_ASSERT(kb.Upload(key_begin));
  MP_CUDA_ASSERT(ke.Upload(key_end));
  MP_CUDA_ASSERT(out.Poison());
  MP_CUDA_ASSERT(lse.Poison());

  DecodeAttentionArgs a;
  a.q = dq.get();
  a.k_cache = dcache.k.get();
  a.v_cache = dcache.v.get();
  a.block_tables = dcache.tables.get();
  // DCA decode takes keys from 0 (key_begin must be null).
  a.key_begin = c.null_key_begin || c.dca != nullptr ? nullptr : kb.get();
  a.key_end = ke.get();
  a.out = out.get();
  a.lse = lse.get();
  a.num_seqs = num_seqs;
  a.q_heads = c.q_heads;
  a.kv_heads = c.kv_heads;
  a.head_dim = c.head_dim;
  a.num_blocks = cache.num_blocks;
  a.block_size = c.block_size;
  a.table_stride = cache.table_stride;
  a.num_splits = c.num_splits > 0
                     ? c.num_splits
                     : DecodeAttentionDefaultSplits(num_seqs, c.kv_heads, longest,
                                                    testing::NumSms());
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int64_t ws_bytes = DecodeAttentionWorkspaceBytes(a);
  DeviceBuffer<unsigned char> ws(static_cast<size_t>(ws_bytes));
  MP_CUDA_ASSERT(ws.Poison());
  a.workspace = ws.get();
  a.workspace_bytes = ws_bytes;
  ASSERT_EQ(DecodeAttentionUnsupported(a, c.dca), "");
  if (c.dca != nullptr) {
    MP_CUDA_ASSERT(DcaDecodeAttention(a, *c.dca, nullptr));
  } else {
    MP_CUDA_ASSERT(DecodeAttention(a, nullptr));
  }
  MP_CUDA_ASSERT(cudaDeviceSynchronize());
  MP_CUDA_ASSERT(out.Download(&result->out));
  MP_CUDA_ASSERT(lse.Download(&result->lse));
  result->splits = a.num_splits;
}

// Reference out [num_seqs, q_heads, d] and lse [num_seqs, q_heads], threads over rows.
void ComputeReference(const DecodeCase& c, const PagedCache& cache,
                      const std::vector<__nv_bfloat16>& q, std::vector<double>* ref_out,
                      std::vector<double>* ref_lse) {
  const int64_t d = c.head_dim, group = c.q_heads / c.kv_heads;
  const int64_t rows = static_cast<int64_t>(c.ranges.size()) * c.q_heads;
  ref_out->assign(rows * d, 0.0);
  ref_lse->assign(rows, -std::numeric_limits<double>::infinity());
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  auto work = [&](int64_t row) {
    const int64_t s = row / c.q_heads, h = row % c.q_heads;
    const auto [kb, ke] = c.ranges[s];
    std::vector<float> qf(d);
    for (int64_t x = 0; x < d; ++x) qf[x] = Bf(q[row * d + x]);
    double* out = &(*ref_out)[row * d];
    if (c.dca == nullptr) {
      std::vector<double> qd(qf.begin(), qf.end());
      (*ref_lse)[row] =
          testing::ReferenceAttention(cache, s, h / group, qd.data(), kb, ke, scale, out);
      return;
    }
    // DCA decode (spec §2.6): n = ke keys, query position p = n - 1.
    const int64_t n = ke, C = c.dca->chunk_len, S = c.dca->chunk_size;
    if (n <= 0) return;
    const int64_t p = n - 1, cnum = (n - 1) / C;
    struct Region {
      int64_t lo, hi, pos;
    };
    const Region regions[3] = {
        {cnum * C, n, p % C},
        {(cnum - 1) * C, cnum * C, std::min(p % C + C, S)},
        {0, (cnum - 1) * C, std::min(2 * C - 1, S)}};
    const int num_regions = cnum >= 2 ? 3 : (cnum >= 1 ? 2 : 1);
    std::vector<std::vector<double>> outs;
    std::vector<double> lses;
    for (int r = 0; r < num_regions; ++r) {
      std::vector<float> rotated = qf;
      const int32_t pos = static_cast<int32_t>(regions[r].pos);
      cpu::RopeNeox(rotated.data(), &pos, 1, 1, d, c.dca->rope_theta);
      std::vector<double> qd(rotated.begin(), rotated.end()), o(d);
      lses.push_back(testing::ReferenceAttention(cache, s, h / group, qd.data(), regions[r].lo,
                                                 regions[r].hi, scale, o.data()));
      outs.push_back(std::move(o));
    }
    (*ref_lse)[row] = testing::MergeParts(outs, lses, d, out);
  };
  testing::ForEachRow(rows, work);
}

void RunCase(const DecodeCase& c) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const PagedCache cache =
      testing::MakePagedCache(c.ranges, c.kv_heads, c.head_dim, c.block_size, c.key_std, c.seed);
  const auto q =
      RandomBf16(static_cast<int64_t>(c.ranges.size()) * c.q_heads * c.head_dim, c.seed + 1000);
  std::vector<double> ref_out, ref_lse;
  ComputeReference(c, cache, q, &ref_out, &ref_lse);
  DecodeResult r;
  RunDecode(c, cache, q, &r);
  if (::testing::Test::HasFatalFailure()) return;
  testing::ExpectAttentionNear(ref_out, ref_lse, r.out, r.lse,
                               static_cast<int64_t>(c.ranges.size()) * c.q_heads, c.head_dim,
                               [](int64_t row) { return row; }, Describe(c, r.splits));
}

const Ranges kMixed = {{0, 1},     {0, 63},       {0, 64},      {0, 65},
                       {0, 1000},  {100, 5000},   {1234, 20000}, {37, 37}};

TEST(DecodeAttentionTest, Gqa28x4MixedLengthsDefaultSplitsHd128) {
  RunCase({.ranges = kMixed, .seed = 11});
}

TEST(DecodeAttentionTest, Gqa28x4MixedLengthsOneSplitHd128) {
  // One split: the split kernel writes out and lse itself (no combine).
  RunCase({.ranges = kMixed, .num_splits = 1, .seed = 12});
}

TEST(DecodeAttentionTest, Gqa28x4MixedLengthsThreeSplitsHd128) {
  RunCase({.ranges = kMixed, .num_splits = 3, .seed = 13});
}

TEST(DecodeAttentionTest, Gqa28x4MaxSplitsMostlyEmptyHd128) {
  // 256 splits of sequences with a few tiles: most splits are empty and merge as (0, -inf).
  RunCase({.ranges = kMixed, .num_splits = kDecodeMaxSplits, .seed = 14});
}

TEST(DecodeAttentionTest, Gqa9x3Block128Hd128) {
  RunCase({.q_heads = 9, .kv_heads = 3, .block_size = 128,
           .ranges = {{0, 777}, {5, 3000}, {0, 129}, {64, 65}}, .seed = 15});
}

TEST(DecodeAttentionTest, Gqa28x4Block192PeakyHd64) {
  RunCase({.head_dim = 64, .block_size = 192,
           .ranges = {{0, 2049}, {300, 7000}, {0, 17}}, .key_std = 3.0f, .seed = 16});
}

TEST(DecodeAttentionTest, Gqa9x3Hd64) {
  RunCase({.head_dim = 64, .q_heads = 9, .kv_heads = 3,
           .ranges = {{0, 1}, {0, 4097}, {999, 3333}}, .num_splits = 5, .seed = 17});
}

TEST(DecodeAttentionTest, Group16Hd128) {
  RunCase({.q_heads = 32, .kv_heads = 2, .ranges = {{0, 3000}, {10, 11}}, .seed = 18});
}

TEST(DecodeAttentionTest, PeakySoftmaxManyTilesHd128) {
  // Logits with std 4 over 256 tiles: the running max changes across tiles and splits.
  RunCase({.ranges = {{0, 16384}}, .key_std = 4.0f, .seed = 19});
}

TEST(DecodeAttentionTest, Long150kKeysDefaultSplitsHd128) {
  RunCase({.ranges = {{0, 150001}, {17, 40000}}, .seed = 20});
}

TEST(DecodeAttentionTest, EmptyAndReversedRanges) {
  // Ranges with key_end <= key_begin see no key: out 0, lse -inf (also through the combine).
  RunCase({.ranges = {{10, 10}, {500, 20}, {0, 0}, {0, 300}}, .num_splits = 4, .seed = 21});
}

TEST(DecodeAttentionTest, NullKeyBegin) {
  RunCase({.ranges = {{0, 130}, {0, 2500}}, .null_key_begin = true, .seed = 22});
}

// DCA decode with the tiny config of spec §9 (chunk_size 256, local 64: C = 192), probing the
// query positions p = n - 1 in {C-1, C, C+W-1, C+W, C+W+1, 2C-1, 2C, 3C} and 1..16 DCA chunks.
const DcaParams kTinyDca = {.chunk_len = 192, .chunk_size = 256, .rope_theta = 10000.0};
Ranges DcaProbeRanges() {
  Ranges r;
  for (int64_t n : {1, 100, 192, 193, 256, 257, 258, 384, 385, 577, 1000, 3001}) r.push_back({0, n});
  return r;
}

TEST(DecodeAttentionTest, DcaTinyChunksProbeBoundariesHd128) {
  RunCase({.ranges = DcaProbeRanges(), .seed = 31, .dca = &kTinyDca});
}

TEST(DecodeAttentionTest, DcaTinyChunksFiveSplitsHd128) {
  RunCase({.ranges = DcaProbeRanges(), .num_splits = 5, .seed = 32, .dca = &kTinyDca});
}

TEST(DecodeAttentionTest, DcaTinyChunksOneSplitGqa9x3Hd64) {
  RunCase({.head_dim = 64, .q_heads = 9, .kv_heads = 3, .block_size = 128,
           .ranges = DcaProbeRanges(), .num_splits = 1, .seed = 33, .dca = &kTinyDca});
}

TEST(DecodeAttentionTest, DcaChunkMultipleOf128Hd64) {
  const DcaParams dca = {.chunk_len = 256, .chunk_size = 320, .rope_theta = 500000.0};
  RunCase({.head_dim = 64, .ranges = {{0, 255}, {0, 257}, {0, 640}, {0, 2000}}, .seed = 34,
           .dca = &dca});
}

TEST(DecodeAttentionTest, DcaQwenConstantsThreeRegions) {
  // Qwen2.5-1M constants (C = 253952, S = 262144, theta 1e7): the query positions reach the
  // saturated succ / inter positions, where the fp32 angles are large.
  const DcaParams qwen = {.chunk_len = 253952, .chunk_size = 262144, .rope_theta = 1e7};
  RunCase({.q_heads = 8, .kv_heads = 1,
           .ranges = {{0, 2 * 253952 + 777}, {0, 253952 + 8193}, {0, 1000}}, .seed = 35,
           .dca = &qwen});
}

TEST(DecodeAttentionTest, DcaDecodeMatchesDcaPrefillOfTheLastToken) {
  // Spec §9.5: decoding token n - 1 equals the last row of the prefill (here: the DCA prefill
  // kernel with one query at position n - 1 over the same cache).
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  for (int64_t n : {193, 257, 577, 1000}) {
    const DecodeCase c{.ranges = {{0, n}}, .num_splits = 3, .seed = uint64_t(40 + n),
                       .dca = &kTinyDca};
    const PagedCache cache = testing::MakePagedCache(c.ranges, c.kv_heads, c.head_dim,
                                                     c.block_size, c.key_std, c.seed);
    const auto q = RandomBf16(c.q_heads * c.head_dim, c.seed + 1000);
    DecodeResult dec;
    RunDecode(c, cache, q, &dec);
    if (HasFatalFailure()) return;

    // The DCA prefill of the one query at position n - 1.
    const testing::PrefillCase last{.head_dim = c.head_dim,
                                    .q_heads = c.q_heads,
                                    .kv_heads = c.kv_heads,
                                    .num_queries = 1,
                                    .key_end = n,
                                    .block_size = c.block_size,
                                    .dca = kTinyDca};
    testing::DevicePagedCache dcache(cache);
    MP_CUDA_ASSERT(dcache.Upload());
    testing::PrefillOutputs pre;
    testing::RunPrefill(testing::DcaPrefillKernel{kTinyDca}, dcache, q, last, &pre);
    if (HasFatalFailure()) return;
    double err2 = 0, ref2 = 0, worst_lse = 0;
    for (size_t i = 0; i < pre.out.size(); ++i) {
      const double x = Bf(dec.out[i]), y = Bf(pre.out[i]);
      err2 += (x - y) * (x - y);
      ref2 += y * y;
    }
    for (int64_t h = 0; h < c.q_heads; ++h) {
      // MaxOrNaN: an lse left at its NaN poison fails the check.
      worst_lse = testing::MaxOrNaN(worst_lse, std::fabs(double(dec.lse[h]) - pre.lse[h]));
    }
    EXPECT_LE(std::sqrt(err2 / ref2), 1e-2) << "n = " << n;
    EXPECT_LE(worst_lse, 1e-2) << "n = " << n;
    std::printf("[ stats    ] n=%lld decode vs prefill: rel diff %.2e, worst |dlse| %.2e\n",
                static_cast<long long>(n), std::sqrt(err2 / ref2), worst_lse);
  }
}

TEST(DecodeAttentionTest, RepeatedRunsAreBitIdentical) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const DecodeCase c{.ranges = {{0, 50000}, {3, 7777}}, .seed = 50};
  const PagedCache cache = testing::MakePagedCache(c.ranges, c.kv_heads, c.head_dim,
                                                   c.block_size, c.key_std, c.seed);
  const auto q = RandomBf16(2 * c.q_heads * c.head_dim, 51);
  DecodeResult a, b;
  RunDecode(c, cache, q, &a);
  RunDecode(c, cache, q, &b);
  if (HasFatalFailure()) return;
  EXPECT_EQ(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(a.out[0])), 0);
  EXPECT_EQ(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)), 0);
}

TEST(DecodeAttentionTest, RejectsUnsupportedArguments) {
  DecodeAttentionArgs a;
  a.num_seqs = 2;
  a.q_heads = 4;
  a.kv_heads = 2;
  a.head_dim = 96;
  a.num_blocks = 1;
  a.block_size = 64;
  a.table_stride = 4;
  a.num_splits = 1;
  a.scale = 0.1f;
  EXPECT_NE(DecodeAttentionUnsupported(a).find("head_dim 96"), std::string::npos);
  EXPECT_EQ(DecodeAttention(a, nullptr), cudaErrorInvalidValue);
  a.head_dim = 128;
  a.block_size = 16;
  EXPECT_NE(DecodeAttentionUnsupported(a).find("block_size 16"), std::string::npos);
  a.block_size = 64;
  a.q_heads = 3;
  EXPECT_NE(DecodeAttentionUnsupported(a).find("q_heads (3)"), std::string::npos);
  a.q_heads = 34;
  EXPECT_NE(DecodeAttentionUnsupported(a).find("exceeds 16"), std::string::npos);
  a.q_heads = 4;
  a.num_splits = 0;
  EXPECT_NE(DecodeAttentionUnsupported(a).find("num_splits 0"), std::string::npos);
  a.num_splits = 4;
  a.scale = 0.0f;
  EXPECT_NE(DecodeAttentionUnsupported(a).find("scale"), std::string::npos);
  a.scale = 0.1f;
  EXPECT_NE(DecodeAttentionUnsupported(a).find("non-null"), std::string::npos);
  alignas(16) static __nv_bfloat16 dummy[64];
  static int32_t ints[8];
  a.q = a.k_cache = a.v_cache = a.out = dummy;
  a.block_tables = a.key_end = ints;
  EXPECT_NE(DecodeAttentionUnsupported(a).find("workspace_bytes 0"), std::string::npos);
  a.num_splits = 1;
  EXPECT_EQ(DecodeAttentionUnsupported(a), "");
  DcaParams dca{.chunk_len = 100, .chunk_size = 256, .rope_theta = 1e4};
  a.key_begin = nullptr;
  EXPECT_NE(DecodeAttentionUnsupported(a, &dca).find("dca.chunk_len 100"), std::string::npos);
  EXPECT_EQ(DcaDecodeAttention(a, dca, nullptr), cudaErrorInvalidValue);
  dca.chunk_len = 320;
  EXPECT_NE(DecodeAttentionUnsupported(a, &dca).find("dca.chunk_size 256"), std::string::npos);
  dca.chunk_len = 192;
  a.key_begin = ints;
  EXPECT_NE(DecodeAttentionUnsupported(a, &dca).find("key_begin must be null"),
            std::string::npos);
  a.key_begin = nullptr;
  EXPECT_EQ(DecodeAttentionUnsupported(a, &dca), "");
}

}  // namespace
}  // namespace mp::cuda
