// Per-head vertical-slash budgets of Qwen's sparse_attention_config.json and the settings that
// decide when sparse prefill runs (qwen1m-spec.md §3.2, §3.3, §7.2).
//
// File format: a JSON list with one entry per layer; each entry is an object keyed by the global
// q-head index as a decimal string ("0" .. "H-1"), whose value is
//   [pattern: "vertical_and_slash", vertical_size: int > 0, slash_size: int > 0, score: number]
// vertical_size = key columns kept per head (top-k), slash_size = diagonals kept (top-k), score =
// the offline recall-like score of the pattern search (informational, unused at run time).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"

namespace mp {

inline constexpr char kSparseAttentionConfigFileName[] = "sparse_attention_config.json";
inline constexpr char kVerticalAndSlashPattern[] = "vertical_and_slash";
// Largest vertical_size / slash_size accepted (indices are int32 in the kernels).
inline constexpr int64_t kMaxSparseBudget = 2147483647;
// Largest sparse_attention_last_q the estimation kernels support.
inline constexpr int64_t kMaxSparseLastQ = 64;

struct SparseHeadConfig {
  int64_t vertical_size = 0;  // as written in the file
  int64_t slash_size = 0;
  double score = 0.0;
  // The vertical budget the engine runs with: a head with vertical_size == 30 runs with 130
  // (30 + 100), as Qwen's engine does (§3.2 "runtime tweak"). Every other value is unchanged.
  int64_t effective_vertical_size() const { return vertical_size == 30 ? 130 : vertical_size; }
  int64_t effective_slash_size() const { return slash_size; }
  bool operator==(const SparseHeadConfig& other) const = default;
};

// One layer's heads as the sparse prefill op takes them: [heads * 2], (effective vertical,
// slash) per head.
inline std::vector<int64_t> EffectiveBudgets(const std::vector<SparseHeadConfig>& heads) {
  std::vector<int64_t> b;
  b.reserve(2 * heads.size());
  for (const SparseHeadConfig& h : heads) {
    b.push_back(h.effective_vertical_size());
    b.push_back(h.effective_slash_size());
  }
  return b;
}

struct SparseAttentionConfig {
  std::vector<std::vector<SparseHeadConfig>> layers;  // [num_layers][num_q_heads]

  int64_t num_layers() const { return static_cast<int64_t>(layers.size()); }
  int64_t num_heads() const { return layers.empty() ? 0 : static_cast<int64_t>(layers[0].size()); }
  bool operator==(const SparseAttentionConfig& other) const = default;
};

// Parses the file's text against the model's shape: exactly num_layers entries, each with
// exactly the keys "0" .. "num_heads-1" (canonical decimal, each once), pattern
// "vertical_and_slash", 0 < vertical_size, slash_size <= kMaxSparseBudget, finite score.
// Errors are INVALID_ARGUMENT naming the layer, the head and the field; an unsupported pattern
// is UNIMPLEMENTED naming it.
absl::StatusOr<SparseAttentionConfig> ParseSparseAttentionConfig(std::string_view json_text,
                                                                 int64_t num_layers,
                                                                 int64_t num_heads);
// Same, with num_hidden_layers and num_attention_heads of `model`.
absl::StatusOr<SparseAttentionConfig> ParseSparseAttentionConfig(std::string_view json_text,
                                                                 const ModelConfig& model);
// Reads `path`: the file, or a model directory holding sparse_attention_config.json. Missing
// file: NOT_FOUND naming the path; parse errors are prefixed with the path.
absl::StatusOr<SparseAttentionConfig> LoadSparseAttentionConfig(const std::string& path,
                                                                const ModelConfig& model);
// Qwen's format (layers in order, heads in numeric order); ParseSparseAttentionConfig of the
// result gives `config` back exactly.
std::string SparseAttentionConfigToJson(const SparseAttentionConfig& config);
// Writes SparseAttentionConfigToJson(config) to `path` (a file name), replacing it atomically.
absl::Status WriteSparseAttentionConfig(const SparseAttentionConfig& config,
                                        const std::string& path);

// The heads of tensor-parallel rank `rank` of `world`: [rank * H / world, (rank + 1) * H / world)
// of every layer. INVALID_ARGUMENT unless 0 <= rank < world and world divides the head count.
absl::StatusOr<SparseAttentionConfig> SliceSparseAttentionHeads(const SparseAttentionConfig& config,
                                                                int64_t rank, int64_t world);

// Command-line / engine overrides of the values in config.json.
struct SparsePrefillOverrides {
  std::optional<bool> enabled;
  std::optional<int64_t> threshold;  // sparse prefill only for prompts longer than this
  std::optional<int64_t> last_q;
};

// What the engine runs with.
struct SparsePrefillSettings {
  bool enabled = false;
  int64_t threshold = 32768;  // sparse_attention_threshold: prompts <= threshold are exactly dense
  int64_t last_q = 64;        // sparse_attention_last_q: estimation rows per prefill piece
  std::optional<SparseAttentionConfig> heads;

  // §3.3: sparse only when enabled and the request's total prompt length exceeds the threshold.
  // Decode is always dense.
  bool UseSparsePrefill(int64_t prompt_length) const {
    return enabled && heads.has_value() && prompt_length > threshold;
  }
};

// vLLM semantics (§3.2, §7.2), then the overrides:
// * enabled: overrides.enabled, else dual_chunk_attention_config.sparse_attention_enabled when
//   config.json states it, else true exactly when `heads` is present and the model has a
//   dual_chunk_attention_config;
// * threshold / last_q: overrides, else the dual_chunk_attention_config values (defaults 32768
//   and 64).
// FAILED_PRECONDITION when sparse is enabled without a head config; INVALID_ARGUMENT naming the
// field for threshold < 0, last_q outside [1, kMaxSparseLastQ], or a head config whose shape
// does not match the model.
absl::StatusOr<SparsePrefillSettings> ResolveSparsePrefillSettings(
    const ModelConfig& model, std::optional<SparseAttentionConfig> heads,
    const SparsePrefillOverrides& overrides = {});
// Loads model_dir/sparse_attention_config.json when it exists (its absence is not an error)
// and resolves the settings as above.
absl::StatusOr<SparsePrefillSettings> LoadSparsePrefillSettings(
    const std::string& model_dir, const ModelConfig& model,
    const SparsePrefillOverrides& overrides = {});

// What a command line asks for (`millipede run --sparse-config ...`, cli/sparse_flags.h).
struct SparsePrefillRequest {
  // A config file, or a directory holding sparse_attention_config.json: sparse prefill on with
  // it (with or without DCA). Empty: the model directory's file decides, as in
  // LoadSparsePrefillSettings.
  std::string file;
  SparsePrefillOverrides overrides;
};

// The settings of `request` for `model` (DCA already applied) whose files are in `model_dir`
// (may be empty: no default file). Null when sparse prefill is off. Errors as in
// LoadSparseAttentionConfig / ResolveSparsePrefillSettings; INVALID_ARGUMENT when a file is
// given together with overrides.enabled == false.
absl::StatusOr<std::shared_ptr<const SparsePrefillSettings>> ResolveSparsePrefillRequest(
    const SparsePrefillRequest& request, const std::string& model_dir, const ModelConfig& model);

}  // namespace mp
