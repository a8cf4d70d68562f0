// PagedAttention, MergeAttentionStates and WriteKv against a double-precision dense reference
// that reads K/V from plain arrays (the test scatters them into shuffled pages itself).
#include "kernels/cpu/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"

namespace mp::cpu {
namespace {

using testing::RandomNormal;
using testing::RandomUniform;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// fp32 vs double: logits carry ~1e-6 relative error (fp32 dot products, exp to 2e-7, fp32 sums),
// so out (a convex combination of v in [-1, 1]) is checked to 5e-6 absolute and lse to
// 5e-6 * (1 + |lse|) (observed errors: about 1e-6). Rows without keys must be exactly (0, -inf).
constexpr double kOutTol = 5e-6;
constexpr double kLseRelTol = 5e-6;

// A sequence's K/V, logically [seq_len, kv_heads, head_dim], stored in a paged cache whose
// block table is a random permutation. Cache rows outside [valid_begin, valid_end) hold NaN so
// that reading them shows up in every output.
struct PagedSequence {
  int64_t kv_heads = 0, head_dim = 0, block_size = 0;
  std::vector<float> k, v;              // logical, [seq_len, kv_heads, head_dim]
  std::vector<float> k_cache, v_cache;  // [num_blocks, kv_heads, block_size, head_dim]
  std::vector<int32_t> block_table;

  PagedSequence(int64_t seq_len, int64_t kv_heads_, int64_t head_dim_, int64_t block_size_,
                int64_t valid_begin, uint64_t seed)
      : kv_heads(kv_heads_), head_dim(head_dim_), block_size(block_size_) {
    k = RandomUniform(seq_len * kv_heads * head_dim, seed);
    v = RandomUniform(seq_len * kv_heads * head_dim, seed + 1);
    const int64_t used = (seq_len + block_size - 1) / block_size;
    const int64_t num_blocks = used + 3;  // spare pages, never referenced
    std::vector<int32_t> perm(num_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed + 2));
    block_table.assign(perm.begin(), perm.begin() + used);
    if (block_table.empty()) block_table.push_back(0);
    const int64_t cache_size = num_blocks * kv_heads * block_size * head_dim;
    k_cache.assign(cache_size, kNaN);
    v_cache.assign(cache_size, kNaN);
    for (int64_t t = valid_begin; t < seq_len; ++t) {
      for (int64_t h = 0; h < kv_heads; ++h) {
        for (int64_t c = 0; c < head_dim; ++c) {
          const int64_t dst =
              ((block_table[t / block_size] * kv_heads + h) * block_size + t % block_size) *
                  head_dim +
              c;
          k_cache[dst] = k[(t * kv_heads + h) * head_dim + c];
          v_cache[dst] = v[(t * kv_heads + h) * head_dim + c];
        }
      }
    }
  }

  PagedKvView View() const {
    // {k, v, block_table, block_size, kv_heads, head_dim}
    return {k_cache.data(), v_cache.data(), block_table.data(), block_size, kv_heads, head_dim};
  }
};

struct AttentionResult {
  std::vector<double> out;  // [num_queries, q_heads, head_dim]
  std::vector<double> lse;  // [q_heads, num_queries]
};

// Dense softmax attention in double with explicit loops.
AttentionResult Reference(const std::vector<float>& q, const PagedSequence& seq,
                          const AttentionShape& s) {
  const int64_t d = seq.head_dim, group = s.q_heads / seq.kv_heads;
  AttentionResult r;
  r.out.assign(s.num_queries * s.q_heads * d, 0.0);
  r.lse.assign(s.q_heads * s.num_queries, kNegInf);
  for (int64_t h = 0; h < s.q_heads; ++h) {
    const int64_t hk = h / group;
    for (int64_t i = 0; i < s.num_queries; ++i) {
      const int64_t last =
          s.causal ? std::min(s.key_end - 1, s.key_end - s.num_queries + i) : s.key_end - 1;
      std::vector<double> logits;
      for (int64_t j = s.key_begin; j <= last; ++j) {
        double dot = 0.0;
        for (int64_t c = 0; c < d; ++c) {
          dot += double{q[(i * s.q_heads + h) * d + c]} * seq.k[(j * seq.kv_heads + hk) * d + c];
        }
        logits.push_back(double{s.scale} * dot);
      }
      if (logits.empty()) continue;
      const double m = *std::max_element(logits.begin(), logits.end());
      double sum = 0.0;
      for (double l : logits) sum += std::exp(l - m);
      const double lse = m + std::log(sum);
      r.lse[h * s.num_queries + i] = lse;
      for (int64_t j = s.key_begin; j <= last; ++j) {
        const double p = std::exp(logits[j - s.key_begin] - lse);
        for (int64_t c = 0; c < d; ++c) {
          r.out[(i * s.q_heads + h) * d + c] += p * seq.v[(j * seq.kv_heads + hk) * d + c];
        }
      }
    }
  }
  return r;
}

struct KernelResult {
  std::vector<float> out, lse;
};

KernelResult RunKernel(const std::vector<float>& q, const PagedSequence& seq,
                       const AttentionShape& s, const AttentionTiles& tiles = {}) {
  KernelResult r;
  r.out.assign(s.num_queries * s.q_heads * seq.head_dim, kNaN);
  r.lse.assign(s.q_heads * s.num_queries, kNaN);
  PagedAttention(q.data(), seq.View(), s, tiles, r.out.data(), r.lse.data());
  return r;
}

// Counts the rows without visible keys into *empty_rows (each must be exactly (0, -inf)).
void ExpectMatches(const KernelResult& got, const AttentionResult& want, int64_t num_queries,
                   int64_t q_heads, int64_t head_dim, const std::string& what,
                   int64_t* empty_rows = nullptr) {
  for (int64_t h = 0; h < q_heads; ++h) {
    for (int64_t i = 0; i < num_queries; ++i) {
      const double want_lse = want.lse[h * num_queries + i];
      const float got_lse = got.lse[h * num_queries + i];
      const float* o = got.out.data() + (i * q_heads + h) * head_dim;
      const double* w = want.out.data() + (i * q_heads + h) * head_dim;
      if (want_lse == kNegInf) {
        if (empty_rows != nullptr) ++*empty_rows;
        EXPECT_EQ(got_lse, -std::numeric_limits<float>::infinity())
            << what << ": empty row " << i << " head " << h;
        for (int64_t c = 0; c < head_dim; ++c) {
          ASSERT_EQ(o[c], 0.0f) << what << ": empty row " << i << " head " << h << " dim " << c;
        }
        continue;
      }
      ASSERT_NEAR(got_lse, want_lse, kLseRelTol * (1.0 + std::abs(want_lse)))
          << what << ": lse of row " << i << " head " << h;
      for (int64_t c = 0; c < head_dim; ++c) {
        ASSERT_NEAR(o[c], w[c], kOutTol) << what << ": row " << i << " head " << h << " dim " << c;
      }
    }
  }
}

struct Case {
  std::string name;
  int64_t num_queries, key_begin, key_end, q_heads, kv_heads, head_dim, block_size;
  bool causal;
  float scale = 0.0f;  // 0: 1/sqrt(head_dim)
  int64_t expected_empty_rows = 0;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::string CaseName(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

class PagedAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(PagedAttentionTest, MatchesDenseReferenceForEveryTiling) {
  const Case& c = GetParam();
  const PagedSequence seq(c.key_end, c.kv_heads, c.head_dim, c.block_size, c.key_begin, 1000);
  const std::vector<float> q = RandomNormal(c.num_queries * c.q_heads * c.head_dim, 2000);
  AttentionShape s;
  s.num_queries = c.num_queries;
  s.q_heads = c.q_heads;
  s.key_begin = c.key_begin;
  s.key_end = c.key_end;
  s.causal = c.causal;
  s.scale = c.scale != 0.0f ? c.scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const AttentionResult want = Reference(q, seq, s);
  for (const AttentionTiles& tiles :
       {AttentionTiles{}, AttentionTiles{1, 1}, AttentionTiles{3, 5}, AttentionTiles{7, 16},
        AttentionTiles{64, 64}, AttentionTiles{1000, 1000}}) {
    const std::string what = c.name + " tiles " + std::to_string(tiles.query_block) + "x" +
                             std::to_string(tiles.key_block);
    const KernelResult got = RunKernel(q, seq, s, tiles);
    int64_t empty = 0;
    ExpectMatches(got, want, c.num_queries, c.q_heads, c.head_dim, what, &empty);
    EXPECT_EQ(empty, c.expected_empty_rows * c.q_heads) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PagedAttentionTest,
    ::testing::Values(
        // name, n, key_begin, key_end, q_heads, kv_heads, head_dim, block, causal[, scale, empty]
        Case{"PrefillMha64", 100, 0, 100, 4, 4, 64, 16, true},
        Case{"ChunkGqa3KvNotBlockMultiple", 37, 0, 213, 9, 3, 64, 16, true},
        Case{"PrefillGqa4Dim128Block64", 150, 0, 150, 8, 2, 128, 64, true},
        Case{"ChunkMhaDim128KeyBegin", 45, 10, 190, 2, 2, 128, 64, true},
        Case{"KeyBeginGqa3Dim128", 50, 40, 171, 6, 2, 128, 16, true},
        Case{"NonCausalGqa4KeyBegin", 30, 13, 100, 4, 1, 64, 64, false},
        Case{"NonCausalMoreQueriesThanKeys", 70, 0, 45, 3, 1, 64, 16, false},
        Case{"DecodeGqa3", 1, 0, 333, 9, 3, 128, 16, true},
        Case{"DecodeGqa4KeyBeginBlock64", 1, 65, 200, 8, 2, 64, 64, true},
        Case{"DecodeNonCausal", 1, 3, 17, 4, 4, 64, 16, false},
        Case{"SharpLogits", 90, 0, 120, 4, 2, 64, 16, true, 2.0f},
        // Queries 0..29 see nothing: key_end - n + i < key_begin.
        Case{"EmptyRowsBeforeKeyBegin", 60, 50, 80, 6, 2, 64, 16, true, 0.0f, 30},
        // More queries than keys: rows 0..9 have no key at all.
        Case{"EmptyRowsMoreQueriesThanKeys", 30, 0, 20, 3, 3, 64, 16, true, 0.0f, 10},
        Case{"EmptyKeyRange", 5, 32, 32, 4, 2, 64, 16, false, 0.0f, 5},
        Case{"EmptyKeyRangeCausal", 5, 7, 7, 3, 1, 128, 64, true, 0.0f, 5}),
    CaseName);

TEST(PagedAttentionLongTest, LongSequenceWithDefaultTiles) {
  // Many query tiles and key blocks with the default tiling; the reference checks a spread of
  // rows (every 37th query) to stay fast.
  const int64_t n = 1100, q_heads = 3, kv_heads = 1, d = 64;
  const PagedSequence seq(n, kv_heads, d, 16, 0, 3000);
  const std::vector<float> q = RandomNormal(n * q_heads * d, 4000);
  AttentionShape s;
  s.num_queries = n;
  s.q_heads = q_heads;
  s.key_end = n;
  s.scale = 0.125f;
  const KernelResult got = RunKernel(q, seq, s);
  // Reference for one query i = the last row of a causal problem with key_end = i + 1.
  for (int64_t i = 0; i < n; i += 37) {
    std::vector<float> qi(q.begin() + i * q_heads * d, q.begin() + (i + 1) * q_heads * d);
    AttentionShape si = s;
    si.num_queries = 1;
    si.key_end = i + 1;
    const AttentionResult want = Reference(qi, seq, si);
    KernelResult row;
    row.out.assign(got.out.begin() + i * q_heads * d, got.out.begin() + (i + 1) * q_heads * d);
    for (int64_t h = 0; h < q_heads; ++h) row.lse.push_back(got.lse[h * n + i]);
    ExpectMatches(row, want, 1, q_heads, d, "query " + std::to_string(i));
  }
}

TEST(PagedAttentionLseTest, LseMayBeOmitted) {
  const PagedSequence seq(40, 2, 64, 16, 0, 5000);
  const std::vector<float> q = RandomNormal(10 * 4 * 64, 5001);
  AttentionShape s;
  s.num_queries = 10;
  s.q_heads = 4;
  s.key_end = 40;
  s.scale = 0.125f;
  const KernelResult with_lse = RunKernel(q, seq, s);
  std::vector<float> out(with_lse.out.size(), kNaN);
  PagedAttention(q.data(), seq.View(), s, out.data(), nullptr);
  EXPECT_EQ(out, with_lse.out);
}

// ---- merge oracle --------------------------------------------------------------------------

struct MergeFixture {
  static constexpr int64_t kQueries = 24, kQHeads = 6, kKvHeads = 2, kDim = 64;
  static constexpr int64_t kKeyEnd = 150;
  PagedSequence seq{kKeyEnd, kKvHeads, kDim, 16, 0, 6000};
  std::vector<float> q = RandomNormal(kQueries * kQHeads * kDim, 6001);

  KernelResult Part(int64_t begin, int64_t end, bool causal) const {
    AttentionShape s;
    s.num_queries = kQueries;
    s.q_heads = kQHeads;
    s.key_begin = begin;
    s.key_end = end;
    s.causal = causal;
    s.scale = 0.125f;
    return RunKernel(q, seq, s, AttentionTiles{5, 7});
  }
  static void Merge(KernelResult& a, const KernelResult& b) {
    MergeAttentionStates(a.out.data(), a.lse.data(), b.out.data(), b.lse.data(), kQueries, kQHeads,
                         kDim);
  }
  static void ExpectClose(const KernelResult& got, const KernelResult& want,
                          const std::string& what) {
    AttentionResult w;
    w.out.assign(want.out.begin(), want.out.end());
    w.lse.assign(want.lse.begin(), want.lse.end());
    ExpectMatches(got, w, kQueries, kQHeads, kDim, what);
  }
};

TEST(MergeAttentionStatesTest, DisjointNonCausalPartsMergeToTheWhole) {
  const MergeFixture f;
  const KernelResult whole = f.Part(0, MergeFixture::kKeyEnd, false);
  for (int64_t split : {1, 16, 75, 149}) {
    KernelResult merged = f.Part(0, split, false);
    MergeFixture::Merge(merged, f.Part(split, MergeFixture::kKeyEnd, false));
    MergeFixture::ExpectClose(merged, whole, "split at " + std::to_string(split));
  }
  KernelResult three = f.Part(0, 40, false);
  MergeFixture::Merge(three, f.Part(40, 41, false));
  MergeFixture::Merge(three, f.Part(41, MergeFixture::kKeyEnd, false));
  MergeFixture::ExpectClose(three, whole, "three parts");
}

TEST(MergeAttentionStatesTest, HistoryPlusCausalChunkEqualsCausalWhole) {
  // Chunked prefill: the chunk's queries see all history keys and the chunk causally.
  const MergeFixture f;
  const int64_t chunk_begin = MergeFixture::kKeyEnd - MergeFixture::kQueries;
  const KernelResult whole = f.Part(0, MergeFixture::kKeyEnd, true);
  KernelResult two = f.Part(0, chunk_begin, false);
  MergeFixture::Merge(two, f.Part(chunk_begin, MergeFixture::kKeyEnd, true));
  MergeFixture::ExpectClose(two, whole, "history + chunk");
  KernelResult three = f.Part(50, chunk_begin, false);
  MergeFixture::Merge(three, f.Part(chunk_begin, MergeFixture::kKeyEnd, true));
  MergeFixture::Merge(three, f.Part(0, 50, false));
  MergeFixture::ExpectClose(three, whole, "two history parts + chunk, out of order");
}

TEST(MergeAttentionStatesTest, EmptyPartChangesNothing) {
  const MergeFixture f;
  const KernelResult part = f.Part(10, 90, false);
  const KernelResult empty = f.Part(90, 90, false);
  for (float l : empty.lse) ASSERT_EQ(l, -std::numeric_limits<float>::infinity());
  KernelResult left = part;
  MergeFixture::Merge(left, empty);
  EXPECT_EQ(left.out, part.out);
  EXPECT_EQ(left.lse, part.lse);
  KernelResult right = empty;
  MergeFixture::Merge(right, part);
  EXPECT_EQ(right.out, part.out);
  EXPECT_EQ(right.lse, part.lse);
  KernelResult both_empty = empty;
  MergeFixture::Merge(both_empty, empty);
  for (float o : both_empty.out) ASSERT_EQ(o, 0.0f);
  for (float l : both_empty.lse) ASSERT_EQ(l, -std::numeric_limits<float>::infinity());
}

TEST(MergeAttentionStatesTest, OrderDoesNotMatter) {
  const MergeFixture f;
  const KernelResult a = f.Part(0, 30, false), b = f.Part(30, 100, false);
  const KernelResult c = f.Part(100, MergeFixture::kKeyEnd, false);
  KernelResult ab = a, ba = b;
  MergeFixture::Merge(ab, b);
  MergeFixture::Merge(ba, a);
  EXPECT_EQ(ab.out, ba.out);  // the two-way merge is symmetric to the bit
  EXPECT_EQ(ab.lse, ba.lse);
  KernelResult ab_c = ab, bc = b, ca_b = c;
  MergeFixture::Merge(ab_c, c);
  MergeFixture::Merge(bc, c);
  KernelResult a_bc = a;
  MergeFixture::Merge(a_bc, bc);
  MergeFixture::Merge(ca_b, a);
  MergeFixture::Merge(ca_b, b);
  MergeFixture::ExpectClose(a_bc, ab_c, "(a, (b, c)) vs ((a, b), c)");
  MergeFixture::ExpectClose(ca_b, ab_c, "((c, a), b) vs ((a, b), c)");
}

TEST(MergeAttentionStatesTest, MatchesTheFormulaOnRandomStates) {
  // Random partial states (not from attention), including lse far apart: fp32 result vs the
  // double formula.
  const int64_t n = 9, heads = 3, d = 17;
  std::vector<float> out_a = RandomUniform(n * heads * d, 7000);
  const std::vector<float> out_b = RandomUniform(n * heads * d, 7001);
  std::vector<float> lse_a = RandomUniform(n * heads, 7002, -5.0f, 5.0f);
  const std::vector<float> lse_b = RandomUniform(n * heads, 7003, -5.0f, 5.0f);
  lse_a[0] = 80.0f;   // b is negligible
  lse_a[1] = -80.0f;  // a is negligible
  const std::vector<float> oa0 = out_a, la0 = lse_a;
  MergeAttentionStates(out_a.data(), lse_a.data(), out_b.data(), lse_b.data(), n, heads, d);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < n; ++i) {
      const double la = la0[h * n + i], lb = lse_b[h * n + i];
      const double m = std::max(la, lb);
      const double wa = std::exp(la - m), wb = std::exp(lb - m);
      EXPECT_NEAR(lse_a[h * n + i], m + std::log(wa + wb), 1e-6 * (1.0 + std::abs(m)));
      for (int64_t c = 0; c < d; ++c) {
        const int64_t idx = (i * heads + h) * d + c;
        const double want = (wa * oa0[idx] + wb * out_b[idx]) / (wa + wb);
        ASSERT_NEAR(out_a[idx], want, 1e-6) << "row " << i << " head " << h << " dim " << c;
      }
    }
  }
}

// ---- WriteKv -------------------------------------------------------------------------------

TEST(WriteKvTest, RoundTripsThroughShuffledPages) {
  for (int64_t block_size : {16, 64}) {
    const int64_t kv_heads = 3, d = 64, total = 200;
    // Pages are filled by WriteKv in three calls crossing page boundaries.
    PagedSequence seq(total, kv_heads, d, block_size, total, 8000 + block_size);  // all NaN
    std::vector<float> k = RandomUniform(total * kv_heads * d, 8100);
    std::vector<float> v = RandomUniform(total * kv_heads * d, 8101);
    const int64_t first = 5;  // tokens [0, 5) are never written
    for (auto [start, end] :
         {std::pair<int64_t, int64_t>{first, 21}, std::pair<int64_t, int64_t>{21, 22},
          std::pair<int64_t, int64_t>{22, total}}) {
      WriteKv(k.data() + start * kv_heads * d, v.data() + start * kv_heads * d, end - start, start,
              seq.k_cache.data(), seq.v_cache.data(), seq.block_table.data(), block_size, kv_heads,
              d);
    }
    int64_t written = 0;
    for (int64_t t = 0; t < total; ++t) {
      for (int64_t h = 0; h < kv_heads; ++h) {
        for (int64_t c = 0; c < d; ++c) {
          const int64_t at =
              ((seq.block_table[t / block_size] * kv_heads + h) * block_size + t % block_size) * d +
              c;
          const int64_t src = (t * kv_heads + h) * d + c;
          if (t < first) {
            ASSERT_TRUE(std::isnan(seq.k_cache[at])) << "token " << t << " was written";
            continue;
          }
          ASSERT_EQ(seq.k_cache[at], k[src]) << "block " << block_size << " token " << t;
          ASSERT_EQ(seq.v_cache[at], v[src]) << "block " << block_size << " token " << t;
          ++written;
        }
      }
    }
    EXPECT_EQ(written, (total - first) * kv_heads * d);
    // Rows of the spare pages and beyond the last token were left alone.
    int64_t untouched = 0;
    for (float x : seq.k_cache) untouched += std::isnan(x) ? 1 : 0;
    EXPECT_EQ(untouched, static_cast<int64_t>(seq.k_cache.size()) - written);
  }
}

}  // namespace
}  // namespace mp::cpu
