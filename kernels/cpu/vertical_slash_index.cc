#include "kernels/cpu/vertical_slash_index.h"

#include <algorithm>

namespace mp::cpu {

void BuildVerticalSlashIndex(const VerticalSlashListsView& lists,
                             const VerticalSlashIndexShape& shape,
                             const VerticalSlashIndex& index) {
  constexpr int64_t kB = kVerticalSlashBlock;
  const int64_t q_len = shape.q_len;
  const int64_t kv_len = shape.kv_len;
  const int64_t row_blocks = VerticalSlashRowBlocks(q_len);
  const int64_t base = shape.causal ? kv_len - q_len : kv_len;

  for (int64_t h = 0; h < shape.q_heads; ++h) {
    const int32_t* slash = lists.slash + h * lists.slash_capacity;
    const int32_t* vertical = lists.vertical + h * lists.vertical_capacity;
    const int64_t n_slash = lists.slash_count[h];
    const int64_t n_vertical = lists.vertical_count[h];
    for (int64_t m = 0; m < row_blocks; ++m) {
      const int64_t rb = h * row_blocks + m;
      int32_t* blocks = index.block_offset + rb * index.max_blocks;
      int32_t* columns = index.column_index + rb * index.max_columns;
      const int64_t end_m = std::min((m + 1) * kB, q_len);
      // Keys [0, limit) are visible to at least one row of the block (the last one).
      const int64_t limit = shape.causal ? std::min(kv_len, base + end_m) : kv_len;

      // Slashes -> merged ranges of whole 64-key blocks [range_start, range_end).
      int64_t n_blocks = 0;
      bool open = false;
      int64_t range_start = 0, range_end = 0;
      auto close = [&]() {
        for (int64_t r = range_start; r < range_end && n_blocks < index.max_blocks; r += kB) {
          blocks[n_blocks++] = static_cast<int32_t>(r);
        }
      };
      for (int64_t s = 0; s < n_slash; ++s) {
        const int64_t hi = std::min(base + end_m - static_cast<int64_t>(slash[s]), limit);
        const int64_t lo = std::max<int64_t>(base + end_m - slash[s] - kB, 0);
        if (lo >= hi) continue;
        if (open && lo <= range_end) {
          if (hi > range_end) range_end += kB;  // hi <= range_end + 64: one more block covers it
        } else {
          if (open) close();
          open = true;
          range_start = lo;
          range_end = lo + kB;
        }
      }
      if (open) close();
      index.block_count[rb] = static_cast<int32_t>(n_blocks);

      // Verticals not inside a block and visible to some row of the block.
      int64_t n_columns = 0;
      int64_t b = 0;
      for (int64_t i = 0; i < n_vertical && n_columns < index.max_columns; ++i) {
        const int64_t v = vertical[i];
        if (v < 0) continue;
        if (v >= limit) break;  // ascending: the rest are not visible either
        while (b < n_blocks && blocks[b] + kB <= v) ++b;
        if (b < n_blocks && blocks[b] <= v) continue;  // covered by block b
        if (n_columns > 0 && columns[n_columns - 1] == v) continue;  // duplicate input
        columns[n_columns++] = static_cast<int32_t>(v);
      }
      index.column_count[rb] = static_cast<int32_t>(n_columns);
    }
  }
}

void AddVerticalSlashIndexKeys(const int32_t* block_count, const int32_t* column_count,
                               int64_t q_heads, int64_t q_len, int64_t* index_keys) {
  const int64_t row_blocks = VerticalSlashRowBlocks(q_len);
  for (int64_t h = 0; h < q_heads; ++h) {
    int64_t keys = 0;
    for (int64_t m = 0; m < row_blocks; ++m) {
      const int64_t i = h * row_blocks + m;
      const int64_t rows = std::min<int64_t>(kVerticalSlashBlock, q_len - m * kVerticalSlashBlock);
      const int64_t per_row = kVerticalSlashBlock * std::max<int32_t>(block_count[i], 0) +
                              std::max<int32_t>(column_count[i], 0);
      keys += rows * per_row;
    }
    index_keys[h] += keys;
  }
}

}  // namespace mp::cpu
