// Command-line flags of vertical-slash sparse prefill (qwen1m-spec.md §3.2-3.3), as used by
// `millipede run`, `millipede worker` and `millipede local`: --sparse-config,
// --sparse-threshold, --sparse-last-q and --no-sparse.
//
// Without flags the model directory's sparse_attention_config.json is used the way vLLM does
// (sparse on when the file is there and config.json has dual_chunk_attention_config, unless
// config.json says otherwise). --sparse-config FILE (a file, or a directory holding
// sparse_attention_config.json) turns sparse prefill on with that file, also without DCA;
// --no-sparse turns it off.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/sparse_attention_config.h"

namespace mp::cli {

struct SparseFlags {
  std::string config;  // --sparse-config
  int64_t threshold = 0;
  int64_t last_q = 0;
  bool disable = false;
  CLI::Option* threshold_option = nullptr;
  CLI::Option* last_q_option = nullptr;
};

// Adds the flags to `cmd`, storing into `flags` (which must outlive the parse).
void AddSparseFlags(CLI::App* cmd, SparseFlags* flags);

// The request the parsed flags describe (model/sparse_attention_config.h); INVALID_ARGUMENT
// for --sparse-config together with --no-sparse or a value out of range, NOT_FOUND for a
// --sparse-config path that does not exist (checked at once, so that a worker fails at start).
absl::StatusOr<SparsePrefillRequest> ToSparsePrefillRequest(const SparseFlags& flags);

// The same flags as arguments for a child process (`millipede local` -> workers).
std::vector<std::string> SparseFlagArgs(const SparseFlags& flags);

}  // namespace mp::cli
