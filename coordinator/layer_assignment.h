// Layer assignment: splits a model's layers into contiguous slices, one per pipeline stage,
// balanced by compute cost and bounded by each stage's memory.
//
// Cost of a stage: its layers' work on a chunk of `chunk_tokens` tokens (the projections and
// MLP, plus attention over an average history of `chunk_tokens`; every decoder layer costs the
// same) plus the LM head's one row on the last stage; the embedding lookup is free. Memory of a
// stage: its weights (the embedding on the first stage, the final norm and LM head on the last),
// its activation buffers for `chunk_tokens` rows, the sparse prefill workspace of its layers (the
// largest; AssignmentOptions::sparse_workspace_per_layer), and the KV cache of its layers. Every
// stage gets the same KV budget in tokens (a request needs its tokens on every stage): the largest
// that fits every stage's memory, capped at `kv_tokens` when set.
//
// The split minimises the largest stage cost; among equal splits it maximises the KV budget.
// FAILED_PRECONDITION (saying what is missing) when no split leaves `min_kv_tokens` of KV on
// every stage, or when there are more stages than layers.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/weights.h"

namespace mp {

struct AssignmentOptions {
  int64_t chunk_tokens = 4096;
  int64_t weight_bytes_per_element = 4;  // 4 on the CPU backend (fp32), 2 on CUDA (bf16)
  int64_t kv_bytes_per_element = 4;
  int64_t kv_tokens = 0;      // cap on the per-stage KV budget (0: as much as fits)
  int64_t min_kv_tokens = 1;  // every stage must hold at least this much KV
  // Activation buffers of the transfers: this many chunks in each direction.
  int64_t transfer_buffers = 4;
  // Per layer, the sparse prefill workspace a stage holding it sets aside (a stage takes the
  // largest of its layers'); empty: none.
  std::vector<int64_t> sparse_workspace_per_layer;
};

struct StageAssignment {
  LayerRange layers;
  double cost = 0;            // relative units (multiply-adds)
  int64_t weight_bytes = 0;   // incl. embedding / head
  int64_t reserve_bytes = 0;  // activation scratch, transfer buffers, sparse workspace
  int64_t kv_bytes_per_token = 0;
  int64_t kv_tokens_fit = 0;  // what the stage's memory would hold
};

struct Assignment {
  std::vector<StageAssignment> stages;
  int64_t kv_tokens = 0;  // the budget every stage gets
};

// `memory_bytes[i]` is stage i's memory (0: unknown, treated as unlimited; then kv_tokens must
// be set).
absl::StatusOr<Assignment> AssignLayers(const ModelConfig& config,
                                        const std::vector<uint64_t>& memory_bytes,
                                        const AssignmentOptions& options);

}  // namespace mp
