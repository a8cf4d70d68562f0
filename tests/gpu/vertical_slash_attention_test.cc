// GPU tests of the Hopper vertical-slash sparse attention (kernels/cuda/vertical_slash_attention.h)
// and of the per-piece sparse DCA prefill (kernels/cuda/vertical_slash_prefill.h):
//   * the kernel equals dense softmax in double under the explicit mask of its index
//     (qwen1m-spec.md §9.8): for every (head, row) the union over the piece's DCA parts of the
//     listed 64-key blocks and columns, clipped to the part and to the row's position, with the
//     query rotated per part (intra / succ / inter DCA positions); indices built by the CPU
//     reference from CPU selections on random scores; GQA 28/4 and 9/3, head_dim 128 and 64,
//     pieces whose query count is not a multiple of 64, one to three parts, heads with an empty
//     index (out 0, lse -inf), block sizes 64 and 16;
//   * full budgets equal dense DCA attention (§9.6) over runs that cross several DCA chunk
//     boundaries, and dense causal attention without DCA;
//   * the whole per-piece chain on random inputs with small budgets: the rotated estimation
//     queries equal the CPU rotation, the scores the CPU's, the selection equals the CPU
//     selection up to near-ties at the k-th score, the CPU selection of the GPU's scores equals
//     the GPU lists exactly, the CPU index of those lists equals the GPU index, and the output
//     equals the masked dense reference of that index.
// Needs an sm_90 GPU (label gpu); fails without one.
#include "kernels/cuda/vertical_slash_attention.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/vertical_slash_index.h"
#include "kernels/cpu/vertical_slash_scores.h"
#include "kernels/cpu/vertical_slash_select.h"
#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/vertical_slash_parts.h"
#include "kernels/cuda/vertical_slash_prefill.h"
#include "tests/gpu/kernel_test_util.h"
#include "tests/gpu/vertical_slash_test_util.h"

namespace mp::cuda {
namespace {

using testing::DeviceBuffer;
using testing::DeviceIndex;
using testing::HostIndex;
using testing::HostLists;
using testing::TestCache;

constexpr double kInf = std::numeric_limits<double>::infinity();

// Runs work(row) for row in [0, rows) on all cores.
template <class F>
void ParallelRows(int64_t rows, F work) {
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>(rows, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int64_t row = t; row < rows; row += threads) work(row);
    });
  }
  for (auto& th : pool) th.join();
}

struct Geometry {
  int64_t q_heads, kv_heads, head_dim;
  int64_t b, e, p, c, s;  // piece [b, e) in the DCA chunk at p; c = C (0: no DCA), s = S
  double theta = 10000.0;
};

// DCA query position of part `part` for the query at position pos.
int32_t PartPosition(const Geometry& g, int64_t pos, int part) {
  if (g.c <= 0) return int32_t(pos);
  const DcaQueryPositions<int64_t> q = DcaQueryPositionsAt<int64_t>(pos, g.c, g.s);
  return int32_t(part == 0 ? q.intra : (part == 1 ? q.succ : q.inter));
}

// Dense softmax in double over the keys `keys[part]` (sequence positions) of one query, each
// part with its own rotation of the query. out[head_dim]; returns the LSE (-inf: no key).
double MaskedReference(const Geometry& g, const TestCache& cache, const float* q, int64_t pos,
                       int64_t kv_head, const std::vector<int64_t> (&keys)[3], double scale,
                       double* out) {
  const int64_t d = g.head_dim;
  std::fill(out, out + d, 0.0);
  std::vector<double> logits;
  std::vector<const float*> values;
  for (int part = 0; part < 3; ++part) {
    if (keys[part].empty()) continue;
    const std::vector<double> qr = testing::RotatedQuery(q, d, PartPosition(g, pos, part), g.theta);
    for (int64_t j : keys[part]) {
      const float* k = cache.K(j, kv_head);
      double dot = 0;
      for (int64_t x = 0; x < d; ++x) dot += qr[x] * k[x];
      logits.push_back(dot * scale);
      values.push_back(cache.V(j, kv_head));
    }
  }
  if (logits.empty()) return -kInf;
  const double mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double w = std::exp(logits[i] - mx);
    sum += w;
    for (int64_t x = 0; x < d; ++x) out[x] += w * values[i][x];
  }
  for (int64_t x = 0; x < d; ++x) out[x] /= sum;
  return mx + std::log(sum);
}

// The keys (sequence positions) that the index of part `part` gives query row i of head h.
std::vector<int64_t> IndexKeys(const Geometry& g, const HostIndex& index, int part, int64_t h,
                               int64_t i) {
  const VerticalSlashPartRange r = VerticalSlashPartKeys(g.e, g.p, g.c, part);
  std::set<int64_t> keys;
  if (!r.present) return {};
  const int64_t rb = h * index.row_blocks + i / 64;
  const int64_t limit = g.b + i;  // the row's position
  auto add = [&](int64_t local) {
    if (local < 0 || local >= r.num_keys()) return;
    const int64_t key = r.key_begin + local;
    if (key <= limit) EXPECT_TRUE(keys.insert(key).second) << "key listed twice: " << key;
  };
  for (int64_t b = 0; b < index.block_count[rb]; ++b) {
    const int64_t o = index.block_offset[rb * index.max_blocks + b];
    for (int64_t x = 0; x < 64; ++x) add(o + x);
  }
  for (int64_t c = 0; c < index.column_count[rb]; ++c) {
    add(index.column_index[rb * index.max_columns + c]);
  }
  return std::vector<int64_t>(keys.begin(), keys.end());
}

// Runs the kernel for `indices` (one per part; absent parts ignored) and compares with the masked
// dense reference.
void RunKernelCase(const Geometry& g, const TestCache& cache, const std::vector<__nv_bfloat16>& q,
                   HostIndex (&indices)[3], float scale, const std::string& what) {
  const int64_t n = g.e - g.b, heads = g.q_heads, d = g.head_dim;
  std::vector<std::unique_ptr<DeviceIndex>> dev;
  VerticalSlashAttentionArgs a;
  for (int part = 0; part < 3; ++part) {
    dev.push_back(nullptr);
    if (!VerticalSlashPartKeys(g.e, g.p, g.c, part).present) continue;
    dev[part] = std::make_unique<DeviceIndex>(indices[part]);
    dev[part]->Upload(indices[part]);
    a.index[part] = dev[part]->Dev();
  }
  DeviceBuffer<__nv_bfloat16> dq(q.size()), dout(q.size());
  DeviceBuffer<float> dlse(heads * n);
  ASSERT_EQ(dq.Upload(q), cudaSuccess);
  ASSERT_EQ(dout.Poison(), cudaSuccess);
  ASSERT_EQ(dlse.Poison(), cudaSuccess);
  a.q = dq.get();
  a.kv = cache.Gpu();
  a.out = dout.get();
  a.lse = dlse.get();
  a.q_heads = heads;
  a.piece_begin = g.b;
  a.piece_end = g.e;
  a.chunk_begin = g.p;
  a.chunk_len = g.c;
  a.chunk_size = g.s;
  a.rope_theta = g.theta;
  a.scale = scale;
  ASSERT_EQ(VerticalSlashAttentionUnsupported(a), "");
  MP_CUDA_ASSERT(VerticalSlashAttention(a, nullptr));
  MP_CUDA_ASSERT(cudaDeviceSynchronize());
  std::vector<__nv_bfloat16> got;
  std::vector<float> got_lse;
  ASSERT_EQ(dout.Download(&got), cudaSuccess);
  ASSERT_EQ(dlse.Download(&got_lse), cudaSuccess);

  const std::vector<float> qf = testing::ToFloat(q);
  std::vector<double> ref(n * heads * d), ref_lse(heads * n);
  const int64_t group = heads / g.kv_heads;
  ParallelRows(n * heads, [&](int64_t row) {
    const int64_t i = row / heads, h = row % heads;
    std::vector<int64_t> keys[3];
    for (int part = 0; part < 3; ++part) keys[part] = IndexKeys(g, indices[part], part, h, i);
    ref_lse[h * n + i] = MaskedReference(g, cache, qf.data() + row * d, g.b + i, h / group, keys,
                                         scale, ref.data() + row * d);
  });
  testing::ExpectAttentionNear(
      ref, ref_lse, got, got_lse, n * heads, d,
      [n, heads](int64_t row) { return (row % heads) * n + row / heads; }, what);
}

// Random selections (CPU SelectVerticalSlash of random scores) and their CPU index, per part.
void RandomIndices(const Geometry& g, int64_t vertical, int64_t slash, uint64_t seed,
                   HostIndex (&indices)[3], int64_t empty_head = -1) {
  const int64_t heads = g.q_heads, e = g.e, qn = g.e - g.b;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> vs(heads * e), ss(heads * e);
  for (float& x : vs) x = u(rng);
  for (float& x : ss) x = u(rng);
  std::vector<int64_t> budgets;
  for (int64_t h = 0; h < heads; ++h) {
    budgets.push_back(vertical + 17 * (h % 5));
    budgets.push_back(slash + 29 * (h % 3));
  }
  const int64_t cap = std::max<int64_t>(
      std::min(cpu::VerticalSlashListCapacity(std::max(vertical, slash) + 120), e), 9);
  cpu::VerticalSlashPiece piece{g.b, g.e, g.p, g.c};
  HostLists lists[3];
  cpu::VerticalSlashLists views[3];
  for (int part = 0; part < 3; ++part) {
    if (!cpu::VerticalSlashPartKeyRange(piece, part).present) continue;
    lists[part] = HostLists(heads, cap);
    views[part] = lists[part].Lists();
  }
  cpu::SelectVerticalSlash(vs.data(), ss.data(), heads, piece, budgets.data(), views);
  for (int part = 0; part < 3; ++part) {
    const cpu::VerticalSlashPartKeys r = cpu::VerticalSlashPartKeyRange(piece, part);
    if (!r.present) continue;
    const int64_t rb = cpu::VerticalSlashRowBlocks(qn);
    indices[part] = HostIndex(heads, rb, cpu::VerticalSlashBlockCapacity(cap, r.num_keys()), cap);
    cpu::BuildVerticalSlashIndex(lists[part].View(), {heads, qn, r.num_keys(), r.causal},
                                 indices[part].Index());
    if (empty_head >= 0) {
      for (int64_t m = 0; m < rb; ++m) {
        indices[part].block_count[empty_head * rb + m] = 0;
        indices[part].column_count[empty_head * rb + m] = 0;
      }
    }
  }
}

TEST(VerticalSlashAttentionGpuTest, EqualsMaskedDenseAttentionOfItsIndex) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  struct Case {
    Geometry g;
    int64_t block_size, vertical, slash;
    int64_t empty_head;
  };
  const std::vector<Case> cases = {
      // No DCA: one causal part.
      {{28, 4, 128, 200, 350, 0, 0, 0}, 64, 40, 120, -1},
      // DCA C = 192, S = 256: intra only / intra + succ / all three parts, qn not a multiple of 64.
      {{28, 4, 128, 20, 170, 0, 192, 256}, 64, 40, 110, 3},
      {{9, 3, 64, 200, 383, 192, 192, 256}, 16, 50, 130, -1},
      {{28, 4, 128, 400, 570, 384, 192, 256}, 64, 60, 150, 0},
      {{9, 3, 64, 390, 455, 384, 192, 256}, 16, 30, 100, -1},
      // Larger parts: blocks and columns of several tiles each.
      {{8, 2, 128, 1100, 1500, 1024, 512, 576}, 64, 400, 700, -1},
  };
  uint64_t seed = 500;
  for (const Case& c : cases) {
    const Geometry& g = c.g;
    const std::string what =
        "heads " + std::to_string(g.q_heads) + "/" + std::to_string(g.kv_heads) + " hd" +
        std::to_string(g.head_dim) + " piece [" + std::to_string(g.b) + ", " + std::to_string(g.e) +
        ") C=" + std::to_string(g.c) + " block " + std::to_string(c.block_size);
    SCOPED_TRACE(what);
    const TestCache cache(g.e, g.kv_heads, g.head_dim, c.block_size, ++seed);
    const std::vector<__nv_bfloat16> q =
        testing::RandomBf16((g.e - g.b) * g.q_heads * g.head_dim, ++seed);
    HostIndex indices[3];
    RandomIndices(g, c.vertical, c.slash, ++seed, indices, c.empty_head);
    RunKernelCase(g, cache, q, indices, 1.0f / std::sqrt(float(g.head_dim)), what);
  }
}

// ---- the per-piece prefill --------------------------------------------------------------------

struct RunCase {
  int64_t q_heads, kv_heads, head_dim, query_begin, n, chunk_size, chunk_len, block_size;
};

std::string Describe(const RunCase& c) {
  return "heads " + std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) + " hd" +
         std::to_string(c.head_dim) + " queries [" + std::to_string(c.query_begin) + ", " +
         std::to_string(c.query_begin + c.n) + ") S=" + std::to_string(c.chunk_size) +
         " C=" + std::to_string(c.chunk_len);
}

VerticalSlashPrefillArgs PrefillArgs(const RunCase& c, const TestCache& cache,
                                     const __nv_bfloat16* q, __nv_bfloat16* out, float* lse,
                                     const std::vector<int64_t>& budgets, float scale) {
  VerticalSlashPrefillArgs a;
  a.q = q;
  a.kv = cache.Gpu();
  a.out = out;
  a.lse = lse;
  a.num_queries = c.n;
  a.q_heads = c.q_heads;
  a.query_begin = c.query_begin;
  a.chunk_size = c.chunk_size;
  a.chunk_len = c.chunk_len;
  a.rope_theta = 10000.0;
  a.scale = scale;
  a.last_q = 64;
  a.budgets = budgets.data();
  return a;
}

// §9.6: with budgets >= every piece's key count the selection keeps every key, so the sparse
// prefill equals dense DCA attention (the query at position p sees every key j <= p with the DCA
// rotation of j's region), here against the dense reference in double.
TEST(VerticalSlashPrefillGpuTest, FullBudgetEqualsDenseDcaAttention) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const std::vector<RunCase> cases = {
      {28, 4, 128, 0, 300, 256, 192, 64},    // pieces [0, 192), [192, 300)
      {28, 4, 128, 100, 420, 256, 192, 64},  // [100, 192), [192, 384), [384, 520): all parts
      {9, 3, 64, 400, 250, 256, 192, 16},    // [400, 576), [576, 650)
      {9, 3, 128, 50, 200, 0, 0, 64},        // no DCA
      {4, 1, 64, 700, 77, 0, 0, 64},         // no DCA, one partial row block
  };
  uint64_t seed = 900;
  for (const RunCase& c : cases) {
    SCOPED_TRACE(Describe(c));
    const int64_t len = c.query_begin + c.n, d = c.head_dim;
    const TestCache cache(len, c.kv_heads, d, c.block_size, ++seed);
    const std::vector<__nv_bfloat16> q = testing::RandomBf16(c.n * c.q_heads * d, ++seed);
    DeviceBuffer<__nv_bfloat16> dq(q.size()), dout(q.size());
    DeviceBuffer<float> dlse(c.q_heads * c.n);
    ASSERT_EQ(dq.Upload(q), cudaSuccess);
    ASSERT_EQ(dout.Poison(), cudaSuccess);
    ASSERT_EQ(dlse.Poison(), cudaSuccess);
    const std::vector<int64_t> budgets(2 * c.q_heads, len + 10);
    const float scale = 1.3f / std::sqrt(float(d));
    const VerticalSlashPrefillArgs a =
        PrefillArgs(c, cache, dq.get(), dout.get(), dlse.get(), budgets, scale);
    ASSERT_EQ(VerticalSlashPrefillUnsupported(a), "");
    const int64_t ws_bytes = VerticalSlashPrefillWorkspaceBytes(a);
    DeviceBuffer<char> ws(ws_bytes);
    MP_CUDA_ASSERT(VerticalSlashPrefill(a, ws.get(), ws_bytes, nullptr));
    MP_CUDA_ASSERT(cudaDeviceSynchronize());
    std::vector<__nv_bfloat16> got;
    std::vector<float> got_lse;
    ASSERT_EQ(dout.Download(&got), cudaSuccess);
    ASSERT_EQ(dlse.Download(&got_lse), cudaSuccess);

    const std::vector<float> qf = testing::ToFloat(q);
    std::vector<double> ref(q.size()), ref_lse(c.q_heads * c.n);
    const int64_t group = c.q_heads / c.kv_heads;
    ParallelRows(c.n * c.q_heads, [&](int64_t row) {
      const int64_t i = row / c.q_heads, h = row % c.q_heads, pos = c.query_begin + i;
      Geometry g{c.q_heads, c.kv_heads, d, 0, 0, 0, c.chunk_len, c.chunk_size};
      std::vector<int64_t> keys[3];
      for (int64_t j = 0; j <= pos; ++j) {
        int part = 0;
        if (c.chunk_len > 0) {
          const DcaKeyRegions<int64_t> r = DcaKeyRegionsAt<int64_t>(pos, c.chunk_len);
          part = j >= r.intra_begin ? 0 : (j >= r.succ_begin ? 1 : 2);
        }
        keys[part].push_back(j);
      }
      ref_lse[h * c.n + i] = MaskedReference(g, cache, qf.data() + row * d, pos, h / group, keys,
                                             scale, ref.data() + row * d);
    });
    testing::ExpectAttentionNear(
        ref, ref_lse, got, got_lse, c.n * c.q_heads, d,
        [&](int64_t row) { return (row % c.q_heads) * c.n + row / c.q_heads; }, Describe(c));
  }
}

// The k-th largest score (forced entries +inf) of one head's array.
double KthScore(std::vector<float> s, int64_t k) {
  std::sort(s.begin(), s.end(), std::greater<float>());
  return s[std::min<int64_t>(k, s.size()) - 1];
}

// GPU lists vs CPU lists of one part: equal, except entries whose CPU score is within `tol` of
// the head's k-th score (near-ties that rounding may order either way).
void ExpectListsEqualUpToNearTies(const HostLists& got, const HostLists& want, bool vertical,
                                  const VerticalSlashPartRange& r, int64_t e, int64_t qn,
                                  const std::vector<float>& scores,  // [heads, e], forced applied
                                  const std::vector<int64_t>& k, double rel_tol,
                                  const std::string& what) {
  int64_t swapped = 0;
  for (int64_t h = 0; h < want.heads; ++h) {
    auto to_index = [&](int32_t value) -> int64_t {
      if (vertical) return r.key_begin + value;
      return r.causal ? (e - 1) - value : (r.key_end + qn - 1) - value;
    };
    const int32_t* gl = &got.vertical[h * got.cap];
    const int32_t* wl = &want.vertical[h * want.cap];
    int64_t gc = got.vertical_count[h], wc = want.vertical_count[h];
    if (!vertical) {
      gl = &got.slash[h * got.cap];
      wl = &want.slash[h * want.cap];
      gc = got.slash_count[h];
      wc = want.slash_count[h];
    }
    std::set<int64_t> g, w;
    for (int64_t i = 0; i < gc; ++i) g.insert(to_index(gl[i]));
    for (int64_t i = 0; i < wc; ++i) w.insert(to_index(wl[i]));
    if (g == w) continue;
    std::vector<float> head(scores.begin() + h * e, scores.begin() + (h + 1) * e);
    const double kth = KthScore(head, k[h]);
    const double tol = 1e-7 + rel_tol * std::fabs(kth);
    for (int64_t x : g) {
      if (w.count(x)) continue;
      ++swapped;
      ASSERT_TRUE(x >= 0 && x < e) << what << ": head " << h << " extra entry " << x;
      EXPECT_NEAR(head[x], kth, tol) << what << ": head " << h << " extra entry " << x;
    }
    for (int64_t x : w) {
      if (g.count(x)) continue;
      ++swapped;
      EXPECT_NEAR(head[x], kth, tol) << what << ": head " << h << " missing entry " << x;
    }
  }
  std::printf("[ stats    ] %s: %lld near-tie swaps\n", what.c_str(),
              static_cast<long long>(swapped));
}

TEST(VerticalSlashPrefillGpuTest, ChainEqualsTheCpuReferenceStepByStep) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const std::vector<RunCase> cases = {
      {28, 4, 128, 560, 100, 320, 256, 64},    // one piece [560, 660): intra, succ, inter
      {9, 3, 64, 300, 150, 0, 0, 16},          // no DCA
      {8, 2, 128, 1030, 300, 1088, 1024, 64},  // succ only, larger parts
  };
  uint64_t seed = 1300;
  for (const RunCase& c : cases) {
    SCOPED_TRACE(Describe(c));
    const int64_t len = c.query_begin + c.n, d = c.head_dim, heads = c.q_heads;
    const TestCache cache(len, c.kv_heads, d, c.block_size, ++seed);
    const std::vector<__nv_bfloat16> q = testing::RandomBf16(c.n * heads * d, ++seed, 1.5f);
    DeviceBuffer<__nv_bfloat16> dq(q.size()), dout(q.size());
    DeviceBuffer<float> dlse(heads * c.n);
    ASSERT_EQ(dq.Upload(q), cudaSuccess);
    ASSERT_EQ(dout.Poison(), cudaSuccess);
    std::vector<int64_t> budgets;
    for (int64_t h = 0; h < heads; ++h) {
      budgets.push_back(h % 4 == 0 ? 130 : 40 + 9 * h);
      budgets.push_back(100 + 13 * h);
    }
    const float scale = 1.0f / std::sqrt(float(d));
    const VerticalSlashPrefillArgs a =
        PrefillArgs(c, cache, dq.get(), dout.get(), dlse.get(), budgets, scale);
    ASSERT_EQ(VerticalSlashPrefillUnsupported(a), "");
    const int64_t ws_bytes = VerticalSlashPrefillWorkspaceBytes(a);
    DeviceBuffer<char> ws(ws_bytes);
    MP_CUDA_ASSERT(VerticalSlashPrefill(a, ws.get(), ws_bytes, nullptr));
    MP_CUDA_ASSERT(cudaDeviceSynchronize());
    const VerticalSlashPieceBuffers piece = VerticalSlashPrefillPiece(a, ws.get());
    ASSERT_EQ(piece.piece_begin, c.query_begin) << "the case must be one piece";
    ASSERT_EQ(piece.piece_end, len);
    const int64_t e = piece.piece_end, nl = piece.estimate_rows, P = piece.chunk_begin;
    ASSERT_EQ(nl, std::min<int64_t>(64, c.n));
    const Geometry g{heads, c.kv_heads, d, piece.piece_begin, e, P, c.chunk_len, c.chunk_size};

    // 1. The rotated estimation queries.
    const bool dca = c.chunk_size > 0;
    const VerticalSlashPartRange parts[3] = {VerticalSlashPartKeys(e, P, c.chunk_len, 0),
                                             VerticalSlashPartKeys(e, P, c.chunk_len, 1),
                                             VerticalSlashPartKeys(e, P, c.chunk_len, 2)};
    std::vector<__nv_bfloat16> q_rot(3 * nl * heads * d);
    ASSERT_EQ(cudaMemcpy(q_rot.data(), piece.q_rot, q_rot.size() * 2, cudaMemcpyDefault),
              cudaSuccess);
    const std::vector<float> qf = testing::ToFloat(q);
    for (int v = 0; v < 3; ++v) {
      if (!parts[v].present) continue;
      for (int64_t r = 0; r < nl; ++r) {
        const int64_t pos = e - nl + r;
        const int64_t base = dca ? pos % c.chunk_len : pos;
        const int32_t rp =
            int32_t(v == 0 ? base : (v == 1 ? base + c.chunk_len : base + c.chunk_size));
        for (int64_t h = 0; h < heads; ++h) {
          const std::vector<double> want = testing::RotatedQuery(
              qf.data() + ((pos - c.query_begin) * heads + h) * d, d, rp, 10000.0);
          for (int64_t x = 0; x < d; ++x) {
            const float gv = __bfloat162float(q_rot[((v * nl + r) * heads + h) * d + x]);
            ASSERT_NEAR(gv, want[x], 1e-2 * std::fabs(want[x]) + 1e-3)
                << "copy " << v << " row " << r << " head " << h << " dim " << x;
          }
        }
      }
    }
    // 2. Scores: the CPU procedure on the same (GPU-rotated) queries.
    std::vector<float> gv(heads * e), gs(heads * e), cv(heads * e), cs(heads * e);
    ASSERT_EQ(cudaMemcpy(gv.data(), piece.vertical, gv.size() * 4, cudaMemcpyDefault), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(gs.data(), piece.slash, gs.size() * 4, cudaMemcpyDefault), cudaSuccess);
    const std::vector<float> qr = testing::ToFloat(q_rot);
    const int64_t copy = nl * heads * d;
    cpu::VerticalSlashScores(qr.data(), parts[1].present ? qr.data() + copy : nullptr,
                             parts[2].present ? qr.data() + 2 * copy : nullptr, cache.Cpu(),
                             {nl, heads, e, P, parts[1].present ? parts[1].key_begin : P, scale},
                             {}, cv.data(), cs.data());
    for (int64_t i = 0; i < heads * e; ++i) {
      ASSERT_NEAR(gv[i], cv[i], 1e-6 + 2e-4 * cv[i]) << "vertical " << i;
      ASSERT_NEAR(gs[i], cs[i], 1e-6 + 2e-4 * cs[i]) << "slash " << i;
    }
    // 3. Selection: CPU of the GPU scores == GPU lists; CPU of the CPU scores == GPU lists up to
    // near-ties.
    const int64_t cap = piece.list_capacity;
    cpu::VerticalSlashPiece cp{piece.piece_begin, e, P, c.chunk_len};
    HostLists from_gpu[3], from_cpu[3];
    cpu::VerticalSlashLists v1[3], v2[3];
    for (int part = 0; part < 3; ++part) {
      if (!parts[part].present) continue;
      from_gpu[part] = HostLists(heads, cap);
      from_cpu[part] = HostLists(heads, cap);
      v1[part] = from_gpu[part].Lists();
      v2[part] = from_cpu[part].Lists();
    }
    cpu::SelectVerticalSlash(gv.data(), gs.data(), heads, cp, budgets.data(), v1);
    cpu::SelectVerticalSlash(cv.data(), cs.data(), heads, cp, budgets.data(), v2);
    std::vector<float> fv = cv, fs = cs;  // forced, for the near-tie check
    std::vector<int64_t> kv(heads), ks(heads);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t j = 0; j < std::min<int64_t>(30, e); ++j) fv[h * e + j] = INFINITY;
      for (int64_t t = std::max<int64_t>(0, e - 100); t < e; ++t) fs[h * e + t] = INFINITY;
      kv[h] = std::min(e, std::max<int64_t>(budgets[2 * h], 30));
      ks[h] = std::min(e, std::max<int64_t>(budgets[2 * h + 1], 100));
    }
    HostIndex gpu_index[3];
    for (int part = 0; part < 3; ++part) {
      if (!parts[part].present) continue;
      const std::string what = "part " + std::to_string(part);
      const HostLists got = testing::DownloadLists(piece.lists[part], heads);
      testing::ExpectSameLists(got, from_gpu[part], what + " (CPU select of the GPU scores)");
      ExpectListsEqualUpToNearTies(got, from_cpu[part], true, parts[part], e, e - piece.piece_begin,
                                   fv, kv, 1e-4, what + " vertical vs CPU");
      ExpectListsEqualUpToNearTies(got, from_cpu[part], false, parts[part], e,
                                   e - piece.piece_begin, fs, ks, 1e-4, what + " slash vs CPU");
      // 4. Index: CPU builder of the GPU lists == GPU index.
      const int64_t rb = cpu::VerticalSlashRowBlocks(e - piece.piece_begin);
      HostIndex want(heads, rb, piece.index[part].max_blocks, piece.index[part].max_columns);
      cpu::BuildVerticalSlashIndex(
          got.View(), {heads, e - piece.piece_begin, parts[part].num_keys(), parts[part].causal},
          want.Index());
      gpu_index[part] = testing::DownloadIndex(piece.index[part], heads, rb);
      testing::ExpectSameIndex(gpu_index[part], want, what + " index");
    }
    // 5. Output == masked dense reference of the GPU index.
    std::vector<__nv_bfloat16> got;
    std::vector<float> got_lse;
    ASSERT_EQ(dout.Download(&got), cudaSuccess);
    ASSERT_EQ(dlse.Download(&got_lse), cudaSuccess);
    const int64_t n = c.n, group = heads / c.kv_heads;
    std::vector<double> ref(q.size()), ref_lse(heads * n);
    Geometry gg = g;
    gg.theta = 10000.0;
    ParallelRows(n * heads, [&](int64_t row) {
      const int64_t i = row / heads, h = row % heads;
      std::vector<int64_t> keys[3];
      for (int part = 0; part < 3; ++part) keys[part] = IndexKeys(gg, gpu_index[part], part, h, i);
      ref_lse[h * n + i] = MaskedReference(gg, cache, qf.data() + row * d, gg.b + i, h / group,
                                           keys, scale, ref.data() + row * d);
    });
    testing::ExpectAttentionNear(
        ref, ref_lse, got, got_lse, n * heads, d,
        [n, heads](int64_t row) { return (row % heads) * n + row / heads; }, Describe(c));
  }
}

// Host-only: the reservation bound against every run it covers. Each geometry (4 fixed, 60
// random) is scanned over every end e in [1, max_keys] and every run length n' in
// [1, min(max_queries, e)] (the runs a chunked prefill can issue), with random per-head budgets;
// the bound must equal the largest of them.
TEST(VerticalSlashPrefillWorkspaceTest, MaxEqualsTheLargestRunOfEveryEndAndLength) {
  struct Geometry {
    int64_t q_heads, kv_heads, head_dim, chunk_size, chunk_len, last_q, max_queries, max_keys;
  };
  const Geometry geometries[] = {
      {4, 2, 64, 320, 256, 64, 200, 900},    // runs cross one DCA boundary at a time
      {6, 3, 128, 192, 128, 16, 300, 700},   // runs longer than a DCA chunk: up to 4 pieces
      {2, 1, 64, 0, 0, 64, 130, 500},        // no DCA
      {4, 4, 128, 320, 256, 64, 256, 1100},  // max_queries a multiple of 64
  };
  std::mt19937_64 rng(7);
  // Any non-null address: sizes are computed, nothing is read.
  auto* fake = reinterpret_cast<__nv_bfloat16*>(uintptr_t{256});
  std::vector<Geometry> all(std::begin(geometries), std::end(geometries));
  for (int i = 0; i < 60; ++i) {
    std::uniform_int_distribution<int64_t> u(1, 1 << 20);
    const int64_t kv = 1 + u(rng) % 2, q = kv * (1 + u(rng) % 3);
    const int64_t c = 64 * (1 + u(rng) % 5);
    const bool dca = u(rng) % 4 != 0;
    all.push_back({q, kv, u(rng) % 2 ? 64 : 128, dca ? c + 64 * (u(rng) % 3) : 0, dca ? c : 0,
                   1 + u(rng) % 64, 1 + u(rng) % 400, 1 + u(rng) % 1000});
  }
  for (const Geometry& g : all) {
    std::vector<int64_t> budgets(2 * g.q_heads);
    std::uniform_int_distribution<int64_t> budget(1, 1 + rng() % 600);
    for (int64_t& b : budgets) b = budget(rng);
    VerticalSlashPrefillArgs a;
    a.q = fake;
    a.out = fake;
    a.kv.k = fake;
    a.kv.v = fake;
    a.kv.block_table = reinterpret_cast<const int32_t*>(uintptr_t{256});
    a.kv.num_blocks = 1;
    a.kv.block_size = 64;
    a.kv.kv_heads = g.kv_heads;
    a.kv.head_dim = g.head_dim;
    a.q_heads = g.q_heads;
    a.chunk_size = g.chunk_size;
    a.chunk_len = g.chunk_len;
    a.scale = 0.1f;
    a.last_q = g.last_q;
    a.budgets = budgets.data();
    int64_t largest = 0, arg_e = 0, arg_n = 0;
    for (int64_t e = 1; e <= g.max_keys; ++e) {
      for (int64_t n = 1; n <= std::min(g.max_queries, e); ++n) {
        a.num_queries = n;
        a.query_begin = e - n;
        const int64_t w = VerticalSlashPrefillWorkspaceBytes(a);
        if (w > largest) {
          largest = w;
          arg_e = e;
          arg_n = n;
        }
      }
    }
    ASSERT_GT(largest, 0);
    EXPECT_EQ(VerticalSlashPrefillMaxWorkspaceBytes(a, g.max_queries, g.max_keys), largest)
        << "q_heads " << g.q_heads << " chunk_len " << g.chunk_len << " max_queries "
        << g.max_queries << " max_keys " << g.max_keys << " last_q " << g.last_q
        << ": the largest run ends at " << arg_e << " with " << arg_n << " queries";
  }
  // The geometry alone is checked: no pointers, scale or cache needed.
  std::vector<int64_t> budgets(8, 100);
  VerticalSlashPrefillArgs geometry;
  geometry.q_heads = 4;
  geometry.kv.kv_heads = 2;
  geometry.kv.head_dim = 64;
  geometry.budgets = budgets.data();
  EXPECT_EQ(VerticalSlashPrefillGeometryUnsupported(geometry), "");
  EXPECT_GT(VerticalSlashPrefillMaxWorkspaceBytes(geometry, 64, 1000), 0);
  VerticalSlashPrefillArgs bad = geometry;
  bad.kv.head_dim = 96;
  EXPECT_NE(VerticalSlashPrefillGeometryUnsupported(bad).find("head_dim 96"), std::string::npos);
  EXPECT_EQ(VerticalSlashPrefillMaxWorkspaceBytes(bad, 64, 1000), 0);
  bad = geometry;
  bad.budgets = nullptr;
  EXPECT_NE(VerticalSlashPrefillGeometryUnsupported(bad).find("budgets"), std::string::npos);
}

}  // namespace
}  // namespace mp::cuda
