// millipede run: the single-process engine on one prompt — chunked prefill with a progress line
// on stderr, then the answer streamed to stdout.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "cli/dca_flags.h"
#include "common/status.h"
#include "model/chat_template.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/engine.h"

namespace mp::cli {
namespace {

struct RunFlags {
  std::string model_dir;
  std::string prompt_file;
  std::string prompt_text;
  std::string prompt_ids;  // comma-separated ids: bypasses the tokenizer and the chat template
  bool prompt_ids_given = false;
  std::string system;
  std::string device = "cpu";
  bool raw = false;
  bool quiet = false;
  int64_t max_new_tokens = 128;
  int64_t chunk_size = 512;
  int64_t max_context = 0;
  float temperature = 0.0f;
  float top_p = 1.0f;
  uint64_t seed = 0;
  DcaFlags dca;
};

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open prompt file ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t id;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &id) || id < INT32_MIN ||
        id > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("--prompt-ids: '", part,
                                                     "' is not a token id"));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

// Prints "\rprefill  done/total tokens (p%)  r tok/s" to stderr.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled) : enabled_(enabled), start_(Clock::now()) {}
  void Update(int64_t done, int64_t total) {
    if (!enabled_) return;
    double s = std::chrono::duration<double>(Clock::now() - start_).count();
    std::fprintf(stderr, "\rprefill %lld/%lld tokens (%3.0f%%)  %.0f tok/s   ",
                 static_cast<long long>(done), static_cast<long long>(total),
                 100.0 * done / std::max<int64_t>(total, 1), s > 0 ? done / s : 0.0);
    if (done == total) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool enabled_;
  Clock::time_point start_;
};

absl::Status Run(const RunFlags& flags) {
  struct stat st;
  if (stat(flags.model_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("model directory ", flags.model_dir,
                                            " does not exist"));
  }
  if (flags.device != "cpu") {
    return absl::UnimplementedError(absl::StrCat("--device ", flags.device,
                                                 ": this build has only the cpu backend"));
  }
  if (flags.chunk_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--chunk-size must be positive, got ", flags.chunk_size));
  }
  int sources = !flags.prompt_file.empty() + !flags.prompt_text.empty() +
                flags.prompt_ids_given;
  if (sources != 1) {
    return absl::InvalidArgumentError(
        "give exactly one of --prompt-file, --prompt and --prompt-ids");
  }

  MP_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(flags.model_dir + "/config.json"));
  MP_RETURN_IF_ERROR(ApplyDcaFlags(flags.dca, &config));

  // The prompt: token ids as given, or text through the chat template and the tokenizer.
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> prompt;
  std::vector<int32_t> stop_ids(config.eos_token_ids.begin(), config.eos_token_ids.end());
  if (flags.prompt_ids_given) {
    MP_ASSIGN_OR_RETURN(prompt, ParseIds(flags.prompt_ids));
  } else {
    std::string text = flags.prompt_text;
    if (!flags.prompt_file.empty()) {
      MP_ASSIGN_OR_RETURN(text, ReadFile(flags.prompt_file));
    }
    MP_ASSIGN_OR_RETURN(tokenizer, Tokenizer::Load(flags.model_dir + "/tokenizer.json"));
    if (text.empty()) return absl::InvalidArgumentError("the prompt is empty");
    if (!flags.raw) {
      MP_ASSIGN_OR_RETURN(ChatTemplate chat, ChatTemplate::FromModelDir(flags.model_dir));
      std::vector<ChatMessage> messages;
      if (!flags.system.empty()) messages.push_back({"system", flags.system});
      messages.push_back({"user", text});
      MP_ASSIGN_OR_RETURN(text, chat.Render(messages, /*add_generation_prompt=*/true));
      if (auto end = tokenizer->TokenToId(ChatTemplate::kEndOfTurn)) stop_ids.push_back(*end);
    }
    prompt = tokenizer->Encode(text);
  }
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");

  WeightLoadOptions load;
  load.layers = {0, config.num_hidden_layers};
  MP_ASSIGN_OR_RETURN(ModelWeights weights, LoadModelWeights(flags.model_dir, config, load));
  std::shared_ptr<Backend> backend = NewCpuBackend();
  EngineOptions options;
  options.chunk_size = flags.chunk_size;
  options.max_context = flags.max_context;
  MP_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                      Engine::Create(config, weights, backend, options));

  GenerationOptions gen;
  gen.max_new_tokens = flags.max_new_tokens;
  gen.temperature = flags.temperature;
  gen.top_p = flags.top_p;
  gen.seed = flags.seed;
  gen.stop_token_ids = stop_ids;

  ProgressLine progress(!flags.quiet);
  std::unique_ptr<StreamingDecoder> stream;
  if (tokenizer) stream = std::make_unique<StreamingDecoder>(*tokenizer, /*skip_special=*/true);
  absl::Status stream_status;
  GenerationCallbacks callbacks;
  callbacks.on_prefill_progress = [&](int64_t done, int64_t total) {
    progress.Update(done, total);
  };
  callbacks.on_token = [&](int32_t id) {
    if (stream) {
      absl::StatusOr<std::string> piece = stream->Add(id);
      if (!piece.ok()) {
        stream_status = piece.status();
        return false;
      }
      std::fwrite(piece->data(), 1, piece->size(), stdout);
    } else {
      std::printf("%d ", id);
    }
    std::fflush(stdout);
    return true;
  };
  MP_ASSIGN_OR_RETURN(GenerationResult result, engine->Generate(prompt, gen, callbacks));
  MP_RETURN_IF_ERROR(stream_status);
  if (stream) {
    std::string tail = stream->Flush();
    std::fwrite(tail.data(), 1, tail.size(), stdout);
  }
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!flags.quiet) {
    const GenerationTimings& t = result.timings;
    int64_t decoded = static_cast<int64_t>(result.token_ids.size()) - 1;
    std::fprintf(stderr,
                 "prompt %zu tokens, prefill %.2f s (%.0f tok/s), TTFT %.2f s, "
                 "%zu tokens generated (%.1f tok/s)\n",
                 prompt.size(), t.prefill_seconds, prompt.size() / std::max(t.prefill_seconds, 1e-9),
                 t.ttft_seconds, result.token_ids.size(),
                 decoded > 0 && t.decode_seconds > 0 ? decoded / t.decode_seconds : 0.0);
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterRunCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<RunFlags>();
  auto* cmd = app.add_subcommand("run", "Run one prompt on the single-process engine");
  cmd->add_option("--model", flags->model_dir, "Hugging Face model directory")->required();
  cmd->add_option("--prompt-file", flags->prompt_file, "file holding the prompt text");
  cmd->add_option("--prompt", flags->prompt_text, "the prompt text");
  auto* ids = cmd->add_option("--prompt-ids", flags->prompt_ids,
                              "comma-separated token ids (no tokenizer, no chat template)");
  cmd->add_option("--system", flags->system, "system message for the chat template");
  cmd->add_flag("--raw", flags->raw, "send the prompt as is, without the chat template");
  cmd->add_option("--max-new-tokens", flags->max_new_tokens, "tokens to generate")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--chunk-size", flags->chunk_size, "prefill chunk size in tokens");
  cmd->add_option("--max-context", flags->max_context,
                  "longest prompt + new tokens accepted (default: the model's maximum)");
  cmd->add_option("--temperature", flags->temperature, "0 = greedy");
  cmd->add_option("--top-p", flags->top_p, "nucleus sampling mass");
  cmd->add_option("--seed", flags->seed, "sampling seed");
  cmd->add_option("--device", flags->device, "cpu or cuda");
  cmd->add_flag("--quiet", flags->quiet, "no progress or timing lines on stderr");
  AddDcaFlags(cmd, &flags->dca);
  cmd->callback([flags, ids, exit_code] {
    flags->prompt_ids_given = ids->count() > 0;
    absl::Status status = Run(*flags);
    if (!status.ok()) {
      std::fprintf(stderr, "millipede run: %s\n", status.ToString().c_str());
      *exit_code = 1;
    }
  });
}

}  // namespace mp::cli
