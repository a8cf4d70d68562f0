#include "cli/sparse_flags.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace mp::cli {

void AddSparseFlags(CLI::App* cmd, SparseFlags* flags) {
  cmd->add_option("--sparse-config", flags->config,
                  "vertical-slash sparse prefill with this sparse_attention_config.json (or a "
                  "directory holding one); default: the model directory's file, used when "
                  "config.json has dual_chunk_attention_config");
  flags->threshold_option =
      cmd->add_option("--sparse-threshold", flags->threshold,
                      "sparse prefill only for prompts longer than this many tokens (default: "
                      "config.json's sparse_attention_threshold, else 32768)");
  flags->last_q_option = cmd->add_option(
      "--sparse-last-q", flags->last_q,
      "queries per prefill piece that estimate the sparse pattern, 1-64 (default 64)");
  cmd->add_flag("--no-sparse", flags->disable, "dense prefill even when a sparse config is found");
}

absl::StatusOr<SparsePrefillRequest> ToSparsePrefillRequest(const SparseFlags& flags) {
  if (flags.disable && !flags.config.empty()) {
    return absl::InvalidArgumentError("give at most one of --sparse-config and --no-sparse");
  }
  std::error_code ec;
  if (!flags.config.empty() && !std::filesystem::exists(flags.config, ec)) {
    return absl::NotFoundError(absl::StrCat("--sparse-config: ", flags.config, " does not exist"));
  }
  SparsePrefillRequest r;
  r.file = flags.config;
  if (flags.threshold_option != nullptr && flags.threshold_option->count() > 0) {
    if (flags.threshold < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--sparse-threshold must be >= 0 (prompt tokens), got ", flags.threshold));
    }
    r.overrides.threshold = flags.threshold;
  }
  if (flags.last_q_option != nullptr && flags.last_q_option->count() > 0) {
    if (flags.last_q < 1 || flags.last_q > kMaxSparseLastQ) {
      return absl::InvalidArgumentError(absl::StrCat("--sparse-last-q must be in [1, ",
                                                     kMaxSparseLastQ, "], got ", flags.last_q));
    }
    r.overrides.last_q = flags.last_q;
  }
  if (flags.disable) r.overrides.enabled = false;
  return r;
}

std::vector<std::string> SparseFlagArgs(const SparseFlags& flags) {
  std::vector<std::string> args;
  if (!flags.config.empty()) args.insert(args.end(), {"--sparse-config", flags.config});
  if (flags.threshold_option != nullptr && flags.threshold_option->count() > 0) {
    args.insert(args.end(), {"--sparse-threshold", std::to_string(flags.threshold)});
  }
  if (flags.last_q_option != nullptr && flags.last_q_option->count() > 0) {
    args.insert(args.end(), {"--sparse-last-q", std::to_string(flags.last_q)});
  }
  if (flags.disable) args.push_back("--no-sparse");
  return args;
}

}  // namespace mp::cli
