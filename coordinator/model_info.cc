#include "coordinator/model_info.h"

#include <sys/stat.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "runtime/backend_factory.h"
#include "runtime/stage_executor.h"

namespace mp {

absl::StatusOr<std::vector<int64_t>> SparseWorkspacePerLayer(const ModelConfig& config,
                                                             const SparsePrefillSettings* sparse,
                                                             const std::string& device,
                                                             int64_t max_chunk,
                                                             int64_t max_context) {
  std::vector<int64_t> out;
  if (sparse == nullptr || !sparse->heads.has_value() || !sparse->UseSparsePrefill(max_context) ||
      max_chunk < 1) {
    return out;
  }
  VerticalSlashReservation r =
      SparseReservationGeometry(config, sparse->last_q, max_chunk, max_context);
  for (const std::vector<SparseHeadConfig>& layer : sparse->heads->layers) {
    const std::vector<int64_t> budgets = EffectiveBudgets(layer);
    r.budgets = {budgets};
    absl::StatusOr<int64_t> bytes = SparseWorkspaceBytes(device, r);
    if (!bytes.ok()) {
      return Annotate(bytes.status(), absl::StrCat("sparse workspace of layer ", out.size()));
    }
    out.push_back(*bytes);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ModelInfo>> LoadModelInfo(const CoordinatorOptions& o) {
  auto info = std::make_unique<ModelInfo>();
  if (!o.model_preset.empty()) {
    if (o.model_preset == "qwen2.5-7b-instruct-1m") {
      info->config = Qwen25_7BInstruct1MConfig();
    } else if (o.model_preset == "qwen2.5-14b-instruct-1m") {
      info->config = Qwen25_14BInstruct1MConfig();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--model-preset ", o.model_preset,
                       ": expected qwen2.5-7b-instruct-1m or qwen2.5-14b-instruct-1m"));
    }
    info->name = o.model_preset;
    info->source.set_config_json(ModelConfigToJson(info->config));
    info->source.set_random_weights(true);
    info->source.set_random_seed(o.random_seed);
  } else {
    if (o.model_dir.empty()) {
      return absl::InvalidArgumentError(
          "give --model DIR (a Hugging Face model directory) or "
          "--model-preset");
    }
    struct stat st;
    if (stat(o.model_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::NotFoundError(absl::StrCat("model directory ", o.model_dir, " does not exist"));
    }
    MP_ASSIGN_OR_RETURN(info->config, LoadModelConfig(o.model_dir + "/config.json"));
    std::string dir = o.model_dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    const size_t slash = dir.find_last_of('/');
    info->name = slash == std::string::npos ? dir : dir.substr(slash + 1);
    info->source.set_model_dir(o.model_dir);
    info->source.set_random_weights(o.random_weights);
    info->source.set_random_seed(o.random_seed);
    struct stat tok;
    if (stat((o.model_dir + "/tokenizer.json").c_str(), &tok) == 0) {
      MP_ASSIGN_OR_RETURN(info->tokenizer, Tokenizer::Load(o.model_dir + "/tokenizer.json"));
      MP_ASSIGN_OR_RETURN(ChatTemplate chat, ChatTemplate::FromModelDir(o.model_dir));
      info->chat = chat;
      info->end_of_turn = info->tokenizer->TokenToId(ChatTemplate::kEndOfTurn);
    }
  }
  info->max_context = o.max_context > 0 ? o.max_context : info->config.max_position_embeddings;
  if (info->max_context <= 0) {
    return absl::InvalidArgumentError(
        "--max-context is 0 and the model's max_position_embeddings is not set");
  }
  {
    absl::StatusOr<std::shared_ptr<const SparsePrefillSettings>> sparse =
        ResolveSparsePrefillRequest(o.sparse, o.model_preset.empty() ? o.model_dir : "",
                                    info->config);
    if (!sparse.ok()) return Annotate(sparse.status(), "sparse prefill");
    info->sparse = *std::move(sparse);
  }
  MP_ASSIGN_OR_RETURN(info->sparse_workspace_per_layer,
                      SparseWorkspacePerLayer(info->config, info->sparse.get(), o.device,
                                              o.planner.max_chunk, info->max_context));
  return info;
}

}  // namespace mp
