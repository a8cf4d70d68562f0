// Passkey prompts: sized to the target in tokens, needle at the requested depth, the question
// through the chat template with the primed answer, and the answer parser.
#include "bench/passkey_prompt.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "common/status_matchers.h"

namespace mp::bench {
namespace {

class PasskeyPromptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* dir = std::getenv("MILLIPEDE_SMOLLM2_DIR");
    ASSERT_NE(dir, nullptr) << "MILLIPEDE_SMOLLM2_DIR must name the converted SmolLM2 model "
                               "(scripts/fetch_default_model.sh)";
    MP_ASSERT_OK_AND_ASSIGN(tokenizer_, Tokenizer::Load(std::string(dir) + "/tokenizer.json"));
    MP_ASSERT_OK_AND_ASSIGN(chat_, ChatTemplate::FromModelDir(dir));
  }
  std::unique_ptr<Tokenizer> tokenizer_;
  ChatTemplate chat_;
};

TEST_F(PasskeyPromptTest, FillsTheTargetAndPlacesTheNeedle) {
  for (int64_t target : {int64_t{600}, int64_t{2048}, int64_t{4096}}) {
    int64_t previous_needle = -1;
    for (double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
      SCOPED_TRACE(::testing::Message() << "target " << target << " depth " << depth);
      MP_ASSERT_OK_AND_ASSIGN(PasskeyPrompt p,
                              BuildPasskeyPrompt(*tokenizer_, chat_, {target, depth, "71432"}));
      const int64_t n = static_cast<int64_t>(p.ids.size());
      EXPECT_LE(n, target);
      EXPECT_GT(n, target - 40) << "one more filler unit would have fit";
      EXPECT_EQ(p.ids, tokenizer_->Encode(p.text));
      // The needle, once, at the requested fraction of the prompt.
      const std::string needle = PasskeyNeedle("71432");
      ASSERT_NE(p.text.find(needle), std::string::npos);
      EXPECT_EQ(p.text.find(needle), p.text.rfind(needle));
      // Within the fixed parts (about 55 tokens before the filler and 25 after it) and a unit.
      EXPECT_NEAR(static_cast<double>(p.needle_token) / n, depth, 70.0 / n);
      EXPECT_GT(p.needle_token, previous_needle);
      previous_needle = p.needle_token;
      // Chat template: a user turn holding the question, then the primed assistant turn.
      EXPECT_NE(p.text.find("<|im_start|>user\n"), std::string::npos);
      const std::string tail = std::string(kPasskeyQuestion) +
                               "<|im_end|>\n<|im_start|>assistant\n" + kPasskeyAnswerPrefix;
      ASSERT_GE(p.text.size(), tail.size());
      EXPECT_EQ(p.text.substr(p.text.size() - tail.size()), tail);
    }
  }
}

TEST_F(PasskeyPromptTest, RejectsBadOptions) {
  MP_EXPECT_ERROR(BuildPasskeyPrompt(*tokenizer_, chat_, {4096, 1.5, "1"}),
                  absl::StatusCode::kInvalidArgument, "depth must be in [0, 1]");
  MP_EXPECT_ERROR(BuildPasskeyPrompt(*tokenizer_, chat_, {4096, 0.5, ""}),
                  absl::StatusCode::kInvalidArgument, "empty key");
  MP_EXPECT_ERROR(BuildPasskeyPrompt(*tokenizer_, chat_, {20, 0.5, "71432"}),
                  absl::StatusCode::kInvalidArgument, "below the");
}

TEST(PasskeyAnswerTest, FirstDigitRun) {
  EXPECT_EQ(ParsePasskeyAnswer(" 71432."), "71432");
  EXPECT_EQ(ParsePasskeyAnswer("is 7143 2"), "7143");
  EXPECT_EQ(ParsePasskeyAnswer("71432"), "71432");
  EXPECT_EQ(ParsePasskeyAnswer(" a magical number"), std::nullopt);
  EXPECT_EQ(ParsePasskeyAnswer(""), std::nullopt);
}

}  // namespace
}  // namespace mp::bench
