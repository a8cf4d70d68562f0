// Passkey-retrieval prompts (the classic long-context probe) sized in tokens, and the parser of
// the model's answer. Kept small and fair to a 135M model: plain repeated filler, one short and
// clearly marked needle, the question through the model's chat template, and the assistant turn
// primed with "The pass key is" so that the answer is the next thing the model writes.
//
//   user:      <intro> <filler x a> <needle> <filler x b> <question>
//   assistant: The pass key is
//
// depth 0 puts the needle right after the intro, depth 1 right before the question.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"

namespace mp::bench {

struct PasskeyPromptOptions {
  int64_t target_tokens = 4096;  // the prompt has at most this many tokens, and close to it
  double depth = 0.5;            // needle position in [0, 1] of the filler
  std::string key;               // the pass key, e.g. "71432"
};

struct PasskeyPrompt {
  std::vector<int32_t> ids;  // the whole prompt, chat template included
  int64_t filler_units = 0;  // repetitions of the filler sentence block
  int64_t needle_token = 0;  // index of the needle's first token in ids (approximate)
  std::string text;          // the rendered prompt
};

extern const char kPasskeyFiller[];
extern const char kPasskeyIntro[];
extern const char kPasskeyQuestion[];
extern const char kPasskeyAnswerPrefix[];

// "The pass key is <key>. Remember it. <key> is the pass key."
std::string PasskeyNeedle(const std::string& key);

// Builds the prompt of at most options.target_tokens tokens with as many filler units as fit.
// INVALID_ARGUMENT when the depth is outside [0, 1], the key is empty or the target is smaller
// than the prompt without filler.
absl::StatusOr<PasskeyPrompt> BuildPasskeyPrompt(const Tokenizer& tokenizer,
                                                 const ChatTemplate& chat,
                                                 const PasskeyPromptOptions& options);

// The first run of decimal digits in `answer`, or nullopt when there is none.
std::optional<std::string> ParsePasskeyAnswer(const std::string& answer);

}  // namespace mp::bench
