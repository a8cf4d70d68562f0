// CPU tests of the host/device planning logic of the CUDA attention kernels (header-only, no GPU
// needed): DCA position rules (qwen1m-spec.md §9.13-15), the key-visit walk of the DCA prefill
// kernel and the split-KV work split of the decode kernel.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/decode_attention_plan.h"
#include "kernels/cuda/prefill_key_visits.h"
#include "kernels/cuda/prefill_work_order.h"

namespace mp::cuda {
namespace {

constexpr int64_t kC = 253952;  // Qwen2.5-1M chunk_len (chunk_size 262144 - local_size 8192)
constexpr int64_t kS = 262144;

TEST(DcaPositionsTest, QwenPositionTable) {
  // Spec §9.14.
  EXPECT_EQ(DcaQueryPositionsAt<int64_t>(kC, kC, kS).intra, 0);
  EXPECT_EQ(DcaQueryPositionsAt<int64_t>(kC + 8192, kC, kS).succ, 262144);
  EXPECT_EQ(DcaQueryPositionsAt<int64_t>(kC + 8193, kC, kS).succ, 262144);
  EXPECT_EQ(DcaQueryPositionsAt<int64_t>(kC + 8191, kC, kS).succ, 262143);
  EXPECT_EQ(DcaQueryPositionsAt<int64_t>(5, kC, kS).inter, 262144);
  EXPECT_EQ(DcaQueryPositionsAt<int64_t>(3 * kC + 17, kC, kS).intra, 17);
}

TEST(DcaPositionsTest, RelativeDistanceNeverExceedsChunkSize) {
  // Spec §2.2: r(p, j) = pq(p, j) - (j mod C) lies in [0, S]; it equals p - j inside the
  // query's chunk and for the first W + 1 queries of a chunk against the previous one.
  std::mt19937_64 rng(1);
  std::uniform_int_distribution<int64_t> pos(0, 1010000);
  for (int trial = 0; trial < 200000; ++trial) {
    int64_t p = pos(rng), j = pos(rng);
    if (j > p) std::swap(p, j);
    const int64_t r = DcaQueryPositionForKey<int64_t>(p, j, kC, kS) - j % kC;
    ASSERT_GE(r, 0) << p << " " << j;
    ASSERT_LE(r, kS) << p << " " << j;
    if (p / kC == j / kC) {
      ASSERT_EQ(r, p - j);
    }
    if (p / kC == j / kC + 1 && p % kC <= kS - kC) {
      ASSERT_EQ(r, p - j);
    }
  }
}

TEST(DcaPositionsTest, DecodeRegionLengths) {
  // Spec §9.15 for cache lengths n (query position n - 1).
  for (int64_t n : {int64_t{1}, kC, kC + 1, 2 * kC, 2 * kC + 1, 5 * kC + 77}) {
    const auto reg = DcaKeyRegionsAt<int64_t>(n - 1, kC);
    const int64_t cnum = (n - 1) / kC;
    EXPECT_EQ(n - reg.intra_begin, n - cnum * kC) << n;
    EXPECT_EQ(reg.intra_begin - reg.succ_begin, cnum >= 1 ? kC : 0) << n;
    EXPECT_EQ(reg.succ_begin, std::max<int64_t>(cnum - 1, 0) * kC) << n;
  }
}

TEST(DcaPositionsTest, InvFreqMatchesTheRopeFormula) {
  float inv[64];
  RopeInvFreq(128, 1e7, inv);
  EXPECT_FLOAT_EQ(inv[0], 1.0f);
  EXPECT_NEAR(inv[1], 1.0 / std::pow(1e7, 2.0 / 128), 1e-7);
  EXPECT_NEAR(inv[63], 1.0 / std::pow(1e7, 126.0 / 128), 1e-12);
}

// Every key of the tiles is visited exactly once, each visit lies in one DCA chunk and in its
// tile, visits descend, and CountKeyVisits agrees with the walk.
void CheckWalk(int first_tile, int num_tiles, int split) {
  constexpr int kTile = 128;
  const int visits = CountKeyVisits(first_tile, num_tiles, kTile, split);
  KeyVisitWalk<kTile> walk(first_tile + num_tiles - 1, split);
  std::vector<int> seen(static_cast<size_t>(num_tiles) * kTile, 0);
  int prev_lo = 1 << 30;
  for (int i = 0; i < visits; ++i) {
    const KeyVisit v = walk.Current();
    ASSERT_GE(v.tile, first_tile);
    ASSERT_LT(v.lo, v.hi);
    ASSERT_GE(v.lo, v.tile * kTile);
    ASSERT_LE(v.hi, (v.tile + 1) * kTile);
    ASSERT_LT(v.hi, prev_lo + 1);
    prev_lo = v.lo;
    if (split > 0) {
      ASSERT_EQ(v.lo / split, (v.hi - 1) / split) << "visit crosses a boundary";
    }
    for (int k = v.lo; k < v.hi; ++k) ++seen[k - first_tile * kTile];
    walk.Advance();
  }
  EXPECT_EQ(walk.Current().tile, first_tile - 1) << "walk did not end after the first tile";
  for (int k = 0; k < static_cast<int>(seen.size()); ++k) {
    ASSERT_EQ(seen[k], 1) << "key " << first_tile * kTile + k << " split " << split;
  }
}

TEST(KeyVisitWalkTest, CoversEveryKeyOncePerDcaChunk) {
  for (int split : {0, 64, 128, 192, 256, 320, 384, 1024, 253952}) {
    for (int first : {0, 1, 3, 17}) {
      for (int count : {1, 2, 5, 33}) CheckWalk(first, count, split);
    }
  }
  CheckWalk(7000, 900, 253952);  // crosses 253952 * 4 = 1015808 = tile 7936
}

// KeyVisitCursor steps through the visits of KeyVisitWalk, and Advance() reports exactly the
// steps into another DCA chunk.
void CheckCursor(int first_tile, int num_tiles, int split) {
  constexpr int kTile = 128;
  const int visits = CountKeyVisits(first_tile, num_tiles, kTile, split);
  KeyVisitWalk<kTile> walk(first_tile + num_tiles - 1, split);
  KeyVisitCursor<kTile> cursor(first_tile + num_tiles - 1, split);
  int changes = 0;
  for (int i = 0; i < visits; ++i) {
    const KeyVisit w = walk.Current(), c = cursor.Current();
    ASSERT_EQ(c.tile, w.tile) << "visit " << i << " split " << split;
    ASSERT_EQ(c.lo, w.lo) << "visit " << i << " split " << split;
    ASSERT_EQ(c.hi, w.hi) << "visit " << i << " split " << split;
    if (i + 1 == visits) break;
    walk.Advance();
    const bool changed = cursor.Advance();
    const int chunk_before = w.lo / split, chunk_after = walk.Current().lo / split;
    ASSERT_EQ(changed, chunk_after != chunk_before) << "visit " << i << " split " << split;
    changes += changed;
  }
  // Chunks spanned by the tiles, minus one.
  const int lo = first_tile * kTile, hi = (first_tile + num_tiles) * kTile;
  EXPECT_EQ(changes, (hi - 1) / split - lo / split);
}

TEST(KeyVisitCursorTest, SameVisitsAsTheWalkWithoutDivisions) {
  for (int split : {64, 128, 192, 256, 320, 384, 1024, 253952}) {
    for (int first : {0, 1, 3, 17}) {
      for (int count : {1, 2, 5, 33}) CheckCursor(first, count, split);
    }
  }
  CheckCursor(0, 8448, 253952);  // the 1M-key bench shape: chunks 0..4
  CheckCursor(7000, 900, 253952);
  CheckCursor(16000000, 700, 1 << 30);  // near the int32 position limit
}

// 2-CTA clusters: every (query tile, query head) is written by exactly one CTA, the two CTAs of
// a cluster share a KV head and know each other's query tile, and the longest rows come first.
TEST(PairedWorkOrderTest, EveryItemOnceAndPairsShareAKvHead) {
  for (int m_tiles : {1, 2, 3, 4, 256}) {
    for (int group : {1, 2, 3, 7}) {
      for (int kv_heads : {1, 3, 4}) {
        const long long grid = PairedGridSize(m_tiles, group, kv_heads);
        ASSERT_EQ(grid % 2, 0);
        std::vector<int> written(static_cast<size_t>(m_tiles) * group * kv_heads, 0);
        for (int cta = 0; cta < grid; cta += 2) {
          const PairedWorkItem a = PairedWorkItemOf(cta, m_tiles, group);
          const PairedWorkItem b = PairedWorkItemOf(cta + 1, m_tiles, group);
          ASSERT_EQ(a.q_head / group, b.q_head / group) << "cluster " << cta / 2;
          ASSERT_EQ(a.partner_m_tile, b.m_tile);
          ASSERT_EQ(b.partner_m_tile, a.m_tile);
          ASSERT_TRUE(a.writes) << "the first CTA of a cluster always has its own item";
          ASSERT_GE(a.m_tile, b.m_tile) << "items in descending query-tile order";
          for (const PairedWorkItem& w : {a, b}) {
            ASSERT_GE(w.m_tile, 0);
            ASSERT_LT(w.m_tile, m_tiles);
            ASSERT_GE(w.q_head, 0);
            ASSERT_LT(w.q_head, group * kv_heads);
            if (w.writes) ++written[static_cast<size_t>(w.q_head) * m_tiles + w.m_tile];
          }
          if (!b.writes) {
            EXPECT_EQ(b.m_tile, a.m_tile);
            EXPECT_EQ(b.q_head, a.q_head);
          }
        }
        for (int x : written) ASSERT_EQ(x, 1) << m_tiles << " tiles, group " << group;
        // Clusters of the first KV head start with the last query tile.
        EXPECT_EQ(PairedWorkItemOf(0, m_tiles, group).m_tile, m_tiles - 1);
      }
    }
  }
}

TEST(KeyVisitWalkTest, AlignedChunksVisitEachTileOnce) {
  EXPECT_EQ(CountKeyVisits(0, 100, 128, 253952), 100);
  EXPECT_EQ(CountKeyVisits(0, 100, 128, 256), 100);
  EXPECT_EQ(CountKeyVisits(0, 6, 128, 192), 8);  // boundaries 192 and 576 split tiles 1 and 4
  EXPECT_EQ(CountKeyVisits(0, 4, 128, 64), 8);
}

TEST(DecodePlanTest, SplitsPartitionTheTilesOfTheRange) {
  std::mt19937_64 rng(2);
  std::uniform_int_distribution<int> key(0, 300000);
  std::uniform_int_distribution<int> splits(1, kDecodeMaxSplits);
  for (int trial = 0; trial < 2000; ++trial) {
    int kb = key(rng), ke = key(rng);
    if (trial % 3 == 0) std::swap(kb, ke);  // some empty ranges
    const int ns = trial % 5 == 0 ? 1 : splits(rng);
    const int t0 = kb / kDecodeTileKeys;
    const int t1 = ke > kb ? (ke + kDecodeTileKeys - 1) / kDecodeTileKeys : t0;
    int next = t0;
    for (int s = 0; s < ns; ++s) {
      int first = 0, end = 0;
      DecodeSplitTiles(kb, ke, ns, s, &first, &end);
      if (end <= first) continue;  // empty split
      ASSERT_EQ(first, next) << kb << " " << ke << " " << ns << " " << s;
      next = end;
    }
    ASSERT_EQ(next, t1) << kb << " " << ke << " " << ns;
  }
}

TEST(DecodePlanTest, DefaultSplitsFillOneWave) {
  // 28/4 heads, one 1M-key sequence, 132 SMs: 66 splits -> 264 CTAs = 2 per SM.
  EXPECT_EQ(DecodeAttentionDefaultSplits(1, 4, 1 << 20, 132), 66);
  EXPECT_EQ(DecodeAttentionDefaultSplits(1, 4, 131072, 132), 66);
  EXPECT_EQ(DecodeAttentionDefaultSplits(2, 4, 1 << 20, 132), 33);
  // Enough CTAs without splitting.
  EXPECT_EQ(DecodeAttentionDefaultSplits(64, 4, 1 << 20, 132), 1);
  // Short sequences keep >= kDecodeMinTilesPerSplit tiles per split.
  EXPECT_EQ(DecodeAttentionDefaultSplits(1, 4, 1024, 132), 17 / kDecodeMinTilesPerSplit);
  EXPECT_EQ(DecodeAttentionDefaultSplits(1, 4, 1, 132), 1);
  EXPECT_EQ(DecodeAttentionDefaultSplits(0, 4, 100, 132), 1);
  for (int64_t seqs : {1, 3, 7, 20}) {
    const int s = DecodeAttentionDefaultSplits(seqs, 4, 1 << 20, 132);
    EXPECT_LE(seqs * 4 * s, 132 * kDecodeCtasPerSm);
    EXPECT_GT(seqs * 4 * (s + 1), 132 * kDecodeCtasPerSm);
  }
}

}  // namespace
}  // namespace mp::cuda
