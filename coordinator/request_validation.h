// Validation of a GenerateRequest before it is admitted. Every error is INVALID_ARGUMENT naming
// the field and the limit (a request that can never run); nothing here depends on the load.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "millipede/v1/coordinator.pb.h"

namespace mp {

struct RequestLimits {
  int64_t vocab_size = 0;
  int64_t max_context = 0;     // prompt + max_new_tokens
  int64_t max_text_bytes = 0;  // text prompts; 0: 8 bytes per token of max_context
  int64_t max_stop_tokens = 64;
  bool has_tokenizer = false;
};

// Fields that do not need the prompt's token ids: request_id, which prompt is set, text size,
// system/raw with a token prompt, max_new_tokens, sampling, stop ids.
absl::Status ValidateRequestFields(const millipede::v1::GenerateRequest& request,
                                   const RequestLimits& limits);
// The prompt's token ids (given or tokenized): non-empty, inside the vocabulary, and with
// max_new_tokens within the maximum context. `field` names them in errors ("tokens.ids" or
// "text").
absl::Status ValidatePromptIds(std::span<const int32_t> ids, int64_t max_new_tokens,
                               const RequestLimits& limits, const char* field);

}  // namespace mp
