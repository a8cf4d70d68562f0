// WorkerMetrics: millipede_stage_info carries the stage and layer range the worker holds, one
// series at most, replaced on reassignment and gone when the epoch ends; the other worker
// series exist from the start.
#include "worker/worker_metrics.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/metric_names.h"
#include "prometheus/text_serializer.h"

namespace mp {
namespace {

std::string Scrape(prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

// The sample lines of `name` (not its # HELP / # TYPE lines).
std::vector<std::string> Samples(const std::string& text, const std::string& name) {
  std::vector<std::string> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, name + "{") || absl::StartsWith(line, name + " ")) {
      out.emplace_back(line);
    }
  }
  return out;
}

TEST(WorkerMetricsTest, StageInfoFollowsTheAssignment) {
  prometheus::Registry registry;
  WorkerMetrics metrics(registry);
  const std::string name = metric_names::kStageInfo;
  EXPECT_TRUE(Samples(Scrape(registry), name).empty());

  std::mt19937 rng(7);
  for (int round = 0; round < 20; ++round) {
    const int stage = static_cast<int>(rng() % 8);
    const int begin = static_cast<int>(rng() % 40);
    const int end = begin + 1 + static_cast<int>(rng() % 20);
    metrics.SetStage(stage, begin, end);
    const std::vector<std::string> lines = Samples(Scrape(registry), name);
    ASSERT_EQ(lines.size(), 1u) << Scrape(registry);
    // prometheus-cpp orders labels by name.
    EXPECT_EQ(lines[0], absl::StrCat(name, "{layer_begin=\"", begin, "\",layer_end=\"", end,
                                     "\",stage=\"", stage, "\"} 1"));
    if (round % 5 == 4) {
      metrics.ClearStage();
      EXPECT_TRUE(Samples(Scrape(registry), name).empty());
      metrics.ClearStage();  // twice is harmless
    }
  }
}

TEST(WorkerMetricsTest, WorkerSeriesExistFromTheStart) {
  prometheus::Registry registry;
  WorkerMetrics metrics(registry);
  const std::string text = Scrape(registry);
  for (const char* n : {metric_names::kStageBusy, metric_names::kStageIdle,
                        metric_names::kKvBlocksInUse, metric_names::kKvBlocksCapacity,
                        metric_names::kKvCacheUsageRatio, metric_names::kStageRequestsHeld,
                        metric_names::kStagePrefillTokens, metric_names::kSparseWorkspaceBytes}) {
    EXPECT_EQ(Samples(text, n).size(), 1u) << n;
  }
  EXPECT_EQ(Samples(text, metric_names::kStageSteps).size(), 3u);
  EXPECT_EQ(Samples(text, metric_names::kActivationBytes).size(), 2u);
}

}  // namespace
}  // namespace mp
