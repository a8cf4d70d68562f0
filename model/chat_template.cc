#include "model/chat_template.h"

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace mp {
namespace {

using json = nlohmann::json;

constexpr std::string_view kQwenSystem =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
constexpr std::string_view kSmolLMSystem =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Reads and parses `path`; nullopt when the file does not exist.
absl::StatusOr<std::optional<json>> ReadJsonIfPresent(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::optional<json>();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  json value = json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded() || !value.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a valid JSON object"));
  }
  return std::optional<json>(std::move(value));
}

// tokenizer_config.json "chat_template": a string, or [{"name": ..., "template": ...}].
std::string TemplateText(const json& config) {
  auto it = config.find("chat_template");
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const json& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
  }
  return "";
}

}  // namespace

ChatTemplate ChatTemplate::Detect(std::string_view chat_template, std::string_view model_type) {
  if (chat_template.find(kQwenSystem) != std::string_view::npos) {
    return ChatTemplate(ChatTemplateKind::kQwen25);
  }
  if (chat_template.find(kSmolLMSystem) != std::string_view::npos) {
    return ChatTemplate(ChatTemplateKind::kSmolLM2);
  }
  if (chat_template.empty() && model_type == "qwen2") {
    return ChatTemplate(ChatTemplateKind::kQwen25);
  }
  return ChatTemplate(ChatTemplateKind::kChatML);
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromModelDir(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  }
  const std::filesystem::path root(dir);
  auto tokenizer_config = ReadJsonIfPresent(root / "tokenizer_config.json");
  if (!tokenizer_config.ok()) return tokenizer_config.status();
  auto config = ReadJsonIfPresent(root / "config.json");
  if (!config.ok()) return config.status();
  std::string text = tokenizer_config->has_value() ? TemplateText(**tokenizer_config) : "";
  if (text.empty()) {
    // Recent transformers versions save the template next to tokenizer_config.json.
    std::ifstream in(root / "chat_template.jinja", std::ios::binary);
    if (in) {
      std::stringstream buffer;
      buffer << in.rdbuf();
      text = buffer.str();
    }
  }
  std::string model_type;
  if (config->has_value()) {
    auto it = (*config)->find("model_type");
    if (it != (*config)->end() && it->is_string()) model_type = it->get<std::string>();
  }
  return Detect(text, model_type);
}

std::string_view ChatTemplate::name() const {
  switch (kind_) {
    case ChatTemplateKind::kQwen25:
      return "qwen2.5";
    case ChatTemplateKind::kSmolLM2:
      return "smollm2";
    case ChatTemplateKind::kChatML:
      break;
  }
  return "chatml";
}

std::string_view ChatTemplate::default_system_message() const {
  switch (kind_) {
    case ChatTemplateKind::kQwen25:
      return kQwenSystem;
    case ChatTemplateKind::kSmolLM2:
      return kSmolLMSystem;
    case ChatTemplateKind::kChatML:
      break;
  }
  return "";
}

absl::StatusOr<std::string> ChatTemplate::Render(std::span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("chat has no messages");
  size_t size = 64;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role.empty() || role.find('\n') != std::string::npos ||
        role.find("<|") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("chat message ", i, " has an invalid role '", role,
                       "' (it must be non-empty, on one line, without \"<|\")"));
    }
    size += role.size() + messages[i].content.size() + 32;
  }
  std::string out;
  out.reserve(size + default_system_message().size());
  auto append_turn = [&out](std::string_view role, std::string_view content) {
    absl::StrAppend(&out, "<|im_start|>", AsAbsl(role), "\n", AsAbsl(content), AsAbsl(kEndOfTurn),
                    "\n");
  };
  if (messages.front().role != "system" && !default_system_message().empty()) {
    append_turn("system", default_system_message());
  }
  for (const ChatMessage& message : messages) append_turn(message.role, message.content);
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace mp
