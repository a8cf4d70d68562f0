// Qwen's shipped sparse_attention_config.json of Qwen2.5-7B-Instruct-1M, fetched at test time by
// fetch_qwen_sparse_config.sh (MILLIPEDE_QWEN7B_SPARSE_CONFIG holds its path): it loads against
// the 7B architecture and has the statistics of qwen1m-spec.md §3.2. Fails when the file is
// missing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "model/config.h"
#include "model/sparse_attention_config.h"
#include "tests/unit/model/test_util.h"

namespace mp {
namespace {

class Qwen7BSparseConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* path = std::getenv("MILLIPEDE_QWEN7B_SPARSE_CONFIG");
    ASSERT_NE(path, nullptr) << "MILLIPEDE_QWEN7B_SPARSE_CONFIG is not set (run "
                                "tests/unit/model/fetch_qwen_sparse_config.sh)";
    path_ = path;
    absl::StatusOr<SparseAttentionConfig> c = LoadSparseAttentionConfig(path_, model_);
    ASSERT_TRUE(c.ok()) << c.status();
    config_ = *std::move(c);
  }

  ModelConfig model_ = Qwen25_7BInstruct1MConfig();
  std::string path_;
  SparseAttentionConfig config_;
};

TEST_F(Qwen7BSparseConfigTest, HasTheStatisticsOfTheSpec) {
  ASSERT_EQ(config_.num_layers(), 28);
  ASSERT_EQ(config_.num_heads(), 28);
  int64_t heads = 0, sum_v = 0, sum_s = 0, max_v = 0, max_s = 0, at_base = 0, thirty = 0;
  int64_t sum_effective_v = 0;
  double min_score = 1e9, max_score = -1e9;
  std::map<std::pair<int64_t, int64_t>, int64_t> counts;
  const std::set<std::pair<int64_t, int64_t>> base = {{1000, 6096}, {3500, 100}, {30, 800},
                                                      {500, 700},   {100, 800},  {100, 750}};
  for (const auto& layer : config_.layers) {
    for (const SparseHeadConfig& h : layer) {
      ++heads;
      sum_v += h.vertical_size;
      sum_s += h.slash_size;
      sum_effective_v += h.effective_vertical_size();
      max_v = std::max(max_v, h.vertical_size);
      max_s = std::max(max_s, h.slash_size);
      ++counts[{h.vertical_size, h.slash_size}];
      at_base += base.count({h.vertical_size, h.slash_size});
      thirty += h.vertical_size == 30;
      min_score = std::min(min_score, h.score);
      max_score = std::max(max_score, h.score);
    }
  }
  EXPECT_EQ(heads, 784);
  // §3.2: mean vertical / slash budget 3920 / 7650 (rounded), max 22032 / 24528.
  EXPECT_EQ(std::lround(static_cast<double>(sum_v) / heads), 3920);
  EXPECT_EQ(std::lround(static_cast<double>(sum_s) / heads), 7650);
  EXPECT_EQ(max_v, 22032);
  EXPECT_EQ(max_s, 24528);
  // Most common (v, s) = (1000, 6096), 321 heads; 436 heads at the base candidates.
  auto most = std::max_element(counts.begin(), counts.end(),
                               [](const auto& a, const auto& b) { return a.second < b.second; });
  EXPECT_EQ(most->first, std::make_pair(int64_t{1000}, int64_t{6096}));
  EXPECT_EQ(most->second, 321);
  EXPECT_EQ(at_base, 436);
  EXPECT_EQ(heads - at_base, 348);
  // The 30 -> 130 tweak applies to every head with vertical_size 30 (72 of them).
  EXPECT_EQ(thirty, 72);
  EXPECT_EQ(sum_effective_v, sum_v + 100 * thirty);
  // Scores are informational, in (0, 1] up to fp32 rounding.
  EXPECT_GT(min_score, 0.3);
  EXPECT_LT(max_score, 1.001);
}

TEST_F(Qwen7BSparseConfigTest, FirstHeadIsTheSpecExample) {
  // §3.2: layer 0, "0": ["vertical_and_slash", 9192, 14288, 0.692...].
  const SparseHeadConfig& h = config_.layers[0][0];
  EXPECT_EQ(h.vertical_size, 9192);
  EXPECT_EQ(h.slash_size, 14288);
  EXPECT_NEAR(h.score, 0.692, 5e-4);
}

TEST_F(Qwen7BSparseConfigTest, RoundTripsAndSlicesForTensorParallelism) {
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig back,
                          ParseSparseAttentionConfig(SparseAttentionConfigToJson(config_), model_));
  EXPECT_EQ(back, config_);
  for (int64_t world : {1, 2, 4}) {  // TP <= 4 kv heads for 7B
    for (int64_t rank = 0; rank < world; ++rank) {
      MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig part,
                              SliceSparseAttentionHeads(config_, rank, world));
      ASSERT_EQ(part.num_heads(), 28 / world);
      for (int64_t l = 0; l < 28; ++l) {
        for (int64_t h = 0; h < part.num_heads(); ++h) {
          EXPECT_EQ(part.layers[l][h], config_.layers[l][rank * (28 / world) + h]);
        }
      }
    }
  }
}

TEST_F(Qwen7BSparseConfigTest, EnablesSparsePrefillAboveTheDefaultThreshold) {
  MP_ASSERT_OK_AND_ASSIGN(SparsePrefillSettings s, ResolveSparsePrefillSettings(model_, config_));
  EXPECT_TRUE(s.enabled);
  EXPECT_EQ(s.threshold, 32768);
  EXPECT_EQ(s.last_q, 64);
  EXPECT_FALSE(s.UseSparsePrefill(32768));
  EXPECT_TRUE(s.UseSparsePrefill(32769));
  // A 14B-shaped model does not accept the 7B file.
  EXPECT_STATUS(LoadSparseAttentionConfig(path_, Qwen25_14BInstruct1MConfig()),
                absl::StatusCode::kInvalidArgument, "28 layers", "num_hidden_layers = 48");
}

}  // namespace
}  // namespace mp
