// ModelInfo: what the coordinator knows of the served model — its config (for validation,
// layer assignment and the KV budget), how workers load it (ModelSource), and, when the model
// directory has one, its tokenizer and chat template (text prompts).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/coordinator_options.h"
#include "millipede/v1/worker.pb.h"
#include "model/chat_template.h"
#include "model/config.h"
#include "model/sparse_attention_config.h"
#include "model/tokenizer.h"

namespace mp {

struct ModelInfo {
  std::string name;  // directory base name or preset
  ModelConfig config;
  millipede::v1::ModelSource source;
  std::unique_ptr<Tokenizer> tokenizer;  // null without tokenizer.json
  std::optional<ChatTemplate> chat;
  std::optional<int32_t> end_of_turn;  // <|im_end|>, when the vocabulary has it
  int64_t max_context = 0;
  // Sparse prefill settings (null: dense prefill) and, per layer, the bytes of sparse workspace
  // a stage holding that layer sets aside on the pipeline's device for the longest chunk over
  // the longest request (a stage takes the largest of its layers'; empty: none).
  std::shared_ptr<const SparsePrefillSettings> sparse;
  std::vector<int64_t> sparse_workspace_per_layer;
};

// From --model / --model-preset / --random-weights, with the sparse prefill of `options.sparse`
// (the model directory's file by default) sized for options.device and planner.max_chunk. Presets: "qwen2.5-7b-instruct-1m",
// "qwen2.5-14b-instruct-1m" (their architectures with seeded random weights).
absl::StatusOr<std::unique_ptr<ModelInfo>> LoadModelInfo(const CoordinatorOptions& options);

// Per layer of `config`, the sparse workspace (SparseWorkspaceBytes, runtime/backend_factory.h)
// of chunks of up to `max_chunk` tokens over prompts of up to `max_context` tokens with that
// layer's budgets on `device`; empty when `sparse` is null or no such prompt runs sparse.
absl::StatusOr<std::vector<int64_t>> SparseWorkspacePerLayer(const ModelConfig& config,
                                                             const SparsePrefillSettings* sparse,
                                                             const std::string& device,
                                                             int64_t max_chunk,
                                                             int64_t max_context);

}  // namespace mp
