// Dual chunk attention: the position tables, regions and YaRN temperature at the published
// values, and DcaPagedAttention against the oracles of qwen1m-spec.md §9 (items 1-5, 13-15):
//   * a brute-force dense reference in double built from the per-pair relative distances
//     r(p, j) of §2.2 (written here from the spec, not from dca_positions.h), on un-rotated q/k
//     (RoPE depends only on the difference), probed at the chunk-boundary queries;
//   * equality with plain RoPE attention below the chunk length;
//   * invariance to how prefill is chunked; decode equal to the last prefill row;
//   * empty regions merging as (0, -inf).
// Tiny geometries as in §9: chunk_size 64, local_size 16 (C = 48), page 16, 4 q heads with 2 or
// 4 kv heads, lengths over 0..3+ DCA chunks, L0 below L to exercise the temperature.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/dca_attention.h"
#include "kernels/cpu/dca_positions.h"
#include "kernels/cpu/rope.h"
#include "tests/unit/kernels/kernel_test_util.h"

namespace mp::cpu {
namespace {

using testing::RandomNormal;
using testing::RandomUniform;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kNegInfF = -std::numeric_limits<float>::infinity();
constexpr double kTheta = 10000.0;

// fp32 kernel vs double reference: the kernel's angles are fp32 (positions <= S = 64 here, so
// about 1e-5 rad at most), its dot products and exps fp32. Outputs are convex combinations of
// v in [-1, 1]; observed errors are a few 1e-7.
constexpr double kOutTol = 2e-5;
constexpr double kLseTol = 2e-5;
// Two fp32 computations of the same thing with different tilings / piece splits.
constexpr double kSameTol = 2e-6;

// ---- the oracle: relative distances straight from qwen1m-spec.md §2.2 ----------------------

struct Geometry {
  int64_t S = 0;   // chunk_size
  int64_t W = 0;   // local_size
  int64_t L0 = 0;  // original_max_position_embeddings
  int64_t C() const { return S - W; }
};

// The distance the model sees for query p and key j <= p (spec §2.2 table and pseudo-code):
// K at j mod C; Q at p mod C (same chunk), min(p mod C + C, S) (previous chunk) or
// min(2C - 1, S) (older chunks).
int64_t OracleDistance(const Geometry& g, int64_t p, int64_t j) {
  const int64_t C = g.C();
  const int64_t i = p % C, jj = j % C;
  if (j / C == p / C) return p - j;
  if (j / C == p / C - 1) return std::min(i + C, g.S) - jj;
  return std::min(2 * C - 1, g.S) - jj;
}

double OracleTemperature(double L, double L0) { return std::max(1.0, 0.1 * std::log(L / L0) + 1); }

// A sequence's un-rotated K and V [len, kv_heads, d] and a paged cache holding K rotated by
// j mod C (fp32 RopeNeox, as the runtime writes it) for j < valid_end; other rows are NaN.
struct DcaSequence {
  int64_t kv_heads = 0, d = 0, block_size = 0;
  std::vector<float> k, v;
  std::vector<float> k_cache, v_cache;
  std::vector<int32_t> block_table;

  DcaSequence(int64_t len, int64_t kv_heads_, int64_t d_, int64_t block_size_, int64_t chunk_len,
              uint64_t seed)
      : kv_heads(kv_heads_), d(d_), block_size(block_size_) {
    k = RandomUniform(len * kv_heads * d, seed);
    v = RandomUniform(len * kv_heads * d, seed + 1);
    const int64_t used = std::max<int64_t>(1, (len + block_size - 1) / block_size);
    const int64_t num_blocks = used + 2;
    std::vector<int32_t> perm(num_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed + 2));
    block_table.assign(perm.begin(), perm.begin() + used);
    k_cache.assign(num_blocks * kv_heads * block_size * d, kNaN);
    v_cache.assign(k_cache.size(), kNaN);
    rotated_k = k;
    std::vector<int32_t> pos(len);
    for (int64_t j = 0; j < len; ++j) pos[j] = static_cast<int32_t>(j % chunk_len);
    RopeNeox(rotated_k.data(), pos.data(), len, kv_heads, d, kTheta);
    Fill(len);
  }

  // Cache rows [0, valid_end) hold the sequence, the rest NaN.
  void Fill(int64_t valid_end) {
    std::fill(k_cache.begin(), k_cache.end(), kNaN);
    std::fill(v_cache.begin(), v_cache.end(), kNaN);
    for (int64_t t = 0; t < valid_end; ++t) {
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t dst =
            ((block_table[t / block_size] * kv_heads + h) * block_size + t % block_size) * d;
        std::copy_n(rotated_k.begin() + (t * kv_heads + h) * d, d, k_cache.begin() + dst);
        std::copy_n(v.begin() + (t * kv_heads + h) * d, d, v_cache.begin() + dst);
      }
    }
  }

  PagedKvView View() const {
    // {k, v, block_table, block_size, kv_heads, head_dim}
    return {k_cache.data(), v_cache.data(), block_table.data(), block_size, kv_heads, d};
  }

  std::vector<float> rotated_k;  // [len, kv_heads, d], rotated by j mod C
};

struct Result {
  std::vector<double> out;  // [n, heads, d]
  std::vector<double> lse;  // [heads, n]
};

// Dense attention in double: query i (position query_begin + i) over keys j <= p with logits
// scale * m^2 * (R(r(p, j)) q) . k on the un-rotated q and k.
Result BruteForce(const std::vector<float>& q, int64_t n, int64_t heads, const DcaSequence& seq,
                  int64_t query_begin, const Geometry& g, double scale, double m) {
  const int64_t d = seq.d, half = d / 2, group = heads / seq.kv_heads;
  Result r;
  r.out.assign(n * heads * d, 0.0);
  r.lse.assign(heads * n, 0.0);
  std::vector<double> inv_freq(half);
  for (int64_t c = 0; c < half; ++c) inv_freq[c] = std::pow(kTheta, -2.0 * c / d);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = query_begin + i;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t hk = h / group;
      const float* qv = q.data() + (i * heads + h) * d;
      std::vector<double> logits(p + 1);
      for (int64_t j = 0; j <= p; ++j) {
        const double dist = static_cast<double>(OracleDistance(g, p, j));
        const float* kv = seq.k.data() + (j * seq.kv_heads + hk) * d;
        double dot = 0.0;
        for (int64_t c = 0; c < half; ++c) {
          const double a = dist * inv_freq[c];
          const double x1 = qv[c], x2 = qv[c + half];
          dot += (x1 * std::cos(a) - x2 * std::sin(a)) * kv[c] +
                 (x2 * std::cos(a) + x1 * std::sin(a)) * kv[c + half];
        }
        logits[j] = scale * m * m * dot;
      }
      const double mx = *std::max_element(logits.begin(), logits.end());
      double sum = 0.0;
      for (double l : logits) sum += std::exp(l - mx);
      const double lse = mx + std::log(sum);
      r.lse[h * n + i] = lse;
      for (int64_t j = 0; j <= p; ++j) {
        const double w = std::exp(logits[j] - lse);
        for (int64_t c = 0; c < d; ++c) {
          r.out[(i * heads + h) * d + c] += w * seq.v[(j * seq.kv_heads + hk) * d + c];
        }
      }
    }
  }
  return r;
}

struct KernelOut {
  std::vector<float> out, lse;
};

DcaAttentionShape Shape(const Geometry& g, int64_t n, int64_t heads, int64_t query_begin, float m,
                        int64_t d) {
  DcaAttentionShape s;
  s.num_queries = n;
  s.q_heads = heads;
  s.query_begin = query_begin;
  s.chunk_size = g.S;
  s.chunk_len = g.C();
  s.rope_theta = kTheta;
  s.scale = 1.0f / std::sqrt(static_cast<float>(d));
  s.temperature = m;
  return s;
}

KernelOut RunDca(const std::vector<float>& q, const DcaSequence& seq, const DcaAttentionShape& s,
                 const AttentionTiles& tiles = {}) {
  KernelOut r;
  r.out.assign(s.num_queries * s.q_heads * seq.d, kNaN);
  r.lse.assign(s.q_heads * s.num_queries, kNaN);
  const std::vector<float> q_before = q;
  DcaPagedAttention(q.data(), seq.View(), s, tiles, r.out.data(), r.lse.data());
  EXPECT_EQ(q, q_before) << "q must be left unchanged";
  return r;
}

void ExpectNearReference(const KernelOut& got, const Result& want, int64_t n, int64_t heads,
                         int64_t d, int64_t query_begin, const std::string& what) {
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < n; ++i) {
      const double wl = want.lse[h * n + i];
      ASSERT_NEAR(got.lse[h * n + i], wl, kLseTol * (1.0 + std::abs(wl)))
          << what << ": lse of query at " << query_begin + i << " head " << h;
      for (int64_t c = 0; c < d; ++c) {
        ASSERT_NEAR(got.out[(i * heads + h) * d + c], want.out[(i * heads + h) * d + c], kOutTol)
            << what << ": query at " << query_begin + i << " head " << h << " dim " << c;
      }
    }
  }
}

// Rows [row0, row0 + rows) of a [n, heads, d] output / [heads, n] lse, as a KernelOut.
KernelOut Rows(const KernelOut& all, int64_t n, int64_t heads, int64_t d, int64_t row0,
               int64_t rows) {
  KernelOut r;
  r.out.assign(all.out.begin() + row0 * heads * d, all.out.begin() + (row0 + rows) * heads * d);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = row0; i < row0 + rows; ++i) r.lse.push_back(all.lse[h * n + i]);
  }
  return r;
}

void ExpectClose(const KernelOut& got, const KernelOut& want, double tol, const std::string& what) {
  ASSERT_EQ(got.out.size(), want.out.size()) << what;
  ASSERT_EQ(got.lse.size(), want.lse.size()) << what;
  for (size_t i = 0; i < want.out.size(); ++i) {
    ASSERT_NEAR(got.out[i], want.out[i], tol) << what << ": out element " << i;
  }
  for (size_t i = 0; i < want.lse.size(); ++i) {
    ASSERT_NEAR(got.lse[i], want.lse[i], tol * (1.0 + std::abs(want.lse[i])))
        << what << ": lse element " << i;
  }
}

// ---- parameterized geometries --------------------------------------------------------------

struct Case {
  std::string name;
  Geometry g;
  int64_t heads, kv_heads, d, block_size;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }
std::string CaseName(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

class DcaAttentionTest : public ::testing::TestWithParam<Case> {
 protected:
  const Case& c() const { return GetParam(); }
  int64_t C() const { return c().g.C(); }
  // 3 whole DCA chunks and part of a fourth: every region kind, every boundary.
  int64_t Length() const { return 3 * C() + 10; }
  std::vector<float> Queries(int64_t n, uint64_t seed) const {
    return RandomNormal(n * c().heads * c().d, seed);
  }
  float Temperature(int64_t L) const {
    return static_cast<float>(OracleTemperature(static_cast<double>(L), c().g.L0));
  }
  double Scale() const { return 1.0 / std::sqrt(static_cast<double>(c().d)); }
};

TEST_P(DcaAttentionTest, OneShotPrefillMatchesTheRelativeDistanceReference) {
  const int64_t L = Length(), heads = c().heads, d = c().d;
  const DcaSequence seq(L, c().kv_heads, d, c().block_size, C(), 100);
  const std::vector<float> q = Queries(L, 200);
  const float m = Temperature(L);
  ASSERT_GT(m, 1.0f) << "the case should exercise the temperature";
  const Result want = BruteForce(q, L, heads, seq, 0, c().g, Scale(), m);
  for (const AttentionTiles& tiles :
       {AttentionTiles{}, AttentionTiles{3, 5}, AttentionTiles{1, 1}, AttentionTiles{16, 16}}) {
    const KernelOut got = RunDca(q, seq, Shape(c().g, L, heads, 0, m, d), tiles);
    ExpectNearReference(
        got, want, L, heads, d, 0,
        "tiles " + std::to_string(tiles.query_block) + "x" + std::to_string(tiles.key_block));
  }
}

TEST_P(DcaAttentionTest, BoundaryQueriesMatchTheReference) {
  // Single queries (decode) and short runs starting at the boundary positions of §9.2, with the
  // cache holding only the keys up to the run's end (NaN beyond).
  const int64_t C = this->C(), W = c().g.W, heads = c().heads, d = c().d;
  const int64_t L = Length();
  DcaSequence seq(L, c().kv_heads, d, c().block_size, C, 300);
  for (int64_t p : {C - 1, C, C + W - 1, C + W, C + W + 1, 2 * C - 1, 2 * C, 3 * C, L - 1}) {
    for (int64_t n : {int64_t{1}, int64_t{5}}) {
      if (p + n > L) continue;
      seq.Fill(p + n);
      const std::vector<float> q = Queries(n, 400 + p);
      const float m = Temperature(p + n);
      const Result want = BruteForce(q, n, heads, seq, p, c().g, Scale(), m);
      const KernelOut got = RunDca(q, seq, Shape(c().g, n, heads, p, m, d));
      ExpectNearReference(got, want, n, heads, d, p,
                          "run of " + std::to_string(n) + " at " + std::to_string(p));
    }
  }
}

TEST_P(DcaAttentionTest, EqualsPlainRopeAttentionBelowTheChunkLength) {
  // §9.1: for L <= C (and m = 1) DCA is standard causal RoPE attention at absolute positions:
  // bit-identical on this backend, in prefill and in decode.
  const int64_t C = this->C(), heads = c().heads, d = c().d;
  for (int64_t L : {C, C - 5, int64_t{1}}) {
    const DcaSequence seq(L, c().kv_heads, d, c().block_size, C, 500 + L);
    const std::vector<float> q = Queries(L, 600 + L);
    std::vector<float> q_rot = q;
    std::vector<int32_t> pos(L);
    std::iota(pos.begin(), pos.end(), 0);
    RopeNeox(q_rot.data(), pos.data(), L, heads, d, kTheta);
    AttentionShape plain;
    plain.num_queries = L;
    plain.q_heads = heads;
    plain.key_end = L;
    plain.causal = true;
    plain.scale = 1.0f / std::sqrt(static_cast<float>(d));
    KernelOut want;
    want.out.assign(L * heads * d, kNaN);
    want.lse.assign(heads * L, kNaN);
    PagedAttention(q_rot.data(), seq.View(), plain, want.out.data(), want.lse.data());

    const KernelOut got = RunDca(q, seq, Shape(c().g, L, heads, 0, 1.0f, d));
    EXPECT_EQ(got.out, want.out) << "prefill of " << L;
    EXPECT_EQ(got.lse, want.lse) << "prefill of " << L;

    // Decode of the last token against plain single-query attention.
    const std::vector<float> q_last(q.end() - heads * d, q.end());
    std::vector<float> q_last_rot(q_rot.end() - heads * d, q_rot.end());
    AttentionShape plain1 = plain;
    plain1.num_queries = 1;
    KernelOut want1;
    want1.out.assign(heads * d, kNaN);
    want1.lse.assign(heads, kNaN);
    PagedAttention(q_last_rot.data(), seq.View(), plain1, want1.out.data(), want1.lse.data());
    const KernelOut got1 = RunDca(q_last, seq, Shape(c().g, 1, heads, L - 1, 1.0f, d));
    EXPECT_EQ(got1.out, want1.out) << "decode at " << L - 1;
    EXPECT_EQ(got1.lse, want1.lse) << "decode at " << L - 1;
  }
}

TEST_P(DcaAttentionTest, ChunkedPrefillIsInvariantToTheChunkSize) {
  // §9.4: engine chunks of {1, 7, 64, C-1, C, C+1, whole}; each chunk runs with only the keys
  // up to its end in the cache (the rest NaN), with the request's temperature m(L).
  const int64_t C = this->C(), L = Length(), heads = c().heads, d = c().d;
  DcaSequence seq(L, c().kv_heads, d, c().block_size, C, 700);
  const std::vector<float> q = Queries(L, 800);
  const float m = Temperature(L);
  const KernelOut whole = RunDca(q, seq, Shape(c().g, L, heads, 0, m, d));
  for (int64_t chunk : {int64_t{1}, int64_t{7}, int64_t{64}, C - 1, C, C + 1, L}) {
    KernelOut chunked;
    for (int64_t s = 0; s < L; s += chunk) {
      const int64_t n = std::min(chunk, L - s);
      seq.Fill(s + n);
      const std::vector<float> qs(q.begin() + s * heads * d, q.begin() + (s + n) * heads * d);
      const KernelOut part = RunDca(qs, seq, Shape(c().g, n, heads, s, m, d));
      ExpectClose(part, Rows(whole, L, heads, d, s, n), kSameTol,
                  "chunk " + std::to_string(chunk) + " at " + std::to_string(s));
    }
  }
}

TEST_P(DcaAttentionTest, DecodeEqualsTheLastRowOfPrefill) {
  // §9.5: prefill L - 1 tokens, decode token L - 1 == last row of a one-shot prefill of L, with
  // the same m.
  const int64_t C = this->C(), heads = c().heads, d = c().d;
  for (int64_t L : {C, C + 1, 2 * C, 2 * C + 1, 3 * C + 3}) {
    const DcaSequence seq(L, c().kv_heads, d, c().block_size, C, 900 + L);
    const std::vector<float> q = Queries(L, 1000 + L);
    const float m = Temperature(L);
    const KernelOut prefill = RunDca(q, seq, Shape(c().g, L, heads, 0, m, d));
    const std::vector<float> q_last(q.end() - heads * d, q.end());
    const KernelOut decode = RunDca(q_last, seq, Shape(c().g, 1, heads, L - 1, m, d));
    ExpectClose(decode, Rows(prefill, L, heads, d, L - 1, 1), kSameTol,
                "decode at " + std::to_string(L - 1));
  }
}

TEST_P(DcaAttentionTest, LseMayBeOmitted) {
  const int64_t L = Length(), heads = c().heads, d = c().d;
  const DcaSequence seq(L, c().kv_heads, d, c().block_size, C(), 1100);
  const std::vector<float> q = Queries(L, 1200);
  const DcaAttentionShape s = Shape(c().g, L, heads, 0, Temperature(L), d);
  const KernelOut with_lse = RunDca(q, seq, s);
  std::vector<float> out(with_lse.out.size(), kNaN);
  DcaPagedAttention(q.data(), seq.View(), s, out.data(), nullptr);
  EXPECT_EQ(out, with_lse.out);
}

INSTANTIATE_TEST_SUITE_P(Geometries, DcaAttentionTest,
                         ::testing::Values(
                             // name, {S, W, L0}, heads, kv_heads, head_dim, block
                             Case{"S64W16Gqa2", {64, 16, 40}, 4, 2, 32, 16},
                             Case{"S64W16Mha", {64, 16, 40}, 4, 4, 32, 16},
                             // 2C - 1 < S: the inter position is 2C - 1, not S.
                             Case{"S64W32InterBelowS", {64, 32, 50}, 4, 2, 16, 16},
                             // The runtime's usual alignment: C a multiple of 64.
                             Case{"S80W16C64Mqa", {80, 16, 100}, 4, 1, 64, 16}),
                         CaseName);

// ---- empty regions --------------------------------------------------------------------------

TEST(DcaEmptyRegionsTest, EmptyPartsMergeAsZeroAndNegativeInfinity) {
  // An empty key range gives exactly (0, -inf); merging it into a part changes nothing, bit for
  // bit; merging two empty parts stays (0, -inf).
  const int64_t n = 6, heads = 4, d = 32, C = 48;
  DcaSequence seq(100, 2, d, 16, C, 1300);
  const std::vector<float> q = RandomNormal(n * heads * d, 1400);
  AttentionShape s;
  s.num_queries = n;
  s.q_heads = heads;
  s.scale = 0.2f;
  s.causal = false;
  s.key_begin = 40;
  s.key_end = 40;
  std::vector<float> empty_out(n * heads * d, kNaN), empty_lse(heads * n, kNaN);
  PagedAttention(q.data(), seq.View(), s, empty_out.data(), empty_lse.data());
  for (float x : empty_out) ASSERT_EQ(x, 0.0f);
  for (float x : empty_lse) ASSERT_EQ(x, kNegInfF);

  s.key_begin = 10;
  s.key_end = 60;
  std::vector<float> out(n * heads * d), lse(heads * n);
  PagedAttention(q.data(), seq.View(), s, out.data(), lse.data());
  std::vector<float> merged = out, merged_lse = lse;
  MergeAttentionStates(merged.data(), merged_lse.data(), empty_out.data(), empty_lse.data(), n,
                       heads, d);
  EXPECT_EQ(merged, out);
  EXPECT_EQ(merged_lse, lse);
  std::vector<float> other = empty_out, other_lse = empty_lse;
  MergeAttentionStates(other.data(), other_lse.data(), out.data(), lse.data(), n, heads, d);
  EXPECT_EQ(other, out);
  EXPECT_EQ(other_lse, lse);
  std::vector<float> both = empty_out, both_lse = empty_lse;
  MergeAttentionStates(both.data(), both_lse.data(), empty_out.data(), empty_lse.data(), n, heads,
                       d);
  EXPECT_EQ(both, empty_out);
  EXPECT_EQ(both_lse, empty_lse);
}

TEST(DcaEmptyRegionsTest, DecodeWithoutSuccOrInterIsTheIntraPartAlone) {
  // Decode with n <= C keys has no succ and no inter region: the result is the intra part,
  // bit for bit (nothing else is merged in). With C < n <= 2C only intra and succ exist: the
  // result equals the explicit two-part merge.
  const int64_t heads = 4, kv_heads = 2, d = 32, S = 64, W = 16, C = S - W;
  const DcaSequence seq(2 * C, kv_heads, d, 16, C, 1500);
  const std::vector<float> q = RandomNormal(heads * d, 1600);
  const Geometry g{S, W, 1000};
  for (int64_t n : {int64_t{1}, int64_t{17}, C}) {
    std::vector<float> q_rot = q;
    const int32_t pos = static_cast<int32_t>((n - 1) % C);
    RopeNeox(q_rot.data(), &pos, 1, heads, d, kTheta);
    AttentionShape intra;
    intra.num_queries = 1;
    intra.q_heads = heads;
    intra.key_begin = 0;
    intra.key_end = n;
    intra.scale = 1.0f / std::sqrt(static_cast<float>(d));
    KernelOut want;
    want.out.assign(heads * d, kNaN);
    want.lse.assign(heads, kNaN);
    PagedAttention(q_rot.data(), seq.View(), intra, want.out.data(), want.lse.data());
    const KernelOut got = RunDca(q, seq, Shape(g, 1, heads, n - 1, 1.0f, d));
    EXPECT_EQ(got.out, want.out) << "n = " << n;
    EXPECT_EQ(got.lse, want.lse) << "n = " << n;
  }
  for (int64_t n : {C + 1, 2 * C}) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    std::vector<float> q_intra = q, q_succ = q;
    const int32_t pi = static_cast<int32_t>((n - 1) % C);
    const int32_t ps = static_cast<int32_t>(std::min((n - 1) % C + C, S));
    RopeNeox(q_intra.data(), &pi, 1, heads, d, kTheta);
    RopeNeox(q_succ.data(), &ps, 1, heads, d, kTheta);
    AttentionShape part;
    part.num_queries = 1;
    part.q_heads = heads;
    part.scale = scale;
    KernelOut a, b;
    a.out.resize(heads * d);
    a.lse.resize(heads);
    b = a;
    part.key_begin = C;
    part.key_end = n;
    part.causal = true;
    PagedAttention(q_intra.data(), seq.View(), part, a.out.data(), a.lse.data());
    part.key_begin = 0;
    part.key_end = C;
    part.causal = false;
    PagedAttention(q_succ.data(), seq.View(), part, b.out.data(), b.lse.data());
    MergeAttentionStates(a.out.data(), a.lse.data(), b.out.data(), b.lse.data(), 1, heads, d);
    const KernelOut got = RunDca(q, seq, Shape(g, 1, heads, n - 1, 1.0f, d));
    EXPECT_EQ(got.out, a.out) << "n = " << n;
    EXPECT_EQ(got.lse, a.lse) << "n = " << n;
  }
}

// ---- tables and constants at the published (Qwen2.5-1M) values -----------------------------

constexpr int64_t kQwenS = 262144, kQwenW = 8192, kQwenC = kQwenS - kQwenW, kQwenL0 = 262144;

TEST(DcaPositionsTest, QwenPositionTableSpotChecks) {
  // §9.14.
  EXPECT_EQ(kQwenC, 253952);
  EXPECT_EQ(DcaKeyPosition(253952, kQwenC), 0);
  EXPECT_EQ(DcaKeyPosition(253951, kQwenC), 253951);
  EXPECT_EQ(DcaKeyPosition(2 * 253952 + 5, kQwenC), 5);
  EXPECT_EQ(DcaIntraQueryPosition(253952 + 17, kQwenC), 17);
  EXPECT_EQ(DcaSuccQueryPosition(kQwenC + 8192, kQwenC, kQwenS), 262144);
  EXPECT_EQ(DcaSuccQueryPosition(kQwenC + 8193, kQwenC, kQwenS), 262144);  // clamped
  EXPECT_EQ(DcaSuccQueryPosition(kQwenC + 8191, kQwenC, kQwenS), 262143);
  EXPECT_EQ(DcaSuccQueryPosition(3 * kQwenC, kQwenC, kQwenS), kQwenC);
  EXPECT_EQ(DcaInterQueryPosition(kQwenC, kQwenS), 262144);
}

TEST(DcaPositionsTest, QwenRelativeDistancesNeverExceedTheChunkSize) {
  // §9.14 "maximum relative distance <= 262144", and the formula of §2.2 against the oracle,
  // over the chunk-boundary pairs and random pairs of a 1M sequence.
  const Geometry g{kQwenS, kQwenW, kQwenL0};
  std::vector<int64_t> probes;
  for (int64_t c = 0; c <= 4; ++c) {
    for (int64_t off : {int64_t{0}, int64_t{1}, kQwenW - 1, kQwenW, kQwenW + 1, kQwenC - 1}) {
      probes.push_back(c * kQwenC + off);
    }
  }
  int64_t max_r = 0;
  auto check = [&](int64_t p, int64_t j) {
    const int64_t r = DcaRelativeDistance(p, j, kQwenC, kQwenS);
    ASSERT_EQ(r, OracleDistance(g, p, j)) << "p " << p << " j " << j;
    ASSERT_GE(r, 0) << "p " << p << " j " << j;
    ASSERT_LE(r, kQwenS) << "p " << p << " j " << j;
    if (p / kQwenC == j / kQwenC) ASSERT_EQ(r, p - j);
    // The succ distance is exact for the first W + 1 queries of a chunk.
    if (p / kQwenC == j / kQwenC + 1 && p % kQwenC <= kQwenW) ASSERT_EQ(r, p - j);
    max_r = std::max(max_r, r);
  };
  for (int64_t p : probes) {
    for (int64_t j : probes) {
      if (j <= p) check(p, j);
    }
  }
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> pos(0, 1010000 - 1);
  for (int i = 0; i < 200000; ++i) {
    int64_t p = pos(rng), j = pos(rng);
    if (j > p) std::swap(p, j);
    check(p, j);
  }
  EXPECT_EQ(max_r, kQwenS);  // reached: inter query at S against key offset 0
}

TEST(DcaPositionsTest, TinyGeometriesExhaustively) {
  // Every pair (p, j) of the first 5 chunks of tiny geometries: distances in [0, S], equal to
  // the oracle, and the piece regions partition [0, e) with the intra region causal.
  for (const Geometry g : {Geometry{64, 16, 1}, Geometry{64, 32, 1}, Geometry{8, 3, 1}}) {
    const int64_t C = g.C();
    for (int64_t p = 0; p < 5 * C; ++p) {
      for (int64_t j = 0; j <= p; ++j) {
        const int64_t r = DcaRelativeDistance(p, j, C, g.S);
        ASSERT_EQ(r, OracleDistance(g, p, j)) << "S " << g.S << " p " << p << " j " << j;
        ASSERT_GE(r, 0);
        ASSERT_LE(r, g.S);
      }
      const DcaRegions reg = DcaDecodeRegions(p + 1, C);
      ASSERT_EQ(reg.inter.begin, 0);
      ASSERT_EQ(reg.inter.size() + reg.succ.size() + reg.intra.size(), p + 1) << "p " << p;
      if (!reg.inter.empty()) ASSERT_EQ(reg.inter.end, reg.succ.begin);
      if (!reg.succ.empty()) ASSERT_EQ(reg.succ.end, reg.intra.begin);
      ASSERT_EQ(reg.intra.end, p + 1);
      ASSERT_EQ(reg.intra.begin, p / C * C);
    }
  }
  // The report's Fig. 2 toy: training length 8, chunk 5, local window 3.
  const Geometry toy{8, 3, 8};
  EXPECT_EQ(DcaRelativeDistance(5, 4, toy.C(), toy.S), 5 + 0 - 4);  // succ, exact (i = 0 <= W)
  EXPECT_EQ(DcaRelativeDistance(9, 0, toy.C(), toy.S), 8 - 0);      // succ, clamped at S
  EXPECT_EQ(DcaRelativeDistance(10, 0, toy.C(), toy.S), 8 - 0);     // inter at min(2C - 1, S)
  EXPECT_EQ(DcaRelativeDistance(10, 4, toy.C(), toy.S), 8 - 4);
}

TEST(DcaPositionsTest, DecodeMetadata) {
  // §9.15: intra length n - floor((n-1)/C) C; succ length in {0, C}; inter max(floor((n-1)/C)
  // - 1, 0) C, for n in {1, C, C+1, 2C, 2C+1}, with the Qwen and a tiny chunk length.
  for (const int64_t C : {kQwenC, int64_t{48}}) {
    for (const int64_t n : {int64_t{1}, C, C + 1, 2 * C, 2 * C + 1, 3 * C + 7}) {
      const DcaRegions r = DcaDecodeRegions(n, C);
      const int64_t cnum = (n - 1) / C;
      EXPECT_EQ(r.intra.size(), n - cnum * C) << "C " << C << " n " << n;
      EXPECT_EQ(r.intra.begin, cnum * C);
      EXPECT_EQ(r.intra.end, n);
      EXPECT_EQ(r.succ.size(), cnum >= 1 ? C : 0) << "C " << C << " n " << n;
      EXPECT_EQ(r.inter.size(), std::max<int64_t>(cnum - 1, 0) * C) << "C " << C << " n " << n;
    }
  }
  EXPECT_EQ(DcaDecodeRegions(1, 48).intra.size(), 1);
  EXPECT_EQ(DcaDecodeRegions(48, 48).intra.size(), 48);
  EXPECT_EQ(DcaDecodeRegions(49, 48).intra.size(), 1);
  EXPECT_EQ(DcaDecodeRegions(49, 48).succ.size(), 48);
  EXPECT_EQ(DcaDecodeRegions(97, 48).inter.size(), 48);
}

TEST(DcaPositionsTest, PrefillPiecesSplitAtChunkBoundaries) {
  // §2.5: [q0, q1) = [40, 150) with C = 48 splits into [40, 48), [48, 96), [96, 144), [144, 150).
  const int64_t C = 48;
  std::vector<std::pair<int64_t, int64_t>> pieces;
  for (int64_t b = 40; b < 150;) {
    const int64_t e = DcaPieceEnd(b, 150, C);
    pieces.push_back({b, e});
    b = e;
  }
  const std::vector<std::pair<int64_t, int64_t>> want = {{40, 48}, {48, 96}, {96, 144}, {144, 150}};
  EXPECT_EQ(pieces, want);
  const DcaRegions r = DcaPieceRegions(144, 150, C);
  EXPECT_EQ(r.intra.begin, 144);
  EXPECT_EQ(r.intra.end, 150);
  EXPECT_EQ(r.succ.begin, 96);
  EXPECT_EQ(r.succ.end, 144);
  EXPECT_EQ(r.inter.begin, 0);
  EXPECT_EQ(r.inter.end, 96);
  const DcaRegions first = DcaPieceRegions(40, 48, C);
  EXPECT_TRUE(first.succ.empty());
  EXPECT_TRUE(first.inter.empty());
}

TEST(DcaTemperatureTest, PublishedValues) {
  // §9.13 and the table of §2.7.
  EXPECT_EQ(YarnTemperature(262144, kQwenL0), 1.0);
  EXPECT_NEAR(YarnTemperature(1010000, kQwenL0), 1.134881, 1e-6);
  EXPECT_NEAR(std::pow(YarnTemperature(1010000, kQwenL0), 2), 1.287955, 1e-6);
  EXPECT_NEAR(YarnTemperature(524288, kQwenL0), 1.069315, 1e-6);
  EXPECT_NEAR(std::pow(YarnTemperature(524288, kQwenL0), 2), 1.143434, 1e-6);
  EXPECT_NEAR(YarnTemperature(1000000, kQwenL0), 1.133886, 1e-6);
  EXPECT_NEAR(std::pow(YarnTemperature(1000000, kQwenL0), 2), 1.285698, 1e-6);
  // Clipped at 1 below L0.
  EXPECT_EQ(YarnTemperature(1, kQwenL0), 1.0);
  EXPECT_EQ(YarnTemperature(100000, kQwenL0), 1.0);
  EXPECT_EQ(YarnTemperature(262143, kQwenL0), 1.0);
  EXPECT_GT(YarnTemperature(262145, kQwenL0), 1.0);
  // SmolLM2 with DCA (L0 = 8192) at 32K: 0.1 ln 4 + 1.
  EXPECT_NEAR(YarnTemperature(32768, 8192), 1.0 + 0.1 * std::log(4.0), 1e-12);
}

}  // namespace
}  // namespace mp::cpu
