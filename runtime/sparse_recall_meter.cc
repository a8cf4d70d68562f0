#include "runtime/sparse_recall_meter.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "runtime/stage_executor.h"

namespace mp {

absl::StatusOr<std::unique_ptr<SparseRecallMeter>> SparseRecallMeter::Create(
    const ModelConfig& config, const ModelWeights& weights, std::shared_ptr<Backend> backend,
    std::vector<std::vector<int32_t>> documents, const SparseRecallMeterOptions& options) {
  if (options.chunk_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("recall meter: chunk_size must be positive, got ", options.chunk_size));
  }
  if (documents.empty()) return absl::InvalidArgumentError("recall meter: no documents");
  int64_t longest = 0;
  for (size_t d = 0; d < documents.size(); ++d) {
    if (documents[d].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("recall meter: document ", d, " is empty"));
    }
    for (size_t i = 0; i < documents[d].size(); ++i) {
      const int32_t id = documents[d][i];
      if (id < 0 || id >= config.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("recall meter: document ", d, " has token ", id, " at position ", i,
                         ", outside the vocabulary [0, ", config.vocab_size, ")"));
      }
    }
    longest = std::max<int64_t>(longest, static_cast<int64_t>(documents[d].size()));
  }
  // A chunk starts at every multiple of chunk_size below the document's length.
  const int64_t last_chunk = (longest - 1) / options.chunk_size * options.chunk_size;
  if (options.measure_from < 0 || options.measure_from > last_chunk) {
    return absl::InvalidArgumentError(absl::StrCat(
        "recall meter: measure_from (", options.measure_from,
        ") must be in [0, ", last_chunk, "]: no chunk of any document starts at or after it"));
  }
  MP_ASSIGN_OR_RETURN(SparseRecallProbe probe,
                      SparseRecallProbe::Create(config.num_hidden_layers,
                                                config.num_attention_heads, options.last_q));
  MP_RETURN_IF_ERROR(probe.SetMeasureFrom(options.measure_from));
  auto meter = std::unique_ptr<SparseRecallMeter>(new SparseRecallMeter());
  meter->config_ = config;
  meter->options_ = options;
  meter->documents_ = std::move(documents);
  meter->probe_ = std::make_shared<SparseRecallProbe>(std::move(probe));

  StageExecutorOptions ex;
  ex.kv_cache.max_tokens = longest;
  ex.mlp_block_rows = options.mlp_block_rows;
  ex.recall_probe = meter->probe_;
  MP_ASSIGN_OR_RETURN(std::unique_ptr<StageExecutor> executor,
                      StageExecutor::Create(config, weights, std::move(backend), ex));
  std::vector<std::unique_ptr<StageExecutor>> executors;
  executors.push_back(std::move(executor));
  EngineOptions engine;
  engine.chunk_size = options.chunk_size;
  engine.max_context = longest;
  MP_ASSIGN_OR_RETURN(meter->engine_, Engine::Create(std::move(executors), engine));
  return meter;
}

int64_t SparseRecallMeter::num_tokens() const {
  int64_t n = 0;
  for (const auto& d : documents_) n += static_cast<int64_t>(d.size());
  return n;
}

absl::StatusOr<ModelRecall> SparseRecallMeter::Measure(const BudgetSets& sets) {
  const int64_t layers = config_.num_hidden_layers, heads = config_.num_attention_heads;
  if (static_cast<int64_t>(sets.size()) != layers) {
    return absl::InvalidArgumentError(absl::StrCat("recall meter: budget sets for ", sets.size(),
                                                   " layers, the model has ", layers));
  }
  for (int64_t l = 0; l < layers; ++l) {
    std::vector<std::vector<int64_t>> budgets;
    for (size_t s = 0; s < sets[l].size(); ++s) {
      if (static_cast<int64_t>(sets[l][s].size()) != heads) {
        return absl::InvalidArgumentError(absl::StrCat("recall meter: budget set ", s, " of layer ",
                                                       l, " has ", sets[l][s].size(),
                                                       " heads, the model ", heads));
      }
      budgets.push_back(EffectiveBudgets(sets[l][s]));
    }
    MP_RETURN_IF_ERROR(probe_->SetBudgetSets(l, std::move(budgets)));
  }
  GenerationOptions prefill_only;
  prefill_only.max_new_tokens = 0;
  for (size_t d = 0; d < documents_.size(); ++d) {
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<GenerationResult> r = engine_->Generate(documents_[d], prefill_only);
    if (!r.ok()) return Annotate(r.status(), absl::StrCat("calibration document ", d));
    if (options_.on_document) {
      options_.on_document(
          passes_, static_cast<int64_t>(d),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  ModelRecall out(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) {
    for (size_t s = 0; s < sets[l].size(); ++s) {
      std::vector<HeadRecall> per_head;
      for (int64_t h = 0; h < heads; ++h) {
        const RecallSummary r = probe_->Summary(l, static_cast<int64_t>(s), h);
        per_head.push_back({r.mean, r.p05, r.density, r.count > 0 ? r.max : 0.0});
      }
      out[l].push_back(std::move(per_head));
    }
  }
  ++passes_;
  return out;
}

}  // namespace mp
