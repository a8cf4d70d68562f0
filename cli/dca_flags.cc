#include "cli/dca_flags.h"

#include "absl/strings/str_cat.h"

namespace mp::cli {

void AddDcaFlags(CLI::App* cmd, DcaFlags* flags) {
  cmd->add_flag("--dca", flags->enable,
                "dual chunk attention: read past the training length of any RoPE model "
                "(chunk size = the training length unless given; raise --max-context too)");
  cmd->add_flag("--no-dca", flags->disable,
                "plain RoPE attention even when config.json has dual_chunk_attention_config");
  flags->chunk_size_option =
      cmd->add_option("--dca-chunk-size", flags->chunk_size,
                      "DCA chunk_size S, the largest relative distance (implies --dca; default: "
                      "config.json's, else max_position_embeddings)");
  flags->local_size_option =
      cmd->add_option("--dca-local-size", flags->local_size,
                      "DCA local_size W; S - W must be a multiple of 64 (implies --dca; "
                      "default: config.json's, else S/32 rounded so that S - W aligns)");
  flags->original_option = cmd->add_option(
      "--dca-original-max-position-embeddings", flags->original_max_position_embeddings,
      "L0 of the YaRN temperature max(1, 0.1 ln(L/L0) + 1) (implies --dca; default: "
      "config.json's, else max_position_embeddings)");
}

DualChunkOverride ToDualChunkOverride(const DcaFlags& flags) {
  DualChunkOverride o;
  o.enable = flags.enable;
  o.disable = flags.disable;
  if (flags.chunk_size_option != nullptr && flags.chunk_size_option->count() > 0) {
    o.chunk_size = flags.chunk_size;
  }
  if (flags.local_size_option != nullptr && flags.local_size_option->count() > 0) {
    o.local_size = flags.local_size;
  }
  if (flags.original_option != nullptr && flags.original_option->count() > 0) {
    o.original_max_position_embeddings = flags.original_max_position_embeddings;
  }
  return o;
}

absl::Status ApplyDcaFlags(const DcaFlags& flags, ModelConfig* config) {
  const absl::Status status = ApplyDualChunkOverride(ToDualChunkOverride(flags), config);
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat("--dca / --no-dca / --dca-chunk-size / --dca-local-size / "
                                   "--dca-original-max-position-embeddings: ",
                                   status.message()));
}

}  // namespace mp::cli
