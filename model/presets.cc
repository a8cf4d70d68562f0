#include "model/presets.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace mp {
namespace internal {
// Generated from model/presets/*/config.json (model/CMakeLists.txt).
extern const std::vector<std::pair<std::string, std::string>>& ModelPresetTable();
}  // namespace internal

std::vector<std::string> ModelPresetNames() {
  std::vector<std::string> names;
  for (const auto& [name, json] : internal::ModelPresetTable()) names.push_back(name);
  return names;
}

absl::StatusOr<std::string> ModelPresetJson(const std::string& name) {
  for (const auto& [preset, json] : internal::ModelPresetTable()) {
    if (absl::EqualsIgnoreCase(preset, name)) return json;
  }
  return absl::NotFoundError(absl::StrCat("no model preset '", name, "' (presets: ",
                                          absl::StrJoin(ModelPresetNames(), ", "), ")"));
}

absl::StatusOr<ModelConfig> LoadModelPreset(const std::string& name) {
  MP_ASSIGN_OR_RETURN(std::string json, ModelPresetJson(name));
  absl::StatusOr<ModelConfig> config = ParseModelConfig(json);
  if (!config.ok()) return Annotate(config.status(), absl::StrCat("model preset ", name));
  return config;
}

}  // namespace mp
