// Engine: single-process generation (chunked prefill, then decode) over a chain of stage
// executors that together hold all layers of a model.
//
// The chain is usually one executor over [0, num_layers); splitting it into slices [0, k),
// [k, n) runs exactly the same math, passing hidden states from one to the next (the way a
// pipeline of workers does). Generate() validates its input, reserves the request's KV on every
// executor (RESOURCE_EXHAUSTED up front when it cannot fit), prefills the prompt in chunks of
// EngineOptions::chunk_size tokens, samples the first token from the last prompt row, then
// decodes one token per step through the same executors until max_new_tokens, a stop token, or
// the on_token callback says stop. The request's KV is released on every exit path. With dual
// chunk attention every chunk carries the prompt length (the YaRN temperature length, see
// StageExecutor); the DCA op itself splits chunks at DCA chunk boundaries.
//
// Generate() calls are serialized (one request at a time).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/stage_executor.h"
#include "runtime/tensor.h"

namespace mp {

struct EngineOptions {
  // Prefill chunk length in tokens (> 0).
  int64_t chunk_size = 512;
  // Longest prompt + max_new_tokens accepted; 0 means config.max_position_embeddings.
  int64_t max_context = 0;
};

struct GenerationOptions {
  int64_t max_new_tokens = 16;  // >= 0; 0 runs the prefill only
  float temperature = 0.0f;     // 0: greedy; > 0: sampling with a seeded RNG
  float top_p = 1.0f;           // in (0, 1]
  uint64_t seed = 0;
  std::vector<int32_t> stop_token_ids;  // generation stops after emitting one of these
  bool return_prompt_logits = false;    // fill GenerationResult::prompt_logits
};

struct GenerationCallbacks {
  // After each prefill chunk: prompt tokens done so far, prompt length.
  std::function<void(int64_t done, int64_t total)> on_prefill_progress;
  // Each generated token, in order; returning false stops generation after this token.
  std::function<bool(int32_t token_id)> on_token;
};

enum class StopReason { kMaxNewTokens, kStopToken, kCallback };

struct GenerationTimings {
  double prefill_seconds = 0;  // prompt forward passes
  double decode_seconds = 0;   // decode forward passes after the first token
  double ttft_seconds = 0;     // from the call (queueing included) to the first token sampled
};

struct GenerationResult {
  std::vector<int32_t> token_ids;  // generated tokens (a stop token included)
  Tensor prompt_logits;            // [prompt_len, vocab] f32 host, when asked for
  GenerationTimings timings;
  StopReason stop_reason = StopReason::kMaxNewTokens;
};

class Engine {
 public:
  // `executors` must be non-empty, share one backend, and hold consecutive layer slices
  // starting at 0 and ending at config.num_hidden_layers. With sparse prefill on, each executor
  // sets aside the workspace of its largest sparse chunk (StageExecutor::ReserveSparseWorkspace
  // with chunk_size and the maximum context): RESOURCE_EXHAUSTED here when it does not fit.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      std::vector<std::unique_ptr<StageExecutor>> executors, const EngineOptions& options);
  // One executor over all of `weights` (which must hold every layer, the embedding and the head)
  // with a KV cache of `kv_cache` options; a kv_cache budget of 0 tokens and 0 bytes means room
  // for one request of the maximum context. `sparse`: the executor's sparse prefill settings
  // (StageExecutorOptions::sparse), null for dense prefill.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      const ModelConfig& config, const ModelWeights& weights, std::shared_ptr<Backend> backend,
      const EngineOptions& options, KvCacheOptions kv_cache = {},
      std::shared_ptr<const SparsePrefillSettings> sparse = nullptr);

  // Validation errors (all INVALID_ARGUMENT): an empty prompt; a token id outside
  // [0, vocab_size) (naming its position and value); prompt length + max_new_tokens above the
  // maximum context (naming both); a bad temperature or top_p.
  absl::StatusOr<GenerationResult> Generate(std::span<const int32_t> prompt,
                                            const GenerationOptions& options,
                                            const GenerationCallbacks& callbacks = {});

  const ModelConfig& config() const { return config_; }
  int64_t max_context() const { return max_context_; }
  const std::vector<std::unique_ptr<StageExecutor>>& executors() const { return executors_; }

 private:
  Engine() = default;
  absl::Status Validate(std::span<const int32_t> prompt, const GenerationOptions& options) const;
  // Runs tokens [start, start + ids.size()) of `seq` of a request with `prompt_len` prompt
  // tokens through all executors; returns the logits of the last executor ([rows, vocab] on its
  // backend, valid until its next chunk) or an undefined tensor for kNone.
  absl::StatusOr<Tensor> Forward(uint64_t seq, int64_t start, std::span<const int32_t> ids,
                                 LogitsMode mode, int64_t prompt_len);
  absl::StatusOr<GenerationResult> GenerateLocked(uint64_t seq,
                                                  std::chrono::steady_clock::time_point t0,
                                                  std::span<const int32_t> prompt,
                                                  const GenerationOptions& options,
                                                  const GenerationCallbacks& callbacks);

  ModelConfig config_;
  EngineOptions options_;
  int64_t max_context_ = 0;
  std::vector<std::unique_ptr<StageExecutor>> executors_;
  std::mutex mu_;  // serializes Generate
  uint64_t next_seq_ = 1;
};

}  // namespace mp
