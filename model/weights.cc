#include "model/weights.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "model/safetensors.h"

namespace mp {
namespace {

using Json = nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Where each tensor of a model directory lives, opening files on first use.
class WeightSource {
 public:
  static absl::StatusOr<WeightSource> Open(const std::string& dir) {
    namespace fs = std::filesystem;
    WeightSource source;
    source.dir_ = dir;
    std::error_code ec;
    const fs::path single = fs::path(dir) / kSingleFile;
    const fs::path index = fs::path(dir) / kIndexFile;
    if (fs::exists(single, ec)) {
      source.single_ = single.string();
      return source;
    }
    if (!fs::exists(index, ec)) {
      return absl::NotFoundError(
          absl::StrCat("no ", kSingleFile, " or ", kIndexFile, " in '", dir, "'"));
    }
    source.index_path_ = index.string();
    MP_RETURN_IF_ERROR(source.ReadIndex());
    return source;
  }

  // The file holding `name`, opened.
  absl::StatusOr<std::shared_ptr<SafetensorsFile>> FileOf(const std::string& name) {
    std::string file = single_;
    if (file.empty()) {
      auto it = weight_map_.find(name);
      if (it == weight_map_.end()) {
        return absl::NotFoundError(absl::StrCat("tensor '", name, "' is not listed in the ",
                                                "weight_map of '", index_path_, "'"));
      }
      file = (std::filesystem::path(dir_) / it->second).string();
    }
    auto it = open_.find(file);
    if (it != open_.end()) return it->second;
    MP_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> opened, SafetensorsFile::Open(file));
    std::shared_ptr<SafetensorsFile> shared = std::move(opened);
    open_.emplace(file, shared);
    return shared;
  }

  std::vector<std::shared_ptr<SafetensorsFile>> OpenedFiles() const {
    std::vector<std::shared_ptr<SafetensorsFile>> files;
    for (const auto& [path, file] : open_) files.push_back(file);
    return files;
  }

 private:
  absl::Status ReadIndex() {
    auto bad = [&](absl::string_view problem) {
      return absl::InvalidArgumentError(absl::StrCat("'", index_path_, "': ", problem));
    };
    std::ifstream in(index_path_, std::ios::binary);
    if (!in) return absl::PermissionDeniedError(absl::StrCat("cannot open '", index_path_, "'"));
    std::ostringstream text;
    text << in.rdbuf();
    Json root;
    try {
      root = Json::parse(text.str());
    } catch (const Json::exception& e) {
      return bad(absl::StrCat("not valid JSON: ", e.what()));
    }
    if (!root.is_object()) return bad("must be a JSON object");
    auto map = root.find("weight_map");
    if (map == root.end() || !map->is_object()) return bad("'weight_map' must be an object");
    for (auto it = map->begin(); it != map->end(); ++it) {
      if (!it.value().is_string()) {
        return bad(absl::StrCat("weight_map entry '", it.key(), "' must be a file name"));
      }
      const std::string& file = it.value().get_ref<const std::string&>();
      if (file.empty() || file == "." || file == ".." ||
          file.find_first_of("/\\") != std::string::npos) {
        return bad(absl::StrCat("weight_map entry '", it.key(), "' names '", file,
                                "', not a file in the model directory"));
      }
      weight_map_.emplace(it.key(), file);
    }
    return absl::OkStatus();
  }

  std::string dir_;
  std::string single_;      // model.safetensors, when present
  std::string index_path_;  // otherwise the index
  std::map<std::string, std::string> weight_map_;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> open_;
};

}  // namespace

absl::StatusOr<std::vector<WeightSlot>> StageWeightSlots(const ModelConfig& config,
                                                         const WeightLoadOptions& options,
                                                         ModelWeights* weights) {
  const LayerRange& r = options.layers;
  if (r.begin < 0 || r.begin >= r.end || r.end > config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer range [", r.begin, ", ", r.end, ") is invalid: need 0 <= begin < end <= ",
        "num_hidden_layers = ", config.num_hidden_layers));
  }
  *weights = ModelWeights();
  weights->layers = r;
  weights->has_embedding = options.embedding;
  weights->has_head = options.head;
  weights->layer.resize(static_cast<size_t>(r.end - r.begin));

  const int64_t h = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  const int64_t q = config.q_dim();
  const int64_t kv = config.kv_dim();
  std::vector<WeightSlot> slots;
  auto add = [&](std::string name, std::vector<int64_t> shape, WeightKind kind, Tensor* t) {
    slots.push_back(WeightSlot{std::move(name), std::move(shape), kind, t});
  };
  if (options.embedding || (options.head && config.tie_word_embeddings)) {
    add("model.embed_tokens.weight", {config.vocab_size, h}, WeightKind::kEmbedding,
        &weights->embed_tokens);
  }
  for (int64_t i = r.begin; i < r.end; ++i) {
    LayerWeights& l = weights->layer[static_cast<size_t>(i - r.begin)];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    add(p + "input_layernorm.weight", {h}, WeightKind::kNorm, &l.input_norm);
    add(p + "self_attn.q_proj.weight", {q, h}, WeightKind::kMatrix, &l.q_proj);
    add(p + "self_attn.k_proj.weight", {kv, h}, WeightKind::kMatrix, &l.k_proj);
    add(p + "self_attn.v_proj.weight", {kv, h}, WeightKind::kMatrix, &l.v_proj);
    if (config.attention_bias) {
      add(p + "self_attn.q_proj.bias", {q}, WeightKind::kBias, &l.q_bias);
      add(p + "self_attn.k_proj.bias", {kv}, WeightKind::kBias, &l.k_bias);
      add(p + "self_attn.v_proj.bias", {kv}, WeightKind::kBias, &l.v_bias);
    }
    add(p + "self_attn.o_proj.weight", {h, q}, WeightKind::kMatrix, &l.o_proj);
    if (config.o_proj_bias()) add(p + "self_attn.o_proj.bias", {h}, WeightKind::kBias, &l.o_bias);
    add(p + "post_attention_layernorm.weight", {h}, WeightKind::kNorm, &l.post_attention_norm);
    add(p + "mlp.gate_proj.weight", {inter, h}, WeightKind::kMatrix, &l.gate_proj);
    add(p + "mlp.up_proj.weight", {inter, h}, WeightKind::kMatrix, &l.up_proj);
    add(p + "mlp.down_proj.weight", {h, inter}, WeightKind::kMatrix, &l.down_proj);
  }
  if (options.head) {
    add("model.norm.weight", {h}, WeightKind::kNorm, &weights->final_norm);
    if (!config.tie_word_embeddings) {
      add("lm_head.weight", {config.vocab_size, h}, WeightKind::kMatrix, &weights->lm_head);
    }
  }
  return slots;
}

absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& model_dir,
                                              const ModelConfig& config,
                                              const WeightLoadOptions& options) {
  ModelWeights weights;
  MP_ASSIGN_OR_RETURN(std::vector<WeightSlot> slots, StageWeightSlots(config, options, &weights));
  MP_ASSIGN_OR_RETURN(WeightSource source, WeightSource::Open(model_dir));
  for (const WeightSlot& slot : slots) {
    MP_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> file, source.FileOf(slot.name));
    MP_ASSIGN_OR_RETURN(Tensor t, file->Get(slot.name));
    if (t.dtype() != DType::kF32 && t.dtype() != DType::kF16 && t.dtype() != DType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", slot.name, "' in '", file->path(), "' has dtype ",
                       SafetensorsDTypeName(t.dtype()), "; weights must be F32, F16 or BF16"));
    }
    if (t.shape() != slot.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", slot.name, "' in '", file->path(), "' has shape ",
                       ShapeText(t.shape()), " but the config expects ", ShapeText(slot.shape)));
    }
    *slot.tensor = std::move(t);
  }
  if (weights.has_head && config.tie_word_embeddings) weights.lm_head = weights.embed_tokens;
  weights.storage =
      std::make_shared<std::vector<std::shared_ptr<SafetensorsFile>>>(source.OpenedFiles());
  return weights;
}

}  // namespace mp
