// Sparse prefill settings for the runtime tests: per-head budget configs and the settings that
// turn them on above a threshold.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/sparse_attention_config.h"
#include "tests/unit/runtime/tiny_model.h"

namespace mp::testing {

// A tiny model (4 q heads, 2 KV heads, head_dim 16) with dual chunk attention S = 320, W = 64
// (C = 256) and L0 = 200, so that the YaRN temperature is active from 201 tokens on.
inline ModelConfig TinyDcaConfig(int64_t layers) {
  ModelConfig c = TinyConfig(
      {.layers = layers, .heads = 4, .kv_heads = 2, .head_dim = 16, .max_position_embeddings = 4096});
  DualChunkConfig d;
  d.chunk_size = 320;
  d.local_size = 64;
  d.original_max_position_embeddings = 200;
  c.dual_chunk = d;
  return c;
}

// `layers` x `heads` budgets, distinct per layer and head; head 0 has vertical_size 30 (runs as
// 130).
inline SparseAttentionConfig HeadConfig(int64_t layers, int64_t heads, int64_t vertical,
                                        int64_t slash) {
  SparseAttentionConfig c;
  for (int64_t l = 0; l < layers; ++l) {
    std::vector<SparseHeadConfig> row;
    for (int64_t h = 0; h < heads; ++h) {
      row.push_back({h == 0 ? 30 : vertical + 2 * h + l, slash + 4 * h + 8 * l, 0.5});
    }
    c.layers.push_back(std::move(row));
  }
  return c;
}

// Sparse prefill on, for prompts longer than `threshold`, last_q 64.
inline std::shared_ptr<const SparsePrefillSettings> Settings(const SparseAttentionConfig& heads,
                                                             int64_t threshold) {
  auto s = std::make_shared<SparsePrefillSettings>();
  s->enabled = true;
  s->threshold = threshold;
  s->last_q = 64;
  s->heads = heads;
  return s;
}

// The effective budgets of one layer as the executor passes them: (vertical, slash) per head.
inline std::vector<int64_t> EffectiveBudgets(const SparseAttentionConfig& heads, int64_t layer) {
  return mp::EffectiveBudgets(heads.layers[layer]);
}

}  // namespace mp::testing
