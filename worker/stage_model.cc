#include "worker/stage_model.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

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
    const KvCacheOptions& kv) {
  WeightLoadOptions load;
  load.layers = layers;
  load.embedding = layers.begin == 0;
  load.head = layers.end == config.num_hidden_layers;
  ModelWeights weights;
  if (source.random_weights()) {
    // The CPU backend computes in fp32; device backends store bf16.
    const DType dtype = backend->device() == DeviceKind::kCpu ? DType::kF32 : DType::kBF16;
    MP_ASSIGN_OR_RETURN(weights, RandomModelWeights(config, load, source.random_seed(), dtype));
  } else {
    const std::string dir = ModelDir(source, model_dir_override);
    MP_ASSIGN_OR_RETURN(weights, LoadModelWeights(dir, config, load));
  }
  StageExecutorOptions options;
  options.kv_cache = kv;
  return StageExecutor::Create(config, weights, std::move(backend), options);
}

}  // namespace mp
