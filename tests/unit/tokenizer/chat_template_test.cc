// ChatTemplate: exact renderings (checked against the models' Jinja templates), template
// detection from text and from model directories, and invalid input.
#include "model/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/status_matchers.h"

namespace mp {
namespace {

constexpr char kQwenDefault[] =
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\n";
constexpr char kSmolDefault[] =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n";

// SmolLM2-135M-Instruct's template (tokenizer.chat_template of its GGUF).
constexpr char kSmolTemplate[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";
// The part of Qwen2.5-Instruct's template that carries its default system message.
constexpr char kQwenTemplate[] =
    "{%- if messages[0]['role'] == 'system' %}\n{{- '<|im_start|>system\\n' + "
    "messages[0]['content'] + '<|im_end|>\\n' }}\n{%- else %}\n{{- '<|im_start|>system\\nYou "
    "are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}";

std::string RenderOrDie(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                        bool generation_prompt) {
  auto text = t.Render(messages, generation_prompt);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

TEST(ChatTemplateTest, Qwen25AddsItsDefaultSystemMessage) {
  const ChatTemplate t(ChatTemplateKind::kQwen25);
  EXPECT_EQ(t.name(), "qwen2.5");
  EXPECT_EQ(
      RenderOrDie(t, {{"user", "Hello"}}, true),
      std::string(kQwenDefault) + "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(RenderOrDie(t, {{"system", "Be brief."}, {"user", "2+2?"}}, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, SmolLM2AddsItsDefaultSystemMessage) {
  const ChatTemplate t(ChatTemplateKind::kSmolLM2);
  EXPECT_EQ(t.name(), "smollm2");
  EXPECT_EQ(RenderOrDie(t, {{"user", "Hi"}}, true),
            std::string(kSmolDefault) + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // A system message later in the conversation does not replace the default one.
  EXPECT_EQ(RenderOrDie(t, {{"user", "a"}, {"system", "late"}}, true),
            std::string(kSmolDefault) +
                "<|im_start|>user\na<|im_end|>\n<|im_start|>system\nlate<|im_end|>\n"
                "<|im_start|>assistant\n");
  EXPECT_EQ(RenderOrDie(t, {{"system", "S"}, {"user", "Hi"}, {"assistant", "Hello!"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n");
}

TEST(ChatTemplateTest, ChatMLHasNoDefaultSystemMessage) {
  const ChatTemplate t;
  EXPECT_EQ(t.kind(), ChatTemplateKind::kChatML);
  EXPECT_EQ(t.default_system_message(), "");
  EXPECT_EQ(RenderOrDie(t, {{"user", "x\ny"}, {"assistant", ""}}, false),
            "<|im_start|>user\nx\ny<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n");
  EXPECT_EQ(RenderOrDie(t, {{"user", "q"}}, true),
            "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, InvalidMessagesAreRejected) {
  const ChatTemplate t(ChatTemplateKind::kQwen25);
  for (const std::vector<ChatMessage>& messages : std::vector<std::vector<ChatMessage>>{
           {}, {{"", "x"}}, {{"user\nsystem", "x"}}, {{"user", "ok"}, {"<|im_start|>", "x"}}}) {
    auto text = t.Render(messages, true);
    EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument) << text.status();
  }
  EXPECT_NE(std::string(t.Render({{{"user", "ok"}, {"bad\n", "x"}}}, true).status().message())
                .find("message 1"),
            std::string::npos);
}

TEST(ChatTemplateTest, DetectsTheTemplateFromItsText) {
  EXPECT_EQ(ChatTemplate::Detect(kQwenTemplate, "qwen2").kind(), ChatTemplateKind::kQwen25);
  EXPECT_EQ(ChatTemplate::Detect(kSmolTemplate, "llama").kind(), ChatTemplateKind::kSmolLM2);
  EXPECT_EQ(ChatTemplate::Detect("", "qwen2").kind(), ChatTemplateKind::kQwen25);
  EXPECT_EQ(ChatTemplate::Detect("", "llama").kind(), ChatTemplateKind::kChatML);
  // Some other template (e.g. Qwen3's, which has no default system message).
  EXPECT_EQ(ChatTemplate::Detect("{%- if messages[0].role == 'system' %}...", "qwen2").kind(),
            ChatTemplateKind::kChatML);
}

class ChatTemplateDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/mp_chat_template_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) {
    std::ofstream out(dir_ + "/" + name, std::ios::binary);
    out << text;
  }
  std::string dir_;
};

TEST_F(ChatTemplateDirTest, ReadsTokenizerConfig) {
  Write("tokenizer_config.json",
        std::string("{\"chat_template\": \"") +
            "{% if loop.first %}You are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face{% endif %}\"}");
  Write("config.json", "{\"model_type\": \"llama\"}");
  MP_ASSERT_OK_AND_ASSIGN(const ChatTemplate t, ChatTemplate::FromModelDir(dir_));
  EXPECT_EQ(t.kind(), ChatTemplateKind::kSmolLM2);
}

TEST_F(ChatTemplateDirTest, ReadsANamedTemplateList) {
  Write("tokenizer_config.json",
        "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"x\"}, {\"name\": "
        "\"default\", \"template\": \"You are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.\"}]}");
  MP_ASSERT_OK_AND_ASSIGN(const ChatTemplate t, ChatTemplate::FromModelDir(dir_));
  EXPECT_EQ(t.kind(), ChatTemplateKind::kQwen25);
}

TEST_F(ChatTemplateDirTest, ReadsChatTemplateJinja) {
  Write("tokenizer_config.json", "{\"eos_token\": \"<|im_end|>\"}");
  Write("chat_template.jinja", kSmolTemplate);
  MP_ASSERT_OK_AND_ASSIGN(const ChatTemplate t, ChatTemplate::FromModelDir(dir_));
  EXPECT_EQ(t.kind(), ChatTemplateKind::kSmolLM2);
}

TEST_F(ChatTemplateDirTest, FallsBackToModelType) {
  Write("config.json", "{\"model_type\": \"qwen2\"}");
  MP_ASSERT_OK_AND_ASSIGN(const ChatTemplate qwen, ChatTemplate::FromModelDir(dir_));
  EXPECT_EQ(qwen.kind(), ChatTemplateKind::kQwen25);
  Write("config.json", "{\"model_type\": \"mistral\"}");
  MP_ASSERT_OK_AND_ASSIGN(const ChatTemplate other, ChatTemplate::FromModelDir(dir_));
  EXPECT_EQ(other.kind(), ChatTemplateKind::kChatML);
}

TEST_F(ChatTemplateDirTest, ReportsBadFiles) {
  Write("tokenizer_config.json", "{\"chat_template\": ");
  auto t = ChatTemplate::FromModelDir(dir_);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(t.status().message()).find("tokenizer_config.json"), std::string::npos)
      << t.status();
  auto missing = ChatTemplate::FromModelDir(dir_ + "/absent");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(missing.status().message()).find("absent"), std::string::npos);
}

}  // namespace
}  // namespace mp
