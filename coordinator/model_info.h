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
};

// From --model / --model-preset / --random-weights. Presets: "qwen2.5-7b-instruct-1m",
// "qwen2.5-14b-instruct-1m" (their architectures with seeded random weights).
absl::StatusOr<std::unique_ptr<ModelInfo>> LoadModelInfo(const CoordinatorOptions& options);

}  // namespace mp
