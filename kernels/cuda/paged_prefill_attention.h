// Prefill attention of a chunk of queries over a paged bf16 KV cache, on Hopper GPUs (sm_90a).
//
// Contract (the same function as mp::cpu::PagedAttention, in bf16 with fp32 accumulation):
//   out[i, h, :] = sum_j softmax_j(scale * q[i, h] . k[j, h / group]) v[j, h / group]
//   lse[h, i]    = log(sum_j exp(scale * q[i, h] . k[j, h / group]))     (natural log)
// over the keys j in [key_begin, key_end) of one sequence, where group = q_heads / kv_heads
// (GQA: K/V are read once per KV head, never repeated in memory). With `causal`, the mask is
// bottom-right aligned: query row i sees key j only if j <= key_end - num_queries + i. Rows
// that see no key get out = 0 and lse = -inf.
//
// Key j lives in block block_table[j / block_size] at row j % block_size of the cache. Only the
// table entries for [key_begin, key_end) are read. Cache rows outside [key_begin, key_end) may
// hold anything (NaN included): they never reach the result. Block ids outside
// [0, num_blocks) read as zeros instead of faulting.
//
// Supported: head_dim 64 or 128; block_size a positive multiple of 64; q_heads a multiple of
// kv_heads; 16-byte aligned q/k/v/out pointers. PagedPrefillAttentionUnsupported() names the
// first violated requirement; PagedPrefillAttention() then returns cudaErrorInvalidValue
// without launching. The kernel exists only for sm_90a (H100/H200); on other GPUs the launch
// returns the CUDA error for a missing kernel image. Everything runs on `stream`; the call
// does not synchronize. Thread-safe: no state besides a lazily fetched driver entry point.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace mp::cuda {

// block_size must be a multiple of this (rows per bulk tensor copy).
inline constexpr int64_t kPagedPrefillBlockAlign = 64;

struct PagedPrefillAttentionArgs {
  const __nv_bfloat16* q = nullptr;        // [num_queries, q_heads, head_dim]
  const __nv_bfloat16* k_cache = nullptr;  // [num_blocks, kv_heads, block_size, head_dim]
  const __nv_bfloat16* v_cache = nullptr;  // [num_blocks, kv_heads, block_size, head_dim]
  const int32_t* block_table = nullptr;    // [>= ceil(key_end / block_size)], device memory
  __nv_bfloat16* out = nullptr;            // [num_queries, q_heads, head_dim]
  float* lse = nullptr;                    // [q_heads, num_queries]; may be null (not written)
  int64_t num_queries = 0;                 // n; 0 launches nothing
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t num_blocks = 0;  // blocks in each of k_cache and v_cache
  int64_t block_size = 0;
  int64_t key_begin = 0;  // keys [key_begin, key_end) take part
  int64_t key_end = 0;
  bool causal = true;
  float scale = 0.0f;  // logit = scale * q.k; must be positive and finite
};

// Empty when the arguments are supported; otherwise a message naming the offending argument
// and the limit. Checks only host-visible facts (shapes, alignment, null pointers).
std::string PagedPrefillAttentionUnsupported(const PagedPrefillAttentionArgs& args);

// Launches the kernel on `stream`. cudaErrorInvalidValue for unsupported arguments (see
// PagedPrefillAttentionUnsupported), otherwise the launch status.
cudaError_t PagedPrefillAttention(const PagedPrefillAttentionArgs& args, cudaStream_t stream);

}  // namespace mp::cuda
