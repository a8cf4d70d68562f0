// millipede run: the single-process engine on one prompt — chunked prefill with a progress line
// on stderr, then the answer streamed to stdout.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "cli/dca_flags.h"
#include "cli/sparse_flags.h"
#include "common/status.h"
#include "model/chat_template.h"
#include "model/config.h"
#include "model/presets.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/backend_factory.h"
#include "runtime/engine.h"

namespace mp::cli {
namespace {

struct RunFlags {
  std::string model_dir;
  std::string preset;  // a compiled-in architecture (model/presets.h) instead of a directory
  bool random_weights = false;
  uint64_t weight_seed = 0;
  int64_t random_prompt = 0;  // > 0: that many seeded random token ids
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
  SparseFlags sparse;
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

// `n` token ids drawn uniformly from [0, vocab) with `seed`.
std::vector<int32_t> RandomPrompt(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

absl::Status Run(const RunFlags& flags) {
  if (flags.model_dir.empty() == flags.preset.empty()) {
    return absl::InvalidArgumentError("give exactly one of --model DIR and --preset NAME");
  }
  if (!flags.model_dir.empty()) {
    struct stat st;
    if (stat(flags.model_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::NotFoundError(absl::StrCat("model directory ", flags.model_dir,
                                              " does not exist"));
    }
  }
  if (!flags.preset.empty() && !flags.random_weights) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--preset ", flags.preset, " has no checkpoint: give --random-weights SEED"));
  }
  if (flags.chunk_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--chunk-size must be positive, got ", flags.chunk_size));
  }
  if (flags.random_prompt < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--random-prompt must be positive, got ", flags.random_prompt));
  }
  int sources = !flags.prompt_file.empty() + !flags.prompt_text.empty() +
                flags.prompt_ids_given + (flags.random_prompt > 0);
  if (sources != 1) {
    return absl::InvalidArgumentError(
        "give exactly one of --prompt-file, --prompt, --prompt-ids and --random-prompt");
  }

  ModelConfig config;
  if (flags.preset.empty()) {
    MP_ASSIGN_OR_RETURN(config, LoadModelConfig(flags.model_dir + "/config.json"));
  } else {
    MP_ASSIGN_OR_RETURN(config, LoadModelPreset(flags.preset));
  }
  MP_RETURN_IF_ERROR(ApplyDcaFlags(flags.dca, &config));
  MP_ASSIGN_OR_RETURN(const SparsePrefillRequest sparse_request,
                      ToSparsePrefillRequest(flags.sparse));
  absl::StatusOr<std::shared_ptr<const SparsePrefillSettings>> sparse =
      ResolveSparsePrefillRequest(sparse_request, flags.model_dir, config);
  if (!sparse.ok()) {
    return Annotate(sparse.status(), "--sparse-config / --sparse-threshold / --sparse-last-q");
  }

  // The prompt: token ids as given, or text through the chat template and the tokenizer.
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> prompt;
  std::vector<int32_t> stop_ids(config.eos_token_ids.begin(), config.eos_token_ids.end());
  if (flags.prompt_ids_given) {
    MP_ASSIGN_OR_RETURN(prompt, ParseIds(flags.prompt_ids));
  } else if (flags.random_prompt > 0) {
    prompt = RandomPrompt(flags.random_prompt, config.vocab_size, flags.seed);
  } else if (!flags.preset.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--preset ", flags.preset,
        " has no tokenizer: give the prompt as --prompt-ids or --random-prompt"));
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

  MP_ASSIGN_OR_RETURN(std::shared_ptr<Backend> backend, NewBackend(flags.device));
  WeightLoadOptions load;
  load.layers = {0, config.num_hidden_layers};
  ModelWeights weights;
  if (flags.random_weights) {
    MP_ASSIGN_OR_RETURN(weights, RandomWeightsFor(*backend, config, load, flags.weight_seed));
  } else {
    MP_ASSIGN_OR_RETURN(weights, LoadModelWeights(flags.model_dir, config, load));
  }
  EngineOptions options;
  options.chunk_size = flags.chunk_size;
  options.max_context = flags.max_context;
  // KV for this one request (the engine checks it against the maximum context).
  KvCacheOptions kv;
  kv.max_tokens = static_cast<int64_t>(prompt.size()) + std::max<int64_t>(flags.max_new_tokens, 1);
  if (*sparse != nullptr && !flags.quiet) {
    std::fprintf(stderr, "sparse prefill: prompts longer than %lld tokens (last_q %lld)\n",
                 static_cast<long long>((*sparse)->threshold),
                 static_cast<long long>((*sparse)->last_q));
  }
  MP_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                      Engine::Create(config, weights, backend, options, kv, *sparse));
  weights = ModelWeights();  // the executor holds what it needs

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
  cmd->add_option("--model", flags->model_dir, "Hugging Face model directory");
  cmd->add_option("--preset", flags->preset,
                  "a compiled-in architecture instead of --model: " +
                      absl::StrJoin(ModelPresetNames(), ", ") + " (needs --random-weights)");
  auto* random_weights = cmd->add_option("--random-weights", flags->weight_seed,
                                         "seeded random weights instead of the checkpoint "
                                         "(generated on the device for cuda)");
  cmd->add_option("--random-prompt", flags->random_prompt,
                  "a prompt of N seeded random token ids (seed: --seed)");
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
  cmd->add_option("--device", flags->device, "cpu, cuda or cuda:N");
  cmd->add_flag("--quiet", flags->quiet, "no progress or timing lines on stderr");
  AddDcaFlags(cmd, &flags->dca);
  AddSparseFlags(cmd, &flags->sparse);
  cmd->callback([flags, ids, random_weights, exit_code] {
    flags->prompt_ids_given = ids->count() > 0;
    flags->random_weights = random_weights->count() > 0;
    absl::Status status = Run(*flags);
    if (!status.ok()) {
      std::fprintf(stderr, "millipede run: %s\n", status.ToString().c_str());
      *exit_code = 1;
    }
  });
}

}  // namespace mp::cli
