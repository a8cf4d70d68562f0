// Command-line flags that turn dual chunk attention on, off or adjust it for any RoPE model
// (qwen1m-spec.md §2): --dca, --no-dca, --dca-chunk-size, --dca-local-size and
// --dca-original-max-position-embeddings, as used by `millipede run`.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>

#include "absl/status/status.h"
#include "model/config.h"

namespace mp::cli {

struct DcaFlags {
  bool enable = false;
  bool disable = false;
  int64_t chunk_size = 0;
  int64_t local_size = 0;
  int64_t original_max_position_embeddings = 0;
  CLI::Option* chunk_size_option = nullptr;
  CLI::Option* local_size_option = nullptr;
  CLI::Option* original_option = nullptr;
};

// Adds the flags to `cmd`, storing into `flags` (which must outlive the parse).
void AddDcaFlags(CLI::App* cmd, DcaFlags* flags);

// The override the parsed flags describe.
DualChunkOverride ToDualChunkOverride(const DcaFlags& flags);

// Applies the flags to `config` (ApplyDualChunkOverride); errors name the flags.
absl::Status ApplyDcaFlags(const DcaFlags& flags, ModelConfig* config);

}  // namespace mp::cli
