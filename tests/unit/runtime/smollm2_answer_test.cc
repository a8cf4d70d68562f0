// The embedded default model (SmolLM2-135M-Instruct, converted from its GGUF by
// scripts/fetch_default_model.sh) answers simple questions correctly through the whole CPU
// path: chat template, tokenizer, chunked prefill, greedy decode, streaming detokenization.
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/status_matchers.h"
#include "model/chat_template.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/engine.h"

namespace mp {
namespace {

class SmolLm2AnswerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* dir = std::getenv("MILLIPEDE_SMOLLM2_DIR");
    ASSERT_NE(dir, nullptr) << "MILLIPEDE_SMOLLM2_DIR must name the converted model "
                               "(scripts/fetch_default_model.sh)";
    dir_ = new std::string(dir);
    MP_ASSERT_OK_AND_ASSIGN(ModelConfig config, LoadModelConfig(*dir_ + "/config.json"));
    WeightLoadOptions load;
    load.layers = {0, config.num_hidden_layers};
    MP_ASSERT_OK_AND_ASSIGN(ModelWeights weights, LoadModelWeights(*dir_, config, load));
    EngineOptions options;
    options.chunk_size = 256;  // several prefill chunks for the document prompt
    options.max_context = 4096;
    MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine,
                            Engine::Create(config, weights, NewCpuBackend(), options));
    engine_ = engine.release();
    MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Tokenizer> tokenizer,
                            Tokenizer::Load(*dir_ + "/tokenizer.json"));
    tokenizer_ = tokenizer.release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete tokenizer_;
    delete dir_;
  }

  // Greedy answer to `question` as a single user turn of the model's chat template.
  static std::string Ask(const std::string& question, int64_t max_new_tokens) {
    absl::StatusOr<ChatTemplate> chat = ChatTemplate::FromModelDir(*dir_);
    EXPECT_TRUE(chat.ok()) << chat.status();
    if (!chat.ok()) return "";
    std::vector<ChatMessage> messages = {{"user", question}};
    absl::StatusOr<std::string> text = chat->Render(messages, /*add_generation_prompt=*/true);
    EXPECT_TRUE(text.ok()) << text.status();
    if (!text.ok()) return "";
    std::vector<int32_t> prompt = tokenizer_->Encode(*text);
    GenerationOptions gen;
    gen.max_new_tokens = max_new_tokens;
    for (int64_t id : engine_->config().eos_token_ids) gen.stop_token_ids.push_back(id);
    if (auto end = tokenizer_->TokenToId(ChatTemplate::kEndOfTurn)) {
      gen.stop_token_ids.push_back(*end);
    }
    absl::StatusOr<GenerationResult> result = engine_->Generate(prompt, gen);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return "";
    absl::StatusOr<std::string> answer = tokenizer_->Decode(result->token_ids,
                                                            /*skip_special=*/true);
    EXPECT_TRUE(answer.ok()) << answer.status();
    return answer.ok() ? *answer : "";
  }

  static std::string* dir_;
  static Engine* engine_;
  static Tokenizer* tokenizer_;
};

std::string* SmolLm2AnswerTest::dir_ = nullptr;
Engine* SmolLm2AnswerTest::engine_ = nullptr;
Tokenizer* SmolLm2AnswerTest::tokenizer_ = nullptr;

TEST_F(SmolLm2AnswerTest, NamesTheCapitalOfFrance) {
  ASSERT_NE(engine_, nullptr);
  const std::string answer = Ask("What is the capital of France?", 16);
  EXPECT_NE(answer.find("Paris"), std::string::npos) << answer;
}

TEST_F(SmolLm2AnswerTest, ReadsAFactFromTheMiddleOfALongDocument) {
  ASSERT_NE(engine_, nullptr);
  std::ifstream in(std::string(MP_EXAMPLES_DIR) + "/long_document.txt");
  ASSERT_TRUE(in) << "cannot open examples/long_document.txt";
  std::stringstream document;
  document << in.rdbuf();
  // The example ends with its own question; this test asks about a fact in chapter 4.
  std::string text = document.str();
  const size_t question = text.rfind("Question:");
  ASSERT_NE(question, std::string::npos);
  text.resize(question);
  const std::string answer =
      Ask(text + "Question: How many leaks did the programme find this year?", 24);
  EXPECT_NE(answer.find("one hundred and seventeen"), std::string::npos) << answer;
}

}  // namespace
}  // namespace mp
