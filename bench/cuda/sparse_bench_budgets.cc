#include "bench/cuda/sparse_bench_budgets.h"

#include "model/presets.h"
#include "model/sparse_attention_config.h"

namespace mp::bench {

bool LoadQwen7bBudgets(const std::string& path, const std::string& layer,
                       std::vector<std::vector<int64_t>>* budgets, std::string* error) {
  absl::StatusOr<ModelConfig> model = LoadModelPreset("Qwen2.5-7B-Instruct-1M");
  if (!model.ok()) {
    *error = std::string(model.status().message());
    return false;
  }
  absl::StatusOr<SparseAttentionConfig> file = LoadSparseAttentionConfig(path, *model);
  if (!file.ok()) {
    *error = std::string(file.status().message());
    return false;
  }
  for (int64_t l = 0; l < file->num_layers(); ++l) {
    if (!layer.empty() && layer != "all" && std::to_string(l) != layer) continue;
    std::vector<int64_t> b;
    for (const SparseHeadConfig& h : file->layers[l]) {
      b.push_back(h.effective_vertical_size());
      b.push_back(h.effective_slash_size());
    }
    budgets->push_back(std::move(b));
  }
  if (budgets->empty()) {
    *error = "--layer " + layer + " selects no layer of " + path;
    return false;
  }
  return true;
}

}  // namespace mp::bench
