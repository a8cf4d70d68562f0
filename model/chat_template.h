// Chat prompts for the ChatML-format instruct models (Qwen2.5-Instruct, SmolLM2-Instruct).
//
// This is a small renderer for one format, not a Jinja engine. Every message becomes
//   <|im_start|>{role}\n{content}<|im_end|>\n
// and a generation prompt appends "<|im_start|>assistant\n". When the first message is not a
// system message, the Qwen2.5 and SmolLM2 templates first emit their default system message;
// plain ChatML emits none. Roles and contents are copied verbatim (tool calls, tool responses
// and reasoning sections of richer templates are not interpreted). The rendered text is meant to
// be tokenized with mp::Tokenizer, which turns the markers into their special-token ids.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace mp {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

enum class ChatTemplateKind {
  kChatML,   // no default system message
  kQwen25,   // "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
  kSmolLM2,  // "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
};

class ChatTemplate {
 public:
  // The text that ends every turn; generation stops on it.
  static constexpr std::string_view kEndOfTurn = "<|im_end|>";

  explicit ChatTemplate(ChatTemplateKind kind = ChatTemplateKind::kChatML) : kind_(kind) {}

  // Chooses the template from a chat-template text and a config.json model_type: a template
  // containing Qwen's default system message -> kQwen25, SmolLM's -> kSmolLM2, any other
  // template -> kChatML; without a template, model_type "qwen2" -> kQwen25, otherwise kChatML.
  static ChatTemplate Detect(std::string_view chat_template, std::string_view model_type);

  // Detect() on a model directory: the template is tokenizer_config.json's "chat_template" (a
  // string, or a list of {"name", "template"} whose "default" entry is used), else the file
  // chat_template.jinja; model_type comes from config.json. Each file may be absent. A missing
  // directory is NOT_FOUND; a JSON file that does not parse is INVALID_ARGUMENT naming it.
  static absl::StatusOr<ChatTemplate> FromModelDir(const std::string& dir);

  ChatTemplateKind kind() const { return kind_; }
  // "chatml", "qwen2.5" or "smollm2".
  std::string_view name() const;
  // The system message used when the conversation has none; empty for kChatML.
  std::string_view default_system_message() const;

  // Renders `messages` (see the header comment). INVALID_ARGUMENT when `messages` is empty or a
  // role is empty or contains a newline or "<|".
  absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                     bool add_generation_prompt) const;

 private:
  ChatTemplateKind kind_;
};

}  // namespace mp
