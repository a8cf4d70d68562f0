// BuildVerticalSlashIndex (qwen1m-spec.md §3.5) against §9 oracle 9 on random selections:
// every selected vertical below the causal limit is attended, every selected diagonal covers key
// row - d of every row of every row block it crosses, blocks and columns are disjoint, nothing
// at or beyond the causal limit or kv_len is listed, and nothing unselected is added beyond the
// 64-key block granularity.
#include "kernels/cpu/vertical_slash_index.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace mp::cpu {
namespace {

struct IndexCase {
  int64_t q_len, kv_len;
  bool causal;
  int64_t n_vertical, n_slash, slash_range;  // slash values drawn from [0, slash_range)
};

TEST(VerticalSlashIndexTest, CoversExactlyTheSelection) {
  const std::vector<IndexCase> cases = {
      {64, 64, true, 10, 5, 64},          {100, 300, true, 40, 30, 300},
      {1, 1000, true, 50, 20, 1000},      {130, 130, true, 20, 100, 130},
      {200, 517, true, 100, 150, 517},    {77, 1000, false, 60, 40, 1077},
      {64, 128, false, 10, 10, 192},      {190, 333, false, 80, 200, 523},
      {5, 40, false, 40, 45, 45},         {129, 2000, true, 300, 25, 2000},
      {300, 301, true, 0, 100, 301},      {63, 700, false, 0, 3, 763},
  };
  std::mt19937_64 rng(5);
  int64_t checked_cells = 0;
  for (const IndexCase& c : cases) {
    SCOPED_TRACE("q_len=" + std::to_string(c.q_len) + " kv_len=" + std::to_string(c.kv_len) +
                 (c.causal ? " causal" : " non-causal"));
    const int64_t heads = 3;
    const int64_t v_cap = c.n_vertical + 4, s_cap = c.n_slash + 3;
    std::vector<int32_t> vertical(heads * v_cap, INT32_MAX), slash(heads * s_cap, INT32_MIN);
    std::vector<int32_t> vc(heads), sc(heads);
    for (int64_t h = 0; h < heads; ++h) {
      std::set<int32_t> vs, ss;
      const int64_t nv = std::min(c.n_vertical - h, c.kv_len);
      while (static_cast<int64_t>(vs.size()) < std::max<int64_t>(0, nv)) {
        vs.insert(static_cast<int32_t>(rng() % c.kv_len));
      }
      const int64_t ns = std::min(c.n_slash, c.slash_range);
      while (static_cast<int64_t>(ss.size()) < ns) {
        ss.insert(static_cast<int32_t>(rng() % c.slash_range));
      }
      vc[h] = static_cast<int32_t>(vs.size());
      sc[h] = static_cast<int32_t>(ss.size());
      std::copy(vs.begin(), vs.end(), vertical.begin() + h * v_cap);
      std::copy(ss.rbegin(), ss.rend(), slash.begin() + h * s_cap);
    }
    const int64_t rb = VerticalSlashRowBlocks(c.q_len);
    const int64_t max_blocks = VerticalSlashBlockCapacity(s_cap, c.kv_len);
    std::vector<int32_t> bc(heads * rb, -1), bo(heads * rb * max_blocks, -1), cc(heads * rb, -1),
        ci(heads * rb * v_cap, -1);
    BuildVerticalSlashIndex({vertical.data(), vc.data(), slash.data(), sc.data(), v_cap, s_cap},
                            {heads, c.q_len, c.kv_len, c.causal},
                            {bc.data(), bo.data(), cc.data(), ci.data(), max_blocks, v_cap});
    const int64_t base = c.causal ? c.kv_len - c.q_len : c.kv_len;

    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t m = 0; m < rb; ++m) {
        SCOPED_TRACE("head " + std::to_string(h) + " block " + std::to_string(m));
        const int64_t start = m * 64, end = std::min(start + 64, c.q_len);
        const int64_t limit = c.causal ? std::min(c.kv_len, base + end) : c.kv_len;
        const int32_t* blocks = bo.data() + (h * rb + m) * max_blocks;
        const int32_t* columns = ci.data() + (h * rb + m) * v_cap;
        const int64_t nb = bc[h * rb + m], nc = cc[h * rb + m];
        ASSERT_GE(nb, 0);
        ASSERT_LE(nb, std::min<int64_t>(sc[h], max_blocks));
        ASSERT_GE(nc, 0);
        ASSERT_LE(nc, vc[h]);
        std::set<int64_t> in_blocks, in_columns;
        for (int64_t b = 0; b < nb; ++b) {
          ASSERT_GE(blocks[b], 0);
          ASSERT_LT(blocks[b], limit) << "block starting at or beyond the limit";
          if (b > 0) ASSERT_LE(blocks[b - 1] + 64, blocks[b]) << "blocks overlap";
          for (int64_t k = blocks[b]; k < blocks[b] + 64; ++k) in_blocks.insert(k);
          // Every block meets the clipped interval of some selected diagonal.
          bool meets = false;
          for (int64_t s = 0; s < sc[h] && !meets; ++s) {
            const int64_t d = slash[h * s_cap + s];
            const int64_t lo = std::max<int64_t>(0, base + end - d - 64);
            const int64_t hi = std::min(base + end - d, limit);
            meets = lo < hi && lo < blocks[b] + 64 && blocks[b] < hi;
          }
          EXPECT_TRUE(meets) << "block " << blocks[b] << " holds no selected diagonal";
        }
        std::set<int64_t> selected_v(vertical.begin() + h * v_cap,
                                     vertical.begin() + h * v_cap + vc[h]);
        for (int64_t x = 0; x < nc; ++x) {
          const int64_t col = columns[x];
          ASSERT_TRUE(selected_v.count(col)) << "column " << col << " was not selected";
          ASSERT_LT(col, limit) << "column at or beyond the limit";
          ASSERT_FALSE(in_blocks.count(col)) << "column " << col << " also in a block";
          if (x > 0) ASSERT_LT(columns[x - 1], col);
          in_columns.insert(col);
        }
        auto attended = [&](int64_t key) { return in_blocks.count(key) || in_columns.count(key); };
        for (int64_t i = start; i < end; ++i) {
          const int64_t row_limit = c.causal ? base + i + 1 : c.kv_len;  // keys < row_limit
          for (int64_t j : selected_v) {
            if (j < row_limit) {
              ASSERT_TRUE(attended(j)) << "vertical " << j << " row " << i;
              ++checked_cells;
            }
          }
          for (int64_t s = 0; s < sc[h]; ++s) {
            const int64_t key = base + i - slash[h * s_cap + s];
            if (key >= 0 && key < c.kv_len && key < row_limit) {
              ASSERT_TRUE(attended(key)) << "diagonal " << slash[h * s_cap + s] << " row " << i;
              ++checked_cells;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(checked_cells, 100000);
}

TEST(VerticalSlashIndexTest, MergesTouchingDiagonalsIntoConsecutiveBlocks) {
  // Causal, q_len = kv_len = 256, one head. Row block 3 (rows 192..255, end_m = 256), slashes
  // walked in decreasing d: d = 200 -> [0, 56) opens [0, 64); d = 40 -> [152, 216) leaves a gap,
  // so block 0 is emitted and [152, 216) opens; d = 0 -> [192, 256) overlaps and extends the
  // range by one block to [152, 280): blocks 0, 152, 216.
  const int32_t vertical[] = {3, 100, 150, 160, 255};
  const int32_t slash[] = {200, 40, 0};
  const int32_t vc = 5, sc = 3;
  const int64_t rb = 4, max_blocks = 3;
  std::vector<int32_t> bc(rb), bo(rb * max_blocks), cc(rb), ci(rb * 5);
  BuildVerticalSlashIndex({vertical, &vc, slash, &sc, 5, 3}, {1, 256, 256, true},
                          {bc.data(), bo.data(), cc.data(), ci.data(), max_blocks, 5});
  ASSERT_EQ(bc[3], 3);
  EXPECT_EQ(std::vector<int32_t>(bo.begin() + 9, bo.begin() + 12),
            (std::vector<int32_t>{0, 152, 216}));
  // Columns: 3 in block 0, 100 free, 150 free, 160 and 255 in blocks.
  ASSERT_EQ(cc[3], 2);
  EXPECT_EQ(ci[15], 100);
  EXPECT_EQ(ci[16], 150);
  // Row block 0 (rows 0..63, causal limit 64): d = 200 lies before key 0 (skipped), d = 40
  // gives [0, 24) and d = 0 gives [0, 64): one block at 0.
  ASSERT_EQ(bc[0], 1);
  EXPECT_EQ(bo[0], 0);
  // Columns of block 0: 100, 150, 160, 255 are beyond the causal limit 64 of its last row.
  EXPECT_EQ(cc[0], 0);
}

}  // namespace
}  // namespace mp::cpu
