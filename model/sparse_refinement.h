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
  // Keys the sparse index gave those queries over their causal keys (0: not measured).
  double density = 0.0;
  // The highest recall of one query (above 1 only by rounding; 0: not measured).
  double max = 0.0;
};

// Measures layer `layer` with the given per-head configs (effective budgets are the caller's
// business: SparseHeadConfig::effective_vertical_size) and returns one HeadRecall per head.
using LayerRecallFn =
    std::function<absl::StatusOr<std::vector<HeadRecall>>(int64_t layer,
                                                          const std::vector<SparseHeadConfig>&)>;

// The measurement of every layer at once (one calibration pass measures all layers, since each
// layer's recall is taken on the dense residual stream): `sets[l]` lists budget sets of layer l
// (each a per-head config; an empty list: layer l is not measured), and the result holds, per
// layer, one HeadRecall per head for each of its sets, in order: result[l][set][head].
using BudgetSets = std::vector<std::vector<std::vector<SparseHeadConfig>>>;  // [layer][set][head]
using ModelRecall = std::vector<std::vector<std::vector<HeadRecall>>>;       // [layer][set][head]
using ModelRecallFn = std::function<absl::StatusOr<ModelRecall>(const BudgetSets& sets)>;

enum class RecallAggregate { kMean, kP05 };

struct RefinementOptions {
  double target_recall = 0.95;  // in (0, 1]
  RecallAggregate aggregate = RecallAggregate::kMean;
  int64_t step = 2048;  // added to both budgets per round (the increment of Qwen's files)
  int64_t max_vertical = 1 << 20;  // caps on the budgets (e.g. the calibration length)
  int64_t max_slash = 1 << 20;
  int64_t max_rounds = 64;  // per layer: raises of one step at most
  // RefineSparseAttentionConfigJointly: budget levels (steps above the current budgets) measured
  // per pass, >= 1. More levels cost more sparse evaluations per pass but fewer passes.
  int64_t steps_per_pass = 1;
};

struct LayerRefinement {
  double recall_before = 0.0;  // mean over heads of the aggregated recall
  double recall_after = 0.0;
  double min_head_before = 0.0;  // worst head
  double min_head_after = 0.0;
  double density_before = 0.0;  // mean over heads of HeadRecall::density
  double density_after = 0.0;
  double max_query_before = 0.0;  // the highest HeadRecall::max of the layer's heads
  double max_query_after = 0.0;
  int64_t heads_raised = 0;
  int64_t heads_below_target = 0;  // after refinement (at the caps or out of rounds)
  int64_t rounds = 0;              // measurements of this layer after the first
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

// The same refinement with a measurement of all layers per call: each pass measures, for every
// head still below the target, the next `steps_per_pass` levels (+step, +2 step, ... both
// budgets, capped), and every such head takes the first level that reaches the target (else
// the last). A head's recall depends only on its own budgets, so the result equals
// RefineSparseAttentionConfig's (per head: the fewest steps that reach the target, within the
// caps and max_rounds steps); a pass costs one calibration run instead of one per layer and
// round. `initial_recall` ([layer][head], e.g. from the search) replaces the first measurement.
absl::StatusOr<RefinementResult> RefineSparseAttentionConfigJointly(
    const SparseAttentionConfig& initial, const ModelRecallFn& measure,
    const RefinementOptions& options,
    const std::vector<std::vector<HeadRecall>>* initial_recall = nullptr);

// MInference's base candidates (vertical, slash), as in §3.2.
std::vector<std::pair<int64_t, int64_t>> BaseSparseCandidates();

// Initial per-head choice among `candidates` (default BaseSparseCandidates) for a model of
// num_layers x num_heads, with scores = the measured aggregated recall.
absl::StatusOr<SparseAttentionConfig> SearchInitialSparseAttentionConfig(
    int64_t num_layers, int64_t num_heads, const LayerRecallFn& measure,
    const RefinementOptions& options,
    std::vector<std::pair<int64_t, int64_t>> candidates = BaseSparseCandidates());

struct SearchResult {
  SparseAttentionConfig config;                 // scores = the aggregated recall of the choice
  std::vector<std::vector<HeadRecall>> recall;  // [layer][head] of the choice
};

// SearchInitialSparseAttentionConfig with one measurement of all candidates in all layers.
absl::StatusOr<SearchResult> SearchInitialSparseAttentionConfigJointly(
    int64_t num_layers, int64_t num_heads, const ModelRecallFn& measure,
    const RefinementOptions& options,
    std::vector<std::pair<int64_t, int64_t>> candidates = BaseSparseCandidates());

}  // namespace mp
