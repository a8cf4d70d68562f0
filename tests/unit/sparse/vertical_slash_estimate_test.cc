// Online index estimation (VerticalSlashScores + SelectVerticalSlash) against the reference
// procedure of qwen1m-spec.md §3.4 (§9 oracles 10 and 11): the materialized n x e softmax in
// double, its column sums and diagonal sums with the upper-right corner dropped, forcing, top-k,
// and the split into the DCA parts checked cell by cell in the real geometry.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/vertical_slash_index.h"
#include "kernels/cpu/vertical_slash_scores.h"
#include "kernels/cpu/vertical_slash_select.h"
#include "tests/unit/sparse/sparse_test_util.h"

namespace mp::cpu {
namespace {

using testing::Dot;
using testing::PagedKv;
using testing::RandomUniform;

struct ScoreCase {
  int64_t n, e, intra_begin, succ_begin, q_heads, kv_heads, head_dim, block_size, key_block;
};

std::string Describe(const ScoreCase& c) {
  return "n=" + std::to_string(c.n) + " e=" + std::to_string(c.e) +
         " P=" + std::to_string(c.intra_begin) + " succ_begin=" + std::to_string(c.succ_begin) +
         " heads=" + std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) +
         " d=" + std::to_string(c.head_dim) + " kb=" + std::to_string(c.key_block);
}

// The materialized reference (double): vertical[h, j] and slash[h, t].
void ReferenceScores(const ScoreCase& c, const std::vector<float>* q, const PagedKv& kv,
                     double scale, std::vector<double>* vertical, std::vector<double>* slash) {
  const int64_t group = c.q_heads / c.kv_heads;
  vertical->assign(c.q_heads * c.e, 0.0);
  slash->assign(c.q_heads * c.e, 0.0);
  std::vector<double> a(c.n * c.e);
  for (int64_t h = 0; h < c.q_heads; ++h) {
    for (int64_t r = 0; r < c.n; ++r) {
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < c.e; ++j) {
        const int v = j >= c.intra_begin ? 0 : (j >= c.succ_begin ? 1 : 2);
        const float* qr = q[v].data() + (r * c.q_heads + h) * c.head_dim;
        double s = scale * Dot(qr, kv.K(j, h / group), c.head_dim);
        if (j > c.e - c.n + r) s = -std::numeric_limits<double>::infinity();  // causal
        a[r * c.e + j] = s;
        m = std::max(m, s);
      }
      double sum = 0.0;
      for (int64_t j = 0; j < c.e; ++j) sum += std::exp(a[r * c.e + j] - m);
      for (int64_t j = 0; j < c.e; ++j) a[r * c.e + j] = std::exp(a[r * c.e + j] - m) / sum;
    }
    for (int64_t j = 0; j < c.e; ++j) {
      for (int64_t r = 0; r < c.n; ++r) (*vertical)[h * c.e + j] += a[r * c.e + j];
    }
    for (int64_t t = 0; t < c.e; ++t) {  // diagonals t >= e (upper-right corner) are dropped
      for (int64_t r = 0; r < c.n; ++r) {
        const int64_t j = t - (c.n - 1 - r);
        if (j >= 0) (*slash)[h * c.e + t] += a[r * c.e + j];
      }
    }
  }
}

// Reference top-k by the double scores (forced entries +inf), as a set.
std::set<int64_t> ReferenceTopK(std::vector<double> s, int64_t k) {
  std::vector<int64_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  return std::set<int64_t>(idx.begin(), idx.begin() + std::min<int64_t>(k, s.size()));
}

// `got` equals `want` up to swaps between entries whose reference scores tie within `tol` at
// the k-th score.
void ExpectSameTopK(const std::set<int64_t>& got, const std::set<int64_t>& want,
                    const std::vector<double>& score, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double kth = std::numeric_limits<double>::infinity();
  for (int64_t i : want) kth = std::min(kth, score[i]);
  for (int64_t i : got) {
    if (!want.count(i)) EXPECT_NEAR(score[i], kth, tol) << what << ": extra " << i;
  }
  for (int64_t i : want) {
    if (!got.count(i)) EXPECT_NEAR(score[i], kth, tol) << what << ": missing " << i;
  }
}

TEST(VerticalSlashScoresTest, StreamedSumsEqualTheMaterializedReference) {
  const std::vector<ScoreCase> cases = {
      {64, 300, 0, 0, 4, 2, 16, 16, 0},      // no DCA, GQA 2
      {64, 1000, 0, 0, 4, 4, 32, 16, 64},    // no DCA, MHA, tiles of 64
      {64, 64, 0, 0, 2, 1, 8, 16, 0},        // e == n: the whole matrix is the causal block
      {7, 150, 96, 48, 4, 2, 8, 16, 13},     // inter [0,48) succ [48,96) intra [96,150)
      {1, 77, 48, 0, 2, 1, 8, 16, 5},        // n = 1, succ + intra
      {50, 191, 128, 64, 4, 2, 16, 16, 64},  // three regions, sizes not multiples of 64
      {64, 517, 384, 192, 6, 3, 16, 32, 100},
  };
  uint64_t seed = 11;
  for (const ScoreCase& c : cases) {
    SCOPED_TRACE(Describe(c));
    const PagedKv kv = PagedKv::Random(c.e, c.kv_heads, c.head_dim, c.block_size, seed);
    std::vector<float> q[3];
    for (auto& x : q) x = RandomUniform(c.n * c.q_heads * c.head_dim, ++seed, -2.0f, 2.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    VerticalSlashScoreShape shape{c.n, c.q_heads, c.e, c.intra_begin, c.succ_begin, scale};
    std::vector<float> vertical(c.q_heads * c.e, -1.0f), slash(c.q_heads * c.e, -1.0f);
    VerticalSlashScores(q[0].data(), c.intra_begin > c.succ_begin ? q[1].data() : nullptr,
                        c.succ_begin > 0 ? q[2].data() : nullptr, kv.View(), shape,
                        {c.key_block}, vertical.data(), slash.data());
    std::vector<double> ref_v, ref_s;
    ReferenceScores(c, q, kv, scale, &ref_v, &ref_s);
    double total_v = 0.0, total_s = 0.0;
    for (int64_t i = 0; i < c.q_heads * c.e; ++i) {
      ASSERT_NEAR(vertical[i], ref_v[i], 2e-6 + 2e-5 * ref_v[i]) << "vertical " << i;
      ASSERT_NEAR(slash[i], ref_s[i], 2e-6 + 2e-5 * ref_s[i]) << "slash " << i;
      total_v += vertical[i];
      total_s += slash[i];
    }
    // Each row's probabilities sum to 1, and every cell lies on exactly one kept diagonal.
    EXPECT_NEAR(total_v, c.n * c.q_heads, 1e-3);
    EXPECT_NEAR(total_s, c.n * c.q_heads, 1e-3);
    seed += 10;
  }
}

// Selection of the reference procedure vs SelectVerticalSlash without DCA (one part: lists are
// the top-k sets themselves).
TEST(VerticalSlashSelectTest, TopKWithForcingEqualsTheReferenceProcedure) {
  const std::vector<ScoreCase> cases = {
      {64, 700, 0, 0, 4, 2, 16, 16, 0},
      {33, 260, 0, 0, 2, 2, 16, 16, 37},
      {64, 129, 0, 0, 2, 1, 16, 16, 0},  // e < 130 + 100: budgets clip at e
  };
  uint64_t seed = 101;
  for (const ScoreCase& c : cases) {
    SCOPED_TRACE(Describe(c));
    const PagedKv kv = PagedKv::Random(c.e, c.kv_heads, c.head_dim, c.block_size, seed);
    std::vector<float> q[3];
    q[0] = RandomUniform(c.n * c.q_heads * c.head_dim, seed + 5, -2.0f, 2.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    std::vector<float> vertical(c.q_heads * c.e), slash(c.q_heads * c.e);
    VerticalSlashScores(q[0].data(), nullptr, nullptr, kv.View(),
                        {c.n, c.q_heads, c.e, 0, 0, scale}, {c.key_block}, vertical.data(),
                        slash.data());
    std::vector<double> ref_v, ref_s;
    ReferenceScores(c, q, kv, scale, &ref_v, &ref_s);

    std::vector<int64_t> budgets;
    for (int64_t h = 0; h < c.q_heads; ++h) {
      budgets.push_back(h % 2 == 0 ? 130 : 45);   // below 30 + forced? 45 >= 30
      budgets.push_back(h % 2 == 0 ? 150 : 100);  // slash budgets at and above the band
    }
    const int64_t cap = VerticalSlashListCapacity(150);
    std::vector<int32_t> v(c.q_heads * cap), vc(c.q_heads), s(c.q_heads * cap), sc(c.q_heads);
    VerticalSlashLists lists[3];
    lists[kIntraPart] = {v.data(), vc.data(), s.data(), sc.data(), cap, cap};
    VerticalSlashPiece piece{c.e - c.n - 5 > 0 ? c.e - c.n - 5 : 0, c.e, 0, 0};
    SelectVerticalSlash(vertical.data(), slash.data(), c.q_heads, piece, budgets.data(), lists);

    for (int64_t h = 0; h < c.q_heads; ++h) {
      std::vector<double> fv(ref_v.begin() + h * c.e, ref_v.begin() + (h + 1) * c.e);
      std::vector<double> fs(ref_s.begin() + h * c.e, ref_s.begin() + (h + 1) * c.e);
      for (int64_t j = 0; j < std::min<int64_t>(30, c.e); ++j) fv[j] = 1e300;
      for (int64_t t = std::max<int64_t>(0, c.e - 100); t < c.e; ++t) fs[t] = 1e300;
      const int64_t kv_k = std::min(c.e, budgets[2 * h]);
      const int64_t ks_k = std::min(c.e, budgets[2 * h + 1]);
      const std::set<int64_t> want_v = ReferenceTopK(fv, kv_k);
      std::set<int64_t> want_s_dist;
      const std::set<int64_t> want_s = ReferenceTopK(fs, ks_k);
      ASSERT_EQ(vc[h], static_cast<int32_t>(want_v.size()));
      ASSERT_EQ(sc[h], static_cast<int32_t>(want_s.size()));
      std::set<int64_t> got_v, got_s;
      for (int64_t i = 0; i < vc[h]; ++i) {
        got_v.insert(v[h * cap + i]);
        if (i > 0) EXPECT_LT(v[h * cap + i - 1], v[h * cap + i]);  // ascending
      }
      for (int64_t i = vc[h]; i < cap; ++i) EXPECT_EQ(v[h * cap + i], INT32_MAX);
      for (int64_t i = 0; i < sc[h]; ++i) {
        got_s.insert((c.e - 1) - s[h * cap + i]);  // distance back to the diagonal index t
        if (i > 0) EXPECT_GT(s[h * cap + i - 1], s[h * cap + i]);  // descending
      }
      for (int64_t i = sc[h]; i < cap; ++i) EXPECT_EQ(s[h * cap + i], INT32_MIN);
      ExpectSameTopK(got_v, want_v, fv, 1e-5, "vertical head " + std::to_string(h));
      ExpectSameTopK(got_s, want_s, fs, 1e-5, "slash head " + std::to_string(h));
    }
  }
}

// The (query, key) cells of the real geometry that diagonal t (through the last query e - 1 and
// key t) selects inside the part's keys.
void RealCells(const VerticalSlashPiece& piece, const VerticalSlashPartKeys& k, int64_t t,
               std::set<std::pair<int64_t, int64_t>>* cells) {
  const int64_t dist = (piece.piece_end - 1) - t;
  for (int64_t q = piece.piece_begin; q < piece.piece_end; ++q) {
    const int64_t key = q - dist;
    if (key >= k.key_begin && key < k.key_end) cells->insert({q, key});
  }
}

// The cells of a builder slash value d: causal rows sit at key (kv_len - qn) + i, non-causal
// (virtual frame) at kv_len + i; the key is row - d.
void ListCells(const VerticalSlashPiece& piece, const VerticalSlashPartKeys& k, int64_t d,
               std::set<std::pair<int64_t, int64_t>>* cells) {
  const int64_t qn = piece.num_queries();
  const int64_t base = k.causal ? k.num_keys() - qn : k.num_keys();
  for (int64_t i = 0; i < qn; ++i) {
    const int64_t local = base + i - d;
    if (local >= 0 && local < k.num_keys()) {
      cells->insert({piece.piece_begin + i, k.key_begin + local});
    }
  }
}

struct Selected {
  std::vector<int32_t> v[3], vc[3], s[3], sc[3];
  int64_t cap = 0;
};

Selected RunSelect(const std::vector<float>& vertical, const std::vector<float>& slash,
                   int64_t heads, const VerticalSlashPiece& piece,
                   const std::vector<int64_t>& budgets, int64_t cap) {
  Selected out;
  out.cap = cap;
  VerticalSlashLists lists[3];
  for (int p = 0; p < 3; ++p) {
    out.v[p].assign(heads * cap, -7);
    out.s[p].assign(heads * cap, -7);
    out.vc[p].assign(heads, -7);
    out.sc[p].assign(heads, -7);
    lists[p] = {out.v[p].data(), out.vc[p].data(), out.s[p].data(), out.sc[p].data(), cap, cap};
  }
  SelectVerticalSlash(vertical.data(), slash.data(), heads, piece, budgets.data(), lists);
  return out;
}

// DCA pieces: the split gives every part exactly the cells of the selected diagonals and
// columns in its keys (checked in the real geometry), with the fallback for empty lists.
TEST(VerticalSlashSelectTest, SplitIntoDcaPartsKeepsExactlyTheSelectedCells) {
  const int64_t C = 160;  // chunk_len; pieces in chunks 0..3
  const int64_t heads = 3;
  struct PieceCase {
    int64_t b, e;
  };
  const std::vector<PieceCase> pieces = {
      {0, 150},      {100, 160},    {160, 161},  {160, 300},  {250, 320},
      {320, 333},    {330, 480},    {479, 480},  {500, 640},  {482, 571},
  };
  uint64_t seed = 900;
  for (const PieceCase& pc : pieces) {
    VerticalSlashPiece piece{pc.b, pc.e, (pc.b / C) * C, C};
    SCOPED_TRACE("piece [" + std::to_string(pc.b) + ", " + std::to_string(pc.e) + ") P=" +
                 std::to_string(piece.chunk_begin));
    const int64_t e = pc.e;
    std::vector<float> vertical = RandomUniform(heads * e, ++seed, 0.0f, 1.0f);
    std::vector<float> slash = RandomUniform(heads * e, ++seed, 0.0f, 1.0f);
    const std::vector<int64_t> budgets = {130, 100, 200, 180, 40, 260};
    const int64_t cap = VerticalSlashListCapacity(260);
    const Selected sel = RunSelect(vertical, slash, heads, piece, budgets, cap);

    for (int64_t h = 0; h < heads; ++h) {
      // Reference: forcing and top-k on the float scores.
      std::vector<double> fv(vertical.begin() + h * e, vertical.begin() + (h + 1) * e);
      std::vector<double> fs(slash.begin() + h * e, slash.begin() + (h + 1) * e);
      for (int64_t j = 0; j < std::min<int64_t>(30, e); ++j) fv[j] = 1e300;
      for (int64_t t = std::max<int64_t>(0, e - 100); t < e; ++t) fs[t] = 1e300;
      const std::set<int64_t> top_v = ReferenceTopK(fv, std::min(e, std::max<int64_t>(30, budgets[2 * h])));
      const std::set<int64_t> top_s = ReferenceTopK(fs, std::min(e, std::max<int64_t>(100, budgets[2 * h + 1])));
      for (int part = 0; part < 3; ++part) {
        const VerticalSlashPartKeys k = VerticalSlashPartKeyRange(piece, part);
        if (!k.present) {
          EXPECT_EQ(sel.vc[part][h], -7) << "absent part " << part << " written";
          continue;
        }
        SCOPED_TRACE("head " + std::to_string(h) + " part " + std::to_string(part));
        // Verticals: the selected columns of the part, local, or the fallback.
        std::vector<int32_t> want_v;
        for (int64_t j : top_v) {
          if (j >= k.key_begin && j < k.key_end) want_v.push_back(j - k.key_begin);
        }
        if (want_v.empty()) {
          for (int64_t x = 0; x < k.num_keys(); x += std::max<int64_t>(1, k.num_keys() / 5)) {
            want_v.push_back(x);
          }
        }
        std::vector<int32_t> got_v(sel.v[part].begin() + h * cap,
                                   sel.v[part].begin() + h * cap + sel.vc[part][h]);
        EXPECT_EQ(got_v, want_v);
        // Slashes: the same cells in the real geometry.
        std::set<std::pair<int64_t, int64_t>> want_cells, got_cells;
        for (int64_t t : top_s) RealCells(piece, k, t, &want_cells);
        for (int64_t i = 0; i < sel.sc[part][h]; ++i) {
          ListCells(piece, k, sel.s[part][h * cap + i], &got_cells);
        }
        if (want_cells.empty()) {  // fallback arange(0, Klen, Klen / 5) as distances
          ASSERT_FALSE(k.causal) << "the intra slash list is never empty";
          std::vector<int32_t> fallback;
          for (int64_t x = 0; x < k.num_keys(); x += std::max<int64_t>(1, k.num_keys() / 5)) {
            fallback.push_back(x);
          }
          std::reverse(fallback.begin(), fallback.end());
          std::vector<int32_t> got_s(sel.s[part].begin() + h * cap,
                                     sel.s[part].begin() + h * cap + sel.sc[part][h]);
          EXPECT_EQ(got_s, fallback);
        } else {
          EXPECT_EQ(got_cells, want_cells);
        }
      }
    }
  }
}

TEST(VerticalSlashSelectTest, EmptyPartsGetTheFiveColumnFallback) {
  // Chunk 2 (P = 2C): columns and diagonals score high only in the intra keys, so with small
  // budgets succ gets no vertical (the sinks lie in inter) and succ/inter get no slash.
  const int64_t C = 256, heads = 1;
  VerticalSlashPiece piece{2 * C + 200, 2 * C + 240, 2 * C, C};
  const int64_t e = piece.piece_end;
  std::vector<float> vertical(e, 0.0f), slash(e, 0.0f);
  for (int64_t j = 2 * C; j < e; ++j) vertical[j] = 1.0f + j;
  for (int64_t t = 2 * C + 150; t < e; ++t) slash[t] = 1.0f + t;
  const Selected sel = RunSelect(vertical, slash, heads, piece, {40, 100}, 100);
  // intra: 10 columns of the 40 (30 go to the sinks).
  EXPECT_EQ(sel.vc[kIntraPart][0], 10);
  // succ [C, 2C): no column -> arange(0, 256, 51) = 0, 51, 102, 153, 204, 255.
  const std::vector<int32_t> want = {0, 51, 102, 153, 204, 255};
  EXPECT_EQ(std::vector<int32_t>(sel.v[kSuccPart].begin(), sel.v[kSuccPart].begin() + 6), want);
  EXPECT_EQ(sel.vc[kSuccPart][0], 6);
  EXPECT_EQ(sel.v[kSuccPart][6], INT32_MAX);
  // inter [0, C) holds the 30 sinks.
  EXPECT_EQ(sel.vc[kInterPart][0], 30);
  // Slashes: the 100 forced diagonals t in [e - 100, e) reach back to key 712 - 99 = 613 for
  // the first query, inside intra; succ and inter fall back (descending).
  const std::vector<int32_t> want_s = {255, 204, 153, 102, 51, 0};
  for (int part : {kSuccPart, kInterPart}) {
    EXPECT_EQ(sel.sc[part][0], 6);
    EXPECT_EQ(std::vector<int32_t>(sel.s[part].begin(), sel.s[part].begin() + 6), want_s);
  }
  EXPECT_EQ(sel.sc[kIntraPart][0], 100);

  // Tiny parts: Klen < 5 gives step 1; Klen = 9 gives 9 entries.
  VerticalSlashPiece tiny{18, 19, 18, 9};  // succ = [9, 18), inter = [0, 9)
  std::vector<float> tv(19, 0.0f), ts(19, 0.0f);
  for (int64_t j = 0; j < 19; ++j) ts[j] = static_cast<float>(j);
  const Selected small = RunSelect(tv, ts, 1, tiny, {30, 100}, 100);
  EXPECT_EQ(small.vc[kSuccPart][0], 9);   // all 19 keys are selected (e < 30): 9 in succ
  EXPECT_EQ(small.vc[kInterPart][0], 9);
  EXPECT_EQ(small.vc[kIntraPart][0], 1);
}

// §9 oracle 10: keys 0..29 and distances 0..99 are attended, for every head, chunk and piece,
// whatever the scores say (here the scores favour everything else), through the index builder.
TEST(VerticalSlashSelectTest, ForcedKeysAreAlwaysAttended) {
  const int64_t C = 192, heads = 2;
  uint64_t seed = 4242;
  for (int64_t b : {0, 37, 150, 192, 250, 384, 400, 576, 700}) {
    for (int64_t len : {1, 5, 64, 100, 131}) {
      const int64_t P = (b / C) * C;
      const int64_t e = std::min(b + len, P + C);
      VerticalSlashPiece piece{b, e, P, C};
      SCOPED_TRACE("piece [" + std::to_string(b) + ", " + std::to_string(e) + ")");
      std::vector<float> vertical = RandomUniform(heads * e, ++seed, 0.5f, 1.0f);
      std::vector<float> slash = RandomUniform(heads * e, ++seed, 0.5f, 1.0f);
      for (int64_t h = 0; h < heads; ++h) {  // the forced entries score lowest
        for (int64_t j = 0; j < std::min<int64_t>(30, e); ++j) vertical[h * e + j] = 0.0f;
        for (int64_t t = std::max<int64_t>(0, e - 100); t < e; ++t) slash[h * e + t] = 0.0f;
      }
      const Selected sel = RunSelect(vertical, slash, heads, piece, {130, 100, 30, 100}, 130);
      for (int part = 0; part < 3; ++part) {
        const VerticalSlashPartKeys k = VerticalSlashPartKeyRange(piece, part);
        if (!k.present) continue;
        const int64_t qn = piece.num_queries();
        const int64_t kv_len = k.num_keys();
        const int64_t rb = VerticalSlashRowBlocks(qn);
        const int64_t max_blocks = VerticalSlashBlockCapacity(130, kv_len);
        std::vector<int32_t> bc(heads * rb), bo(heads * rb * max_blocks), cc(heads * rb),
            ci(heads * rb * 130);
        BuildVerticalSlashIndex({sel.v[part].data(), sel.vc[part].data(), sel.s[part].data(),
                                 sel.sc[part].data(), 130, 130},
                                {heads, qn, kv_len, k.causal},
                                {bc.data(), bo.data(), cc.data(), ci.data(), max_blocks, 130});
        for (int64_t h = 0; h < heads; ++h) {
          for (int64_t i = 0; i < qn; ++i) {
            const int64_t m = i / 64;
            const int64_t q_abs = b + i;
            std::set<int64_t> attended;  // absolute keys visible to row i
            const int64_t limit = k.causal ? kv_len - qn + i + 1 : kv_len;
            for (int64_t x = 0; x < bc[h * rb + m]; ++x) {
              const int64_t o = bo[(h * rb + m) * max_blocks + x];
              for (int64_t key = o; key < std::min(o + 64, limit); ++key) {
                attended.insert(k.key_begin + key);
              }
            }
            for (int64_t x = 0; x < cc[h * rb + m]; ++x) {
              const int64_t key = ci[(h * rb + m) * 130 + x];
              if (key < limit) attended.insert(k.key_begin + key);
            }
            for (int64_t j = 0; j < 30; ++j) {
              if (j <= q_abs && j >= k.key_begin && j < k.key_end) {
                ASSERT_TRUE(attended.count(j)) << "sink " << j << " head " << h << " row " << i;
              }
            }
            for (int64_t dist = 0; dist < 100; ++dist) {
              const int64_t j = q_abs - dist;
              if (j >= k.key_begin && j < k.key_end) {
                ASSERT_TRUE(attended.count(j))
                    << "distance " << dist << " head " << h << " row " << i << " part " << part;
              }
            }
          }
        }
      }
    }
  }
}

TEST(VerticalSlashSelectTest, TopKOrdersByScoreThenIndex) {
  const std::vector<float> s = {0.5f, 2.0f, 0.5f, 3.0f, 2.0f, -1.0f};
  std::vector<int32_t> out(6, -1);
  TopKIndices(s.data(), 6, 4, out.data());
  EXPECT_EQ(std::vector<int32_t>(out.begin(), out.begin() + 4), (std::vector<int32_t>{3, 1, 4, 0}));
  TopKIndices(s.data(), 6, 10, out.data());
  EXPECT_EQ(out, (std::vector<int32_t>{3, 1, 4, 0, 2, 5}));
}

}  // namespace
}  // namespace mp::cpu
