// ModelConfig: the parts of a Hugging Face config.json that the engine needs.
//
// Supported architectures: Qwen2ForCausalLM (attention bias, dual_chunk_attention_config) and
// LlamaForCausalLM. Parsing validates every field it reads and names the field in its errors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mp {

enum class Architecture { kQwen2, kLlama };

// Dual Chunk Attention settings (qwen1m-spec.md §2). chunk_len() = chunk_size - local_size.
struct DualChunkConfig {
  int64_t chunk_size = 0;                        // S: the largest relative distance (training len)
  int64_t local_size = 0;                        // W: the successive-chunk local window
  int64_t original_max_position_embeddings = 0;  // L0 for the YaRN temperature
  bool sparse_attention_enabled = false;
  // True when config.json states sparse_attention_enabled. vLLM turns sparse attention on when
  // sparse_attention_config.json is present unless config.json says otherwise.
  bool sparse_attention_enabled_given = false;
  int64_t sparse_attention_threshold = 32768;
  int64_t sparse_attention_last_q = 64;
  int64_t chunk_len() const { return chunk_size - local_size; }
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string model_type;  // "qwen2" or "llama"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_attention_heads unless given explicitly
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool attention_bias = false;  // q/k/v projections carry a bias (always true for Qwen2)
  bool tie_word_embeddings = false;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id;
  std::string torch_dtype;  // informational
  std::optional<DualChunkConfig> dual_chunk;

  // Llama's o_proj carries a bias when attention_bias is set; Qwen2's never does.
  bool o_proj_bias() const { return attention_bias && architecture == Architecture::kLlama; }
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  // Number of parameters of the whole model (embeddings and head included).
  int64_t NumParameters() const;
};

// "Qwen2ForCausalLM" or "LlamaForCausalLM".
const char* ArchitectureName(Architecture architecture);

// Checks a DCA setting for the engine: chunk_size positive and at most 2^31 - 1, local_size
// >= 0, chunk length C = chunk_size - local_size positive and a multiple of 64 (the tile
// alignment of the fused kernels, qwen1m-spec.md §8), original_max_position_embeddings
// positive. INVALID_ARGUMENT naming the field and the limit. (C must also be a multiple of the
// KV block size; KvCache::Create checks that.)
absl::Status ValidateDualChunkConfig(const DualChunkConfig& dca);

// The local window W used when DCA is enabled without one: Qwen2.5-1M's ratio W = S / 32
// (8192 for S = 262144), made larger by less than 64 where needed so that S - W is a multiple
// of 64. For S = 8192 (SmolLM2) it is 256.
int64_t DefaultDcaLocalSize(int64_t chunk_size);

// DCA settings given on the command line, applied over config.json.
struct DualChunkOverride {
  bool enable = false;   // turn DCA on: the config's block, or the defaults below
  bool disable = false;  // turn DCA off even when config.json has dual_chunk_attention_config
  // Each given value turns DCA on. Defaults: the config's block where it has one, else
  // chunk_size = max_position_embeddings (the training length), local_size =
  // DefaultDcaLocalSize(chunk_size), original_max_position_embeddings = max_position_embeddings.
  std::optional<int64_t> chunk_size;
  std::optional<int64_t> local_size;
  std::optional<int64_t> original_max_position_embeddings;
  bool any() const {
    return enable || disable || chunk_size.has_value() || local_size.has_value() ||
           original_max_position_embeddings.has_value();
  }
};

// Applies `override` to config->dual_chunk (nothing when !override.any()), then validates the
// result with ValidateDualChunkConfig. INVALID_ARGUMENT for disable together with DCA values,
// or for a resulting setting that is not valid.
absl::Status ApplyDualChunkOverride(const DualChunkOverride& override, ModelConfig* config);

// Parses config.json text. Errors are INVALID_ARGUMENT naming the field; an unknown
// architecture is INVALID_ARGUMENT naming it and the supported ones. Features the engine does
// not implement (rope_scaling, sliding-window layers, hidden_act other than silu, mlp_bias) are
// UNIMPLEMENTED naming the field.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);
// Reads and parses `path`: a config.json, or a directory holding one. Missing file: NOT_FOUND
// naming the path. Parse errors are those of ParseModelConfig, prefixed with the path.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
// Serializes to config.json text (HF field names), e.g. for the GGUF converter.
std::string ModelConfigToJson(const ModelConfig& config);

// The published architectures of qwen1m-spec.md §1, for benchmarks with random weights.
ModelConfig Qwen25_7BInstruct1MConfig();
ModelConfig Qwen25_14BInstruct1MConfig();

}  // namespace mp
