// Vertical-slash index builder (qwen1m-spec.md §3.5, CPU): turns one DCA part's selection
// (VerticalSlashLists) into per-(head, 64-row block) lists of 64-key blocks and single key
// columns for VerticalSlashAttention.
//
// Geometry. The part has q_len queries and kv_len keys (local indices [0, kv_len)). Query row i
// sits at key position base + i, base = kv_len - q_len when causal (bottom-right alignment; row
// i sees keys <= base + i), base = kv_len otherwise (the virtual frame of
// SelectVerticalSlash: every key is visible). A slash value d selects, for every row i, the key
// base + i - d.
//
// Per row block m (rows [start_m, end_m), start_m = 64 m, end_m = min(start_m + 64, q_len)):
//  1. Each slash d gives the 64-key interval [base + end_m - d - 64, base + end_m - d), clipped
//     to [0, kv_len); it holds key base + i - d of every row i of the block. Empty intervals
//     (the diagonal lies after the part's keys, or before key 0, for the whole block) are
//     skipped.
//  2. Slashes are walked in decreasing d (increasing key). An interval that overlaps or touches
//     the open range extends it; the open range always spans a whole number of 64-key blocks
//     starting at its first key, so an extension adds at most one block. Otherwise the open range
//     is closed and a new one starts. Each closed range is emitted as consecutive block starts
//     r, r + 64, ... (block_offset); a block covers keys [r, r + 64) (the kernel clips at kv_len
//     and the causal limit). Blocks never overlap, at most min(slash_count, ceil(kv_len / 64)).
//  3. Verticals (ascending) inside an emitted block are dropped (no key is counted twice), as are
//     verticals no row of the block may see (>= kv_len, or > base + end_m - 1 when causal). The
//     rest go to column_index, ascending.
#pragma once

#include <cstdint>

#include "kernels/cpu/vertical_slash_select.h"

namespace mp::cpu {

inline constexpr int64_t kVerticalSlashBlock = 64;  // BLOCK_M = BLOCK_N

inline int64_t VerticalSlashRowBlocks(int64_t q_len) {
  return (q_len + kVerticalSlashBlock - 1) / kVerticalSlashBlock;
}
// Capacity of block_offset per row block: every slash adds at most one block, and blocks are
// disjoint 64-key spans starting inside [0, kv_len).
inline int64_t VerticalSlashBlockCapacity(int64_t slash_capacity, int64_t kv_len) {
  const int64_t spans = (kv_len + kVerticalSlashBlock - 1) / kVerticalSlashBlock;
  return slash_capacity < spans ? slash_capacity : spans;
}

struct VerticalSlashIndexShape {
  int64_t q_heads = 0;
  int64_t q_len = 0;   // the part's queries (the piece's query count)
  int64_t kv_len = 0;  // the part's keys, local indices [0, kv_len)
  bool causal = false;
};

// The builder's input (const view of VerticalSlashLists).
struct VerticalSlashListsView {
  const int32_t* vertical = nullptr;        // [q_heads, vertical_capacity], ascending
  const int32_t* vertical_count = nullptr;  // [q_heads]
  const int32_t* slash = nullptr;           // [q_heads, slash_capacity], descending
  const int32_t* slash_count = nullptr;     // [q_heads]
  int64_t vertical_capacity = 0;
  int64_t slash_capacity = 0;
};

// The builder's output and the sparse kernel's input. Entries past the counts are unspecified.
struct VerticalSlashIndex {
  int32_t* block_count = nullptr;   // [q_heads, row_blocks]
  int32_t* block_offset = nullptr;  // [q_heads, row_blocks, max_blocks], ascending
  int32_t* column_count = nullptr;  // [q_heads, row_blocks]
  int32_t* column_index = nullptr;  // [q_heads, row_blocks, max_columns], ascending
  int64_t max_blocks = 0;   // >= VerticalSlashBlockCapacity(slash_capacity, kv_len)
  int64_t max_columns = 0;  // >= vertical_capacity
};

struct VerticalSlashIndexView {
  const int32_t* block_count = nullptr;   // [q_heads, row_blocks]
  const int32_t* block_offset = nullptr;  // [q_heads, row_blocks, max_blocks]
  const int32_t* column_count = nullptr;  // [q_heads, row_blocks]
  const int32_t* column_index = nullptr;  // [q_heads, row_blocks, max_columns]
  int64_t max_blocks = 0;
  int64_t max_columns = 0;
};

void BuildVerticalSlashIndex(const VerticalSlashListsView& lists,
                             const VerticalSlashIndexShape& shape, const VerticalSlashIndex& index);

// Adds to index_keys[h] the keys a part's index gives its q_len queries: for each query, 64 per
// listed block plus the listed columns of its 64-row block (negative counts count as 0).
void AddVerticalSlashIndexKeys(const int32_t* block_count,   // [q_heads, row_blocks]
                               const int32_t* column_count,  // [q_heads, row_blocks]
                               int64_t q_heads, int64_t q_len,
                               int64_t* index_keys);  // [q_heads]

}  // namespace mp::cpu
