#include "coordinator/request_validation.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace mp {

using millipede::v1::GenerateRequest;

absl::Status ValidateRequestFields(const GenerateRequest& r, const RequestLimits& limits) {
  if (r.request_id().size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id has ", r.request_id().size(), " characters; the limit is 128"));
  }
  for (char c : r.request_id()) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          "request_id must be printable ASCII without spaces (0x21-0x7e)");
    }
  }
  switch (r.prompt_case()) {
    case GenerateRequest::kTokens:
      if (r.raw() || !r.system().empty()) {
        return absl::InvalidArgumentError(
            "raw and system apply to text prompts only; this request sends tokens");
      }
      break;
    case GenerateRequest::kText: {
      if (r.text().empty()) return absl::InvalidArgumentError("text: the prompt is empty");
      const int64_t max_bytes =
          limits.max_text_bytes > 0 ? limits.max_text_bytes : 8 * limits.max_context;
      const int64_t bytes = static_cast<int64_t>(r.text().size() + r.system().size());
      if (bytes > max_bytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("text + system hold ", bytes, " bytes; the limit is ", max_bytes));
      }
      if (!limits.has_tokenizer) {
        return absl::InvalidArgumentError(
            "text: this model directory has no tokenizer.json; send token ids instead");
      }
      break;
    }
    default:
      return absl::InvalidArgumentError("prompt: set either tokens or text");
  }
  if (static_cast<int64_t>(r.max_new_tokens()) > limits.max_context) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens ", r.max_new_tokens(),
                                                   " exceeds the maximum context of ",
                                                   limits.max_context, " tokens"));
  }
  const float t = r.sampling().temperature();
  if (!std::isfinite(t) || t < 0 || t > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.temperature must be in [0, 100], got ", t));
  }
  const float p = r.sampling().top_p();
  if (!std::isfinite(p) || p < 0 || p > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_p must be in [0, 1] (0 means 1), got ", p));
  }
  if (r.stop_token_ids_size() > limits.max_stop_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("stop_token_ids holds ", r.stop_token_ids_size(),
                                                   " ids; the limit is ", limits.max_stop_tokens));
  }
  for (int i = 0; i < r.stop_token_ids_size(); ++i) {
    const int32_t id = r.stop_token_ids(i);
    if (id < 0 || id >= limits.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stop_token_ids[", i, "] = ", id,
                                                     " is outside the vocabulary [0, ",
                                                     limits.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePromptIds(std::span<const int32_t> ids, int64_t max_new_tokens,
                               const RequestLimits& limits, const char* field) {
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": the prompt is empty"));
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n + max_new_tokens > limits.max_context) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": a prompt of ", n, " tokens + max_new_tokens ", max_new_tokens,
                     " exceeds the maximum context of ", limits.max_context, " tokens"));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= limits.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "] = ", ids[i],
                                                     " is outside the vocabulary [0, ",
                                                     limits.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace mp
