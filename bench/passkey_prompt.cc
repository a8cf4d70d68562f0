#include "bench/passkey_prompt.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace mp::bench {

const char kPasskeyFiller[] =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
const char kPasskeyIntro[] =
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it "
    "and memorize it. I will quiz you about it.\n\n";
const char kPasskeyQuestion[] = "\n\nWhat is the pass key? Answer with the number only.";
const char kPasskeyAnswerPrefix[] = "The pass key is";

std::string PasskeyNeedle(const std::string& key) {
  return absl::StrCat("The pass key is ", key, ". Remember it. ", key, " is the pass key. ");
}

namespace {

struct Rendered {
  std::string text;
  std::string before_needle;  // rendered text up to the needle
};

absl::StatusOr<Rendered> Render(const ChatTemplate& chat, const std::string& key, int64_t units,
                                int64_t needle_after) {
  std::string filler_before, filler_after;
  for (int64_t i = 0; i < units; ++i) {
    (i < needle_after ? filler_before : filler_after) += kPasskeyFiller;
  }
  const std::string head = absl::StrCat(kPasskeyIntro, filler_before);
  const std::string user = absl::StrCat(head, PasskeyNeedle(key), filler_after, kPasskeyQuestion);
  std::vector<ChatMessage> messages = {{"user", user}};
  MP_ASSIGN_OR_RETURN(std::string text, chat.Render(messages, /*add_generation_prompt=*/true));
  Rendered r;
  r.text = absl::StrCat(text, kPasskeyAnswerPrefix);
  const size_t at = r.text.find(head);
  r.before_needle = r.text.substr(0, at == std::string::npos ? 0 : at + head.size());
  return r;
}

}  // namespace

absl::StatusOr<PasskeyPrompt> BuildPasskeyPrompt(const Tokenizer& tokenizer,
                                                 const ChatTemplate& chat,
                                                 const PasskeyPromptOptions& options) {
  if (!(options.depth >= 0.0 && options.depth <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("passkey prompt: depth must be in [0, 1], got ", options.depth));
  }
  if (options.key.empty()) return absl::InvalidArgumentError("passkey prompt: empty key");
  auto tokens_for = [&](int64_t units) -> absl::StatusOr<std::pair<int64_t, Rendered>> {
    const int64_t after = static_cast<int64_t>(std::llround(options.depth * units));
    MP_ASSIGN_OR_RETURN(Rendered r, Render(chat, options.key, units, after));
    return std::pair<int64_t, Rendered>(static_cast<int64_t>(tokenizer.Encode(r.text).size()),
                                        std::move(r));
  };
  MP_ASSIGN_OR_RETURN(auto empty, tokens_for(0));
  if (empty.first > options.target_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("passkey prompt: target of ", options.target_tokens, " tokens is below the ",
                     empty.first, " tokens of the prompt without filler"));
  }
  // Tokens per filler unit, measured on a long run (BPE merges across unit boundaries).
  std::string run;
  for (int i = 0; i < 64; ++i) run += kPasskeyFiller;
  const double per_unit = static_cast<double>(tokenizer.Encode(run).size()) / 64.0;
  int64_t units = static_cast<int64_t>((options.target_tokens - empty.first) / per_unit);
  // Correct the estimate: the largest unit count whose prompt fits.
  MP_ASSIGN_OR_RETURN(auto cur, tokens_for(units));
  while (cur.first > options.target_tokens && units > 0) {
    units -=
        std::max<int64_t>(1, static_cast<int64_t>((cur.first - options.target_tokens) / per_unit));
    MP_ASSIGN_OR_RETURN(cur, tokens_for(units));
  }
  while (true) {
    MP_ASSIGN_OR_RETURN(auto next, tokens_for(units + 1));
    if (next.first > options.target_tokens) break;
    ++units;
    cur = std::move(next);
  }
  PasskeyPrompt p;
  p.ids = tokenizer.Encode(cur.second.text);
  p.filler_units = units;
  p.needle_token = static_cast<int64_t>(tokenizer.Encode(cur.second.before_needle).size());
  p.text = std::move(cur.second.text);
  return p;
}

std::optional<std::string> ParsePasskeyAnswer(const std::string& answer) {
  const size_t begin = answer.find_first_of("0123456789");
  if (begin == std::string::npos) return std::nullopt;
  const size_t end = answer.find_first_not_of("0123456789", begin);
  return answer.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

}  // namespace mp::bench
