#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace mp {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A uniform double in [0, 1) from the top 53 bits of the generator (the same on every platform).
double NextUniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    std::vector<std::unique_ptr<StageExecutor>> executors, const EngineOptions& options) {
  if (executors.empty()) return absl::InvalidArgumentError("engine: no stage executors given");
  for (size_t i = 0; i < executors.size(); ++i) {
    if (executors[i] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("engine: stage executor ", i, " is null"));
    }
  }
  const ModelConfig& config = executors.front()->config();
  int64_t next_layer = 0;
  for (size_t i = 0; i < executors.size(); ++i) {
    const StageExecutor& ex = *executors[i];
    const LayerRange r = ex.layers();
    if (r.begin != next_layer) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine: stage executor ", i, " holds layers [", r.begin, ", ", r.end,
                       ") but the chain needs one starting at layer ", next_layer));
    }
    next_layer = r.end;
    if (&ex.backend() != &executors.front()->backend()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "engine: stage executor ", i, " uses another backend than stage executor 0"));
    }
    const ModelConfig& c = ex.config();
    if (c.num_hidden_layers != config.num_hidden_layers || c.hidden_size != config.hidden_size ||
        c.vocab_size != config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "engine: stage executor ", i, " was built for another model than stage executor 0"));
    }
  }
  if (next_layer != config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("engine: the stage executors end at layer ",
                                                   next_layer, " of ", config.num_hidden_layers));
  }
  if (options.chunk_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine: chunk_size must be positive, got ", options.chunk_size));
  }
  if (options.max_context < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine: max_context must be >= 0, got ", options.max_context));
  }
  auto engine = std::unique_ptr<Engine>(new Engine());
  engine->config_ = config;
  engine->options_ = options;
  engine->max_context_ =
      options.max_context > 0 ? options.max_context : config.max_position_embeddings;
  if (engine->max_context_ <= 0) {
    return absl::InvalidArgumentError(
        "engine: max_context is 0 and the model's max_position_embeddings is not set");
  }
  // The sparse prefill workspace of the longest prompt, now: a context that cannot hold it
  // fails here, not at its first long prompt.
  for (const std::unique_ptr<StageExecutor>& ex : executors) {
    MP_RETURN_IF_ERROR(
        ex->ReserveSparseWorkspace(options.chunk_size, engine->max_context_).status());
  }
  engine->executors_ = std::move(executors);
  return engine;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    const ModelConfig& config, const ModelWeights& weights, std::shared_ptr<Backend> backend,
    const EngineOptions& options, KvCacheOptions kv_cache,
    std::shared_ptr<const SparsePrefillSettings> sparse) {
  if (weights.layers.begin != 0 || weights.layers.end != config.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine: the weights hold layers [", weights.layers.begin, ", ",
                     weights.layers.end, "), the engine needs all ", config.num_hidden_layers));
  }
  if (kv_cache.max_tokens == 0 && kv_cache.max_bytes == 0) {
    kv_cache.max_tokens =
        options.max_context > 0 ? options.max_context : config.max_position_embeddings;
  }
  StageExecutorOptions ex_options;
  ex_options.kv_cache = kv_cache;
  ex_options.sparse = std::move(sparse);
  MP_ASSIGN_OR_RETURN(std::unique_ptr<StageExecutor> executor,
                      StageExecutor::Create(config, weights, std::move(backend), ex_options));
  std::vector<std::unique_ptr<StageExecutor>> executors;
  executors.push_back(std::move(executor));
  return Create(std::move(executors), options);
}

absl::Status Engine::Validate(std::span<const int32_t> prompt,
                              const GenerationOptions& options) const {
  if (prompt.empty()) return absl::InvalidArgumentError("Generate: the prompt is empty");
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("Generate: prompt token ", prompt[i], " at position ", i,
                       " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
  }
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Generate: max_new_tokens must be >= 0, got ", options.max_new_tokens));
  }
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  if (options.max_new_tokens > max_context_ || prompt_len + options.max_new_tokens > max_context_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Generate: prompt of ", prompt_len, " tokens + max_new_tokens ", options.max_new_tokens,
        " exceeds the maximum context of ", max_context_, " tokens"));
  }
  if (!std::isfinite(options.temperature) || options.temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("Generate: temperature must be >= 0, got ", options.temperature));
  }
  if (!(options.top_p > 0.0f && options.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Generate: top_p must be in (0, 1], got ", options.top_p));
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Engine::Forward(uint64_t seq, int64_t start, std::span<const int32_t> ids,
                                       LogitsMode mode, int64_t prompt_len) {
  const int64_t n = static_cast<int64_t>(ids.size());
  Tensor activations = Tensor::Host({n}, DType::kI32);
  std::memcpy(activations.data(), ids.data(), ids.size_bytes());
  for (const auto& executor : executors_) {
    MP_ASSIGN_OR_RETURN(activations,
                        executor->RunChunk(seq, start, activations, mode, prompt_len));
  }
  return activations;
}

absl::StatusOr<GenerationResult> Engine::Generate(std::span<const int32_t> prompt,
                                                  const GenerationOptions& options,
                                                  const GenerationCallbacks& callbacks) {
  const Clock::time_point t0 = Clock::now();
  MP_RETURN_IF_ERROR(Validate(prompt, options));
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t seq = next_seq_++;
  absl::StatusOr<GenerationResult> result = GenerateLocked(seq, t0, prompt, options, callbacks);
  for (const auto& executor : executors_) {
    if (executor->kv_cache().Contains(seq)) executor->Release(seq).IgnoreError();
  }
  return result;
}

absl::StatusOr<GenerationResult> Engine::GenerateLocked(uint64_t seq,
                                                        std::chrono::steady_clock::time_point t0,
                                                        std::span<const int32_t> prompt,
                                                        const GenerationOptions& options,
                                                        const GenerationCallbacks& callbacks) {
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  const int64_t vocab = config_.vocab_size;
  const int64_t max_new = options.max_new_tokens;

  // Admission: the whole request's KV on every stage (the last sampled token is never fed back).
  const int64_t kv_tokens = prompt_len + std::max<int64_t>(max_new - 1, 0);
  for (const auto& executor : executors_) {
    MP_RETURN_IF_ERROR(executor->kv_cache().Reserve(seq, kv_tokens));
  }

  Backend& backend = executors_.back()->backend();
  GenerationResult result;
  const Clock::time_point prefill_start = Clock::now();
  if (options.return_prompt_logits) {
    result.prompt_logits = Tensor::Host({prompt_len, vocab}, DType::kF32);
  }
  Tensor last_logits;  // [1 or rows, vocab] on the backend
  for (int64_t start = 0; start < prompt_len; start += options_.chunk_size) {
    const int64_t n = std::min(options_.chunk_size, prompt_len - start);
    const bool last_chunk = start + n == prompt_len;
    LogitsMode mode = LogitsMode::kNone;
    if (options.return_prompt_logits) {
      mode = LogitsMode::kAllRows;
    } else if (last_chunk && max_new > 0) {
      mode = LogitsMode::kLastRow;
    }
    MP_ASSIGN_OR_RETURN(Tensor logits,
                        Forward(seq, start, prompt.subspan(start, n), mode, prompt_len));
    if (options.return_prompt_logits) {
      MP_RETURN_IF_ERROR(backend.Synchronize());
      MP_ASSIGN_OR_RETURN(Tensor host, backend.ToHostF32(logits));
      std::memcpy(result.prompt_logits.Slice(start, start + n).data(), host.data(), host.nbytes());
    }
    if (last_chunk) last_logits = logits;
    if (callbacks.on_prefill_progress) callbacks.on_prefill_progress(start + n, prompt_len);
  }
  MP_RETURN_IF_ERROR(backend.Synchronize());  // device backends run the chunks asynchronously
  result.timings.prefill_seconds = SecondsSince(prefill_start);
  if (max_new == 0) return result;

  // The backend samples the last row where the logits are (a device backend on the device); the
  // uniform draws come from one host RNG, so every backend consumes the same sequence.
  std::mt19937_64 rng(options.seed);
  auto sample = [&](const Tensor& logits) -> absl::StatusOr<int32_t> {
    const double uniform = options.temperature == 0.0f ? 0.0 : NextUniform(rng);
    return backend.SampleToken(logits, options.temperature, options.top_p, uniform);
  };
  MP_ASSIGN_OR_RETURN(int32_t token, sample(last_logits));
  result.timings.ttft_seconds = SecondsSince(t0);
  const Clock::time_point decode_start = Clock::now();
  while (true) {
    result.token_ids.push_back(token);
    const bool keep_going = callbacks.on_token ? callbacks.on_token(token) : true;
    if (std::find(options.stop_token_ids.begin(), options.stop_token_ids.end(), token) !=
        options.stop_token_ids.end()) {
      result.stop_reason = StopReason::kStopToken;
      break;
    }
    if (!keep_going) {
      result.stop_reason = StopReason::kCallback;
      break;
    }
    const int64_t generated = static_cast<int64_t>(result.token_ids.size());
    if (generated == max_new) {
      result.stop_reason = StopReason::kMaxNewTokens;
      break;
    }
    const int32_t fed[1] = {token};
    MP_ASSIGN_OR_RETURN(Tensor logits, Forward(seq, prompt_len + generated - 1, fed,
                                               LogitsMode::kLastRow, prompt_len));
    MP_ASSIGN_OR_RETURN(token, sample(logits));
  }
  result.timings.decode_seconds = SecondsSince(decode_start);
  return result;
}

}  // namespace mp
