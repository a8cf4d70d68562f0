// ChunkPlanner: chooses the length of a request's next prefill chunk.
//
// Dynamic mode (qwen1m-spec.md §5.3): the target step time is T* = t(0, max_chunk), the time of
// a history-free chunk of the largest size, under the cost model fitted so far; the next chunk
// after h tokens of history is the largest multiple of `align` in [min_chunk, max_chunk] with
// t(h, c) <= T*, so that every chunk takes about the same time as attention cost grows with
// position and no pipeline stage waits for a slow chunk. Until `min_samples` steps have been
// observed the planner uses max_chunk. Fixed mode always uses max_chunk (for comparison).
// A chunk never exceeds the tokens that remain. Not thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "coordinator/cost_model.h"

namespace mp {

enum class ChunkMode { kDynamic, kFixed };

struct ChunkPlannerOptions {
  ChunkMode mode = ChunkMode::kDynamic;
  int64_t max_chunk = 4096;
  int64_t min_chunk = 256;
  int64_t align = 64;
  int64_t min_samples = 2;
  CostModelOptions cost;
};

// INVALID_ARGUMENT naming the option: sizes must be positive and, in dynamic mode,
// min_chunk <= max_chunk.
absl::Status ValidateChunkPlannerOptions(const ChunkPlannerOptions& options);
// "dynamic" / "fixed".
const char* ChunkModeName(ChunkMode mode);

class ChunkPlanner {
 public:
  explicit ChunkPlanner(const ChunkPlannerOptions& options);

  // Tokens of the chunk that starts after `history` tokens when `remaining` (> 0) are left.
  int64_t NextChunk(int64_t history, int64_t remaining) const;
  // Records that a chunk of `chunk` tokens after `history` took `seconds` on the slowest stage.
  void Observe(int64_t history, int64_t chunk, double seconds) {
    model_.Observe(history, chunk, seconds);
  }
  // T* (0 before the model has samples).
  double TargetSeconds() const { return model_.Predict(0, options_.max_chunk); }
  const CostModel& model() const { return model_; }
  const ChunkPlannerOptions& options() const { return options_; }

 private:
  ChunkPlannerOptions options_;
  CostModel model_;
};

}  // namespace mp
