// Vertical-slash sparse attention over a paged KV cache (fp32, CPU): the reference for the
// Hopper sparse kernel (qwen1m-spec.md §3.5).
//
// The part's keys are [shape.key_begin, shape.key_end) of the sequence; the index speaks of
// local key indices k in [0, kv_len), kv_len = key_end - key_begin, key = key_begin + k. For
// each q head h (kv head h / (q_heads / kv_heads): K/V are read in place, never repeated) and
// row block m of 64 queries, one online softmax runs over
//   block phase:  keys [o, o + 64) for every o in block_offset[h, m, 0 : block_count[h, m]]
//   column phase: keys column_index[h, m, 0 : column_count[h, m]], gathered 64 at a time
// masking, for row i, every local key >= kv_len and, when causal (bottom-right), every local key
// > kv_len - num_queries + i. The result equals dense softmax attention under the mask
//   (key in a listed block OR key listed as a column) AND key < kv_len AND key <= causal limit
// (the index must not list a key twice, as BuildVerticalSlashIndex guarantees). Rows with no
// visible selected key get out = 0 and lse = -inf, so they merge as an empty part.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/vertical_slash_index.h"

namespace mp::cpu {

// shape: num_queries, q_heads, key_begin, key_end, causal and scale as in PagedAttention.
void VerticalSlashAttention(const float* q,  // [num_queries, q_heads, head_dim]
                            const PagedKvView& kv, const AttentionShape& shape,
                            const VerticalSlashIndexView& index,
                            float* out,   // [num_queries, q_heads, head_dim]
                            float* lse);  // [q_heads, num_queries] or nullptr

}  // namespace mp::cpu
