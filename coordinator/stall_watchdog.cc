#include "coordinator/stall_watchdog.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mp {
namespace {

// To the millisecond (to 10 us below 10 ms), for messages.
std::string Short(absl::Duration d) {
  return absl::FormatDuration(
      absl::Trunc(d, d < absl::Milliseconds(10) ? absl::Microseconds(10) : absl::Milliseconds(1)));
}

}  // namespace

std::optional<StageWait> WaitingStage(const HeadStep& head, const StallOptions& options,
                                      absl::Time now) {
  const int n = static_cast<int>(head.stages.size());
  int i = 0;
  while (i < n && head.stages[i].answered) ++i;
  if (i == n) return std::nullopt;
  StageWait w;
  w.stage = i;
  absl::Time start = head.since;
  w.work_seconds = std::max(head.predicted_seconds, 0.0);
  if (i > 0) {
    const StageAnswer& before = head.stages[i - 1];
    w.after_previous = before.at > start;
    start = std::max(start, before.at);
    w.work_seconds = std::max(w.work_seconds, before.forward_seconds);
  } else if (head.predicted_seconds <= 0) {
    return std::nullopt;  // nothing to scale stage 0's first steps by yet
  }
  w.waited = std::max(now - start, absl::ZeroDuration());
  w.bound = options.timeout + absl::Seconds(options.factor * w.work_seconds);
  return w;
}

std::string DescribeWait(const StageWait& wait, const StallOptions& options) {
  return absl::StrCat("stage ", wait.stage, " has not finished it ", Short(wait.waited),
                      wait.after_previous
                          ? absl::StrCat(" after stage ", wait.stage - 1, " did")
                          : std::string(" after it became the oldest step in flight"),
                      " (bound ", Short(wait.bound), " = --stall-timeout ", Short(options.timeout),
                      " + --stall-factor ", options.factor, " x ",
                      Short(absl::Seconds(wait.work_seconds)), " of compute)");
}

}  // namespace mp
