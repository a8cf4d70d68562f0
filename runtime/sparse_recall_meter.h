// SparseRecallMeter: the measurement of the sparsity refinement (qwen1m-spec.md §4,
// docs/sparse-refinement.md) on a model and a set of calibration documents.
//
// Measure(sets) prefills every document through the engine (Engine::Generate with no new
// tokens: the deployment's chunked prefill in engine chunks of `chunk_size`, DCA when the model
// config has it) with a SparseRecallProbe on the stage executor, so every prompt chunk of every
// layer also runs the sparse prefill of each budget set and the per-query recall
// exp(lse_sparse - lse_dense) is accumulated over all queries of all documents. It returns, per
// layer, set and head, the mean and the 5th percentile: the ModelRecallFn contract of
// model/sparse_refinement.h. One call is one calibration pass: a dense prefill of each document
// plus one sparse evaluation per budget set and layer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/sparse_refinement.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/engine.h"
#include "runtime/sparse_recall_probe.h"

namespace mp {

struct SparseRecallMeterOptions {
  int64_t chunk_size = 32768;  // engine chunk of the prefill, > 0
  int64_t last_q = 64;         // sparse_attention_last_q, in [1, 64]
  int64_t mlp_block_rows = 0;  // StageExecutorOptions::mlp_block_rows
  // Only prompt chunks that start at or after this position are measured
  // (SparseRecallProbe::SetMeasureFrom); some chunk of some document must.
  int64_t measure_from = 0;
  // After each document of each pass: pass index (0-based), document index, seconds it took.
  std::function<void(int64_t pass, int64_t document, double seconds)> on_document;
};

class SparseRecallMeter {
 public:
  // `weights` must hold the whole model. Every document must be non-empty with token ids in the
  // vocabulary (INVALID_ARGUMENT naming the document otherwise).
  static absl::StatusOr<std::unique_ptr<SparseRecallMeter>> Create(
      const ModelConfig& config, const ModelWeights& weights, std::shared_ptr<Backend> backend,
      std::vector<std::vector<int32_t>> documents, const SparseRecallMeterOptions& options);

  // sets: [num_layers][set][num_heads] (an empty list leaves a layer out); the result has the
  // same shape. INVALID_ARGUMENT for a shape that does not match the model.
  absl::StatusOr<ModelRecall> Measure(const BudgetSets& sets);

  int64_t passes() const { return passes_; }
  int64_t num_tokens() const;  // tokens of all documents

 private:
  SparseRecallMeter() = default;

  ModelConfig config_;
  SparseRecallMeterOptions options_;
  std::vector<std::vector<int32_t>> documents_;
  std::shared_ptr<SparseRecallProbe> probe_;
  std::unique_ptr<Engine> engine_;
  int64_t passes_ = 0;
};

}  // namespace mp
