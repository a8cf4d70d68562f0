// C entry point to mp::cuda::PagedPrefillAttention for bench/attention_peer.py (ctypes), so the
// peer script can time our kernel and cuDNN interleaved in one process on the same tensors.
// Built as a shared library by bench/cuda/build_standalone.sh; not part of the engine.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/paged_prefill_attention.h"

extern "C" int mp_bench_paged_prefill_attention(
    const void* q,            // [n, q_heads, head_dim] bf16
    const void* k_cache,      // [num_blocks, kv_heads, block_size, head_dim] bf16
    const void* v_cache,      // [num_blocks, kv_heads, block_size, head_dim] bf16
    const int32_t* block_table, void* out,  // out: [n, q_heads, head_dim] bf16
    float* lse,                              // [q_heads, n] or null
    int64_t num_queries, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
    int64_t num_blocks, int64_t block_size, int64_t key_begin, int64_t key_end, int causal,
    float scale, void* stream) {
  mp::cuda::PagedPrefillAttentionArgs a;
  a.q = static_cast<const __nv_bfloat16*>(q);
  a.k_cache = static_cast<const __nv_bfloat16*>(k_cache);
  a.v_cache = static_cast<const __nv_bfloat16*>(v_cache);
  a.block_table = block_table;
  a.out = static_cast<__nv_bfloat16*>(out);
  a.lse = lse;
  a.num_queries = num_queries;
  a.q_heads = q_heads;
  a.kv_heads = kv_heads;
  a.head_dim = head_dim;
  a.num_blocks = num_blocks;
  a.block_size = block_size;
  a.key_begin = key_begin;
  a.key_end = key_end;
  a.causal = causal != 0;
  a.scale = scale;
  return static_cast<int>(
      mp::cuda::PagedPrefillAttention(a, static_cast<cudaStream_t>(stream)));
}
