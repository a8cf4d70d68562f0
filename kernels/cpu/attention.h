// GQA attention of a chunk of queries over a range of keys in a paged KV cache (fp32, CPU).
// Returns the normalized output and the natural-log log-sum-exp of the scaled logits, so that
// partial results over disjoint key ranges merge exactly (MergeAttentionStates).
// Work is tiled (all q heads of one kv head x a block of queries, against blocks of keys gathered
// from the pages, online softmax): memory stays bounded for any length and fully masked key
// blocks are skipped. Callers validate shapes; nothing here checks or reports errors.
#pragma once

#include <cstdint>

namespace mp::cpu {

// One layer of a paged KV cache. Token t of a sequence lives in block block_table[t / block_size]
// at row t % block_size.
struct PagedKvView {
  const float* k = nullptr;              // [num_blocks, kv_heads, block_size, head_dim]
  const float* v = nullptr;              // [num_blocks, kv_heads, block_size, head_dim]
  const int32_t* block_table = nullptr;  // [>= ceil(key_end / block_size)]
  int64_t block_size = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

// Writes n tokens' K and V, starting at sequence position `start`, into the paged cache.
void WriteKv(const float* k,  // [n, kv_heads, head_dim]
             const float* v,  // [n, kv_heads, head_dim]
             int64_t n, int64_t start,
             float* k_cache,  // [num_blocks, kv_heads, block_size, head_dim]
             float* v_cache,  // [num_blocks, kv_heads, block_size, head_dim]
             const int32_t* block_table, int64_t block_size, int64_t kv_heads, int64_t head_dim);

struct AttentionShape {
  int64_t num_queries = 0;  // n: rows of q
  // A multiple of kv.kv_heads; q head h reads kv head h / (q_heads / kv_heads).
  int64_t q_heads = 0;
  int64_t key_begin = 0;  // keys [key_begin, key_end) of the sequence take part
  int64_t key_end = 0;
  // Bottom-right causal mask: query row i may see key j iff j <= key_end - num_queries + i.
  bool causal = true;
  float scale = 1.0f;  // logit = scale * q.k
};

// Tile sizes of PagedAttention. They change the result only by rounding.
struct AttentionTiles {
  int64_t query_block = 0;  // queries per tile (times q_heads/kv_heads rows); 0: automatic
  int64_t key_block = 0;    // keys per step of the online softmax; 0: automatic
};

// out[i, h, :] = sum_j softmax_j(logit) v_j ; lse[h, i] = log(sum_j exp(logit_ij)).
// Rows with no visible key get out = 0 and lse = -inf. q and out must not alias; lse may be
// nullptr when only the output is wanted.
void PagedAttention(const float* q,  // [num_queries, q_heads, head_dim]
                    const PagedKvView& kv, const AttentionShape& shape,
                    float* out,   // [num_queries, q_heads, head_dim]
                    float* lse);  // [q_heads, num_queries] or nullptr

// Same, with explicit tile sizes (tests use tiny tiles to reach every masking case).
void PagedAttention(const float* q,  // [num_queries, q_heads, head_dim]
                    const PagedKvView& kv, const AttentionShape& shape, const AttentionTiles& tiles,
                    float* out,   // [num_queries, q_heads, head_dim]
                    float* lse);  // [q_heads, num_queries] or nullptr

// Merges two partial attention results over disjoint key sets into (out_a, lse_a), in fp32:
// M = max(lse_a, lse_b); w_x = exp(lse_x - M); out = (w_a out_a + w_b out_b) / (w_a + w_b).
// A part with lse = -inf contributes nothing; two empty parts give (0, -inf).
void MergeAttentionStates(float* out_a,        // [num_queries, heads, head_dim]
                          float* lse_a,        // [heads, num_queries]
                          const float* out_b,  // [num_queries, heads, head_dim]
                          const float* lse_b,  // [heads, num_queries]
                          int64_t num_queries, int64_t heads, int64_t head_dim);

}  // namespace mp::cpu
