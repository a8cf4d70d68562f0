#include "coordinator/chunk_planner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mp {

absl::Status ValidateChunkPlannerOptions(const ChunkPlannerOptions& o) {
  if (o.max_chunk <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max-chunk must be positive, got ", o.max_chunk));
  }
  if (o.mode == ChunkMode::kDynamic && (o.min_chunk <= 0 || o.min_chunk > o.max_chunk)) {
    return absl::InvalidArgumentError(
        absl::StrCat("min-chunk must be in [1, max-chunk = ", o.max_chunk, "], got ", o.min_chunk));
  }
  if (o.align <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("chunk-align must be positive, got ", o.align));
  }
  return absl::OkStatus();
}

const char* ChunkModeName(ChunkMode mode) {
  return mode == ChunkMode::kFixed ? "fixed" : "dynamic";
}

ChunkPlanner::ChunkPlanner(const ChunkPlannerOptions& options)
    : options_(options), model_(options.cost) {}

int64_t ChunkPlanner::NextChunk(int64_t history, int64_t remaining) const {
  if (remaining <= 0) return 0;
  const ChunkPlannerOptions& o = options_;
  int64_t chunk = o.max_chunk;
  if (o.mode == ChunkMode::kDynamic && model_.samples() >= o.min_samples) {
    const double target = TargetSeconds() * (1 + 1e-9);
    // Candidates: multiples of align in [min_chunk, max_chunk] (min_chunk rounded up to one).
    const int64_t lo_k = std::max<int64_t>(1, (o.min_chunk + o.align - 1) / o.align);
    const int64_t hi_k = std::max<int64_t>(lo_k, o.max_chunk / o.align);
    if (model_.Predict(history, lo_k * o.align) > target) {
      chunk = std::min(o.min_chunk, o.max_chunk);
    } else {
      int64_t lo = lo_k, hi = hi_k;  // invariant: lo fits
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (model_.Predict(history, mid * o.align) <= target) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      chunk = std::min(lo * o.align, o.max_chunk);
    }
  }
  return std::min(chunk, remaining);
}

}  // namespace mp
