// Sparsity refinement and initial search against a synthetic recall model: recall of head h of
// layer l with budgets (v, s) is 1 - exp(-(v' + s) / tau[l][h]) (v' = the effective vertical
// size), increasing in both budgets, so the expected result is computable in closed form.
#include "model/sparse_refinement.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tests/unit/model/test_util.h"

namespace mp {
namespace {

double Model(double tau, const SparseHeadConfig& c) {
  return 1.0 - std::exp(-static_cast<double>(c.effective_vertical_size() + c.slash_size) / tau);
}

struct Synthetic {
  std::vector<std::vector<double>> tau;  // [layer][head]
  int64_t calls = 0;
  LayerRecallFn Fn() {
    return [this](int64_t layer, const std::vector<SparseHeadConfig>& heads)
               -> absl::StatusOr<std::vector<HeadRecall>> {
      ++calls;
      std::vector<HeadRecall> out;
      for (size_t h = 0; h < heads.size(); ++h) {
        const double r = Model(tau[layer][h], heads[h]);
        out.push_back({r, r * r});  // p05 below the mean
      }
      return out;
    };
  }
};

// The same closed-form model as one measurement of all layers and budget sets.
struct SyntheticModel {
  std::vector<std::vector<double>> tau;  // [layer][head]
  int64_t calls = 0;
  int64_t evaluations = 0;  // sparse evaluations: sets summed over layers and calls
  ModelRecallFn Fn() {
    return [this](const BudgetSets& sets) -> absl::StatusOr<ModelRecall> {
      ++calls;
      ModelRecall out(sets.size());
      for (size_t l = 0; l < sets.size(); ++l) {
        for (const std::vector<SparseHeadConfig>& set : sets[l]) {
          ++evaluations;
          std::vector<HeadRecall> heads;
          for (size_t h = 0; h < set.size(); ++h) {
            const double r = Model(tau[l][h], set[h]);
            heads.push_back({r, r * r});
          }
          out[l].push_back(std::move(heads));
        }
      }
      return out;
    };
  }
};

SparseAttentionConfig Uniform(int64_t layers, int64_t heads, int64_t v, int64_t s) {
  SparseAttentionConfig c;
  c.layers.assign(layers, std::vector<SparseHeadConfig>(heads, {v, s, 0.0}));
  return c;
}

TEST(SparseRefinementTest, RaisesEachHeadByTheFewestStepsThatReachTheTarget) {
  Synthetic m;
  m.tau = {{1000, 5000, 20000, 200000}, {300, 8000, 25000, 1e7}};
  RefinementOptions o;
  o.target_recall = 0.95;
  o.max_vertical = 40000;
  o.max_slash = 45000;
  const SparseAttentionConfig initial = Uniform(2, 4, 1000, 6096);
  MP_ASSERT_OK_AND_ASSIGN(RefinementResult r, RefineSparseAttentionConfig(initial, m.Fn(), o));
  ASSERT_EQ(r.layers.size(), 2u);
  for (int64_t l = 0; l < 2; ++l) {
    int64_t raised = 0, below = 0;
    double before = 0.0, after = 0.0;
    for (int64_t h = 0; h < 4; ++h) {
      // Closed form: the smallest k with recall(1000 + 2048k, 6096 + 2048k) >= 0.95, capped.
      SparseHeadConfig want{1000, 6096, 0.0};
      before += Model(m.tau[l][h], want);
      while (Model(m.tau[l][h], want) < 0.95 &&
             (want.vertical_size < 40000 || want.slash_size < 45000)) {
        want.vertical_size = std::min<int64_t>(want.vertical_size + 2048, 40000);
        want.slash_size = std::min<int64_t>(want.slash_size + 2048, 45000);
      }
      const SparseHeadConfig& got = r.config.layers[l][h];
      EXPECT_EQ(got.vertical_size, want.vertical_size) << l << "/" << h;
      EXPECT_EQ(got.slash_size, want.slash_size) << l << "/" << h;
      EXPECT_DOUBLE_EQ(got.score, Model(m.tau[l][h], want));
      raised += got.vertical_size != 1000;
      below += got.score < 0.95;
      after += got.score;
    }
    EXPECT_EQ(r.layers[l].heads_raised, raised);
    EXPECT_EQ(r.layers[l].heads_below_target, below);
    EXPECT_NEAR(r.layers[l].recall_before, before / 4, 1e-12);
    EXPECT_NEAR(r.layers[l].recall_after, after / 4, 1e-12);
    EXPECT_GE(r.layers[l].min_head_after, r.layers[l].min_head_before);
  }
  // Layer 1 head 3 (tau 1e7) cannot reach the target within the caps: it stops at them.
  EXPECT_EQ(r.config.layers[1][3].vertical_size, 40000);
  EXPECT_EQ(r.config.layers[1][3].slash_size, 45000);
  EXPECT_EQ(r.layers[1].heads_below_target, 1);
  // Heads already above the target (tau 300, 1000) keep their budgets.
  EXPECT_EQ(r.config.layers[1][0].vertical_size, 1000);
  // The result is a loadable file.
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig back,
                          ParseSparseAttentionConfig(SparseAttentionConfigToJson(r.config), 2, 4));
  EXPECT_EQ(back, r.config);
}

TEST(SparseRefinementTest, PercentileAggregateAndRoundLimit) {
  Synthetic m;
  m.tau = {{20000}};
  RefinementOptions o;
  o.aggregate = RecallAggregate::kP05;  // r^2 >= 0.95 needs more keys than r >= 0.95
  MP_ASSERT_OK_AND_ASSIGN(RefinementResult p05,
                          RefineSparseAttentionConfig(Uniform(1, 1, 1000, 6096), m.Fn(), o));
  o.aggregate = RecallAggregate::kMean;
  MP_ASSERT_OK_AND_ASSIGN(RefinementResult mean,
                          RefineSparseAttentionConfig(Uniform(1, 1, 1000, 6096), m.Fn(), o));
  EXPECT_GT(p05.config.layers[0][0].slash_size, mean.config.layers[0][0].slash_size);
  o.max_rounds = 2;
  m.calls = 0;
  MP_ASSERT_OK_AND_ASSIGN(RefinementResult two,
                          RefineSparseAttentionConfig(Uniform(1, 1, 1000, 6096), m.Fn(), o));
  EXPECT_EQ(two.config.layers[0][0].slash_size, 6096 + 2 * 2048);
  EXPECT_EQ(two.layers[0].rounds, 2);
  EXPECT_EQ(m.calls, 3);
}

TEST(SparseRefinementTest, ReportsBadOptionsAndMeasurementErrors) {
  Synthetic m;
  m.tau = {{1000}};
  const SparseAttentionConfig c = Uniform(1, 1, 100, 100);
  RefinementOptions o;
  o.target_recall = 1.5;
  EXPECT_STATUS(RefineSparseAttentionConfig(c, m.Fn(), o), absl::StatusCode::kInvalidArgument,
                "target recall", "1.5");
  o = {};
  o.step = 0;
  EXPECT_STATUS(RefineSparseAttentionConfig(c, m.Fn(), o), absl::StatusCode::kInvalidArgument,
                "step");
  o = {};
  EXPECT_STATUS(RefineSparseAttentionConfig(SparseAttentionConfig{}, m.Fn(), o),
                absl::StatusCode::kInvalidArgument, "empty");
  LayerRecallFn failing = [](int64_t, const std::vector<SparseHeadConfig>&)
      -> absl::StatusOr<std::vector<HeadRecall>> { return absl::UnavailableError("no GPU"); };
  EXPECT_STATUS(RefineSparseAttentionConfig(c, failing, o), absl::StatusCode::kUnavailable,
                "layer 0", "no GPU");
  LayerRecallFn short_result = [](int64_t, const std::vector<SparseHeadConfig>&)
      -> absl::StatusOr<std::vector<HeadRecall>> { return std::vector<HeadRecall>{}; };
  EXPECT_STATUS(RefineSparseAttentionConfig(c, short_result, o), absl::StatusCode::kInternal,
                "0 heads, expected 1");
}

// One pass per `steps_per_pass` steps over all layers gives exactly the per-layer refinement.
TEST(SparseRefinementTest, JointRefinementEqualsThePerLayerOne) {
  const std::vector<std::vector<double>> tau = {
      {1000, 5000, 20000, 200000}, {300, 8000, 25000, 1e7}, {2500, 2600, 40000, 7000}};
  for (const RecallAggregate aggregate : {RecallAggregate::kMean, RecallAggregate::kP05}) {
    for (const int64_t max_rounds : {int64_t{64}, int64_t{3}}) {
      for (const int64_t steps_per_pass : {int64_t{1}, int64_t{2}, int64_t{5}}) {
        SCOPED_TRACE(::testing::Message()
                     << "aggregate " << static_cast<int>(aggregate) << " max_rounds " << max_rounds
                     << " steps_per_pass " << steps_per_pass);
        RefinementOptions o;
        o.aggregate = aggregate;
        o.max_vertical = 40000;
        o.max_slash = 45000;
        o.max_rounds = max_rounds;
        o.steps_per_pass = steps_per_pass;
        const SparseAttentionConfig initial = Uniform(3, 4, 1000, 6096);
        Synthetic per_layer;
        per_layer.tau = tau;
        MP_ASSERT_OK_AND_ASSIGN(RefinementResult want,
                                RefineSparseAttentionConfig(initial, per_layer.Fn(), o));
        SyntheticModel joint;
        joint.tau = tau;
        MP_ASSERT_OK_AND_ASSIGN(RefinementResult got,
                                RefineSparseAttentionConfigJointly(initial, joint.Fn(), o));
        EXPECT_EQ(got.config, want.config);
        ASSERT_EQ(got.layers.size(), want.layers.size());
        int64_t most_rounds = 0;
        for (size_t l = 0; l < want.layers.size(); ++l) {
          EXPECT_DOUBLE_EQ(got.layers[l].recall_before, want.layers[l].recall_before);
          EXPECT_DOUBLE_EQ(got.layers[l].recall_after, want.layers[l].recall_after);
          EXPECT_DOUBLE_EQ(got.layers[l].min_head_before, want.layers[l].min_head_before);
          EXPECT_DOUBLE_EQ(got.layers[l].min_head_after, want.layers[l].min_head_after);
          EXPECT_EQ(got.layers[l].heads_raised, want.layers[l].heads_raised);
          EXPECT_EQ(got.layers[l].heads_below_target, want.layers[l].heads_below_target);
          // A pass covers steps_per_pass steps.
          EXPECT_EQ(got.layers[l].rounds,
                    (want.layers[l].rounds + steps_per_pass - 1) / steps_per_pass);
          most_rounds = std::max(most_rounds, want.layers[l].rounds);
        }
        // One measurement for the start, then one per pass for all layers together.
        EXPECT_EQ(joint.calls, 1 + (most_rounds + steps_per_pass - 1) / steps_per_pass);
      }
    }
  }
}

TEST(SparseRefinementTest, JointRefinementTakesTheInitialRecallAndChecksShapes) {
  SyntheticModel m;
  m.tau = {{1000, 30000}};
  RefinementOptions o;
  const SparseAttentionConfig initial = Uniform(1, 2, 1000, 6096);
  const std::vector<std::vector<HeadRecall>> known = {{{0.99, 0.98}, {0.5, 0.25}}};
  MP_ASSERT_OK_AND_ASSIGN(RefinementResult r,
                          RefineSparseAttentionConfigJointly(initial, m.Fn(), o, &known));
  EXPECT_DOUBLE_EQ(r.layers[0].recall_before, (0.99 + 0.5) / 2);
  EXPECT_EQ(r.config.layers[0][0], (SparseHeadConfig{1000, 6096, 0.99})) << "not measured again";
  EXPECT_GT(r.config.layers[0][1].slash_size, 6096);
  const std::vector<std::vector<HeadRecall>> wrong = {{{0.99, 0.98}}};
  EXPECT_STATUS(RefineSparseAttentionConfigJointly(initial, m.Fn(), o, &wrong),
                absl::StatusCode::kInvalidArgument, "1 heads, expected 2");
  ModelRecallFn short_result = [](const BudgetSets&) -> absl::StatusOr<ModelRecall> {
    return ModelRecall{{}};
  };
  EXPECT_STATUS(RefineSparseAttentionConfigJointly(initial, short_result, o),
                absl::StatusCode::kInternal, "0 budget sets, expected 1");
  ModelRecallFn failing = [](const BudgetSets&) -> absl::StatusOr<ModelRecall> {
    return absl::UnavailableError("no GPU");
  };
  EXPECT_STATUS(RefineSparseAttentionConfigJointly(initial, failing, o),
                absl::StatusCode::kUnavailable, "measuring recall", "no GPU");
  o.steps_per_pass = 0;
  EXPECT_STATUS(RefineSparseAttentionConfigJointly(initial, m.Fn(), o),
                absl::StatusCode::kInvalidArgument, "steps per pass");
}

TEST(SparseSearchTest, JointSearchEqualsThePerLayerOneInOneMeasurement) {
  const std::vector<std::vector<double>> tau = {{100, 290, 303, 350, 1000, 2000, 1e6},
                                                {5000, 120, 700, 280, 310, 1e5, 260}};
  Synthetic per_layer;
  per_layer.tau = tau;
  SyntheticModel joint;
  joint.tau = tau;
  RefinementOptions o;
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig want,
                          SearchInitialSparseAttentionConfig(2, 7, per_layer.Fn(), o));
  MP_ASSERT_OK_AND_ASSIGN(SearchResult got,
                          SearchInitialSparseAttentionConfigJointly(2, 7, joint.Fn(), o));
  EXPECT_EQ(got.config, want);
  EXPECT_EQ(joint.calls, 1);
  EXPECT_EQ(joint.evaluations, 2 * 6);
  for (int64_t l = 0; l < 2; ++l) {
    for (int64_t h = 0; h < 7; ++h) {
      EXPECT_DOUBLE_EQ(got.recall[l][h].mean, Model(tau[l][h], got.config.layers[l][h]));
    }
  }
  EXPECT_STATUS(SearchInitialSparseAttentionConfigJointly(2, 7, joint.Fn(), o, {}),
                absl::StatusCode::kInvalidArgument, "no candidate");
}

TEST(SparseSearchTest, PicksTheCheapestCandidateThatReachesTheTarget) {
  Synthetic m;
  // Per head the cheapest of (100,750)=850 < (100,800)=900 < (30->130,800)=930 < (500,700)=1200
  // < (3500,100)=3600 < (1000,6096)=7096 keys with 1 - exp(-keys / tau) >= 0.95, i.e.
  // keys >= 3 tau (ln 20 = 2.996); tau = 1e6 reaches none and gets the best, (1000, 6096).
  m.tau = {{100, 290, 303, 350, 1000, 2000, 1e6}};
  RefinementOptions o;
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig c,
                          SearchInitialSparseAttentionConfig(1, 7, m.Fn(), o));
  const std::vector<std::pair<int64_t, int64_t>> want = {
      {100, 750}, {100, 800}, {30, 800}, {500, 700}, {3500, 100}, {1000, 6096}, {1000, 6096}};
  for (int64_t h = 0; h < 7; ++h) {
    EXPECT_EQ(c.layers[0][h].vertical_size, want[h].first) << h;
    EXPECT_EQ(c.layers[0][h].slash_size, want[h].second) << h;
    EXPECT_DOUBLE_EQ(c.layers[0][h].score, Model(m.tau[0][h], c.layers[0][h]));
  }
  EXPECT_STATUS(SearchInitialSparseAttentionConfig(1, 7, m.Fn(), o, {{0, 5}}),
                absl::StatusCode::kInvalidArgument, "candidate");
  EXPECT_STATUS(SearchInitialSparseAttentionConfig(0, 7, m.Fn(), o),
                absl::StatusCode::kInvalidArgument, "model shape");
}

}  // namespace
}  // namespace mp
