#include "worker/stage_model.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "runtime/backend_factory.h"

namespace mp {
namespace {

std::string ModelDir(const millipede::v1::ModelSource& source, const std::string& override_dir) {
  return override_dir.empty() ? source.model_dir() : override_dir;
}

}  // namespace

absl::StatusOr<ModelConfig> LoadSourceConfig(const millipede::v1::ModelSource& source,
                                             const std::string& model_dir_override) {
  if (!source.config_json().empty()) return ParseModelConfig(source.config_json());
  const std::string dir = ModelDir(source, model_dir_override);
  if (dir.empty()) {
    return absl::InvalidArgumentError("model: neither a model directory nor a config is given");
  }
  return LoadModelConfig(dir + "/config.json");
}

absl::StatusOr<std::unique_ptr<StageExecutor>> LoadStageExecutor(
    const millipede::v1::ModelSource& source, const std::string& model_dir_override,
    const ModelConfig& config, LayerRange layers, std::shared_ptr<Backend> backend,
    const KvCacheOptions& kv, const SparsePrefillRequest& sparse) {
  absl::StatusOr<std::shared_ptr<const SparsePrefillSettings>> settings =
      ResolveSparsePrefillRequest(sparse, ModelDir(source, model_dir_override), config);
  if (!settings.ok()) return Annotate(settings.status(), "sparse prefill");
  WeightLoadOptions load;
  load.layers = layers;
  load.embedding = layers.begin == 0;
  load.head = layers.end == config.num_hidden_layers;
  ModelWeights weights;
  if (source.random_weights() && backend->device() == DeviceKind::kCpu) {
    // The CPU backend computes in fp32.
    MP_ASSIGN_OR_RETURN(weights,
                        RandomModelWeights(config, load, source.random_seed(), DType::kF32));
  } else if (source.random_weights()) {
    // Device backends generate them in place (a 7B stage is gigabytes).
    MP_ASSIGN_OR_RETURN(weights,
                        RandomWeightsFor(*backend, config, load, source.random_seed()));
  } else {
    const std::string dir = ModelDir(source, model_dir_override);
    MP_ASSIGN_OR_RETURN(weights, LoadModelWeights(dir, config, load));
  }
  StageExecutorOptions options;
  options.kv_cache = kv;
  // On a GPU the MLP runs in row blocks so a long chunk's [rows, 2 * inter] intermediate stays
  // bounded (the same setting as the single-GPU TTFT bench).
  if (backend->device() != DeviceKind::kCpu) options.mlp_block_rows = 8192;
  options.sparse = *std::move(settings);
  return StageExecutor::Create(config, weights, std::move(backend), options);
}

}  // namespace mp
