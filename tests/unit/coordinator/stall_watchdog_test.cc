// The stall watchdog's bound on the oldest step in flight: which stage it waits for, from when,
// and how long that stage may take (stall_timeout + stall_factor x the step's compute, the
// larger of the stage before's measured time and the cost model's prediction).
#include "coordinator/stall_watchdog.h"

#include <gtest/gtest.h>

#include <random>

#include "absl/strings/match.h"

namespace mp {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'000'000);

StageAnswer Answered(absl::Duration after, double forward_seconds) {
  StageAnswer a;
  a.answered = true;
  a.at = kT0 + after;
  a.forward_seconds = forward_seconds;
  return a;
}

StallOptions Options(double timeout_seconds, double factor) {
  StallOptions o;
  o.timeout = absl::Seconds(timeout_seconds);
  o.factor = factor;
  return o;
}

TEST(StallWatchdogTest, NothingToWaitForOnceEveryStageAnswered) {
  HeadStep head;
  head.since = kT0;
  head.predicted_seconds = 1;
  head.stages = {Answered(absl::Seconds(1), 1), Answered(absl::Seconds(2), 1)};
  EXPECT_FALSE(WaitingStage(head, Options(30, 10), kT0 + absl::Hours(1)).has_value());
}

TEST(StallWatchdogTest, TheFirstStageIsWatchedOnlyOnceTheCostModelPredicts) {
  HeadStep head;
  head.since = kT0;
  head.stages.resize(3);
  EXPECT_FALSE(WaitingStage(head, Options(30, 10), kT0 + absl::Hours(1)).has_value())
      << "before any sample, nothing scales the first chunk's bound";
  head.predicted_seconds = 0.5;
  const std::optional<StageWait> w = WaitingStage(head, Options(30, 10), kT0 + absl::Seconds(7));
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->stage, 0);
  EXPECT_EQ(w->waited, absl::Seconds(7));
  EXPECT_EQ(w->bound, absl::Seconds(35));  // 30 + 10 x 0.5
  EXPECT_FALSE(w->after_previous);
}

TEST(StallWatchdogTest, ALaterStageGetsTheBoundOfTheStageBeforeItsComputeTime) {
  HeadStep head;
  head.since = kT0;
  head.predicted_seconds = 0;  // no model yet: the measured time alone scales the bound
  head.stages = {Answered(absl::Seconds(4), 2.0), StageAnswer(), StageAnswer()};
  std::optional<StageWait> w = WaitingStage(head, Options(30, 10), kT0 + absl::Seconds(10));
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->stage, 1);
  EXPECT_TRUE(w->after_previous);
  EXPECT_EQ(w->waited, absl::Seconds(6)) << "counted from stage 0's answer";
  EXPECT_EQ(w->bound, absl::Seconds(50));  // 30 + 10 x 2
  EXPECT_DOUBLE_EQ(w->work_seconds, 2.0);
  // A larger prediction wins over a smaller measurement.
  head.predicted_seconds = 3.5;
  w = WaitingStage(head, Options(30, 10), kT0 + absl::Seconds(10));
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->bound, absl::Seconds(65));
}

TEST(StallWatchdogTest, AStageThatRanAheadCountsFromWhenTheStepBecameTheHead) {
  // Stage 0 finished this step long ago, while stage 1 was still busy with the step before.
  HeadStep head;
  head.since = kT0 + absl::Seconds(20);
  head.predicted_seconds = 0.1;
  head.stages = {Answered(absl::Seconds(5), 0.1), StageAnswer()};
  const std::optional<StageWait> w = WaitingStage(head, Options(2, 10), kT0 + absl::Seconds(21));
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->stage, 1);
  EXPECT_FALSE(w->after_previous);
  EXPECT_EQ(w->waited, absl::Seconds(1));
  EXPECT_EQ(w->bound, absl::Seconds(3));
}

TEST(StallWatchdogTest, TheFirstUnansweredStageIsTheOneWaitedFor) {
  HeadStep head;
  head.since = kT0;
  head.stages = {Answered(absl::Seconds(1), 0.5), Answered(absl::Seconds(2), 0.5), StageAnswer(),
                 StageAnswer()};
  const std::optional<StageWait> w = WaitingStage(head, Options(1, 4), kT0 + absl::Seconds(3));
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->stage, 2);
  EXPECT_EQ(w->waited, absl::Seconds(1));
  EXPECT_EQ(w->bound, absl::Seconds(3));  // 1 + 4 x 0.5
}

TEST(StallWatchdogTest, BoundsOnRandomPipelines) {
  // Against the rule written out directly: the waited-for stage is the first that has not
  // answered; it counts from max(since, previous answer) and may take
  // timeout + factor * max(prediction, previous compute).
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> seconds(0.0, 20.0);
  for (int trial = 0; trial < 500; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 6);
    const int answered = static_cast<int>(rng() % (n + 1));
    HeadStep head;
    head.since = kT0 + absl::Seconds(seconds(rng));
    head.predicted_seconds = rng() % 3 == 0 ? 0.0 : seconds(rng) / 10;
    absl::Time at = kT0;
    for (int i = 0; i < n; ++i) {
      if (i < answered) {
        at += absl::Seconds(seconds(rng));
        head.stages.push_back(Answered(at - kT0, seconds(rng) / 10));
      } else {
        head.stages.push_back(StageAnswer());
      }
    }
    const StallOptions o = Options(1 + seconds(rng), seconds(rng));
    const absl::Time now = at + absl::Seconds(seconds(rng)) + absl::Seconds(20);
    const std::optional<StageWait> w = WaitingStage(head, o, now);
    if (answered == n || (answered == 0 && head.predicted_seconds == 0)) {
      EXPECT_FALSE(w.has_value()) << trial;
      continue;
    }
    ASSERT_TRUE(w.has_value()) << trial;
    EXPECT_EQ(w->stage, answered);
    absl::Time from = head.since;
    double work = head.predicted_seconds;
    if (answered > 0) {
      from = std::max(from, head.stages[answered - 1].at);
      work = std::max(work, head.stages[answered - 1].forward_seconds);
    }
    EXPECT_EQ(w->waited, now - from) << trial;
    EXPECT_NEAR(absl::ToDoubleSeconds(w->bound), absl::ToDoubleSeconds(o.timeout) + o.factor * work,
                1e-6)
        << trial;
  }
}

TEST(StallWatchdogTest, TheDescriptionNamesTheStageTheWaitAndTheBound) {
  HeadStep head;
  head.since = kT0;
  head.stages = {Answered(absl::Seconds(1), 0.25), StageAnswer()};
  const StallOptions o = Options(2, 8);
  const std::optional<StageWait> w = WaitingStage(head, o, kT0 + absl::Seconds(5));
  ASSERT_TRUE(w.has_value());
  const std::string text = DescribeWait(*w, o);
  EXPECT_TRUE(absl::StrContains(text, "stage 1 has not finished it 4s after stage 0 did")) << text;
  EXPECT_TRUE(absl::StrContains(text, "bound 4s = --stall-timeout 2s + --stall-factor 8 x 250ms"))
      << text;
}

}  // namespace
}  // namespace mp
