// Per-head attention recall of vertical-slash sparse prefill for one layer (fp32, CPU), the
// measurement of the sparsity refinement (qwen1m-spec.md §4): the layer's prompt is prefilled
// in engine chunks exactly as deployed (DCA pieces, per-piece last-q selection with continuous
// positions, sparse attention per region), once sparse and once dense, and per query
//   recall[h, p] = exp(lse_sparse[h, p] - lse_dense[h, p])  in [0, 1] up to rounding
// the fraction of the full softmax mass that lands on the selected keys. Callers validate
// shapes; nothing here checks or reports errors.
#pragma once

#include <cstdint>

namespace mp::cpu {

struct VerticalSlashRecallShape {
  int64_t seq_len = 0;  // L: tokens of the prompt
  int64_t q_heads = 0;  // a multiple of kv_heads
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t chunk_size = 0;  // S; 0: no DCA
  int64_t chunk_len = 0;   // C = S - W
  double rope_theta = 10000.0;
  float scale = 1.0f;  // logit = scale * q.k, YaRN m^2 included
  int64_t last_q = 64;
  int64_t engine_chunk = 0;  // tokens per engine chunk of chunked prefill (> 0)
};

// q, k, v are the layer's projections before RoPE for positions 0..L-1.
void VerticalSlashRecall(const float* q,  // [L, q_heads, head_dim]
                         const float* k,  // [L, kv_heads, head_dim]
                         const float* v,  // [L, kv_heads, head_dim]
                         const VerticalSlashRecallShape& shape,
                         const int64_t* budgets,  // [q_heads, 2]: effective (vertical, slash)
                         float* recall);          // [q_heads, L]

struct VerticalSlashRecallSummary {
  double mean = 0.0;  // over the queries
  float min = 0.0f;
  float p05 = 0.0f;  // 5th percentile (nearest rank)
};

// Summaries of recall[h, query_begin : L] per head (e.g. query_begin = the sparse threshold, to
// leave out queries that a real prefill would never run sparse).
void SummarizeVerticalSlashRecall(const float* recall,  // [q_heads, L]
                                  int64_t q_heads, int64_t seq_len, int64_t query_begin,
                                  VerticalSlashRecallSummary* summary);  // [q_heads]

}  // namespace mp::cpu
