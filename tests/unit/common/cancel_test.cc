// CancelToken: cancelled once with a reason, by a call or by its deadline.
#include "common/cancel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace mp {
namespace {

TEST(CancelTokenTest, FirstCancelWinsAndCallbacksRunOnce) {
  CancelToken token;
  std::atomic<int> calls{0};
  absl::Status seen;
  token.OnCancel([&](const absl::Status& s) {
    ++calls;
    seen = s;
  });
  const int64_t removed = token.OnCancel([&](const absl::Status&) { calls += 100; });
  token.RemoveCallback(removed);
  EXPECT_FALSE(token.IsCancelled());
  EXPECT_TRUE(token.status().ok());
  EXPECT_TRUE(token.Cancel(absl::UnavailableError("stage lost")));
  EXPECT_FALSE(token.Cancel(absl::CancelledError("again")));
  EXPECT_TRUE(token.IsCancelled());
  EXPECT_TRUE(absl::IsUnavailable(token.status()));
  EXPECT_EQ(calls.load(), 1);
  EXPECT_TRUE(absl::IsUnavailable(seen));
  // Registered after cancellation: runs at once.
  token.OnCancel([&](const absl::Status&) { ++calls; });
  EXPECT_EQ(calls.load(), 2);
  CancelToken ok;
  ok.Cancel(absl::OkStatus());
  EXPECT_TRUE(absl::IsCancelled(ok.status()));
}

TEST(CancelTokenTest, DeadlineCancelsWithDeadlineExceeded) {
  CancelToken token(absl::Now() + absl::Milliseconds(30));
  EXPECT_FALSE(token.IsCancelled());
  const absl::Time start = absl::Now();
  EXPECT_TRUE(token.WaitUntil(absl::Now() + absl::Seconds(5)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_TRUE(absl::IsDeadlineExceeded(token.status()));
}

TEST(CancelTokenTest, WaitUntilWakesOnCancel) {
  CancelToken token;
  EXPECT_FALSE(token.WaitUntil(absl::Now() + absl::Milliseconds(10)));
  std::thread t([&] {
    absl::SleepFor(absl::Milliseconds(20));
    token.Cancel(absl::CancelledError("bye"));
  });
  EXPECT_TRUE(token.WaitUntil(absl::Now() + absl::Seconds(5)));
  t.join();
}

}  // namespace
}  // namespace mp
