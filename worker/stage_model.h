// Loads the layers of one pipeline stage (with the embedding on the first stage and the final
// norm and LM head on the last) from a ModelSource and builds its StageExecutor.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "millipede/v1/worker.pb.h"
#include "model/config.h"
#include "model/sparse_attention_config.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/kv_cache.h"
#include "runtime/stage_executor.h"

namespace mp {

// The model config of `source`: its inline config_json, else <dir>/config.json where dir is
// `model_dir_override` when set, else source.model_dir.
absl::StatusOr<ModelConfig> LoadSourceConfig(const millipede::v1::ModelSource& source,
                                             const std::string& model_dir_override);

// Weights of `layers` (safetensors, or seeded random values when source.random_weights) on
// `backend`, with a KV cache of `kv` and the sparse prefill settings of `sparse` (resolved
// against the model directory: ResolveSparsePrefillRequest).
absl::StatusOr<std::unique_ptr<StageExecutor>> LoadStageExecutor(
    const millipede::v1::ModelSource& source, const std::string& model_dir_override,
    const ModelConfig& config, LayerRange layers, std::shared_ptr<Backend> backend,
    const KvCacheOptions& kv, const SparsePrefillRequest& sparse = {});

}  // namespace mp
