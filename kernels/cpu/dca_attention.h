// Dual chunk attention over a paged KV cache (fp32, CPU): the reference that the fused CUDA
// kernel is tested against. Semantics are those of qwen1m-spec.md §2 (Qwen/vLLM): positions of
// dca_positions.h, three key regions, exact log-sum-exp merge in fp32, and the YaRN temperature
// in the softmax-scale form of §2.7 (cached K is not scaled; the logits carry m^2).
//
// The queries are one contiguous run of a sequence: query i is the token at absolute position
// p_i = query_begin + i, and the cache holds the keys [0, query_begin + n) (the run's own K/V
// written first, K rotated by RoPE position j mod C). Query i attends to every key j <= p_i:
//
//   logit(i, j) = scale * temperature^2 * (R(pos_q) q_i) . k_j      (R: NeoX RoPE, fp32 angles)
//   pos_q = p_i mod C               for j in chunk c(p_i)        (intra, the causal region)
//         = min(p_i mod C + C, S)   for j in chunk c(p_i) - 1    (succ)
//         = min(2C - 1, S)          for j in chunks < c(p_i) - 1 (inter)
//
// which is attention with relative distance DcaRelativeDistance(p_i, j). The reference splits
// the run at DCA chunk boundaries; per piece it rotates a copy of Q per region, runs
// PagedAttention over the region's key range (intra causal bottom-right, succ and inter
// non-causal) and merges the parts with MergeAttentionStates. Decode is the same call with
// n = 1. Callers validate shapes; nothing here checks or reports errors.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mp::cpu {

struct DcaAttentionShape {
  int64_t num_queries = 0;  // n: rows of q
  int64_t q_heads = 0;      // a multiple of kv.kv_heads (GQA: q head h reads kv head h / group)
  int64_t query_begin = 0;  // absolute position of query 0
  int64_t chunk_size = 0;   // S
  int64_t chunk_len = 0;    // C = S - W, 0 < C <= S
  double rope_theta = 10000.0;
  float scale = 1.0f;        // e.g. 1 / sqrt(head_dim)
  float temperature = 1.0f;  // YaRN m(L); the logit multiplier is scale * temperature^2 (fp32)
};

// out[i, h, :] and lse[h, i] = log(sum_j exp(logit(i, j))) over all keys j <= p_i (natural
// log). Every query sees at least its own key, so lse is finite. q is not rotated and is left
// unchanged; q and out must not alias; lse may be nullptr.
void DcaPagedAttention(const float* q,  // [num_queries, q_heads, head_dim]
                       const PagedKvView& kv, const DcaAttentionShape& shape,
                       float* out,   // [num_queries, q_heads, head_dim]
                       float* lse);  // [q_heads, num_queries] or nullptr

// Same, with explicit PagedAttention tile sizes (tests use tiny tiles).
void DcaPagedAttention(const float* q,  // [num_queries, q_heads, head_dim]
                       const PagedKvView& kv, const DcaAttentionShape& shape,
                       const AttentionTiles& tiles,
                       float* out,   // [num_queries, q_heads, head_dim]
                       float* lse);  // [q_heads, num_queries] or nullptr

}  // namespace mp::cpu
