// Vertical-slash index builder on the GPU (qwen1m-spec.md §3.5): the CUDA counterpart of
// mp::cpu::BuildVerticalSlashIndex (kernels/cpu/vertical_slash_index.h), with exactly its
// semantics and output layout: per (q head, 64-row block) the merged slash ranges as 64-key
// block starts (block_offset / block_count) and the verticals outside them (column_index /
// column_count), both ascending, causal (bottom-right, base = kv_len - q_len) or non-causal
// (virtual frame, base = kv_len). One warp per row block, 32 slashes and 32 verticals per step
// (the .cu says how). Entries past the counts are left untouched. Device pointers; runs on
// `stream`.
//
// Layout of block_offset / column_index: uniform (the CPU one: row block m of head h at
// (h * row_blocks + m) * max_blocks) or, when `heads` is set, per head (VerticalSlashHeadSpan,
// kernels/cuda/vertical_slash_parts.h), each head sized by its own budgets.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/vertical_slash_estimate.h"
#include "kernels/cuda/vertical_slash_parts.h"

namespace mp::cuda {

// Parts one launch of the builder takes: every part of a piece, or of the two pieces of a
// chunk that crosses a DCA chunk boundary.
inline constexpr int kVerticalSlashIndexMaxParts = 6;

struct VerticalSlashIndexDev {
  int32_t* block_count = nullptr;   // [q_heads, row_blocks]
  int32_t* block_offset = nullptr;  // [q_heads, row_blocks, max_blocks]
  int32_t* column_count = nullptr;  // [q_heads, row_blocks]
  int32_t* column_index = nullptr;  // [q_heads, row_blocks, max_columns]
  int64_t max_blocks = 0;   // >= mp::cpu::VerticalSlashBlockCapacity(slash_capacity, kv_len)
  int64_t max_columns = 0;  // >= vertical_capacity
  // Optional per-head layout, device [q_heads]; null: the uniform one. With it, max_blocks and
  // max_columns are unused by the builder and the sparse kernel.
  const VerticalSlashHeadSpan* heads = nullptr;
};

struct VerticalSlashIndexArgs {
  VerticalSlashListsDev lists;  // one part's selection (VerticalSlashSelect output)
  int64_t q_heads = 0;
  int64_t q_len = 0;   // the part's queries
  int64_t kv_len = 0;  // the part's keys, local indices [0, kv_len)
  bool causal = false;
  VerticalSlashIndexDev index;
};

// cudaErrorInvalidValue for negative sizes, null pointers or sizes past int32.
cudaError_t BuildVerticalSlashIndex(const VerticalSlashIndexArgs& args, cudaStream_t stream);

// Several parts (up to kVerticalSlashIndexMaxParts, the same q_heads; of one or more pieces) in
// one launch; the same result as one call per part. cudaErrorInvalidValue as above, or for more
// parts or unequal q_heads.
cudaError_t BuildVerticalSlashIndex(const VerticalSlashIndexArgs* parts, int num_parts,
                                    cudaStream_t stream);

// The per-head layout of the parts of one piece: for q head h with top-k sizes k[2h] (vertical)
// and k[2h + 1] (slash) (mp::cpu::VerticalSlashVerticalK / SlashK of its budgets), part i of
// kv_len[i] keys gets VerticalSlashHeadMaxBlocks / MaxColumns per row block, heads packed in
// order from offset 0 of the part's block_offset and column_index. spans[i] (device,
// [q_heads]) receives them; written on `stream`. VerticalSlashHeadSpanEntries gives the sizes
// (host).
struct VerticalSlashHeadSpanArgs {
  const int64_t* k = nullptr;  // host [q_heads, 2]
  int64_t q_heads = 0;         // <= kVerticalSlashMaxHeads
  int64_t row_blocks = 0;
  int num_parts = 0;  // <= kVerticalSlashNumParts
  int64_t kv_len[kVerticalSlashNumParts] = {};
  VerticalSlashHeadSpan* spans[kVerticalSlashNumParts] = {};
};
struct VerticalSlashSpanEntries {
  int64_t blocks = 0, columns = 0;  // entries of block_offset and column_index
};
VerticalSlashSpanEntries VerticalSlashHeadSpanEntries(const int64_t* k, int64_t q_heads,
                                                      int64_t row_blocks, int64_t kv_len);
// cudaErrorInvalidValue for sizes out of range or null pointers.
cudaError_t WriteVerticalSlashHeadSpans(const VerticalSlashHeadSpanArgs& args,
                                        cudaStream_t stream);

}  // namespace mp::cuda
