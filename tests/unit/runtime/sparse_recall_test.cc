// Attention-recall measurement of the sparsity refinement (qwen1m-spec.md §4, §9.12):
//   * SparseRecallProbe: exact mean / min / max, the histogram 5th percentile, its errors;
//   * the stage executor's probe hook on tiny random models (DCA over several DCA chunks with the
//     YaRN temperature, and plain RoPE): full budgets give recall 1 for every query, the probe
//     leaves the outputs bit-identical, decode is not measured, layer 0 equals the independent
//     composition cpu::VerticalSlashRecall from hand-computed q/k/v, and larger budgets never
//     give a lower recall;
//   * SparseRecallMeter + RefineSparseAttentionConfigJointly on a tiny model: full budgets give
//     1, refinement never lowers a layer's recall and the result is a loadable config.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/status_matchers.h"
#include "kernels/cpu/vertical_slash_recall.h"
#include "model/sparse_attention_config.h"
#include "model/sparse_refinement.h"
#include "runtime/backend.h"
#include "runtime/sparse_recall_meter.h"
#include "runtime/sparse_recall_probe.h"
#include "runtime/stage_executor.h"
#include "tests/unit/runtime/sparse_test_util.h"
#include "tests/unit/runtime/tiny_model.h"

namespace mp {
namespace {

using ::absl::StatusCode;
using testing::HostIds;
using testing::RandomIds;
using testing::TinyConfig;
using testing::TinyDcaConfig;
using testing::TinyWeights;

// ---- the probe -------------------------------------------------------------------------------

TEST(SparseRecallProbeTest, AccumulatesMeanRangeAndPercentile) {
  MP_ASSERT_OK_AND_ASSIGN(SparseRecallProbe probe, SparseRecallProbe::Create(2, 2, 64));
  EXPECT_FALSE(probe.active());
  MP_ASSERT_OK(probe.SetBudgetSets(1, {{10, 20, 30, 40}}));
  EXPECT_TRUE(probe.active());
  // Head 0 gets recall 0.01, 0.02, ..., 1.00 over two chunks (lse_sparse = log r, dense 0);
  // head 1 a constant 0.5.
  std::vector<float> dense(2 * 60, 0.0f), sparse(2 * 60);
  for (int64_t i = 0; i < 60; ++i) {
    sparse[i] = std::log(static_cast<float>(i + 1) / 100.0f);
    sparse[60 + i] = std::log(0.5f);
  }
  // Index keys: queries 0..59 have 1830 causal keys, queries 60..99 another 3220.
  const int64_t keys1[2] = {600, 1830}, keys2[2] = {1000, 3220};
  MP_ASSERT_OK(probe.Record(1, 0, 0, 60, dense.data(), sparse.data(), keys1));
  std::vector<float> dense2(2 * 40, 3.0f), sparse2(2 * 40);
  for (int64_t i = 0; i < 40; ++i) {
    sparse2[i] = 3.0f + std::log(static_cast<float>(61 + i) / 100.0f);
    sparse2[40 + i] = 3.0f + std::log(0.5f);
  }
  MP_ASSERT_OK(probe.Record(1, 0, 60, 40, dense2.data(), sparse2.data(), keys2));
  const RecallSummary h0 = probe.Summary(1, 0, 0);
  EXPECT_EQ(h0.count, 100);
  EXPECT_NEAR(h0.mean, 0.505, 1e-5);
  EXPECT_NEAR(h0.min, 0.01, 1e-6);
  EXPECT_NEAR(h0.max, 1.0, 1e-6);
  // Nearest rank: the 5th smallest of 100 values is 0.05 (within one bin).
  EXPECT_NEAR(h0.p05, 0.05, 1.0 / SparseRecallProbe::kBins);
  EXPECT_NEAR(h0.density, 1600.0 / 5050.0, 1e-12);
  EXPECT_NEAR(probe.Summary(1, 0, 1).density, 1.0, 1e-12);
  // Chunks recorded without index keys leave the density alone.
  MP_ASSERT_OK(probe.Record(1, 0, 100, 40, dense2.data(), sparse2.data()));
  EXPECT_NEAR(probe.Summary(1, 0, 0).density, 1600.0 / 5050.0, 1e-12);
  EXPECT_EQ(probe.Summary(1, 0, 0).count, 140);
  probe.Reset();
  MP_ASSERT_OK(probe.Record(1, 0, 0, 60, dense.data(), sparse.data(), keys1));
  MP_ASSERT_OK(probe.Record(1, 0, 60, 40, dense2.data(), sparse2.data(), keys2));
  const RecallSummary h1 = probe.Summary(1, 0, 1);
  EXPECT_NEAR(h1.mean, 0.5, 1e-6);
  EXPECT_NEAR(h1.p05, 0.5, 1e-6) << "the percentile stays within [min, max]";
  // An unmeasured layer reports 1 with count 0; Reset clears and keeps the sets.
  EXPECT_EQ(probe.Summary(0, 0, 0).count, 0);
  probe.Reset();
  EXPECT_EQ(probe.Summary(1, 0, 0).count, 0);
  EXPECT_EQ(probe.budget_sets(1).size(), 1u);
}

TEST(SparseRecallProbeTest, RejectsBadSetsAndImpossibleRecall) {
  MP_EXPECT_ERROR(SparseRecallProbe::Create(0, 2).status(), StatusCode::kInvalidArgument,
                  "must be positive");
  MP_EXPECT_ERROR(SparseRecallProbe::Create(1, 2, 65).status(), StatusCode::kInvalidArgument,
                  "last_q");
  MP_ASSERT_OK_AND_ASSIGN(SparseRecallProbe probe, SparseRecallProbe::Create(1, 2));
  MP_EXPECT_ERROR(probe.SetBudgetSets(1, {}), StatusCode::kInvalidArgument, "layer 1");
  MP_EXPECT_ERROR(probe.SetBudgetSets(0, {{1, 2, 3}}), StatusCode::kInvalidArgument,
                  "holds 3 values, expected 2 x 2");
  MP_EXPECT_ERROR(probe.SetBudgetSets(0, {{1, 2, 3, 0}}), StatusCode::kInvalidArgument,
                  "slash budget of head 1");
  MP_ASSERT_OK(probe.SetBudgetSets(0, {{1, 2, 3, 4}}));
  const float dense[2] = {0.0f, 0.0f};
  const float above[2] = {0.0f, 0.5f};  // recall e^0.5 = 1.65: a bug, not rounding
  MP_EXPECT_ERROR(probe.Record(0, 0, 5, 1, dense, above), StatusCode::kInternal, "head 1 query 5");
  const float rounding[2] = {0.12f, -1.0f};  // recall 1.13: rounding of bf16 logits
  MP_EXPECT_OK(probe.Record(0, 0, 6, 1, dense, rounding));
  const float nan[2] = {std::numeric_limits<float>::quiet_NaN(), 0.0f};
  MP_EXPECT_ERROR(probe.Record(0, 0, 0, 1, dense, nan), StatusCode::kInternal, "head 0");
  MP_EXPECT_ERROR(probe.Record(0, 1, 0, 1, dense, dense), StatusCode::kInvalidArgument,
                  "no budget set 1");
  const int64_t negative[2] = {1, -1};
  MP_EXPECT_ERROR(probe.Record(0, 0, 0, 1, dense, dense, negative), StatusCode::kInternal,
                  "head 1: negative index key count");
}

// ---- the executor hook -----------------------------------------------------------------------

struct ModelCase {
  std::string name;
  bool dca;
};

class RecallExecutorTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  static constexpr int64_t kLayers = 2, kHeads = 4;
  // TinyDcaConfig (4 q heads; C = 256, the temperature active), without DCA when not asked for.
  ModelConfig Config() const {
    ModelConfig c = TinyDcaConfig(kLayers);
    if (!GetParam().dca) c.dual_chunk.reset();
    return c;
  }
  static StageExecutorOptions Options(std::shared_ptr<SparseRecallProbe> probe) {
    StageExecutorOptions o;
    o.kv_cache.block_size = 16;
    o.kv_cache.max_tokens = 2048;
    o.recall_probe = std::move(probe);
    return o;
  }
  static std::shared_ptr<SparseRecallProbe> Probe(
      const std::vector<std::vector<int64_t>>& sets_per_layer) {
    auto probe = std::make_shared<SparseRecallProbe>(*SparseRecallProbe::Create(kLayers, kHeads));
    for (int64_t l = 0; l < kLayers; ++l) EXPECT_TRUE(probe->SetBudgetSets(l, sets_per_layer).ok());
    return probe;
  }
  // Prefills `prompt_len` tokens of `ids` in chunks of `chunk`, then decodes the rest one by one;
  // returns all logits.
  static std::vector<float> Run(StageExecutor& ex, const std::vector<int32_t>& ids,
                                int64_t prompt_len, int64_t chunk) {
    std::vector<float> logits;
    for (int64_t s = 0; s < static_cast<int64_t>(ids.size());) {
      const int64_t n = s < prompt_len ? std::min(chunk, prompt_len - s) : 1;
      Tensor x = HostIds(std::span<const int32_t>(ids).subspan(s, n));
      absl::StatusOr<Tensor> out = ex.RunChunk(1, s, x, LogitsMode::kAllRows, prompt_len);
      EXPECT_TRUE(out.ok()) << out.status();
      if (!out.ok()) return {};
      logits.insert(logits.end(), out->data_as<float>(), out->data_as<float>() + out->numel());
      s += n;
    }
    return logits;
  }
  static std::vector<int64_t> Uniform(int64_t vertical, int64_t slash) {
    std::vector<int64_t> b;
    for (int64_t h = 0; h < kHeads; ++h) b.insert(b.end(), {vertical, slash});
    return b;
  }
};

TEST_P(RecallExecutorTest, FullBudgetGivesRecallOneAndLeavesOutputsUnchanged) {
  const ModelConfig config = Config();
  const ModelWeights weights = TinyWeights(config, 11);
  const int64_t L = 700, chunk = 200, decode = 2;
  const std::vector<int32_t> ids = RandomIds(L + decode, config.vocab_size, 12);
  auto plain = *StageExecutor::Create(config, weights, NewCpuBackend(), Options(nullptr));
  const std::vector<float> want = Run(*plain, ids, L, chunk);
  auto probe = Probe({Uniform(4096, 4096), Uniform(130, 100)});
  auto ex = *StageExecutor::Create(config, weights, NewCpuBackend(), Options(probe));
  const std::vector<float> got = Run(*ex, ids, L, chunk);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
      << "the probe must not change the layer outputs";
  double small_mean = 0.0;
  for (int64_t l = 0; l < kLayers; ++l) {
    for (int64_t h = 0; h < kHeads; ++h) {
      const RecallSummary full = probe->Summary(l, 0, h);
      EXPECT_EQ(full.count, L) << "every prompt query once, no decode step";
      EXPECT_NEAR(full.mean, 1.0, 1e-5) << l << "/" << h;
      EXPECT_GE(full.min, 1.0 - 1e-4) << l << "/" << h;
      const RecallSummary small = probe->Summary(l, 1, h);
      EXPECT_LE(small.max, 1.0 + 1e-5);
      EXPECT_LE(small.p05, small.mean);
      small_mean += small.mean / (kLayers * kHeads);
    }
  }
  EXPECT_LT(small_mean, 0.99) << "130 columns and 100 diagonals of 700 keys must lose mass";
}

// Layer 0's q/k/v computed here from the weights (embedding, RMSNorm, projections with bias)
// through cpu::VerticalSlashRecall, which runs its own chunked prefill of one layer on one big
// page: the executor's hook must measure the same recall (chunks, positions, temperature).
TEST_P(RecallExecutorTest, LayerZeroMatchesTheSingleLayerComposition) {
  const ModelConfig config = Config();
  const ModelWeights weights = TinyWeights(config, 21);
  const int64_t L = 650, chunk = 192;
  const std::vector<int32_t> ids = RandomIds(L, config.vocab_size, 22);
  std::vector<int64_t> budgets;
  for (int64_t h = 0; h < kHeads; ++h) budgets.insert(budgets.end(), {130 + 8 * h, 100 + 2 * h});
  auto probe = Probe({budgets});
  auto ex = *StageExecutor::Create(config, weights, NewCpuBackend(), Options(probe));
  Run(*ex, ids, L, chunk);

  const int64_t hidden = config.hidden_size, d = config.head_dim, kvh = config.num_key_value_heads;
  const int64_t q_dim = kHeads * d, kv_dim = kvh * d;
  const LayerWeights& w = weights.layer[0];
  const float* embed = weights.embed_tokens.data_as<const float>();
  std::vector<float> q(L * q_dim), k(L * kv_dim), v(L * kv_dim);
  auto project = [&](const std::vector<double>& x, const Tensor& m, const Tensor& b, int64_t out,
                     float* y) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = b.defined() ? b.data_as<const float>()[o] : 0.0;
      for (int64_t i = 0; i < hidden; ++i) acc += x[i] * m.data_as<const float>()[o * hidden + i];
      y[o] = static_cast<float>(acc);
    }
  };
  for (int64_t t = 0; t < L; ++t) {
    const float* e = embed + static_cast<int64_t>(ids[t]) * hidden;
    double ss = 0.0;
    for (int64_t i = 0; i < hidden; ++i) ss += double(e[i]) * e[i];
    const double inv = 1.0 / std::sqrt(ss / hidden + config.rms_norm_eps);
    std::vector<double> x(hidden);
    for (int64_t i = 0; i < hidden; ++i) x[i] = e[i] * inv * w.input_norm.data_as<const float>()[i];
    project(x, w.q_proj, w.q_bias, q_dim, &q[t * q_dim]);
    project(x, w.k_proj, w.k_bias, kv_dim, &k[t * kv_dim]);
    project(x, w.v_proj, w.v_bias, kv_dim, &v[t * kv_dim]);
  }
  cpu::VerticalSlashRecallShape shape;
  shape.seq_len = L;
  shape.q_heads = kHeads;
  shape.kv_heads = kvh;
  shape.head_dim = d;
  double m = 1.0;
  if (config.dual_chunk.has_value()) {
    shape.chunk_size = config.dual_chunk->chunk_size;
    shape.chunk_len = config.dual_chunk->chunk_len();
    m = std::max(1.0, 0.1 * std::log(double(L) / 200.0) + 1.0);  // YaRN m(L), L0 = 200
  }
  shape.rope_theta = config.rope_theta;
  shape.scale = static_cast<float>(m * m / std::sqrt(double(d)));
  shape.last_q = 64;
  shape.engine_chunk = chunk;
  std::vector<float> recall(kHeads * L);
  cpu::VerticalSlashRecall(q.data(), k.data(), v.data(), shape, budgets.data(), recall.data());
  std::vector<cpu::VerticalSlashRecallSummary> want(kHeads);
  cpu::SummarizeVerticalSlashRecall(recall.data(), kHeads, L, 0, want.data());
  for (int64_t h = 0; h < kHeads; ++h) {
    const RecallSummary got = probe->Summary(0, 0, h);
    EXPECT_EQ(got.count, L);
    EXPECT_NEAR(got.mean, want[h].mean, 1e-4) << "head " << h;
    EXPECT_NEAR(got.min, want[h].min, 2e-3) << "head " << h;
    EXPECT_NEAR(got.p05, want[h].p05, 2.0 / SparseRecallProbe::kBins + 2e-3) << "head " << h;
    EXPECT_LT(want[h].mean, 0.999) << "the budgets must drop mass, or the check is vacuous";
  }
}

// Top-k selections of growing k are nested, so the attended key sets and the recall grow.
TEST_P(RecallExecutorTest, LargerBudgetsNeverLowerRecall) {
  const ModelConfig config = Config();
  const ModelWeights weights = TinyWeights(config, 31);
  const int64_t L = 800, chunk = 256;
  const std::vector<int32_t> ids = RandomIds(L, config.vocab_size, 32);
  const std::vector<std::pair<int64_t, int64_t>> levels = {
      {130, 100}, {130, 300}, {300, 300}, {450, 500}, {800, 800}};
  std::vector<std::vector<int64_t>> sets;
  for (const auto& [vs, ss] : levels) sets.push_back(Uniform(vs, ss));
  auto probe = Probe(sets);
  auto ex = *StageExecutor::Create(config, weights, NewCpuBackend(), Options(probe));
  Run(*ex, ids, L, chunk);
  for (int64_t l = 0; l < kLayers; ++l) {
    for (int64_t h = 0; h < kHeads; ++h) {
      double previous = 0.0;
      for (size_t s = 0; s < levels.size(); ++s) {
        const RecallSummary r = probe->Summary(l, static_cast<int64_t>(s), h);
        EXPECT_GE(r.mean, previous - 1e-6) << "layer " << l << " head " << h << " set " << s;
        previous = r.mean;
      }
      EXPECT_NEAR(previous, 1.0, 1e-5) << "budgets >= L keep every key";
      EXPECT_LT(probe->Summary(l, 0, h).mean, 0.99);
      // The index lists whole 64-key blocks: at full budgets every causal key and, per query and
      // DCA region (at most 3), at most 63 keys of its last block past the region's keys or the
      // query; the smallest budgets list fewer keys than the causal ones.
      const double full = probe->Summary(l, static_cast<int64_t>(levels.size()) - 1, h).density;
      EXPECT_GE(full, 1.0) << "layer " << l << " head " << h;
      EXPECT_LE(full, 1.0 + 3.0 * 63.0 * L / (L * (L + 1) / 2.0)) << "layer " << l << " head " << h;
      const double small = probe->Summary(l, 0, h).density;
      EXPECT_GT(small, 0.0);
      EXPECT_LT(small, 0.9) << "layer " << l << " head " << h;
    }
  }
}

// A probe that measures from a position on runs the sparse op for the chunks that start there or
// later: the same recall and index keys for those chunks as a probe that measures everything.
TEST_P(RecallExecutorTest, MeasuresOnlyTheChunksFromTheGivenPosition) {
  const ModelConfig config = Config();
  const ModelWeights weights = TinyWeights(config, 41);
  const int64_t L = 650, chunk = 192;  // chunks start at 0, 192, 384, 576
  const std::vector<int32_t> ids = RandomIds(L, config.vocab_size, 42);
  const std::vector<std::vector<int64_t>> sets = {Uniform(130, 100)};
  auto all = Probe(sets), late = Probe(sets);
  MP_EXPECT_ERROR(late->SetMeasureFrom(-1), StatusCode::kInvalidArgument, ">= 0");
  MP_ASSERT_OK(late->SetMeasureFrom(300));
  EXPECT_EQ(late->measure_from(), 300);
  auto ex_all = *StageExecutor::Create(config, weights, NewCpuBackend(), Options(all));
  auto ex_late = *StageExecutor::Create(config, weights, NewCpuBackend(), Options(late));
  const std::vector<float> logits_all = Run(*ex_all, ids, L, chunk);
  EXPECT_EQ(Run(*ex_late, ids, L, chunk), logits_all) << "the probe never changes the output";
  // The chunks of `late` alone, measured by an unrestricted probe on the same prefix: the
  // recall sums and key counts of chunks 384 and 576 are those of `all` minus its first two.
  auto early = Probe(sets);
  auto ex_early = *StageExecutor::Create(config, weights, NewCpuBackend(), Options(early));
  Run(*ex_early, std::vector<int32_t>(ids.begin(), ids.begin() + 384), L, chunk);
  for (int64_t l = 0; l < kLayers; ++l) {
    for (int64_t h = 0; h < kHeads; ++h) {
      const RecallSummary a = all->Summary(l, 0, h), b = late->Summary(l, 0, h),
                          e = early->Summary(l, 0, h);
      EXPECT_EQ(b.count, L - 384) << "layer " << l << " head " << h;
      EXPECT_EQ(e.count, 384);
      EXPECT_NEAR(b.mean * b.count, a.mean * a.count - e.mean * e.count, 1e-6 * L);
      // Index keys over causal keys: the late chunks' share of the whole run's.
      const double causal_all = L * (L + 1) / 2.0, causal_early = 384 * 385 / 2.0;
      EXPECT_NEAR(b.density * (causal_all - causal_early),
                  a.density * causal_all - e.density * causal_early, 1e-6 * causal_all);
      EXPECT_GT(b.density, 0.0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, RecallExecutorTest,
                         ::testing::Values(ModelCase{"dca", true}, ModelCase{"plain", false}),
                         [](const ::testing::TestParamInfo<ModelCase>& info) {
                           return info.param.name;
                         });

TEST(RecallExecutorConfigTest, RejectsAProbeWithSparsePrefillOrOfTheWrongShape) {
  const ModelConfig config = TinyConfig({.layers = 2, .heads = 4, .kv_heads = 2});
  const ModelWeights weights = TinyWeights(config, 41);
  StageExecutorOptions o;
  o.kv_cache.max_tokens = 256;
  o.recall_probe = std::make_shared<SparseRecallProbe>(*SparseRecallProbe::Create(2, 4));
  auto sparse = std::make_shared<SparsePrefillSettings>();
  o.sparse = sparse;
  MP_EXPECT_ERROR(StageExecutor::Create(config, weights, NewCpuBackend(), o).status(),
                  StatusCode::kInvalidArgument, "dense prefill");
  o.sparse = nullptr;
  o.recall_probe = std::make_shared<SparseRecallProbe>(*SparseRecallProbe::Create(3, 4));
  MP_EXPECT_ERROR(StageExecutor::Create(config, weights, NewCpuBackend(), o).status(),
                  StatusCode::kInvalidArgument, "3 layers x 4 heads, the model 2 x 4");
}

// ---- the meter and the refinement on a tiny model --------------------------------------------

class RecallMeterTest : public ::testing::Test {
 protected:
  RecallMeterTest() {
    config_ = testing::TinyDcaConfig(2);
    weights_ = TinyWeights(config_, 51);
    documents_ = {RandomIds(700, config_.vocab_size, 52), RandomIds(520, config_.vocab_size, 53)};
  }
  std::unique_ptr<SparseRecallMeter> Meter() {
    SparseRecallMeterOptions o;
    o.chunk_size = 256;
    absl::StatusOr<std::unique_ptr<SparseRecallMeter>> m =
        SparseRecallMeter::Create(config_, weights_, NewCpuBackend(), documents_, o);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *std::move(m) : nullptr;
  }
  static SparseAttentionConfig Uniform(int64_t v, int64_t s) {
    SparseAttentionConfig c;
    c.layers.assign(2, std::vector<SparseHeadConfig>(4, {v, s, 0.0}));
    return c;
  }
  ModelConfig config_;
  ModelWeights weights_;
  std::vector<std::vector<int32_t>> documents_;
};

TEST_F(RecallMeterTest, FullBudgetIsOneAndRefinementNeverLowersRecall) {
  std::unique_ptr<SparseRecallMeter> meter = Meter();
  ASSERT_NE(meter, nullptr);
  EXPECT_EQ(meter->num_tokens(), 1220);
  const ModelRecallFn measure = [&](const BudgetSets& sets) { return meter->Measure(sets); };
  RefinementOptions o;
  o.target_recall = 0.95;
  o.step = 128;  // 2048 would jump past every tiny document at once
  o.max_vertical = o.max_slash = 700;
  o.steps_per_pass = 2;

  // Full budgets: recall 1 everywhere, nothing to raise.
  MP_ASSERT_OK_AND_ASSIGN(RefinementResult full,
                          RefineSparseAttentionConfigJointly(Uniform(700, 700), measure, o));
  for (const LayerRefinement& l : full.layers) {
    EXPECT_NEAR(l.recall_before, 1.0, 1e-5);
    EXPECT_NEAR(l.min_head_before, 1.0, 1e-5);
    EXPECT_EQ(l.heads_raised, 0);
    EXPECT_EQ(l.rounds, 0);
    EXPECT_GE(l.density_before, 1.0) << "full budgets list every causal key (whole blocks)";
    EXPECT_DOUBLE_EQ(l.density_after, l.density_before);
    EXPECT_NEAR(l.max_query_before, 1.0, 1e-5) << "every query keeps all of its mass";
  }
  EXPECT_EQ(meter->passes(), 1);

  // Small budgets: refinement raises heads until they reach the target; no layer loses recall.
  MP_ASSERT_OK_AND_ASSIGN(RefinementResult r,
                          RefineSparseAttentionConfigJointly(Uniform(30, 100), measure, o));
  int64_t raised = 0;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const LayerRefinement& x = r.layers[l];
    EXPECT_GE(x.recall_after, x.recall_before - 1e-9) << "layer " << l;
    EXPECT_GE(x.min_head_after, x.min_head_before - 1e-9) << "layer " << l;
    EXPECT_EQ(x.heads_below_target, 0) << "the caps (every key) always reach the target";
    EXPECT_GT(x.density_before, 0.0) << "layer " << l;
    EXPECT_LE(x.max_query_before, 1.0 + 1e-5) << "a subset of the keys keeps at most their mass";
    EXPECT_LE(x.max_query_after, 1.0 + 1e-5);
    EXPECT_LT(x.density_before, 1.0) << "layer " << l;
    EXPECT_GT(x.density_after, 0.0) << "layer " << l;
    raised += x.heads_raised;
    for (const SparseHeadConfig& h : r.config.layers[l]) {
      EXPECT_GE(h.score, 0.95);
      // Both budgets rise by the same number of steps of 128 (until a cap).
      const int64_t steps = (h.slash_size - 100) / 128;
      EXPECT_TRUE(h.slash_size == 700 || (h.slash_size - 100) % 128 == 0) << h.slash_size;
      EXPECT_TRUE(h.vertical_size == 700 || h.vertical_size == 30 + 128 * steps)
          << h.vertical_size << " " << h.slash_size;
    }
  }
  EXPECT_GT(raised, 0) << "(30 -> 130, 100) of 700 keys must be too small for some head";
  // The written config reads back, scores included.
  MP_ASSERT_OK_AND_ASSIGN(
      SparseAttentionConfig back,
      ParseSparseAttentionConfig(SparseAttentionConfigToJson(r.config), config_));
  EXPECT_EQ(back, r.config);
  // Measuring the result again reproduces its scores (the measurement is deterministic).
  BudgetSets sets(2);
  for (int64_t l = 0; l < 2; ++l) sets[l] = {r.config.layers[l]};
  MP_ASSERT_OK_AND_ASSIGN(ModelRecall again, meter->Measure(sets));
  for (int64_t l = 0; l < 2; ++l) {
    for (int64_t h = 0; h < 4; ++h)
      EXPECT_DOUBLE_EQ(again[l][0][h].mean, r.config.layers[l][h].score);
  }
}

TEST_F(RecallMeterTest, RejectsBadDocumentsAndSets) {
  SparseRecallMeterOptions o;
  o.chunk_size = 256;
  MP_EXPECT_ERROR(SparseRecallMeter::Create(config_, weights_, NewCpuBackend(), {}, o).status(),
                  StatusCode::kInvalidArgument, "no documents");
  MP_EXPECT_ERROR(
      SparseRecallMeter::Create(config_, weights_, NewCpuBackend(), {{1, 2}, {}}, o).status(),
      StatusCode::kInvalidArgument, "document 1 is empty");
  MP_EXPECT_ERROR(
      SparseRecallMeter::Create(config_, weights_, NewCpuBackend(), {{1, 99999}}, o).status(),
      StatusCode::kInvalidArgument, "token 99999 at position 1");
  // The documents' last chunk starts at 512 (700 tokens in chunks of 256).
  o.measure_from = 513;
  MP_EXPECT_ERROR(
      SparseRecallMeter::Create(config_, weights_, NewCpuBackend(), documents_, o).status(),
      StatusCode::kInvalidArgument, "measure_from (513) must be in [0, 512]");
  o.measure_from = -1;
  MP_EXPECT_ERROR(
      SparseRecallMeter::Create(config_, weights_, NewCpuBackend(), documents_, o).status(),
      StatusCode::kInvalidArgument, "measure_from (-1)");
  o.measure_from = 512;
  MP_EXPECT_OK(
      SparseRecallMeter::Create(config_, weights_, NewCpuBackend(), documents_, o).status());
  o.measure_from = 0;
  o.chunk_size = 0;
  MP_EXPECT_ERROR(SparseRecallMeter::Create(config_, weights_, NewCpuBackend(), {{1}}, o).status(),
                  StatusCode::kInvalidArgument, "chunk_size");
  std::unique_ptr<SparseRecallMeter> meter = Meter();
  ASSERT_NE(meter, nullptr);
  MP_EXPECT_ERROR(meter->Measure(BudgetSets(3)).status(), StatusCode::kInvalidArgument,
                  "3 layers, the model has 2");
  BudgetSets bad(2);
  bad[1] = {std::vector<SparseHeadConfig>(3, {100, 100, 0.0})};
  MP_EXPECT_ERROR(meter->Measure(bad).status(), StatusCode::kInvalidArgument,
                  "set 0 of layer 1 has 3 heads");
}

}  // namespace
}  // namespace mp
