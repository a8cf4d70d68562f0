// Sparsity refinement (qwen1m-spec.md §4, docs/sparse-refinement.md): per-head budget search
// and refinement driven by a recall measurement that the caller supplies (the engine runs the
// deployment procedure on calibration documents and returns per-head recall for one layer).
//
// Refinement: per layer, while a head's aggregated recall is below the target, add `step`
// (2048) to both of its budgets, up to the caps; all heads of a layer are measured together in
// each round. Search (for models that ship no file): per layer, measure MInference's base
// candidates and give every head the cheapest candidate (fewest keys) that reaches the target,
// or the one with the best recall when none does; refinement then starts from there.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/sparse_attention_config.h"

namespace mp {

// What the measurement reports per head (see kernels/cpu/vertical_slash_recall.h).
struct HeadRecall {
  double mean = 0.0;  // mean over the calibration queries
  double p05 = 0.0;   // 5th percentile
};

// Measures layer `layer` with the given per-head configs (effective budgets are the caller's
// business: SparseHeadConfig::effective_vertical_size) and returns one HeadRecall per head.
using LayerRecallFn =
    std::function<absl::StatusOr<std::vector<HeadRecall>>(int64_t layer,
                                                          const std::vector<SparseHeadConfig>&)>;

enum class RecallAggregate { kMean, kP05 };

struct RefinementOptions {
  double target_recall = 0.95;  // in (0, 1]
  RecallAggregate aggregate = RecallAggregate::kMean;
  int64_t step = 2048;  // added to both budgets per round (the increment of Qwen's files)
  int64_t max_vertical = 1 << 20;  // caps on the budgets (e.g. the calibration length)
  int64_t max_slash = 1 << 20;
  int64_t max_rounds = 64;  // per layer
};

struct LayerRefinement {
  double recall_before = 0.0;  // mean over heads of the aggregated recall
  double recall_after = 0.0;
  double min_head_before = 0.0;  // worst head
  double min_head_after = 0.0;
  int64_t heads_raised = 0;
  int64_t heads_below_target = 0;  // after refinement (at the caps or out of rounds)
  int64_t rounds = 0;              // measurements after the first
};

struct RefinementResult {
  SparseAttentionConfig config;  // scores hold the final aggregated recall of each head
  std::vector<LayerRefinement> layers;
};

// INVALID_ARGUMENT for bad options or an empty config; errors of `measure` (or a result with
// the wrong head count) are returned annotated with the layer.
absl::StatusOr<RefinementResult> RefineSparseAttentionConfig(const SparseAttentionConfig& initial,
                                                             const LayerRecallFn& measure,
                                                             const RefinementOptions& options);

// MInference's base candidates (vertical, slash), as in §3.2.
std::vector<std::pair<int64_t, int64_t>> BaseSparseCandidates();

// Initial per-head choice among `candidates` (default BaseSparseCandidates) for a model of
// num_layers x num_heads, with scores = the measured aggregated recall.
absl::StatusOr<SparseAttentionConfig> SearchInitialSparseAttentionConfig(
    int64_t num_layers, int64_t num_heads, const LayerRecallFn& measure,
    const RefinementOptions& options,
    std::vector<std::pair<int64_t, int64_t>> candidates = BaseSparseCandidates());

}  // namespace mp
