#include "model/sparse_attention_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace mp {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

std::string Show(const Json& value) {
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

std::string HeadName(int64_t layer, absl::string_view head) {
  return absl::StrCat("layer ", layer, " head \"", head, "\"");
}

// The canonical decimal head index of `key` ("0", "17"; not "07", "+1" or "1.0"), or -1.
int64_t HeadIndex(const std::string& key) {
  if (key.empty() || key.size() > 9) return -1;
  if (key.size() > 1 && key[0] == '0') return -1;
  int64_t value = 0;
  for (char c : key) {
    if (c < '0' || c > '9') return -1;
    value = value * 10 + (c - '0');
  }
  return value;
}

absl::StatusOr<int64_t> Budget(const Json& value, int64_t layer, const std::string& head,
                               absl::string_view field) {
  int64_t v = 0;
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(kMaxSparseBudget)) {
      return absl::InvalidArgumentError(absl::StrCat(HeadName(layer, head), ": ", field, " = ",
                                                     Show(value), " exceeds the limit ",
                                                     kMaxSparseBudget));
    }
    v = static_cast<int64_t>(u);
  } else if (value.is_number_integer()) {
    v = value.get<int64_t>();
  } else {
    return absl::InvalidArgumentError(absl::StrCat(HeadName(layer, head), ": ", field,
                                                   " must be an integer, got ", Show(value)));
  }
  if (v <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(HeadName(layer, head), ": ", field, " must be positive, got ", v));
  }
  if (v > kMaxSparseBudget) {
    return absl::InvalidArgumentError(absl::StrCat(HeadName(layer, head), ": ", field, " = ", v,
                                                   " exceeds the limit ", kMaxSparseBudget));
  }
  return v;
}

absl::StatusOr<SparseHeadConfig> ParseHead(const Json& value, int64_t layer,
                                           const std::string& head) {
  if (!value.is_array() || value.size() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        HeadName(layer, head),
        ": expected [pattern, vertical_size, slash_size, score], got ", Show(value)));
  }
  if (!value[0].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(HeadName(layer, head),
                                                   ": pattern must be a string, got ",
                                                   Show(value[0])));
  }
  const std::string pattern = value[0].get<std::string>();
  if (pattern != kVerticalAndSlashPattern) {
    return absl::UnimplementedError(absl::StrCat(HeadName(layer, head), ": pattern \"", pattern,
                                                 "\" is not supported (only \"",
                                                 kVerticalAndSlashPattern, "\")"));
  }
  SparseHeadConfig out;
  MP_ASSIGN_OR_RETURN(out.vertical_size, Budget(value[1], layer, head, "vertical_size"));
  MP_ASSIGN_OR_RETURN(out.slash_size, Budget(value[2], layer, head, "slash_size"));
  if (!value[3].is_number() || !std::isfinite(value[3].get<double>())) {
    return absl::InvalidArgumentError(absl::StrCat(
        HeadName(layer, head), ": score must be a finite number, got ", Show(value[3])));
  }
  out.score = value[3].get<double>();
  return out;
}

absl::StatusOr<SparseAttentionConfig> ParseRoot(const Json& root, int64_t num_layers,
                                                int64_t num_heads) {
  if (!root.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a JSON list with one object per layer, got ", Show(root)));
  }
  if (static_cast<int64_t>(root.size()) != num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("has ", root.size(),
                                                   " layers but the model has num_hidden_layers = ",
                                                   num_layers));
  }
  SparseAttentionConfig config;
  config.layers.resize(static_cast<size_t>(num_layers));
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const Json& entry = root[static_cast<size_t>(layer)];
    if (!entry.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer, ": expected an object keyed by head index, got ", Show(entry)));
    }
    if (static_cast<int64_t>(entry.size()) != num_heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", layer, ": has ", entry.size(),
                       " heads but the model has num_attention_heads = ", num_heads));
    }
    std::vector<std::optional<SparseHeadConfig>> heads(static_cast<size_t>(num_heads));
    for (auto it = entry.begin(); it != entry.end(); ++it) {
      const int64_t h = HeadIndex(it.key());
      if (h < 0 || h >= num_heads) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", layer, ": key \"", it.key(), "\" is not a head index in [0, ", num_heads,
            ") written in decimal"));
      }
      MP_ASSIGN_OR_RETURN(heads[static_cast<size_t>(h)], ParseHead(it.value(), layer, it.key()));
    }
    // nlohmann::json objects hold unique keys and there are num_heads of them, all in range:
    // every head is present exactly once.
    for (auto& head : heads) config.layers[static_cast<size_t>(layer)].push_back(*head);
  }
  return config;
}

absl::StatusOr<std::string> ReadFile(const std::string& file) {
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) {
    return absl::NotFoundError(absl::StrCat("sparse attention config not found: ", file));
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat("cannot open ", file));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", file));
  return text.str();
}

}  // namespace

absl::StatusOr<SparseAttentionConfig> ParseSparseAttentionConfig(std::string_view json_text,
                                                                 int64_t num_layers,
                                                                 int64_t num_heads) {
  if (num_layers <= 0 || num_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("model shape must be positive, got ",
                                                   num_layers, " layers and ", num_heads,
                                                   " heads"));
  }
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("not valid JSON: ", e.what()));
  }
  try {
    return ParseRoot(root, num_layers, num_heads);
  } catch (const Json::exception& e) {  // defensive: every access above is type-checked
    return absl::InvalidArgumentError(e.what());
  }
}

absl::StatusOr<SparseAttentionConfig> ParseSparseAttentionConfig(std::string_view json_text,
                                                                 const ModelConfig& model) {
  return ParseSparseAttentionConfig(json_text, model.num_hidden_layers,
                                    model.num_attention_heads);
}

absl::StatusOr<SparseAttentionConfig> LoadSparseAttentionConfig(const std::string& path,
                                                                const ModelConfig& model) {
  std::error_code ec;
  std::string file = path;
  if (std::filesystem::is_directory(path, ec)) {
    file = (std::filesystem::path(path) / kSparseAttentionConfigFileName).string();
  }
  MP_ASSIGN_OR_RETURN(std::string text, ReadFile(file));
  absl::StatusOr<SparseAttentionConfig> config = ParseSparseAttentionConfig(text, model);
  if (!config.ok()) return Annotate(config.status(), file);
  return config;
}

std::string SparseAttentionConfigToJson(const SparseAttentionConfig& config) {
  OrderedJson root = OrderedJson::array();
  for (const auto& layer : config.layers) {
    OrderedJson entry = OrderedJson::object();
    for (size_t h = 0; h < layer.size(); ++h) {
      const SparseHeadConfig& head = layer[h];
      entry[std::to_string(h)] = OrderedJson::array(
          {kVerticalAndSlashPattern, head.vertical_size, head.slash_size, head.score});
    }
    root.push_back(std::move(entry));
  }
  return root.dump() + "\n";
}

absl::Status WriteSparseAttentionConfig(const SparseAttentionConfig& config,
                                        const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot create ", tmp));
    out << SparseAttentionConfigToJson(config);
    out.close();
    if (!out) return absl::DataLossError(absl::StrCat("error writing ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<SparseAttentionConfig> SliceSparseAttentionHeads(const SparseAttentionConfig& config,
                                                                int64_t rank, int64_t world) {
  const int64_t heads = config.num_heads();
  if (world <= 0 || rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor-parallel rank ", rank, " must be in [0, world = ", world, ")"));
  }
  if (heads % world != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel world ", world,
                                                   " does not divide the ", heads,
                                                   " heads of the sparse attention config"));
  }
  const int64_t local = heads / world;
  SparseAttentionConfig out;
  for (const auto& layer : config.layers) {
    out.layers.emplace_back(layer.begin() + rank * local, layer.begin() + (rank + 1) * local);
  }
  return out;
}

absl::StatusOr<SparsePrefillSettings> ResolveSparsePrefillSettings(
    const ModelConfig& model, std::optional<SparseAttentionConfig> heads,
    const SparsePrefillOverrides& overrides) {
  SparsePrefillSettings s;
  const std::optional<DualChunkConfig>& dca = model.dual_chunk;
  if (dca.has_value()) {
    s.threshold = dca->sparse_attention_threshold;
    s.last_q = dca->sparse_attention_last_q;
  }
  if (overrides.threshold.has_value()) s.threshold = *overrides.threshold;
  if (overrides.last_q.has_value()) s.last_q = *overrides.last_q;
  if (s.threshold < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sparse_attention_threshold must be >= 0 (prompt tokens), got ", s.threshold));
  }
  if (s.last_q < 1 || s.last_q > kMaxSparseLastQ) {
    return absl::InvalidArgumentError(absl::StrCat("sparse_attention_last_q must be in [1, ",
                                                   kMaxSparseLastQ, "], got ", s.last_q));
  }
  if (heads.has_value() && (heads->num_layers() != model.num_hidden_layers ||
                            heads->num_heads() != model.num_attention_heads)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sparse attention config has ", heads->num_layers(), " layers x ", heads->num_heads(),
        " heads but the model has ", model.num_hidden_layers, " x ", model.num_attention_heads));
  }
  if (overrides.enabled.has_value()) {
    s.enabled = *overrides.enabled;
  } else if (dca.has_value() && dca->sparse_attention_enabled_given) {
    s.enabled = dca->sparse_attention_enabled;
  } else {
    s.enabled = dca.has_value() && heads.has_value();
  }
  if (s.enabled && !heads.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("sparse attention is enabled but there is no per-head config (",
                     kSparseAttentionConfigFileName, ")"));
  }
  s.heads = std::move(heads);
  return s;
}

absl::StatusOr<SparsePrefillSettings> LoadSparsePrefillSettings(
    const std::string& model_dir, const ModelConfig& model,
    const SparsePrefillOverrides& overrides) {
  const std::string file =
      (std::filesystem::path(model_dir) / kSparseAttentionConfigFileName).string();
  std::optional<SparseAttentionConfig> heads;
  std::error_code ec;
  if (std::filesystem::exists(file, ec)) {
    MP_ASSIGN_OR_RETURN(heads, LoadSparseAttentionConfig(file, model));
  }
  return ResolveSparsePrefillSettings(model, std::move(heads), overrides);
}

absl::StatusOr<std::shared_ptr<const SparsePrefillSettings>> ResolveSparsePrefillRequest(
    const SparsePrefillRequest& request, const std::string& model_dir, const ModelConfig& model) {
  SparsePrefillOverrides overrides = request.overrides;
  absl::StatusOr<SparsePrefillSettings> settings;
  if (!request.file.empty()) {
    if (overrides.enabled.has_value() && !*overrides.enabled) {
      return absl::InvalidArgumentError(
          absl::StrCat("sparse prefill is both turned off and given the config ", request.file));
    }
    overrides.enabled = true;
    MP_ASSIGN_OR_RETURN(SparseAttentionConfig heads,
                        LoadSparseAttentionConfig(request.file, model));
    settings = ResolveSparsePrefillSettings(model, std::move(heads), overrides);
  } else if (!model_dir.empty()) {
    settings = LoadSparsePrefillSettings(model_dir, model, overrides);
  } else {
    settings = ResolveSparsePrefillSettings(model, std::nullopt, overrides);
  }
  if (!settings.ok()) return settings.status();
  if (!settings->enabled) return std::shared_ptr<const SparsePrefillSettings>();
  return std::make_shared<const SparsePrefillSettings>(*std::move(settings));
}

}  // namespace mp
