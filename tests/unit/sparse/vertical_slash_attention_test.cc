// VerticalSlashAttention against §9 oracles 8 and 12 and GQA invariance: O and LSE equal a
// double-precision dense softmax under the explicit mask of qwen1m-spec.md §3.5 (causal with
// q_len < kv_len, q_len == kv_len, and non-causal), exp(lse_sparse - lse_full) equals the
// explicit sum of full-softmax probabilities over the attended keys, a full index equals dense
// attention, and sharing K/V across a GQA group gives the same result as repeating it.
#include "kernels/cpu/vertical_slash_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/vertical_slash_index.h"
#include "tests/unit/sparse/sparse_test_util.h"

namespace mp::cpu {
namespace {

using testing::Dot;
using testing::PagedKv;
using testing::RandomUniform;
using testing::ReferenceRow;

constexpr double kOutTol = 5e-6;
constexpr double kLseRelTol = 5e-6;

struct AttnCase {
  int64_t q_len, kv_len, key_begin, seq_len;
  bool causal;
  int64_t q_heads, kv_heads, head_dim, block_size;
  int64_t n_vertical, n_slash;
  std::string Name() const {
    return "q_len=" + std::to_string(q_len) + " kv_len=" + std::to_string(kv_len) +
           " key_begin=" + std::to_string(key_begin) + (causal ? " causal" : " non-causal") +
           " heads=" + std::to_string(q_heads) + "/" + std::to_string(kv_heads);
  }
};

// K/V of the sequence with NaN outside the part's keys: reading them would poison the output.
PagedKv PartKv(const AttnCase& c, uint64_t seed) {
  const int64_t row = c.kv_heads * c.head_dim;
  std::vector<float> k = RandomUniform(c.seq_len * row, seed);
  std::vector<float> v = RandomUniform(c.seq_len * row, seed + 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t t = 0; t < c.seq_len; ++t) {
    if (t >= c.key_begin && t < c.key_begin + c.kv_len) continue;
    std::fill(k.begin() + t * row, k.begin() + (t + 1) * row, nan);
    std::fill(v.begin() + t * row, v.begin() + (t + 1) * row, nan);
  }
  return PagedKv(std::move(k), std::move(v), c.seq_len, c.kv_heads, c.head_dim, c.block_size,
                 seed + 2);
}

// A built index for random selections (or all keys as verticals when `full`).
struct Index {
  int64_t rb = 0, max_blocks = 0, max_columns = 0;
  std::vector<int32_t> bc, bo, cc, ci;
  VerticalSlashIndexView View() const {
    return {bc.data(), bo.data(), cc.data(), ci.data(), max_blocks, max_columns};
  }
};

Index BuildRandomIndex(const AttnCase& c, std::mt19937_64& rng, bool full) {
  const int64_t v_cap = full ? c.kv_len : std::max<int64_t>(1, c.n_vertical);
  const int64_t s_cap = std::max<int64_t>(1, c.n_slash);
  std::vector<int32_t> vertical(c.q_heads * v_cap), slash(c.q_heads * s_cap);
  std::vector<int32_t> vc(c.q_heads), sc(c.q_heads);
  const int64_t slash_range = c.causal ? c.kv_len : c.kv_len + c.q_len;
  for (int64_t h = 0; h < c.q_heads; ++h) {
    std::set<int32_t> vs, ss;
    if (full) {
      for (int64_t j = 0; j < c.kv_len; ++j) vs.insert(static_cast<int32_t>(j));
    } else {
      const int64_t nv = std::min(c.n_vertical, c.kv_len) - (h % 3);
      while (static_cast<int64_t>(vs.size()) < nv) vs.insert(rng() % c.kv_len);
      const int64_t ns = std::min(c.n_slash, slash_range) - (h % 2);
      while (static_cast<int64_t>(ss.size()) < ns) ss.insert(rng() % slash_range);
    }
    vc[h] = static_cast<int32_t>(vs.size());
    sc[h] = static_cast<int32_t>(ss.size());
    std::copy(vs.begin(), vs.end(), vertical.begin() + h * v_cap);
    std::copy(ss.rbegin(), ss.rend(), slash.begin() + h * s_cap);
  }
  Index idx;
  idx.rb = VerticalSlashRowBlocks(c.q_len);
  idx.max_blocks = VerticalSlashBlockCapacity(s_cap, c.kv_len);
  idx.max_columns = v_cap;
  idx.bc.resize(c.q_heads * idx.rb);
  idx.cc.resize(c.q_heads * idx.rb);
  idx.bo.resize(c.q_heads * idx.rb * idx.max_blocks);
  idx.ci.resize(c.q_heads * idx.rb * idx.max_columns);
  BuildVerticalSlashIndex({vertical.data(), vc.data(), slash.data(), sc.data(), v_cap, s_cap},
                          {c.q_heads, c.q_len, c.kv_len, c.causal},
                          {idx.bc.data(), idx.bo.data(), idx.cc.data(), idx.ci.data(),
                           idx.max_blocks, idx.max_columns});
  return idx;
}

// The explicit mask of §3.5 for row i of head h: absolute keys.
std::vector<int64_t> MaskedKeys(const AttnCase& c, const Index& idx, int64_t h, int64_t i) {
  const int64_t m = i / 64;
  const int64_t limit = c.causal ? std::min(c.kv_len, c.kv_len - c.q_len + i + 1) : c.kv_len;
  std::set<int64_t> keys;
  const int64_t rb = h * idx.rb + m;
  for (int64_t b = 0; b < idx.bc[rb]; ++b) {
    for (int64_t k = idx.bo[rb * idx.max_blocks + b]; k < idx.bo[rb * idx.max_blocks + b] + 64;
         ++k) {
      if (k < limit) keys.insert(c.key_begin + k);
    }
  }
  for (int64_t x = 0; x < idx.cc[rb]; ++x) {
    const int64_t k = idx.ci[rb * idx.max_columns + x];
    if (k < limit) keys.insert(c.key_begin + k);
  }
  return std::vector<int64_t>(keys.begin(), keys.end());
}

AttentionShape Shape(const AttnCase& c, float scale) {
  AttentionShape s;
  s.num_queries = c.q_len;
  s.q_heads = c.q_heads;
  s.key_begin = c.key_begin;
  s.key_end = c.key_begin + c.kv_len;
  s.causal = c.causal;
  s.scale = scale;
  return s;
}

const std::vector<AttnCase>& Cases() {
  static const std::vector<AttnCase> cases = {
      {64, 64, 0, 64, true, 4, 2, 16, 16, 8, 4},
      {100, 300, 0, 300, true, 4, 2, 16, 16, 40, 20},      // q_len < kv_len (bottom-right)
      {37, 517, 90, 700, true, 6, 3, 8, 7, 60, 30},        // part inside a longer sequence
      {1, 250, 0, 250, true, 2, 1, 16, 16, 30, 100},       // single query
      {200, 200, 13, 213, true, 4, 4, 16, 16, 20, 100},    // q_len == kv_len, MHA
      {77, 1000, 0, 1100, false, 4, 2, 16, 16, 60, 40},    // succ / inter style
      {129, 333, 300, 633, false, 8, 2, 8, 16, 80, 200},   // GQA 4
      {64, 48, 48, 160, false, 4, 1, 16, 16, 9, 9},        // tiny part (fallback sizes)
  };
  return cases;
}

TEST(VerticalSlashAttentionTest, EqualsDenseAttentionUnderTheExplicitMask) {
  std::mt19937_64 rng(99);
  uint64_t seed = 1;
  for (const AttnCase& c : Cases()) {
    SCOPED_TRACE(c.Name());
    const PagedKv kv = PartKv(c, seed += 10);
    const std::vector<float> q = RandomUniform(c.q_len * c.q_heads * c.head_dim, seed + 5, -2, 2);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    const Index idx = BuildRandomIndex(c, rng, /*full=*/false);
    std::vector<float> out(q.size(), 7.0f), lse(c.q_heads * c.q_len, 7.0f);
    VerticalSlashAttention(q.data(), kv.View(), Shape(c, scale), idx.View(), out.data(),
                           lse.data());
    // Dense (full) attention of the part for the recall oracle.
    std::vector<float> out_full(q.size()), lse_full(c.q_heads * c.q_len);
    PagedAttention(q.data(), kv.View(), Shape(c, scale), out_full.data(), lse_full.data());

    const int64_t group = c.q_heads / c.kv_heads;
    int64_t empty_rows = 0;
    for (int64_t h = 0; h < c.q_heads; ++h) {
      for (int64_t i = 0; i < c.q_len; ++i) {
        const float* qi = q.data() + (i * c.q_heads + h) * c.head_dim;
        const std::vector<int64_t> keys = MaskedKeys(c, idx, h, i);
        std::vector<double> want;
        double want_lse = 0.0;
        ReferenceRow(qi, kv, h / group, keys, scale, &want, &want_lse);
        const float* got = out.data() + (i * c.q_heads + h) * c.head_dim;
        const float got_lse = lse[h * c.q_len + i];
        if (keys.empty()) {
          ++empty_rows;
          EXPECT_EQ(got_lse, -std::numeric_limits<float>::infinity());
          for (int64_t x = 0; x < c.head_dim; ++x) ASSERT_EQ(got[x], 0.0f);
          continue;
        }
        for (int64_t x = 0; x < c.head_dim; ++x) {
          ASSERT_NEAR(got[x], want[x], kOutTol) << "head " << h << " row " << i << " dim " << x;
        }
        ASSERT_NEAR(got_lse, want_lse, kLseRelTol * (1 + std::abs(want_lse)))
            << "head " << h << " row " << i;
        // Oracle 12: recall = explicit probability mass of the attended keys.
        const int64_t limit = c.causal ? c.kv_len - c.q_len + i + 1 : c.kv_len;
        double m = -1e300, total = 0.0, selected = 0.0;
        std::vector<double> logits(limit);
        for (int64_t k = 0; k < limit; ++k) {
          logits[k] = scale * Dot(qi, kv.K(c.key_begin + k, h / group), c.head_dim);
          m = std::max(m, logits[k]);
        }
        std::set<int64_t> chosen(keys.begin(), keys.end());
        for (int64_t k = 0; k < limit; ++k) {
          const double p = std::exp(logits[k] - m);
          total += p;
          if (chosen.count(c.key_begin + k)) selected += p;
        }
        const double recall = std::exp(static_cast<double>(got_lse) - lse_full[h * c.q_len + i]);
        ASSERT_NEAR(recall, selected / total, 2e-5) << "head " << h << " row " << i;
        ASSERT_LE(recall, 1.0 + 2e-5);
      }
    }
    EXPECT_LT(empty_rows, c.q_heads * c.q_len) << "every row empty: the case tests nothing";
  }
}

TEST(VerticalSlashAttentionTest, FullIndexEqualsDenseAttentionAndRecallIsOne) {
  std::mt19937_64 rng(3);
  uint64_t seed = 500;
  for (const AttnCase& c : Cases()) {
    SCOPED_TRACE(c.Name());
    const PagedKv kv = PartKv(c, seed += 10);
    const std::vector<float> q = RandomUniform(c.q_len * c.q_heads * c.head_dim, seed + 5, -2, 2);
    const float scale = 0.3f;
    const Index idx = BuildRandomIndex(c, rng, /*full=*/true);
    std::vector<float> out(q.size()), lse(c.q_heads * c.q_len);
    std::vector<float> dense(q.size()), dense_lse(lse.size());
    VerticalSlashAttention(q.data(), kv.View(), Shape(c, scale), idx.View(), out.data(),
                           lse.data());
    PagedAttention(q.data(), kv.View(), Shape(c, scale), dense.data(), dense_lse.data());
    for (size_t x = 0; x < out.size(); ++x) ASSERT_NEAR(out[x], dense[x], kOutTol) << x;
    for (size_t x = 0; x < lse.size(); ++x) {
      ASSERT_NEAR(std::exp(lse[x] - dense_lse[x]), 1.0, 1e-5) << x;
    }
  }
}

TEST(VerticalSlashAttentionTest, GqaSharingEqualsRepeatedKv) {
  std::mt19937_64 rng(17);
  for (const AttnCase& base : Cases()) {
    if (base.q_heads == base.kv_heads) continue;
    SCOPED_TRACE(base.Name());
    const PagedKv grouped = PartKv(base, 777);
    // The same K/V with every kv head repeated `group` times (q head h reads repeated head h).
    AttnCase rep = base;
    rep.kv_heads = base.q_heads;
    const int64_t group = base.q_heads / base.kv_heads;
    const int64_t d = base.head_dim;
    std::vector<float> k(base.seq_len * rep.kv_heads * d), v(k.size());
    for (int64_t t = 0; t < base.seq_len; ++t) {
      for (int64_t h = 0; h < rep.kv_heads; ++h) {
        std::copy(grouped.K(t, h / group), grouped.K(t, h / group) + d, k.begin() + (t * rep.kv_heads + h) * d);
        std::copy(grouped.V(t, h / group), grouped.V(t, h / group) + d, v.begin() + (t * rep.kv_heads + h) * d);
      }
    }
    const PagedKv repeated(std::move(k), std::move(v), base.seq_len, rep.kv_heads, d,
                           base.block_size, 4);
    const std::vector<float> q = RandomUniform(base.q_len * base.q_heads * d, 8, -2, 2);
    const Index idx = BuildRandomIndex(base, rng, false);
    std::vector<float> out_g(q.size()), lse_g(base.q_heads * base.q_len);
    std::vector<float> out_r(q.size()), lse_r(lse_g.size());
    VerticalSlashAttention(q.data(), grouped.View(), Shape(base, 0.25f), idx.View(), out_g.data(),
                           lse_g.data());
    VerticalSlashAttention(q.data(), repeated.View(), Shape(rep, 0.25f), idx.View(), out_r.data(),
                           lse_r.data());
    EXPECT_EQ(out_g, out_r);
    EXPECT_EQ(lse_g, lse_r);
  }
}

TEST(VerticalSlashAttentionTest, EmptyIndexGivesEmptyParts) {
  const AttnCase c{70, 100, 0, 100, false, 2, 1, 8, 16, 0, 0};
  const PagedKv kv = PartKv(c, 3);
  const std::vector<float> q = RandomUniform(c.q_len * c.q_heads * c.head_dim, 4);
  const int64_t rb = VerticalSlashRowBlocks(c.q_len);
  std::vector<int32_t> zeros(c.q_heads * rb, 0), unused(c.q_heads * rb, 0);
  std::vector<float> out(q.size(), 3.0f), lse(c.q_heads * c.q_len, 3.0f);
  VerticalSlashAttention(q.data(), kv.View(), Shape(c, 1.0f),
                         {zeros.data(), unused.data(), zeros.data(), unused.data(), 1, 1},
                         out.data(), lse.data());
  for (float x : out) ASSERT_EQ(x, 0.0f);
  for (float x : lse) ASSERT_EQ(x, -std::numeric_limits<float>::infinity());
}

}  // namespace
}  // namespace mp::cpu
