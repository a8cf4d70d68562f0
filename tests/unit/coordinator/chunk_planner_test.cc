// The chunk planner on synthetic cost models (qwen1m-spec.md §5.3): fed the step times of a
// known t(h, c) online — with a few steps in flight, so observations lag the plan, and with
// noise — dynamic mode gives chunks that all take about the target time T* = t(0, max_chunk),
// while fixed chunks grow slower with position; a pipeline simulation shows the effect on
// efficiency T1 / (P * T_P).
#include "coordinator/chunk_planner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <random>
#include <vector>

#include "coordinator/cost_model.h"

namespace mp {
namespace {

struct TrueCost {
  double a, b, t0;
  int64_t sparse_budget = 0;
  double operator()(int64_t h, int64_t c) const {
    return a * CostModel::AttentionWork(h, c, sparse_budget) + b * static_cast<double>(c) + t0;
  }
};

struct Plan {
  std::vector<std::pair<int64_t, int64_t>> chunks;  // (history, size)
};

// Vertical-slash sparse attention as measured with Qwen's 7B budgets (docs/distributed.md): each
// isolated slash costs a 64-key block per row block, so a query attends
// min(h + c/2, 37K + 0.11 (h + c/2)) keys rather than the nominal ~11.6K of its budgets.
struct MeasuredSparseCost {
  double a, b, t0;
  double operator()(int64_t h, int64_t c) const {
    const double x = static_cast<double>(h) + static_cast<double>(c) / 2;
    return a * static_cast<double>(c) * std::min(x, 37000 + 0.11 * x) +
           b * static_cast<double>(c) + t0;
  }
};

// Plans a prompt of `total` tokens; chunk k's time is observed only after chunk k + lag is
// planned (steps in flight), multiplied by (1 + noise * N(0, 1)).
template <class Cost>
Plan Simulate(ChunkPlanner& planner, const Cost& cost, int64_t total, int lag, double noise,
              uint64_t seed) {
  Plan plan;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::deque<std::pair<int64_t, int64_t>> in_flight;
  int64_t h = 0;
  while (h < total) {
    const int64_t c = planner.NextChunk(h, total - h);
    plan.chunks.emplace_back(h, c);
    in_flight.emplace_back(h, c);
    h += c;
    if (static_cast<int>(in_flight.size()) > lag) {
      const auto [oh, oc] = in_flight.front();
      in_flight.pop_front();
      planner.Observe(oh, oc, cost(oh, oc) * (1 + noise * normal(rng)));
    }
  }
  return plan;
}

ChunkPlannerOptions Options(ChunkMode mode) {
  ChunkPlannerOptions o;
  o.mode = mode;
  o.max_chunk = 32768;
  o.min_chunk = 1024;
  o.align = 64;
  o.cost.scale_tokens = 32768;
  return o;
}

// A 1M-token prompt whose attention dominates (≈90% of the work at 1M tokens).
const TrueCost kDense = {2e-10, 5e-5, 0.01};

TEST(ChunkPlannerTest, DynamicChunksTakeEqualTimeOnADenseCostModel) {
  ChunkPlanner planner(Options(ChunkMode::kDynamic));
  const int64_t total = 1 << 20;
  Plan plan = Simulate(planner, kDense, total, /*lag=*/3, /*noise=*/0.0, 1);
  const double target = kDense(0, 32768);
  int64_t covered = 0, checked = 0;
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const auto [h, c] = plan.chunks[i];
    EXPECT_EQ(h, covered);
    covered += c;
    EXPECT_EQ(c % 64 == 0 || i + 1 == plan.chunks.size(), true) << "chunk " << i << ": " << c;
    EXPECT_GE(c, i + 1 == plan.chunks.size() ? 1 : 1024);
    EXPECT_LE(c, 32768);
    // Cold start: until two observations are back (three steps in flight) chunks run at
    // max_chunk, and the next few are a little short while the fit separates the terms (they
    // all had the same size so far). From then on every chunk is within 1% of T*. The last
    // chunk is what is left.
    if (std::getenv("MP_PLANNER_TRACE")) {
      std::printf("chunk %zu at %lld: %lld tokens, %.4f x T*\n", i, static_cast<long long>(h),
                  static_cast<long long>(c), kDense(h, c) / target);
    }
    if (i + 1 == plan.chunks.size()) continue;
    const double t = kDense(h, c);
    if (i >= 5) EXPECT_NEAR(t / target, 1.0, 0.05) << "chunk " << i << " at " << h << " of " << c;
    if (i < 9) continue;
    EXPECT_NEAR(t / target, 1.0, 0.01) << "chunk " << i << " at " << h << " of " << c;
    // Aligned to 64: one more alignment step would exceed the target.
    EXPECT_GT(kDense(h, c + 64), target * 0.999) << "chunk " << i;
    ++checked;
  }
  EXPECT_EQ(covered, total);
  EXPECT_GT(checked, 40);
  // Chunks shrink as the history grows.
  EXPECT_LT(plan.chunks[plan.chunks.size() - 2].second, plan.chunks[5].second / 2);
  EXPECT_NEAR(planner.TargetSeconds() / target, 1.0, 0.02);
  EXPECT_NEAR(planner.model().a() / kDense.a, 1.0, 0.05);
}

TEST(ChunkPlannerTest, EqualTimeChunksWithNoisyTimings) {
  ChunkPlanner planner(Options(ChunkMode::kDynamic));
  Plan plan = Simulate(planner, kDense, 1 << 20, /*lag=*/4, /*noise=*/0.03, 7);
  const double target = kDense(0, 32768);
  std::vector<double> ratios;
  for (size_t i = 10; i + 1 < plan.chunks.size(); ++i) {
    ratios.push_back(kDense(plan.chunks[i].first, plan.chunks[i].second) / target);
  }
  ASSERT_FALSE(ratios.empty());
  const double worst = *std::max_element(ratios.begin(), ratios.end());
  const double best = *std::min_element(ratios.begin(), ratios.end());
  EXPECT_LT(worst, 1.10);
  EXPECT_GT(best, 0.90);
}

TEST(ChunkPlannerTest, FixedChunksGrowSlowerAndLoseEfficiency) {
  ChunkPlanner fixed(Options(ChunkMode::kFixed));
  ChunkPlanner dynamic(Options(ChunkMode::kDynamic));
  const int64_t total = 1 << 20;
  Plan f = Simulate(fixed, kDense, total, 3, 0.0, 1);
  Plan d = Simulate(dynamic, kDense, total, 3, 0.0, 1);
  for (const auto& [h, c] : f.chunks) EXPECT_EQ(c, 32768);
  EXPECT_GT(kDense(f.chunks.back().first, 32768) / kDense(0, 32768), 4.0);

  // A P-stage pipeline where each stage takes t/P of a chunk, chunks in order: stage j starts
  // chunk k when it finished chunk k-1 and stage j-1 finished chunk k.
  auto efficiency = [&](const Plan& plan, int stages) {
    std::vector<double> done(stages, 0.0);
    double serial = 0;
    for (const auto& [h, c] : plan.chunks) {
      const double t = kDense(h, c);
      serial += t;
      double ready = 0;
      for (int j = 0; j < stages; ++j) {
        done[j] = std::max(done[j], ready) + t / stages;
        ready = done[j];
      }
    }
    return serial / (stages * done.back());  // T1 / (P * T_P); T1 = serial
  };
  const double eff_fixed = efficiency(f, 2), eff_dynamic = efficiency(d, 2);
  EXPECT_GT(eff_dynamic, 0.95);
  EXPECT_GT(eff_dynamic, eff_fixed);
}

TEST(ChunkPlannerTest, SparseAttentionKeepsChunksLarger) {
  ChunkPlannerOptions o = Options(ChunkMode::kDynamic);
  o.cost.sparse_budget_tokens = 8192;
  ChunkPlanner planner(o);
  TrueCost sparse = kDense;
  sparse.sparse_budget = 8192;
  Plan plan = Simulate(planner, sparse, 1 << 20, 3, 0.0, 3);
  const double target = sparse(0, 32768);
  for (size_t i = 9; i + 1 < plan.chunks.size(); ++i) {
    EXPECT_NEAR(sparse(plan.chunks[i].first, plan.chunks[i].second) / target, 1.0, 0.02) << i;
  }
  // Per-query work is capped, so chunk sizes level off instead of shrinking forever.
  EXPECT_GT(plan.chunks[plan.chunks.size() - 2].second, 16000);
}

// The dense shape of the model fits the measured vertical-slash cost once the first chunks (where
// min() still picks h + c/2) have faded from the fit: the constant part lands in the linear
// term, and chunks shrink to equal times. The budget shape with the nominal keys per query
// predicts no growth with the history, keeps every chunk at max_chunk and lets step times grow.
TEST(ChunkPlannerTest, VerticalSlashCostFitsTheDenseShape) {
  const MeasuredSparseCost cost = {2e-10, 5e-5, 0.01};
  // Step times of chunks 9 .. last - 1 (the last chunk is what is left).
  auto chunk_times = [&](int64_t budget) {
    ChunkPlannerOptions o = Options(ChunkMode::kDynamic);
    o.cost.sparse_budget_tokens = budget;
    ChunkPlanner planner(o);
    const Plan plan = Simulate(planner, cost, 1 << 20, 3, 0.0, 4);
    std::vector<double> t;
    for (size_t i = 9; i + 1 < plan.chunks.size(); ++i) {
      const auto [h, c] = plan.chunks[i];
      t.push_back(cost(h, c));
      if (std::getenv("MP_PLANNER_TRACE")) {
        std::printf("budget %lld chunk %zu at %lld: %lld tokens, %.4f s\n",
                    static_cast<long long>(budget), i, static_cast<long long>(h),
                    static_cast<long long>(c), t.back());
      }
    }
    EXPECT_GT(t.size(), 20u);
    return t;
  };
  // max / min over t[from ..].
  auto spread = [](const std::vector<double>& t, size_t from) {
    const auto [lo, hi] = std::minmax_element(t.begin() + from, t.end());
    return *hi / *lo;
  };
  const std::vector<double> dense_shape = chunk_times(0);
  EXPECT_LT(spread(dense_shape, 0), 1.10);
  EXPECT_LT(spread(dense_shape, 11), 1.02);  // chunks 20 on
  EXPECT_GT(spread(chunk_times(11600), 0), 1.20);
}

TEST(ChunkPlannerTest, ColdStartAndBounds) {
  ChunkPlannerOptions o = Options(ChunkMode::kDynamic);
  ChunkPlanner planner(o);
  EXPECT_EQ(planner.NextChunk(0, 100000), 32768);       // no samples yet
  EXPECT_EQ(planner.NextChunk(500000, 100000), 32768);  // still none
  EXPECT_EQ(planner.NextChunk(0, 100), 100);            // never beyond what is left
  EXPECT_EQ(planner.NextChunk(0, 0), 0);
  // A cost so steep that even min_chunk exceeds the target: min_chunk.
  TrueCost steep = {1e-6, 1e-6, 0};
  planner.Observe(0, 32768, steep(0, 32768));
  planner.Observe(32768, 32768, steep(32768, 32768));
  planner.Observe(65536, 16384, steep(65536, 16384));
  EXPECT_EQ(planner.NextChunk(10000000, 1000000), 1024);
}

TEST(ChunkPlannerTest, OptionValidation) {
  ChunkPlannerOptions o;
  o.max_chunk = 0;
  EXPECT_FALSE(ValidateChunkPlannerOptions(o).ok());
  o = ChunkPlannerOptions();
  o.min_chunk = o.max_chunk + 1;
  EXPECT_FALSE(ValidateChunkPlannerOptions(o).ok());
  o.mode = ChunkMode::kFixed;  // min_chunk does not matter for fixed chunks
  EXPECT_TRUE(ValidateChunkPlannerOptions(o).ok());
  o.align = 0;
  EXPECT_FALSE(ValidateChunkPlannerOptions(o).ok());
}

TEST(CostModelTest, RecoversTheTermsFromExactSamples) {
  CostModelOptions o;
  o.scale_tokens = 8192;
  o.forgetting = 1.0;
  CostModel model(o);
  const TrueCost truth = {3e-10, 2e-5, 0.05};
  std::mt19937_64 rng(5);
  for (int i = 0; i < 60; ++i) {
    const int64_t h = static_cast<int64_t>(rng() % 500000);
    const int64_t c = 512 + static_cast<int64_t>(rng() % 16000);
    model.Observe(h, c, truth(h, c));
  }
  EXPECT_NEAR(model.a() / truth.a, 1.0, 0.01);
  EXPECT_NEAR(model.b() / truth.b, 1.0, 0.01);
  EXPECT_NEAR(model.t0() / truth.t0, 1.0, 0.02);
  EXPECT_NEAR(model.Predict(800000, 4096) / truth(800000, 4096), 1.0, 0.01);
}

TEST(CostModelTest, TermsStayNonNegativeAndOlderSamplesFade) {
  CostModelOptions o;
  o.forgetting = 0.9;
  CostModel model(o);
  // Purely linear times: the attention term must not go negative to fit noise.
  std::mt19937_64 rng(9);
  std::normal_distribution<double> normal;
  for (int i = 0; i < 40; ++i) {
    const int64_t h = i * 4096, c = 4096;
    model.Observe(h, c, 1e-4 * c * (1 + 0.05 * normal(rng)));
  }
  EXPECT_GE(model.a(), 0);
  EXPECT_GE(model.b(), 0);
  EXPECT_GE(model.t0(), 0);
  // The same steps get twice as fast: with forgetting the model follows within a few dozen.
  for (int i = 0; i < 60; ++i) model.Observe((i % 40) * 4096, 4096, 0.5e-4 * 4096);
  EXPECT_NEAR(model.Predict(100000, 4096) / (0.5e-4 * 4096), 1.0, 0.02);
  // Garbage in is ignored.
  const int64_t before = model.samples();
  model.Observe(0, 0, 1.0);
  model.Observe(0, 10, std::nan(""));
  model.Observe(0, 10, -1);
  EXPECT_EQ(model.samples(), before);
}

}  // namespace
}  // namespace mp
