// GPU tests of the vertical-slash estimation and index kernels (kernels/cuda/
// vertical_slash_estimate.h, vertical_slash_index.h) against the CPU reference
// (kernels/cpu/vertical_slash_scores.h, _select.h, _index.h) on random inputs:
//   * VerticalSlashScores: column and diagonal sums equal the CPU's (fp32 tolerance) for GQA 28/4
//     and 9/3, head_dim 128 and 64, n in {1, 7, 50, 64}, key counts that are not multiples of 64,
//     one to three key regions and regions of several CTA ranges (qwen1m-spec.md §9.11);
//   * VerticalSlashSelect: given the same score arrays, the lists equal the CPU's exactly, padding
//     included, on scores drawn from a handful of values (ties everywhere: top-k ties go to the
//     lower index), with forcing, budgets below / above e, DCA parts and the fallback;
//   * exact ties through the whole estimation: with all queries zero every visible column and
//     every complete diagonal has the same sum on both sides, so the selections must be equal;
//   * BuildVerticalSlashIndex: equal to the CPU builder for causal and non-causal parts, row
//     counts that are not multiples of 64, truncation at small capacities, duplicate and negative
//     inputs; the parts of pieces in one launch equal to one call per part.
// Needs an sm_90 GPU (label gpu); fails without one.
#include "kernels/cuda/vertical_slash_estimate.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/vertical_slash_index.h"
#include "kernels/cpu/vertical_slash_scores.h"
#include "kernels/cpu/vertical_slash_select.h"
#include "kernels/cuda/vertical_slash_index.h"
#include "kernels/cuda/vertical_slash_parts.h"
#include "tests/gpu/kernel_test_util.h"
#include "tests/gpu/vertical_slash_test_util.h"

namespace mp::cuda {
namespace {

using testing::DeviceBuffer;
using testing::DeviceIndex;
using testing::DeviceLists;
using testing::HostIndex;
using testing::HostLists;
using testing::TestCache;

struct ScoreCase {
  int64_t n, e, intra_begin, succ_begin, q_heads, kv_heads, head_dim, block_size;
};

std::string Describe(const ScoreCase& c) {
  return "n=" + std::to_string(c.n) + " e=" + std::to_string(c.e) +
         " P=" + std::to_string(c.intra_begin) + " succ_begin=" + std::to_string(c.succ_begin) +
         " heads " + std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) + " hd" +
         std::to_string(c.head_dim) + " block " + std::to_string(c.block_size);
}

// GPU scores of the given query copies ([3, n, heads, d] bf16) and the CPU's on the same values.
void ScoresBothWays(const ScoreCase& c, const TestCache& cache, const std::vector<__nv_bfloat16>& q,
                    float scale, std::vector<float>* gpu, std::vector<float>* cpu_v,
                    std::vector<float>* cpu_s, std::vector<float>* gpu_s) {
  const int64_t copy = c.n * c.q_heads * c.head_dim;
  DeviceBuffer<__nv_bfloat16> dq(q.size());
  ASSERT_EQ(dq.Upload(q), cudaSuccess);
  DeviceBuffer<float> vertical(c.q_heads * c.e), slash(c.q_heads * c.e);
  ASSERT_EQ(vertical.Poison(), cudaSuccess);
  ASSERT_EQ(slash.Poison(), cudaSuccess);
  VerticalSlashScoreArgs a;
  a.q = dq.get();
  a.kv = cache.Gpu();
  a.num_queries = c.n;
  a.q_heads = c.q_heads;
  a.key_end = c.e;
  a.intra_begin = c.intra_begin;
  a.succ_begin = c.succ_begin;
  a.scale = scale;
  a.vertical = vertical.get();
  a.slash = slash.get();
  ASSERT_EQ(VerticalSlashEstimateUnsupported(a), "");
  DeviceBuffer<char> ws(VerticalSlashScoresWorkspaceBytes(a));
  MP_CUDA_ASSERT(VerticalSlashScores(a, ws.get(), nullptr));
  MP_CUDA_ASSERT(cudaDeviceSynchronize());
  ASSERT_EQ(vertical.Download(gpu), cudaSuccess);
  ASSERT_EQ(slash.Download(gpu_s), cudaSuccess);

  const std::vector<float> qf = testing::ToFloat(q);
  cpu::VerticalSlashScoreShape shape{c.n, c.q_heads, c.e, c.intra_begin, c.succ_begin, scale};
  cpu_v->assign(c.q_heads * c.e, -1.0f);
  cpu_s->assign(c.q_heads * c.e, -1.0f);
  cpu::VerticalSlashScores(qf.data(), c.intra_begin > c.succ_begin ? qf.data() + copy : nullptr,
                           c.succ_begin > 0 ? qf.data() + 2 * copy : nullptr, cache.Cpu(), shape,
                           {}, cpu_v->data(), cpu_s->data());
}

TEST(VerticalSlashScoresGpuTest, ColumnAndDiagonalSumsEqualTheCpuReference) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const std::vector<ScoreCase> cases = {
      {64, 300, 0, 0, 28, 4, 128, 64},         // no DCA, Qwen GQA
      {7, 1000, 0, 0, 9, 3, 64, 16},           // GQA 9/3, hd 64, small pages
      {1, 77, 0, 0, 4, 2, 128, 64},            // one row
      {64, 64, 0, 0, 2, 1, 64, 64},            // e == n
      {50, 4100, 2048, 1024, 28, 4, 128, 64},  // three regions, e not a multiple of 64
      {64, 7000, 5120, 2560, 6, 2, 64, 128},   // regions of two CTA ranges each
      {33, 2600, 2560, 2560, 9, 3, 128, 16},   // succ empty, inter [0, 2560): two ranges
  };
  uint64_t seed = 100;
  for (const ScoreCase& c : cases) {
    SCOPED_TRACE(Describe(c));
    const TestCache cache(c.e, c.kv_heads, c.head_dim, c.block_size, ++seed);
    const std::vector<__nv_bfloat16> q =
        testing::RandomBf16(3 * c.n * c.q_heads * c.head_dim, ++seed, 1.5f);
    const float scale = 1.0f / std::sqrt(float(c.head_dim));
    std::vector<float> gv, gs, cv, cs;
    ScoresBothWays(c, cache, q, scale, &gv, &cv, &cs, &gs);
    double worst = 0, total_v = 0, total_s = 0;
    for (int64_t i = 0; i < c.q_heads * c.e; ++i) {
      ASSERT_TRUE(std::isfinite(gv[i]) && std::isfinite(gs[i])) << "element " << i;
      ASSERT_NEAR(gv[i], cv[i], 1e-6 + 2e-4 * cv[i]) << "vertical " << i;
      ASSERT_NEAR(gs[i], cs[i], 1e-6 + 2e-4 * cs[i]) << "slash " << i;
      worst = std::max(worst, std::fabs(double(gv[i]) - cv[i]) / (1e-6 + cv[i]));
      total_v += gv[i];
      total_s += gs[i];
    }
    // Every row's probabilities sum to 1 and every cell lies on one kept diagonal.
    EXPECT_NEAR(total_v, double(c.n * c.q_heads), 1e-2);
    EXPECT_NEAR(total_s, double(c.n * c.q_heads), 1e-2);
    std::printf("[ stats    ] %s: worst relative vertical error %.2e\n", Describe(c).c_str(),
                worst);
  }
}

struct SelectCase {
  int64_t heads, b, e, p, c;  // piece [b, e) in the DCA chunk at p of length c (0: no DCA)
  int64_t vertical, slash;    // budgets of head 0 (the others vary around them)
};

// Runs CPU and GPU selection on the same score arrays and compares every part's lists.
void CompareSelection(const SelectCase& s, const std::vector<float>& vertical,
                      const std::vector<float>& slash, const std::string& what) {
  std::vector<int64_t> budgets;
  int64_t max_budget = 0;
  for (int64_t h = 0; h < s.heads; ++h) {
    budgets.push_back(std::max<int64_t>(1, s.vertical + 37 * h - 20 * (h % 3)));
    budgets.push_back(std::max<int64_t>(1, s.slash + 23 * h - 30 * (h % 2)));
    max_budget = std::max({max_budget, budgets[2 * h], budgets[2 * h + 1]});
  }
  const int64_t cap =
      std::max<int64_t>(std::min(cpu::VerticalSlashListCapacity(max_budget), s.e), 9);
  cpu::VerticalSlashPiece piece{s.b, s.e, s.p, s.c};
  HostLists cpu_lists[3];
  cpu::VerticalSlashLists views[3];
  std::vector<std::unique_ptr<DeviceLists>> dev;
  VerticalSlashSelectArgs a;
  a.vertical = nullptr;
  for (int part = 0; part < 3; ++part) {
    dev.push_back(std::make_unique<DeviceLists>(s.heads, cap));
    if (!cpu::VerticalSlashPartKeyRange(piece, part).present) continue;
    cpu_lists[part] = HostLists(s.heads, cap);
    views[part] = cpu_lists[part].Lists();
    a.parts[part] = dev[part]->Dev();
  }
  cpu::SelectVerticalSlash(vertical.data(), slash.data(), s.heads, piece, budgets.data(), views);

  DeviceBuffer<float> dv(vertical.size()), ds(slash.size());
  ASSERT_EQ(dv.Upload(vertical), cudaSuccess);
  ASSERT_EQ(ds.Upload(slash), cudaSuccess);
  a.vertical = dv.get();
  a.slash = ds.get();
  a.q_heads = s.heads;
  a.piece_begin = s.b;
  a.piece_end = s.e;
  a.chunk_begin = s.p;
  a.chunk_len = s.c;
  a.budgets = budgets.data();
  MP_CUDA_ASSERT(VerticalSlashSelect(a, nullptr));
  MP_CUDA_ASSERT(cudaDeviceSynchronize());
  for (int part = 0; part < 3; ++part) {
    if (!cpu::VerticalSlashPartKeyRange(piece, part).present) continue;
    const HostLists got = testing::DownloadLists(a.parts[part], s.heads);
    testing::ExpectSameLists(got, cpu_lists[part], what + " part " + std::to_string(part));
  }
}

TEST(VerticalSlashSelectGpuTest, ListsEqualTheCpuSelectionWithTies) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const std::vector<SelectCase> cases = {
      {4, 230, 300, 0, 0, 40, 120},            // no DCA
      {28, 5000, 6000, 0, 0, 1000, 3000},      // Qwen heads, many ties at the k-th value
      {3, 0, 20, 0, 0, 50, 150},               // e below the forced counts
      {5, 140, 250, 128, 128, 30, 100},        // succ part
      {7, 300, 390, 256, 128, 60, 140},        // succ and inter, qn = 90
      {9, 513, 520, 512, 256, 200, 400},       // qn = 7: the succ / inter slash ranges are small
      {2, 1030, 1100, 1024, 512, 5000, 5000},  // budgets above e: everything
      // Rows longer than one CTA's slice of the selection cluster (4096 scores per chunk, 8
      // CTAs): the k-th value and its ties spread over several slices.
      {4, 69000, 70000, 0, 0, 3000, 9000},
      {2, 399000, 400000, 0, 0, 5000, 7000},  // 13 chunks per slice
      {5, 66000, 70000, 65536, 32768, 2000, 6000},  // succ and inter parts across the slices
      {3, 200000, 230000, 0, 0, 150000, 20000},     // every slice busy, k beyond one slice
  };
  std::mt19937_64 rng(7);
  for (const SelectCase& s : cases) {
    const std::string what = "heads " + std::to_string(s.heads) + " piece [" + std::to_string(s.b) +
                             ", " + std::to_string(s.e) + ") P " + std::to_string(s.p);
    SCOPED_TRACE(what);
    // Scores from 6 levels (massive ties), some exact zeros, a few +inf (tie with the forced).
    std::vector<float> vertical(s.heads * s.e), slash(s.heads * s.e);
    for (auto* arr : {&vertical, &slash}) {
      for (float& x : *arr) {
        const uint64_t r = rng() % 100;
        x = r < 3 ? INFINITY : float(r % 6) * 0.125f;
      }
    }
    CompareSelection(s, vertical, slash, what + " tied levels");
    // Continuous scores (ties only at zero).
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (auto* arr : {&vertical, &slash}) {
      for (float& x : *arr) x = u(rng) < 0.1f ? 0.0f : u(rng);
    }
    CompareSelection(s, vertical, slash, what + " continuous");
    // Mass on the last 8000 scores only (as on recent keys and near diagonals): the last slice of
    // a long row has more candidates than its shared list holds, the chunks before them none.
    for (auto* arr : {&vertical, &slash}) {
      for (int64_t h = 0; h < s.heads; ++h) {
        for (int64_t j = 0; j < s.e; ++j) {
          (*arr)[h * s.e + j] = j + 8000 < s.e ? 0.0f : 0.5f + 0.5f * u(rng);
        }
      }
    }
    CompareSelection(s, vertical, slash, what + " concentrated");
  }
}

// The pieces of a run in one launch (their own scores, lists and e; the same budgets) give what
// one call per piece gives, and that equals the CPU selection.
TEST(VerticalSlashSelectGpuTest, PiecesInOneLaunchEqualOneCallEach) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const int64_t heads = 7, c = 128;
  // A run [200, 390) with DCA chunks of 128: pieces [200, 256) at P 128 and [256, 384) and
  // [384, 390) at P 256 and 384.
  const std::vector<SelectCase> pieces = {{heads, 200, 256, 128, c, 60, 140},
                                          {heads, 256, 384, 256, c, 60, 140},
                                          {heads, 384, 390, 384, c, 60, 140}};
  std::vector<int64_t> budgets;
  for (int64_t h = 0; h < heads; ++h) {
    budgets.push_back(std::max<int64_t>(1, 60 + 37 * h - 20 * (h % 3)));
    budgets.push_back(std::max<int64_t>(1, 140 + 23 * h - 30 * (h % 2)));
  }
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<std::unique_ptr<DeviceBuffer<float>>> scores;
  std::vector<std::unique_ptr<DeviceLists>> one, batched;
  std::vector<VerticalSlashSelectArgs> args_one, args_batched;
  std::vector<HostLists> want;
  const int64_t cap = 400;
  for (const SelectCase& x : pieces) {
    std::vector<float> v(heads * x.e), sl(heads * x.e);
    for (auto* arr : {&v, &sl}) {
      for (float& y : *arr) y = u(rng) < 0.2f ? 0.25f : u(rng);  // ties at 0.25
    }
    cpu::VerticalSlashPiece piece{x.b, x.e, x.p, x.c};
    HostLists cpu_lists[3];
    cpu::VerticalSlashLists views[3];
    VerticalSlashSelectArgs a;
    for (int part = 0; part < 3; ++part) {
      one.push_back(std::make_unique<DeviceLists>(heads, cap));
      batched.push_back(std::make_unique<DeviceLists>(heads, cap));
      cpu_lists[part] = HostLists(heads, cap);
      views[part] = cpu_lists[part].Lists();
      a.parts[part] = cpu::VerticalSlashPartKeyRange(piece, part).present
                          ? one.back()->Dev()
                          : VerticalSlashListsDev{};
      want.push_back(cpu_lists[part]);
    }
    cpu::SelectVerticalSlash(v.data(), sl.data(), heads, piece, budgets.data(), views);
    for (int part = 0; part < 3; ++part) want[want.size() - 3 + part] = cpu_lists[part];
    scores.push_back(std::make_unique<DeviceBuffer<float>>(v.size()));
    ASSERT_EQ(scores.back()->Upload(v), cudaSuccess);
    a.vertical = scores.back()->get();
    scores.push_back(std::make_unique<DeviceBuffer<float>>(sl.size()));
    ASSERT_EQ(scores.back()->Upload(sl), cudaSuccess);
    a.slash = scores.back()->get();
    a.q_heads = heads;
    a.piece_begin = x.b;
    a.piece_end = x.e;
    a.chunk_begin = x.p;
    a.chunk_len = x.c;
    a.budgets = budgets.data();
    args_one.push_back(a);
    for (int part = 0; part < 3; ++part) {
      if (a.parts[part].vertical != nullptr) {
        a.parts[part] = batched[batched.size() - 3 + part]->Dev();
      }
    }
    args_batched.push_back(a);
  }
  for (const VerticalSlashSelectArgs& a : args_one) MP_CUDA_ASSERT(VerticalSlashSelect(a, nullptr));
  MP_CUDA_ASSERT(VerticalSlashSelect(args_batched.data(), int(args_batched.size()), nullptr));
  MP_CUDA_ASSERT(cudaDeviceSynchronize());
  for (size_t i = 0; i < pieces.size(); ++i) {
    for (int part = 0; part < 3; ++part) {
      if (args_one[i].parts[part].vertical == nullptr) continue;
      const std::string what = "piece " + std::to_string(i) + " part " + std::to_string(part);
      const HostLists got_one = testing::DownloadLists(args_one[i].parts[part], heads);
      const HostLists got = testing::DownloadLists(args_batched[i].parts[part], heads);
      testing::ExpectSameLists(got, got_one, what + " (one launch vs one call each)");
      testing::ExpectSameLists(got, want[3 * i + part], what + " (vs the CPU)");
    }
  }
  // More pieces than a launch takes, unequal budgets: rejected.
  std::vector<VerticalSlashSelectArgs> many(kVerticalSlashSelectMaxPieces + 1, args_one[0]);
  EXPECT_EQ(VerticalSlashSelect(many.data(), int(many.size()), nullptr), cudaErrorInvalidValue);
  std::vector<int64_t> other = budgets;
  other[3] += 1;
  VerticalSlashSelectArgs changed = args_batched[1];
  changed.budgets = other.data();
  const VerticalSlashSelectArgs mixed[2] = {args_batched[0], changed};
  EXPECT_EQ(VerticalSlashSelect(mixed, 2, nullptr), cudaErrorInvalidValue);
}

// With every query zero, all logits are 0: every column seen by all rows has the same column
// sum, every complete diagonal the same diagonal sum, on the CPU and on the GPU alike. The top-k
// then hinges on the lower-index tie rule, and both selections must be equal.
TEST(VerticalSlashEstimateGpuTest, ZeroQueriesGiveExactTiesAndEqualSelections) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  struct Case {
    ScoreCase sc;
    SelectCase sel;
  };
  const std::vector<Case> cases = {
      {{64, 900, 0, 0, 28, 4, 128, 64}, {28, 700, 900, 0, 0, 100, 300}},
      {{50, 1300, 1024, 512, 9, 3, 64, 16}, {9, 1100, 1300, 1024, 512, 80, 200}},
      {{64, 3200, 2048, 1024, 4, 2, 128, 64}, {4, 3000, 3200, 2048, 1024, 500, 900}},
  };
  uint64_t seed = 300;
  for (const Case& c : cases) {
    SCOPED_TRACE(Describe(c.sc));
    const TestCache cache(c.sc.e, c.sc.kv_heads, c.sc.head_dim, c.sc.block_size, ++seed);
    const std::vector<__nv_bfloat16> q(3 * c.sc.n * c.sc.q_heads * c.sc.head_dim,
                                       __float2bfloat16(0.0f));
    std::vector<float> gv, gs, cv, cs;
    ScoresBothWays(c.sc, cache, q, 0.125f, &gv, &cv, &cs, &gs);
    // The tie structure itself: the interior columns / diagonals are bitwise equal.
    const int64_t e = c.sc.e, n = c.sc.n;
    for (int64_t h = 0; h < c.sc.q_heads; ++h) {
      for (int64_t j = 1; j <= e - n; ++j) {
        ASSERT_EQ(gv[h * e + j], gv[h * e]) << "GPU column " << j << " head " << h;
        ASSERT_EQ(cv[h * e + j], cv[h * e]) << "CPU column " << j << " head " << h;
      }
      for (int64_t t = n; t < e; ++t) {
        ASSERT_EQ(gs[h * e + t], gs[h * e + n - 1]) << "GPU diagonal " << t << " head " << h;
        ASSERT_EQ(cs[h * e + t], cs[h * e + n - 1]) << "CPU diagonal " << t << " head " << h;
      }
    }
    // Selections from each side's own scores are equal (GPU select of the GPU scores, CPU select
    // of the CPU scores).
    std::vector<int64_t> budgets;
    for (int64_t h = 0; h < c.sel.heads; ++h) {
      budgets.push_back(c.sel.vertical + 11 * h);
      budgets.push_back(c.sel.slash + 13 * h);
    }
    int64_t mb = 0;
    for (int64_t x : budgets) mb = std::max(mb, x);
    const int64_t cap = std::max<int64_t>(std::min(cpu::VerticalSlashListCapacity(mb), e), 9);
    cpu::VerticalSlashPiece piece{c.sel.b, c.sel.e, c.sel.p, c.sel.c};
    HostLists want[3];
    cpu::VerticalSlashLists views[3];
    std::vector<std::unique_ptr<DeviceLists>> dev;
    VerticalSlashSelectArgs a;
    for (int part = 0; part < 3; ++part) {
      dev.push_back(std::make_unique<DeviceLists>(c.sel.heads, cap));
      if (!cpu::VerticalSlashPartKeyRange(piece, part).present) continue;
      want[part] = HostLists(c.sel.heads, cap);
      views[part] = want[part].Lists();
      a.parts[part] = dev[part]->Dev();
    }
    cpu::SelectVerticalSlash(cv.data(), cs.data(), c.sel.heads, piece, budgets.data(), views);
    DeviceBuffer<float> dv(gv.size()), ds(gs.size());
    ASSERT_EQ(dv.Upload(gv), cudaSuccess);
    ASSERT_EQ(ds.Upload(gs), cudaSuccess);
    a.vertical = dv.get();
    a.slash = ds.get();
    a.q_heads = c.sel.heads;
    a.piece_begin = c.sel.b;
    a.piece_end = c.sel.e;
    a.chunk_begin = c.sel.p;
    a.chunk_len = c.sel.c;
    a.budgets = budgets.data();
    MP_CUDA_ASSERT(VerticalSlashSelect(a, nullptr));
    MP_CUDA_ASSERT(cudaDeviceSynchronize());
    for (int part = 0; part < 3; ++part) {
      if (!cpu::VerticalSlashPartKeyRange(piece, part).present) continue;
      testing::ExpectSameLists(testing::DownloadLists(a.parts[part], c.sel.heads), want[part],
                               Describe(c.sc) + " part " + std::to_string(part));
    }
  }
}

struct IndexCase {
  int64_t heads, q_len, kv_len;
  bool causal;
  int64_t n_vertical, n_slash, slash_range, cap_blocks;  // cap_blocks 0: the full capacity
};

// One index case on the device: random sorted lists, the CPU builder's index, the arguments.
struct PreparedIndex {
  std::string what;
  int64_t row_blocks = 0;
  HostIndex want;
  DeviceLists lists;
  DeviceIndex index;
  VerticalSlashIndexArgs args;
};

PreparedIndex PrepareIndex(const IndexCase& c, std::mt19937_64& rng) {
  const std::string what = "heads " + std::to_string(c.heads) + " q_len " +
                           std::to_string(c.q_len) + " kv_len " + std::to_string(c.kv_len) +
                           (c.causal ? " causal" : " non-causal");
  const int64_t cap = std::max(c.n_vertical, c.n_slash) + 5;
  HostLists lists(c.heads, cap);
  for (int64_t h = 0; h < c.heads; ++h) {
    std::set<int32_t> vs, ss;
    const int64_t nv = std::min(std::max<int64_t>(0, c.n_vertical - h), c.kv_len);
    while (int64_t(vs.size()) < nv) vs.insert(int32_t(rng() % c.kv_len));
    const int64_t ns = std::min(c.n_slash, c.slash_range);
    while (int64_t(ss.size()) < ns) ss.insert(int32_t(rng() % c.slash_range));
    std::vector<int32_t> v(vs.begin(), vs.end());
    if (h == 1 && v.size() > 3) {  // a duplicate and a negative entry (skipped by both)
      v[1] = v[0];
      v.insert(v.begin(), -5);
      v.resize(std::min<size_t>(v.size(), cap));
    }
    std::fill(lists.vertical.begin() + h * cap, lists.vertical.begin() + (h + 1) * cap,
              INT32_MAX);
    std::fill(lists.slash.begin() + h * cap, lists.slash.begin() + (h + 1) * cap, INT32_MIN);
    std::copy(v.begin(), v.end(), lists.vertical.begin() + h * cap);
    std::copy(ss.rbegin(), ss.rend(), lists.slash.begin() + h * cap);
    lists.vertical_count[h] = int32_t(v.size());
    lists.slash_count[h] = int32_t(ss.size());
  }
  const int64_t rb = cpu::VerticalSlashRowBlocks(c.q_len);
  const int64_t mb =
      c.cap_blocks > 0 ? c.cap_blocks : cpu::VerticalSlashBlockCapacity(cap, c.kv_len);
  const int64_t mc = c.cap_blocks > 0 ? 7 : cap;  // small capacities truncate on both sides
  HostIndex want(c.heads, rb, mb, mc);
  cpu::BuildVerticalSlashIndex(lists.View(), {c.heads, c.q_len, c.kv_len, c.causal},
                               want.Index());
  DeviceLists dl(c.heads, cap);
  dl.Upload(lists);
  DeviceIndex di(HostIndex(c.heads, rb, mb, mc));
  PreparedIndex out{what, rb, std::move(want), std::move(dl), std::move(di), {}};
  out.args.lists = out.lists.Dev();
  out.args.q_heads = c.heads;
  out.args.q_len = c.q_len;
  out.args.kv_len = c.kv_len;
  out.args.causal = c.causal;
  out.args.index = out.index.Dev();
  return out;
}

TEST(VerticalSlashIndexGpuTest, EqualsTheCpuBuilder) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const std::vector<IndexCase> cases = {
      {3, 64, 64, true, 10, 5, 64, 0},
      {28, 100, 300, true, 40, 30, 300, 0},
      {4, 1, 1000, true, 50, 20, 1000, 0},
      {9, 130, 130, true, 20, 100, 130, 0},
      {5, 200, 517, true, 100, 150, 517, 0},
      {6, 77, 1000, false, 60, 40, 1077, 0},
      {2, 190, 333, false, 80, 200, 523, 0},
      {7, 129, 2000, true, 300, 25, 2000, 3},
      {3, 300, 301, true, 0, 100, 301, 0},
      {28, 2000, 40000, true, 3000, 4500, 40000, 0},
      {4, 700, 60000, false, 2500, 2100, 60700, 0},
      // Slashes ~100 apart: many gaps of 1-63 keys between neighbouring intervals, whose
      // merge depends on where the open range started.
      {5, 1000, 30000, true, 500, 300, 30000, 0},
      {3, 500, 20000, false, 300, 200, 20500, 0},
      {4, 300, 20000, true, 200, 400, 20000, 40},  // truncation after several steps of 32
  };
  std::mt19937_64 rng(11);
  for (const IndexCase& c : cases) {
    PreparedIndex x = PrepareIndex(c, rng);
    SCOPED_TRACE(x.what);
    MP_CUDA_ASSERT(BuildVerticalSlashIndex(x.args, nullptr));
    MP_CUDA_ASSERT(cudaDeviceSynchronize());
    testing::ExpectSameIndex(testing::DownloadIndex(x.args.index, c.heads, x.row_blocks), x.want,
                             x.what);
  }
}

// Parts of pieces in one launch (different row counts, key counts and causality, one part
// with truncating capacities) give each part's single-call result.
TEST(VerticalSlashIndexGpuTest, PartsInOneLaunchEqualTheCpuBuilder) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const std::vector<IndexCase> cases = {
      {4, 700, 60000, false, 2500, 2100, 60700, 0},
      {4, 4100, 9000, true, 900, 1500, 9000, 0},
      {4, 129, 2000, true, 300, 25, 2000, 3},
      {4, 300, 5000, false, 400, 300, 5300, 0},  // a second piece's parts
      {4, 64, 64, true, 10, 5, 64, 0},
  };
  std::mt19937_64 rng(12);
  std::vector<PreparedIndex> parts;
  std::vector<VerticalSlashIndexArgs> args;
  for (const IndexCase& c : cases) {
    parts.push_back(PrepareIndex(c, rng));
    args.push_back(parts.back().args);
  }
  MP_CUDA_ASSERT(BuildVerticalSlashIndex(args.data(), int(args.size()), nullptr));
  MP_CUDA_ASSERT(cudaDeviceSynchronize());
  for (size_t i = 0; i < parts.size(); ++i) {
    testing::ExpectSameIndex(
        testing::DownloadIndex(parts[i].args.index, cases[i].heads, parts[i].row_blocks),
        parts[i].want, parts[i].what);
  }
  // More parts than one launch takes, or unequal head counts: rejected.
  std::vector<VerticalSlashIndexArgs> many(kVerticalSlashIndexMaxParts + 1, args[0]);
  EXPECT_EQ(BuildVerticalSlashIndex(many.data(), int(many.size()), nullptr),
            cudaErrorInvalidValue);
  VerticalSlashIndexArgs other = args[1];
  other.q_heads = 3;
  const VerticalSlashIndexArgs mixed[2] = {args[0], other};
  EXPECT_EQ(BuildVerticalSlashIndex(mixed, 2, nullptr), cudaErrorInvalidValue);
}

// The per-head layout (each head's row blocks sized by its own top-k sizes, heads packed in
// order) gives the CPU builder's index; the span table is that packing.
TEST(VerticalSlashIndexGpuTest, PerHeadLayoutEqualsTheCpuBuilder) {
  ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
  const std::vector<IndexCase> cases = {
      {28, 100, 300, true, 40, 30, 300, 0},
      {5, 200, 517, true, 100, 150, 517, 0},
      {2, 190, 333, false, 80, 200, 523, 0},
      {3, 300, 301, true, 0, 100, 301, 0},
      {28, 2000, 40000, true, 3000, 4500, 40000, 0},
      {4, 700, 60000, false, 2500, 2100, 60700, 0},
  };
  std::mt19937_64 rng(13);
  for (const IndexCase& c : cases) {
    PreparedIndex x = PrepareIndex(c, rng);
    SCOPED_TRACE(x.what);
    // Top-k sizes per head: at least what PrepareIndex put in its lists (n_vertical - h
    // verticals, one more with the duplicate-and-negative head, min(n_slash, slash_range)
    // slashes), some heads with room to spare.
    std::vector<int64_t> k(2 * c.heads);
    for (int64_t h = 0; h < c.heads; ++h) {
      k[2 * h] = std::max<int64_t>(0, c.n_vertical - h) + 1 + (h % 3) * 17;
      k[2 * h + 1] = std::min(c.n_slash, c.slash_range) + (h % 2) * 40;
    }
    const VerticalSlashSpanEntries n =
        VerticalSlashHeadSpanEntries(k.data(), c.heads, x.row_blocks, c.kv_len);
    DeviceBuffer<VerticalSlashHeadSpan> spans(c.heads);
    DeviceBuffer<int32_t> blocks(std::max<int64_t>(1, n.blocks)),
        columns(std::max<int64_t>(1, n.columns));
    VerticalSlashHeadSpanArgs sa;
    sa.k = k.data();
    sa.q_heads = c.heads;
    sa.row_blocks = x.row_blocks;
    sa.num_parts = 1;
    sa.kv_len[0] = c.kv_len;
    sa.spans[0] = spans.get();
    MP_CUDA_ASSERT(WriteVerticalSlashHeadSpans(sa, nullptr));
    VerticalSlashIndexArgs a = x.args;
    a.index.block_offset = blocks.get();
    a.index.column_index = columns.get();
    a.index.heads = spans.get();
    a.index.max_blocks = a.index.max_columns = 0;  // the download's uniform layout: the largest
    for (int64_t h = 0; h < c.heads; ++h) {
      a.index.max_blocks = std::max(a.index.max_blocks,
                                    VerticalSlashHeadMaxBlocks(k[2 * h + 1], c.kv_len));
      a.index.max_columns = std::max(a.index.max_columns,
                                     VerticalSlashHeadMaxColumns(k[2 * h], c.kv_len));
    }
    MP_CUDA_ASSERT(BuildVerticalSlashIndex(a, nullptr));
    MP_CUDA_ASSERT(cudaDeviceSynchronize());

    std::vector<VerticalSlashHeadSpan> got(c.heads);
    ASSERT_EQ(cudaMemcpy(got.data(), spans.get(), got.size() * sizeof(got[0]), cudaMemcpyDefault),
              cudaSuccess);
    int64_t block_base = 0, column_base = 0;
    for (int64_t h = 0; h < c.heads; ++h) {
      const int64_t mb = std::min((c.kv_len + 63) / 64, std::max<int64_t>(k[2 * h + 1], 9));
      const int64_t mc = std::min(c.kv_len, std::max<int64_t>(k[2 * h], 9));
      EXPECT_EQ(got[h].block_base, block_base) << "head " << h;
      EXPECT_EQ(got[h].column_base, column_base) << "head " << h;
      EXPECT_EQ(got[h].max_blocks, mb) << "head " << h;
      EXPECT_EQ(got[h].max_columns, mc) << "head " << h;
      block_base += mb * x.row_blocks;
      column_base += mc * x.row_blocks;
    }
    EXPECT_EQ(block_base, n.blocks);
    EXPECT_EQ(column_base, n.columns);
    testing::ExpectSameIndex(testing::DownloadIndex(a.index, c.heads, x.row_blocks), x.want,
                             x.what + " (per-head layout)");
  }
  VerticalSlashHeadSpanArgs bad;
  EXPECT_EQ(WriteVerticalSlashHeadSpans(bad, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace mp::cuda
