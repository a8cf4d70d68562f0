// SparseRecallProbe: attention-recall instrumentation of the stage executor for the sparsity
// refinement (qwen1m-spec.md §4, docs/sparse-refinement.md).
//
// When StageExecutorOptions::recall_probe is set, every prefill chunk (start < prompt_len) of
// every layer that has budget sets here runs, besides its dense attention (Backend::Attention, or
// Backend::DcaAttention with DCA), Backend::VerticalSlashAttention once per budget set on the
// same queries and the same cache: the deployment procedure of that chunk (DCA pieces, per-piece
// last-q selection at continuous positions, the regions) with those budgets. The probe then
// receives, per head and query,
//
//   recall = exp(lse_sparse - lse_dense)        in (0, 1] up to rounding
//
// (the fraction of the full softmax mass the sparse selection keeps) and accumulates it per
// (layer, set, head): the count, the exact sum and min / max, and a histogram of 4096 bins over
// [0, 1] for the 5th percentile. The layer output stays the dense one, so the residual stream
// is the dense model's and every layer is measured independently of the others' budgets.
//
// Budget sets are per layer (global layer index): each is [q_heads * 2] effective budgets
// (vertical, slash) per q head, as Backend::VerticalSlashAttention takes them (vertical 30
// already raised to 130: SparseHeadConfig::effective_vertical_size). A head's recall depends on
// its own budgets only, so one set may give every head a different budget level.
//
// Not thread-safe; one probe may serve a chain of executors that run one after the other.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mp {

struct RecallSummary {
  int64_t count = 0;  // queries measured
  double mean = 0.0;  // exact mean (1 when nothing was measured)
  double min = 0.0;
  double max = 0.0;
  double p05 = 0.0;  // 5th percentile (nearest rank) from the histogram, within [min, max]
  // Keys the sparse index gave the measured queries over their causal keys (sum of position + 1),
  // when Record had them (0 otherwise): what the budgets cost.
  double density = 0.0;
};

class SparseRecallProbe {
 public:
  static constexpr int kBins = 4096;
  // A recall above 1 is the two kernels' bf16 arithmetic, larger on real models than on random
  // inputs: up to 1.13 on SmolLM2-135M at 1M tokens, and 1.07 with full budgets, where both
  // attend the same keys (docs/benchmarks.md). Record rejects what that cannot give: more than
  // 1.5 times the dense mass. (The GPU tests bound the recall by 1.01 on random inputs.)
  static constexpr double kMaxRecall = 1.5;

  // INVALID_ARGUMENT unless num_layers > 0, q_heads > 0 and last_q is in [1, 64].
  static absl::StatusOr<SparseRecallProbe> Create(int64_t num_layers, int64_t q_heads,
                                                  int64_t last_q = 64);

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t q_heads() const { return q_heads_; }
  int64_t last_q() const { return last_q_; }

  // Replaces the budget sets of `layer` (each [q_heads * 2], every value in [1, 2^31 - 1]) and
  // clears that layer's accumulators. An empty list turns the layer's measurement off.
  absl::Status SetBudgetSets(int64_t layer, std::vector<std::vector<int64_t>> sets);
  const std::vector<std::vector<int64_t>>& budget_sets(int64_t layer) const {
    return layers_[layer].sets;
  }
  // True when any layer has a budget set.
  bool active() const;
  // Only prompt chunks that start at or after `position` are measured: the executor runs the
  // sparse op for them alone (0, the default: every chunk). INVALID_ARGUMENT when negative.
  absl::Status SetMeasureFrom(int64_t position);
  int64_t measure_from() const { return measure_from_; }
  // Clears every accumulator (the budget sets stay).
  void Reset();

  // One chunk of one layer: queries [query_begin, query_begin + n) of set `set`. dense_lse and
  // sparse_lse are host [q_heads, n]; index_keys (may be null) host [q_heads], the keys the
  // sparse index gave those queries (VerticalSlashAttentionParams::index_keys). INTERNAL naming
  // the layer, set, head and position when a recall is not finite or above kMaxRecall (a sparse
  // selection cannot keep more than all keys; the margin is for rounding).
  absl::Status Record(int64_t layer, int64_t set, int64_t query_begin, int64_t n,
                      const float* dense_lse, const float* sparse_lse,
                      const int64_t* index_keys = nullptr);

  RecallSummary Summary(int64_t layer, int64_t set, int64_t head) const;

 private:
  struct Accumulator {
    int64_t count = 0;
    double sum = 0.0;
    double min = 1.0, max = 0.0;
    std::vector<int64_t> histogram;  // kBins, allocated on first use
    double index_keys = 0.0, causal_keys = 0.0;  // of the queries recorded with index keys
  };
  struct Layer {
    std::vector<std::vector<int64_t>> sets;
    std::vector<Accumulator> acc;  // [sets][q_heads]
  };

  SparseRecallProbe() = default;

  std::vector<Layer> layers_;
  int64_t q_heads_ = 0;
  int64_t last_q_ = 64;
  int64_t measure_from_ = 0;
};

}  // namespace mp
