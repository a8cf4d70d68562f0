// VerticalSlashPrefillAttention and VerticalSlashRecall (the per-piece DCA procedure) against
// §9 oracles 4, 6 and 12 on tiny DCA configs (chunk_size 64, local_size 16: C = 48; 1 to 5 DCA
// chunks, lengths not multiples of 64): the dense path equals a per-(query, key) DCA reference,
// full budgets equal dense for every chunking of the prefill, recall is 1 at full budget, in
// (0, 1] otherwise and never falls when budgets grow, and GQA sharing equals repeated K/V.
#include "kernels/cpu/vertical_slash_prefill.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/cpu/rope.h"
#include "kernels/cpu/vertical_slash_attention.h"
#include "kernels/cpu/vertical_slash_index.h"
#include "kernels/cpu/vertical_slash_select.h"
#include "kernels/cpu/vertical_slash_recall.h"
#include "tests/unit/sparse/sparse_test_util.h"

namespace mp::cpu {
namespace {

using testing::Dot;
using testing::PagedKv;
using testing::RandomUniform;

struct Layer {
  int64_t L = 0, q_heads = 0, kv_heads = 0, d = 0;
  int64_t S = 0, C = 0;  // S = 0: no DCA
  double theta = 10000.0;
  float scale = 1.0f;
  std::vector<float> q, k, v;  // not rotated: [L, heads, d]
  std::vector<float> k_rot;    // K rotated by p mod C (p)
  PagedKv cache;

  Layer(int64_t L_, int64_t qh, int64_t kvh, int64_t d_, int64_t S_, int64_t C_, uint64_t seed)
      : L(L_), q_heads(qh), kv_heads(kvh), d(d_), S(S_), C(C_),
        q(RandomUniform(L_ * qh * d_, seed, -1.5f, 1.5f)),
        k(RandomUniform(L_ * kvh * d_, seed + 1, -1.5f, 1.5f)),
        v(RandomUniform(L_ * kvh * d_, seed + 2)),
        cache(Rotated(k, L_, kvh, d_, S_, C_), v, L_, kvh, d_, 16, seed + 3) {
    // YaRN-like temperature above 1: logits carry m^2 / sqrt(d).
    const float m = 1.1f;
    scale = m * m / std::sqrt(static_cast<float>(d));
  }

  static std::vector<float> Rotated(std::vector<float> x, int64_t L, int64_t heads, int64_t d,
                                    int64_t S, int64_t C) {
    std::vector<int32_t> pos(L);
    for (int64_t p = 0; p < L; ++p) pos[p] = static_cast<int32_t>(S > 0 ? p % C : p);
    RopeNeox(x.data(), pos.data(), L, heads, d, 10000.0);
    return x;
  }

  VerticalSlashPrefillShape Shape(int64_t begin, int64_t n) const {
    VerticalSlashPrefillShape s;
    s.num_queries = n;
    s.q_heads = q_heads;
    s.query_begin = begin;
    s.chunk_size = S;
    s.chunk_len = C;
    s.rope_theta = theta;
    s.scale = scale;
    s.last_q = 64;
    return s;
  }

  // Chunked prefill in engine chunks of `chunk` tokens; budgets nullptr = dense.
  void Prefill(int64_t chunk, const int64_t* budgets, std::vector<float>* out,
               std::vector<float>* lse) const {
    out->assign(L * q_heads * d, 0.0f);
    lse->assign(q_heads * L, 0.0f);
    std::vector<float> o, l;
    for (int64_t c0 = 0; c0 < L; c0 += chunk) {
      const int64_t n = std::min(chunk, L - c0);
      o.assign(n * q_heads * d, 0.0f);
      l.assign(q_heads * n, 0.0f);
      VerticalSlashPrefillAttention(q.data() + c0 * q_heads * d, cache.View(), Shape(c0, n),
                                    budgets, o.data(), l.data());
      std::copy(o.begin(), o.end(), out->begin() + c0 * q_heads * d);
      for (int64_t h = 0; h < q_heads; ++h) {
        std::copy(l.begin() + h * n, l.begin() + (h + 1) * n, lse->begin() + h * L + c0);
      }
    }
  }

  VerticalSlashRecallShape RecallShape(int64_t engine_chunk) const {
    VerticalSlashRecallShape s;
    s.seq_len = L;
    s.q_heads = q_heads;
    s.kv_heads = kv_heads;
    s.head_dim = d;
    s.chunk_size = S;
    s.chunk_len = C;
    s.rope_theta = theta;
    s.scale = scale;
    s.engine_chunk = engine_chunk;
    return s;
  }
};

// Dense DCA for query p, straight from the position table (§2.2): the query rotated for the key's
// region (same chunk: p mod C; previous chunk: min(p mod C + C, S); older: min(2C - 1, S)), the
// key rotated by j mod C, double dot products and softmax.
void ReferenceDca(const Layer& a, int64_t p, int64_t h, std::vector<double>* out, double* lse) {
  const int64_t hk = h / (a.q_heads / a.kv_heads);
  std::vector<double> logits(p + 1);
  double m = -1e300;
  for (int64_t j = 0; j <= p; ++j) {
    int32_t pos = static_cast<int32_t>(p);
    if (a.S > 0) {
      const int64_t cp = p / a.C, cj = j / a.C, i = p % a.C;
      pos = static_cast<int32_t>(cj == cp       ? i
                                 : cj == cp - 1 ? std::min(i + a.C, a.S)
                                                : std::min(2 * a.C - 1, a.S));
    }
    std::vector<float> qr(a.q.begin() + (p * a.q_heads + h) * a.d,
                          a.q.begin() + (p * a.q_heads + h + 1) * a.d);
    RopeNeox(qr.data(), &pos, 1, 1, a.d, a.theta);
    logits[j] = a.scale * Dot(qr.data(), a.cache.K(j, hk), a.d);
    m = std::max(m, logits[j]);
  }
  out->assign(a.d, 0.0);
  double sum = 0.0;
  for (int64_t j = 0; j <= p; ++j) {
    const double w = std::exp(logits[j] - m);
    sum += w;
    for (int64_t c = 0; c < a.d; ++c) (*out)[c] += w * a.cache.V(j, hk)[c];
  }
  for (double& x : *out) x /= sum;
  *lse = m + std::log(sum);
}

void ExpectClose(const std::vector<float>& out, const std::vector<float>& lse,
                 const std::vector<float>& want_out, const std::vector<float>& want_lse,
                 double tol, const std::string& what) {
  ASSERT_EQ(out.size(), want_out.size());
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_NEAR(out[i], want_out[i], tol) << what << " out " << i;
  }
  for (size_t i = 0; i < lse.size(); ++i) {
    ASSERT_NEAR(lse[i], want_lse[i], tol * (1 + std::abs(want_lse[i]))) << what << " lse " << i;
  }
}

struct LayerCase {
  int64_t L, q_heads, kv_heads, d, S, C;
};
const std::vector<LayerCase>& LayerCases() {
  static const std::vector<LayerCase> cases = {
      {40, 4, 2, 16, 64, 48},   // 1 DCA chunk
      {100, 4, 2, 16, 64, 48},  // 3 chunks (intra, succ, inter)
      {245, 4, 1, 16, 64, 48},  // 6 chunks, GQA 4
      {150, 2, 2, 8, 0, 0},     // no DCA
  };
  return cases;
}

std::string Name(const LayerCase& c) {
  return "L=" + std::to_string(c.L) + " heads=" + std::to_string(c.q_heads) + "/" +
         std::to_string(c.kv_heads) + " S=" + std::to_string(c.S) + " C=" + std::to_string(c.C);
}

TEST(VerticalSlashPrefillTest, DenseMatchesThePerKeyDcaReference) {
  uint64_t seed = 1;
  for (const LayerCase& lc : LayerCases()) {
    SCOPED_TRACE(Name(lc));
    const Layer a(lc.L, lc.q_heads, lc.kv_heads, lc.d, lc.S, lc.C, seed += 10);
    std::vector<float> out, lse;
    a.Prefill(lc.L, nullptr, &out, &lse);
    for (int64_t p = 0; p < lc.L; ++p) {
      for (int64_t h = 0; h < lc.q_heads; ++h) {
        std::vector<double> want;
        double want_lse = 0.0;
        ReferenceDca(a, p, h, &want, &want_lse);
        for (int64_t c = 0; c < lc.d; ++c) {
          ASSERT_NEAR(out[(p * lc.q_heads + h) * lc.d + c], want[c], 1e-5)
              << "p " << p << " h " << h;
        }
        ASSERT_NEAR(lse[h * lc.L + p], want_lse, 1e-5 * (1 + std::abs(want_lse)))
            << "p " << p << " h " << h;
      }
    }
  }
}

// Oracles 6 and 4: vertical_size >= L (or slash_size >= L) gives dense attention, for one-shot
// and chunked prefill alike (engine chunks 1, 7, 64, C - 1, C, C + 1).
TEST(VerticalSlashPrefillTest, FullBudgetEqualsDenseForEveryChunking) {
  uint64_t seed = 50;
  for (const LayerCase& lc : LayerCases()) {
    SCOPED_TRACE(Name(lc));
    const Layer a(lc.L, lc.q_heads, lc.kv_heads, lc.d, lc.S, lc.C, seed += 10);
    std::vector<float> dense, dense_lse;
    a.Prefill(lc.L, nullptr, &dense, &dense_lse);
    std::vector<int64_t> all_vertical, all_slash;
    for (int64_t h = 0; h < lc.q_heads; ++h) {
      all_vertical.insert(all_vertical.end(), {lc.L, 100});
      all_slash.insert(all_slash.end(), {30, lc.L});
    }
    std::vector<int64_t> chunks = {lc.L, 1, 7, 64};
    if (lc.C > 0) chunks.insert(chunks.end(), {lc.C - 1, lc.C, lc.C + 1});
    for (int64_t chunk : chunks) {
      std::vector<float> out, lse;
      a.Prefill(chunk, all_vertical.data(), &out, &lse);
      ExpectClose(out, lse, dense, dense_lse, 2e-6,
                  "vertical >= L, chunk " + std::to_string(chunk));
      a.Prefill(chunk, all_slash.data(), &out, &lse);
      ExpectClose(out, lse, dense, dense_lse, 2e-6, "slash >= L, chunk " + std::to_string(chunk));
    }
  }
}

// The whole per-piece procedure rebuilt from the spec in the test: selection rows and their
// continuous positions (§3.6), the materialized double softmax, forcing, top-k, the split table
// of §3.4 step 5 with its fallback, then the (separately tested) index builder and sparse kernel
// per region with the DCA positions of §2.2, merged in double.
// index_keys[h] gets, per query, 64 per block plus the columns its row block lists in each part.
void ReferenceSparseChunk(const Layer& a, int64_t c0, int64_t n, const std::vector<int64_t>& budgets,
                          std::vector<double>* out, std::vector<double>* lse,
                          std::vector<int64_t>* index_keys) {
  const int64_t H = a.q_heads, d = a.d, group = a.q_heads / a.kv_heads;
  out->assign(n * H * d, 0.0);
  lse->assign(H * n, -std::numeric_limits<double>::infinity());
  auto rotated = [&](int64_t p, int64_t h, int64_t pos) {
    std::vector<float> x(a.q.begin() + (p * H + h) * d, a.q.begin() + (p * H + h + 1) * d);
    const int32_t p32 = static_cast<int32_t>(pos);
    RopeNeox(x.data(), &p32, 1, 1, d, a.theta);
    return x;
  };
  for (int64_t b = c0; b < c0 + n;) {
    const int64_t P = (b / a.C) * a.C, e = std::min(P + a.C, c0 + n), qn = e - b;
    const int64_t nl = std::min<int64_t>(64, qn);
    struct Part { bool present, causal; int64_t kb, ke; } parts[3] = {
        {true, true, P, e}, {P >= a.C, false, P - a.C, P}, {P >= 2 * a.C, false, 0, P - a.C}};
    // Per head: selection lists per part (local verticals, builder slash values).
    std::vector<std::vector<int32_t>> lv[3], ls[3];
    for (auto& x : lv) x.resize(H);
    for (auto& x : ls) x.resize(H);
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> vert(e, 0.0), slash(e, 0.0);
      for (int64_t r = 0; r < nl; ++r) {
        const int64_t p = e - nl + r, i = p % a.C;
        const std::vector<float> qi = rotated(p, h, i), qs = rotated(p, h, i + a.C),
                                 qx = rotated(p, h, i + a.S);
        std::vector<double> lg(e);
        double m = -1e300;
        for (int64_t j = 0; j < e; ++j) {
          const float* qq = j >= P ? qi.data() : (j >= P - a.C ? qs.data() : qx.data());
          lg[j] = j > p ? -1e300 : a.scale * Dot(qq, a.cache.K(j, h / group), d);
          m = std::max(m, lg[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j <= p; ++j) sum += std::exp(lg[j] - m);
        for (int64_t j = 0; j <= p; ++j) {
          const double prob = std::exp(lg[j] - m) / sum;
          vert[j] += prob;
          slash[j + (nl - 1 - r)] += prob;  // j <= p keeps the index below e
        }
      }
      for (int64_t j = 0; j < std::min<int64_t>(30, e); ++j) vert[j] = 1e300;
      for (int64_t t = std::max<int64_t>(0, e - 100); t < e; ++t) slash[t] = 1e300;
      auto topk = [](const std::vector<double>& s, int64_t k) {
        std::vector<int64_t> idx(s.size());
        std::iota(idx.begin(), idx.end(), 0);
        std::stable_sort(idx.begin(), idx.end(), [&](int64_t x, int64_t y) { return s[x] > s[y]; });
        idx.resize(std::min<int64_t>(k, s.size()));
        return idx;
      };
      const auto top_v = topk(vert, std::max<int64_t>(30, budgets[2 * h]));
      const auto top_s = topk(slash, std::max<int64_t>(100, budgets[2 * h + 1]));
      for (int part = 0; part < 3; ++part) {
        const Part& pt = parts[part];
        if (!pt.present) continue;
        const int64_t klen = pt.ke - pt.kb;
        std::vector<int32_t>& v = lv[part][h];
        std::vector<int32_t>& sl = ls[part][h];
        for (int64_t j : top_v) if (j >= pt.kb && j < pt.ke) v.push_back(j - pt.kb);
        for (int64_t t : top_s) {
          if (part == kIntraPart && t >= P) sl.push_back((e - 1) - t);
          if (part == kSuccPart && t >= P - a.C && t < P + qn) sl.push_back((P + qn - 1) - t);
          if (part == kInterPart && t < P - a.C + qn) sl.push_back((P - a.C + qn - 1) - t);
        }
        const int64_t step = std::max<int64_t>(1, klen / 5);
        if (v.empty()) for (int64_t x = 0; x < klen; x += step) v.push_back(x);
        if (sl.empty()) for (int64_t x = 0; x < klen; x += step) sl.push_back(x);
        std::sort(v.begin(), v.end());
        std::sort(sl.rbegin(), sl.rend());
      }
    }
    // Attention per part with the DCA query positions, merged in double.
    for (int part = 0; part < 3; ++part) {
      const Part& pt = parts[part];
      if (!pt.present) continue;
      const int64_t klen = pt.ke - pt.kb;
      int64_t cap = 1;
      for (int64_t h = 0; h < H; ++h) {
        cap = std::max<int64_t>({cap, static_cast<int64_t>(lv[part][h].size()),
                                 static_cast<int64_t>(ls[part][h].size())});
      }
      std::vector<int32_t> v(H * cap, INT32_MAX), sl(H * cap, INT32_MIN), vc(H), sc(H);
      for (int64_t h = 0; h < H; ++h) {
        std::copy(lv[part][h].begin(), lv[part][h].end(), v.begin() + h * cap);
        std::copy(ls[part][h].begin(), ls[part][h].end(), sl.begin() + h * cap);
        vc[h] = static_cast<int32_t>(lv[part][h].size());
        sc[h] = static_cast<int32_t>(ls[part][h].size());
      }
      const int64_t rb = VerticalSlashRowBlocks(qn), mb = VerticalSlashBlockCapacity(cap, klen);
      std::vector<int32_t> bc(H * rb), bo(H * rb * mb), cc(H * rb), ci(H * rb * cap);
      BuildVerticalSlashIndex({v.data(), vc.data(), sl.data(), sc.data(), cap, cap},
                              {H, qn, klen, pt.causal},
                              {bc.data(), bo.data(), cc.data(), ci.data(), mb, cap});
      index_keys->resize(H, 0);
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t x = 0; x < qn; ++x) {
          (*index_keys)[h] += 64 * bc[h * rb + x / 64] + cc[h * rb + x / 64];
        }
      }
      std::vector<float> qp(qn * H * d);
      for (int64_t x = 0; x < qn; ++x) {
        const int64_t p = b + x, i = p % a.C;
        const int64_t pos = part == kIntraPart ? i
                            : part == kSuccPart ? std::min(i + a.C, a.S)
                                                : std::min(2 * a.C - 1, a.S);
        for (int64_t h = 0; h < H; ++h) {
          const std::vector<float> r = rotated(p, h, pos);
          std::copy(r.begin(), r.end(), qp.begin() + (x * H + h) * d);
        }
      }
      AttentionShape as;
      as.num_queries = qn;
      as.q_heads = H;
      as.key_begin = pt.kb;
      as.key_end = pt.ke;
      as.causal = pt.causal;
      as.scale = a.scale;
      std::vector<float> o(qn * H * d), l(H * qn);
      VerticalSlashAttention(qp.data(), a.cache.View(), as,
                             {bc.data(), bo.data(), cc.data(), ci.data(), mb, cap}, o.data(),
                             l.data());
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t x = 0; x < qn; ++x) {
          const int64_t row = b - c0 + x;
          double& L0 = (*lse)[h * n + row];
          const double L1 = l[h * qn + x];
          const double M = std::max(L0, L1);
          if (M == -std::numeric_limits<double>::infinity()) continue;
          const double w0 = std::exp(L0 - M), w1 = std::exp(L1 - M);
          for (int64_t c = 0; c < d; ++c) {
            double& acc = (*out)[(row * H + h) * d + c];
            acc = (w0 * acc + w1 * o[(x * H + h) * d + c]) / (w0 + w1);
          }
          L0 = M + std::log(w0 + w1);
        }
      }
    }
    b = e;
  }
}

TEST(VerticalSlashPrefillTest, SparseEqualsTheSpecProcedureRebuiltInTheTest) {
  // 4 DCA chunks of C = 192 (S = 256, W = 64), engine chunks that cross DCA boundaries, and
  // budgets small enough that the selection decides the result.
  const Layer a(700, 4, 2, 16, 256, 192, 4040);
  std::vector<int64_t> budgets = {40, 100, 60, 130, 30, 160, 90, 100};
  for (int64_t chunk : {int64_t{700}, int64_t{150}, int64_t{64}}) {
    SCOPED_TRACE("engine chunk " + std::to_string(chunk));
    double worst_recall = 1.0;
    int64_t attended = 0;
    for (int64_t c0 = 0; c0 < a.L; c0 += chunk) {
      const int64_t n = std::min(chunk, a.L - c0);
      std::vector<float> out(n * a.q_heads * a.d), lse(a.q_heads * n), dense(out.size()),
          dense_lse(lse.size());
      std::vector<int64_t> keys(a.q_heads, 7);  // added to
      VerticalSlashPrefillAttention(a.q.data() + c0 * a.q_heads * a.d, a.cache.View(),
                                    a.Shape(c0, n), budgets.data(), out.data(), lse.data(),
                                    keys.data());
      VerticalSlashPrefillAttention(a.q.data() + c0 * a.q_heads * a.d, a.cache.View(),
                                    a.Shape(c0, n), nullptr, dense.data(), dense_lse.data());
      std::vector<double> want, want_lse;
      std::vector<int64_t> want_keys;
      ReferenceSparseChunk(a, c0, n, budgets, &want, &want_lse, &want_keys);
      for (int64_t h = 0; h < a.q_heads; ++h) {
        EXPECT_EQ(keys[h], 7 + want_keys[h]) << "index keys of head " << h << " at " << c0;
        attended += want_keys[h];
      }
      for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 1e-5) << c0 << " " << i;
      for (size_t i = 0; i < lse.size(); ++i) {
        ASSERT_NEAR(lse[i], want_lse[i], 1e-5 * (1 + std::abs(want_lse[i]))) << c0 << " " << i;
        worst_recall = std::min(worst_recall, std::exp(double{lse[i]} - dense_lse[i]));
      }
    }
    EXPECT_LT(worst_recall, 0.99) << "the budgets select everything: the test tests nothing";
    EXPECT_GT(attended, 0);
  }
}

// Oracle 12 at the layer level, with budgets growing from the minimum to full.
TEST(VerticalSlashRecallTest, IsOneAtFullBudgetAndGrowsWithTheBudget) {
  // Longer prompts than LayerCases: the 30 sinks and the 64-key blocks around the 100-diagonal
  // band cover every key of a prompt shorter than about 200 tokens.
  const std::vector<LayerCase> cases = {
      {100, 4, 2, 16, 64, 48},     // tiny: everything is covered, recall 1
      {400, 2, 1, 16, 0, 0},       // no DCA
      {700, 4, 2, 16, 256, 192},   // 4 DCA chunks of 192
  };
  uint64_t seed = 300;
  for (const LayerCase& lc : cases) {
    SCOPED_TRACE(Name(lc));
    const Layer a(lc.L, lc.q_heads, lc.kv_heads, lc.d, lc.S, lc.C, seed += 10);
    const int64_t chunk = lc.C > 0 ? lc.C + 5 : 150;
    std::vector<float> recall(lc.q_heads * lc.L, -1.0f);
    std::vector<int64_t> full;
    for (int64_t h = 0; h < lc.q_heads; ++h) full.insert(full.end(), {lc.L, lc.L});
    VerticalSlashRecall(a.q.data(), a.k.data(), a.v.data(), a.RecallShape(chunk), full.data(),
                        recall.data());
    for (float r : recall) ASSERT_NEAR(r, 1.0f, 1e-5);

    // Budgets from the forced minimum (30 sinks, 100 diagonals) up.
    std::vector<float> previous(lc.q_heads * lc.L, 0.0f);
    bool below_one = false;
    for (int64_t vb : {30, 40, 60, 100, 150}) {
      std::vector<int64_t> budgets;
      for (int64_t h = 0; h < lc.q_heads; ++h) budgets.insert(budgets.end(), {vb, 100});
      VerticalSlashRecall(a.q.data(), a.k.data(), a.v.data(), a.RecallShape(chunk),
                          budgets.data(), recall.data());
      for (size_t i = 0; i < recall.size(); ++i) {
        ASSERT_GT(recall[i], 0.0f);
        ASSERT_LE(recall[i], 1.0f + 1e-5f);
        below_one |= recall[i] < 0.999f;
        // Without DCA the selection for a larger budget is a superset (one part, no fallback):
        // recall never falls.
        if (lc.S == 0) ASSERT_GE(recall[i], previous[i] - 1e-5f) << "budget " << vb << " i " << i;
      }
      previous = recall;
    }
    if (lc.L >= 400) EXPECT_TRUE(below_one) << "small budgets never lost any mass";
    std::vector<VerticalSlashRecallSummary> summary(lc.q_heads);
    SummarizeVerticalSlashRecall(recall.data(), lc.q_heads, lc.L, 0, summary.data());
    for (int64_t h = 0; h < lc.q_heads; ++h) {
      double mean = 0.0;
      float mn = 2.0f;
      for (int64_t p = 0; p < lc.L; ++p) {
        mean += recall[h * lc.L + p];
        mn = std::min(mn, recall[h * lc.L + p]);
      }
      EXPECT_NEAR(summary[h].mean, mean / lc.L, 1e-9);
      EXPECT_EQ(summary[h].min, mn);
      EXPECT_GE(summary[h].p05, mn);
      EXPECT_LE(summary[h].p05, summary[h].mean + 1e-6);
    }
  }
}

// Sparse prefill with real budgets: sharing kv heads across the GQA group equals repeating them.
TEST(VerticalSlashPrefillTest, SparseResultIsInvariantToGqaGrouping) {
  for (const LayerCase& lc : LayerCases()) {
    if (lc.q_heads == lc.kv_heads) continue;
    SCOPED_TRACE(Name(lc));
    const Layer grouped(lc.L, lc.q_heads, lc.kv_heads, lc.d, lc.S, lc.C, 900);
    Layer repeated = grouped;
    const int64_t group = lc.q_heads / lc.kv_heads;
    repeated.kv_heads = lc.q_heads;
    std::vector<float> k(lc.L * lc.q_heads * lc.d), v(k.size());
    for (int64_t t = 0; t < lc.L; ++t) {
      for (int64_t h = 0; h < lc.q_heads; ++h) {
        for (int64_t c = 0; c < lc.d; ++c) {
          k[(t * lc.q_heads + h) * lc.d + c] = grouped.cache.K(t, h / group)[c];
          v[(t * lc.q_heads + h) * lc.d + c] = grouped.cache.V(t, h / group)[c];
        }
      }
    }
    repeated.cache = PagedKv(std::move(k), std::move(v), lc.L, lc.q_heads, lc.d, 16, 5);
    std::vector<int64_t> budgets;
    for (int64_t h = 0; h < lc.q_heads; ++h) budgets.insert(budgets.end(), {40 + 10 * h, 100});
    for (int64_t chunk : {lc.L, int64_t{33}}) {
      std::vector<float> out_g, lse_g, out_r, lse_r;
      grouped.Prefill(chunk, budgets.data(), &out_g, &lse_g);
      repeated.Prefill(chunk, budgets.data(), &out_r, &lse_r);
      ExpectClose(out_g, lse_g, out_r, lse_r, 1e-6, "chunk " + std::to_string(chunk));
    }
  }
}

}  // namespace
}  // namespace mp::cpu
