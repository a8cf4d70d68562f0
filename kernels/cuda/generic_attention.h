// Paged attention for the shapes the sm_90a prefill kernel does not take (head_dim other than
// 64/128, block sizes that are not multiples of 64, non-positive scales): one warp per (query
// row, q head) walks the visible keys with an online softmax in fp32. A correctness path for
// small models and tests, not a fast one. Same contract as paged_prefill_attention.h: GQA over
// keys [key_begin, key_end) with the bottom-right causal mask, out + natural-log lse, rows without
// keys get out = 0 and lse = -inf, block ids outside [0, num_blocks) read as zeros.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace mp::cuda {

inline constexpr int64_t kGenericAttentionMaxHeadDim = 256;

struct GenericAttentionArgs {
  const __nv_bfloat16* q = nullptr;        // [num_queries, q_heads, head_dim]
  const __nv_bfloat16* k_cache = nullptr;  // [num_blocks, kv_heads, block_size, head_dim]
  const __nv_bfloat16* v_cache = nullptr;  // [num_blocks, kv_heads, block_size, head_dim]
  const int32_t* block_table = nullptr;    // [>= ceil(key_end / block_size)] device
  __nv_bfloat16* out = nullptr;            // [num_queries, q_heads, head_dim]
  float* lse = nullptr;                    // [q_heads, num_queries]; may be null
  int64_t num_queries = 0;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t key_begin = 0;
  int64_t key_end = 0;
  bool causal = true;
  float scale = 1.0f;
};

// Empty when supported, else a message naming the argument and the limit.
std::string GenericAttentionUnsupported(const GenericAttentionArgs& args);

cudaError_t GenericPagedAttention(const GenericAttentionArgs& args, cudaStream_t stream);

}  // namespace mp::cuda
