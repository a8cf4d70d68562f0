// Vertical-slash index builder on the GPU (qwen1m-spec.md §3.5): the CUDA counterpart of
// mp::cpu::BuildVerticalSlashIndex (kernels/cpu/vertical_slash_index.h), with exactly its
// semantics and output layout: per (q head, 64-row block) the merged slash ranges as 64-key
// block starts (block_offset / block_count) and the verticals outside them (column_index /
// column_count), both ascending, causal (bottom-right, base = kv_len - q_len) or non-causal
// (virtual frame, base = kv_len). One thread per row block; the head's lists are staged through
// shared memory. Entries past the counts are left untouched. Device pointers; runs on `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/vertical_slash_estimate.h"

namespace mp::cuda {

struct VerticalSlashIndexDev {
  int32_t* block_count = nullptr;   // [q_heads, row_blocks]
  int32_t* block_offset = nullptr;  // [q_heads, row_blocks, max_blocks]
  int32_t* column_count = nullptr;  // [q_heads, row_blocks]
  int32_t* column_index = nullptr;  // [q_heads, row_blocks, max_columns]
  int64_t max_blocks = 0;   // >= mp::cpu::VerticalSlashBlockCapacity(slash_capacity, kv_len)
  int64_t max_columns = 0;  // >= vertical_capacity
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

// The parts of one prefill piece (up to kVerticalSlashIndexMaxParts, the same q_heads) in one
// launch; the same result as one call per part. cudaErrorInvalidValue as above, or for more
// parts or unequal q_heads.
inline constexpr int kVerticalSlashIndexMaxParts = 3;
cudaError_t BuildVerticalSlashIndex(const VerticalSlashIndexArgs* parts, int num_parts,
                                    cudaStream_t stream);

}  // namespace mp::cuda
