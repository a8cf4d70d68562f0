// Stall watchdog: how long the pipeline may go without progress before the coordinator gives up
// on it.
//
// Every stage runs the steps in step order, so the oldest step in flight (the head) blocks all
// the others: the pipeline makes progress exactly when the head does. The head's stages answer
// in stage order (each waits for its input from the one before), and the coordinator learns of
// each answer as it comes. A stage that has not answered the head is allowed
//
//   stall_timeout + stall_factor * work
//
// counted from the moment it could start on the head: for stage i > 0, when stage i - 1
// answered the head (or the step before the head ended, if later); for stage 0, when the head
// became the head. `work` is the larger of the stage before's measured compute time for this
// very step (stages hold layer slices balanced by cost) and the cost model's prediction of the
// step on the slowest stage. So the bound grows with the chunk's cost (attention grows with
// history) and needs no warm-up for the stages after the first. Stage 0 is watched once the cost
// model has a prediction; before that, only the step's RPC deadline (--step-timeout) bounds it.
//
// A stage past its bound means the link into it is stuck (a transfer that never arrives, a
// connection black-holed by a vanished network interface) or the stage itself hangs: the
// coordinator breaks the pipeline (its requests fail with UNAVAILABLE naming the stage and the
// chunk, every stage frees their KV) and rebuilds it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace mp {

struct StallOptions {
  absl::Duration timeout = absl::Seconds(30);  // --stall-timeout
  double factor = 10;                          // --stall-factor
};

// What one stage has said about the head step.
struct StageAnswer {
  bool answered = false;
  absl::Time at = absl::InfinitePast();
  double forward_seconds = 0;  // its compute time for the step (0 when it failed or passed)
};

struct HeadStep {
  // When the head became the oldest step in flight: its issue time, or the end of the step
  // before it, whichever is later.
  absl::Time since = absl::InfinitePast();
  // The cost model's time of this step on the slowest stage; 0 when it has no samples yet.
  double predicted_seconds = 0;
  std::vector<StageAnswer> stages;  // in stage order
};

struct StageWait {
  int stage = -1;
  absl::Duration waited;  // since the stage could start on the head
  absl::Duration bound;
  double work_seconds = 0;
  // Stage `stage - 1` answered and this one could start when it did (false: the head's start).
  bool after_previous = false;
};

// The stage the head now waits for and how long it has (nullopt when every stage answered, or
// stage 0 is pending before the cost model can bound it).
std::optional<StageWait> WaitingStage(const HeadStep& head, const StallOptions& options,
                                      absl::Time now);

// "stage 1 has not finished it 31.2s after stage 0 did (bound 30.5s = --stall-timeout 30s +
// --stall-factor 10 x 0.05s)"
std::string DescribeWait(const StageWait& wait, const StallOptions& options);

}  // namespace mp
