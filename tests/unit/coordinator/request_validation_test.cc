// Request validation: every malformed field is INVALID_ARGUMENT naming the field and the limit.
#include "coordinator/request_validation.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/status_matchers.h"

namespace mp {
namespace {

using millipede::v1::GenerateRequest;

RequestLimits Limits() {
  RequestLimits l;
  l.vocab_size = 100;
  l.max_context = 50;
  l.has_tokenizer = true;
  return l;
}

GenerateRequest Tokens(std::vector<int32_t> ids) {
  GenerateRequest r;
  r.mutable_tokens()->mutable_ids()->Assign(ids.begin(), ids.end());
  return r;
}

TEST(RequestValidationTest, AcceptsGoodRequests) {
  GenerateRequest r = Tokens({1, 2, 3});
  r.set_max_new_tokens(10);
  r.set_request_id("abc-1");
  r.mutable_sampling()->set_temperature(0.7f);
  r.mutable_sampling()->set_top_p(0.9f);
  r.add_stop_token_ids(99);
  MP_EXPECT_OK(ValidateRequestFields(r, Limits()));
  MP_EXPECT_OK(ValidatePromptIds(std::vector<int32_t>{1, 2, 3}, 47, Limits(), "tokens.ids"));
  GenerateRequest text;
  text.set_text("hello");
  text.set_system("be brief");
  MP_EXPECT_OK(ValidateRequestFields(text, Limits()));
}

TEST(RequestValidationTest, NamesTheFieldAndTheLimit) {
  const auto bad = absl::StatusCode::kInvalidArgument;
  MP_EXPECT_ERROR(ValidateRequestFields(GenerateRequest(), Limits()), bad, "prompt");
  GenerateRequest r = Tokens({1});
  r.set_request_id(std::string(129, 'a'));
  MP_EXPECT_ERROR(ValidateRequestFields(r, Limits()), bad, "the limit is 128");
  r.set_request_id("tab\tbed");
  MP_EXPECT_ERROR(ValidateRequestFields(r, Limits()), bad, "request_id");
  r = Tokens({1});
  r.set_max_new_tokens(51);
  MP_EXPECT_ERROR(ValidateRequestFields(r, Limits()), bad,
                  "max_new_tokens 51 exceeds the maximum context of 50");
  r = Tokens({1});
  r.mutable_sampling()->set_temperature(INFINITY);
  MP_EXPECT_ERROR(ValidateRequestFields(r, Limits()), bad, "sampling.temperature");
  r = Tokens({1});
  r.mutable_sampling()->set_top_p(-0.1f);
  MP_EXPECT_ERROR(ValidateRequestFields(r, Limits()), bad, "sampling.top_p");
  r = Tokens({1});
  r.add_stop_token_ids(100);
  MP_EXPECT_ERROR(ValidateRequestFields(r, Limits()), bad, "stop_token_ids[0] = 100");
  for (int i = 0; i < 65; ++i) r.add_stop_token_ids(1);
  MP_EXPECT_ERROR(ValidateRequestFields(r, Limits()), bad, "the limit is 64");
  r = Tokens({1});
  r.set_raw(true);
  MP_EXPECT_ERROR(ValidateRequestFields(r, Limits()), bad, "text prompts only");
  GenerateRequest text;
  text.set_text(std::string(401, 'x'));  // 8 bytes per token of max_context
  MP_EXPECT_ERROR(ValidateRequestFields(text, Limits()), bad, "401 bytes; the limit is 400");
  text.set_text("");
  MP_EXPECT_ERROR(ValidateRequestFields(text, Limits()), bad, "text: the prompt is empty");
  text.set_text("hi");
  RequestLimits no_tokenizer = Limits();
  no_tokenizer.has_tokenizer = false;
  MP_EXPECT_ERROR(ValidateRequestFields(text, no_tokenizer), bad, "tokenizer.json");

  MP_EXPECT_ERROR(ValidatePromptIds(std::vector<int32_t>{}, 1, Limits(), "tokens.ids"), bad,
                  "empty");
  MP_EXPECT_ERROR(ValidatePromptIds(std::vector<int32_t>{1, 100}, 1, Limits(), "tokens.ids"), bad,
                  "tokens.ids[1] = 100 is outside the vocabulary [0, 100)");
  MP_EXPECT_ERROR(ValidatePromptIds(std::vector<int32_t>{-1}, 1, Limits(), "tokens.ids"), bad,
                  "tokens.ids[0] = -1");
  MP_EXPECT_ERROR(
      ValidatePromptIds(std::vector<int32_t>(45, 1), 6, Limits(), "text"), bad,
      "text: a prompt of 45 tokens + max_new_tokens 6 exceeds the maximum context of 50");
}

}  // namespace
}  // namespace mp
