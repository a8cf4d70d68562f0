// Writes a chunk's K and V rows into a paged bf16 KV cache (the layout of
// paged_prefill_attention.h): token t of the sequence lives in block block_table[t / block_size]
// at row t % block_size. Block ids outside [0, num_blocks) are skipped, never written.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mp::cuda {

struct PagedKvWriteArgs {
  const __nv_bfloat16* k = nullptr;      // [n, kv_heads, head_dim]
  const __nv_bfloat16* v = nullptr;      // [n, kv_heads, head_dim]
  __nv_bfloat16* k_cache = nullptr;      // [num_blocks, kv_heads, block_size, head_dim]
  __nv_bfloat16* v_cache = nullptr;      // [num_blocks, kv_heads, block_size, head_dim]
  const int32_t* block_table = nullptr;  // [>= ceil((start + n) / block_size)] device
  int64_t n = 0;
  int64_t start = 0;  // sequence position of row 0
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
};

cudaError_t WritePagedKv(const PagedKvWriteArgs& args, cudaStream_t stream);

}  // namespace mp::cuda
