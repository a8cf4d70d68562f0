// Model architectures shipped in model/presets/<name>/config.json and compiled in, for runs and
// benchmarks with random weights (no checkpoint needed).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"

namespace mp {

// The preset names, e.g. "Qwen2.5-7B-Instruct-1M".
std::vector<std::string> ModelPresetNames();

// The config.json text of preset `name` (matched case-insensitively). NOT_FOUND names the
// presets that exist.
absl::StatusOr<std::string> ModelPresetJson(const std::string& name);

// ParseModelConfig of ModelPresetJson(name).
absl::StatusOr<ModelConfig> LoadModelPreset(const std::string& name);

}  // namespace mp
