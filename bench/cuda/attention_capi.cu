// C entry points for bench/attention_peer.py (ctypes), so the peer script can time our kernels
// and cuDNN interleaved in one process on the same tensors: the library's dense kernel
// (mp::cuda::PagedPrefillAttention) and every entry of the candidate list (prefill_variants.h;
// the dca entries with the given DCA constants). Built as a shared library by
// bench/cuda/build_standalone.sh; not part of the engine.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "bench/cuda/prefill_variants.h"
#include "kernels/cuda/paged_prefill_attention.h"

namespace {

mp::cuda::PagedPrefillAttentionArgs MakeArgs(const void* q, const void* k_cache,
                                             const void* v_cache, const int32_t* block_table,
                                             void* out, float* lse, int64_t num_queries,
                                             int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                                             int64_t num_blocks, int64_t block_size,
                                             int64_t key_begin, int64_t key_end, int causal,
                                             float scale) {
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
  return a;
}

const mp::bench::PrefillVariant* Variant(int index) {
  int count = 0;
  const mp::bench::PrefillVariant* list = mp::bench::PrefillVariants(&count);
  return index >= 0 && index < count ? &list[index] : nullptr;
}

}  // namespace

extern "C" int mp_bench_paged_prefill_attention(
    const void* q,            // [n, q_heads, head_dim] bf16
    const void* k_cache,      // [num_blocks, kv_heads, block_size, head_dim] bf16
    const void* v_cache,      // [num_blocks, kv_heads, block_size, head_dim] bf16
    const int32_t* block_table, void* out,  // out: [n, q_heads, head_dim] bf16
    float* lse,                              // [q_heads, n] or null
    int64_t num_queries, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
    int64_t num_blocks, int64_t block_size, int64_t key_begin, int64_t key_end, int causal,
    float scale, void* stream) {
  const mp::cuda::PagedPrefillAttentionArgs a =
      MakeArgs(q, k_cache, v_cache, block_table, out, lse, num_queries, q_heads, kv_heads,
               head_dim, num_blocks, block_size, key_begin, key_end, causal, scale);
  return static_cast<int>(
      mp::cuda::PagedPrefillAttention(a, static_cast<cudaStream_t>(stream)));
}

// The candidate list: its length, and per entry its name, whether it is a DCA kernel, the name
// of the entry whose output it must reproduce, and a one-line description (null past the end).
extern "C" int mp_bench_prefill_variant_count() {
  int count = 0;
  mp::bench::PrefillVariants(&count);
  return count;
}
extern "C" const char* mp_bench_prefill_variant_name(int index) {
  const auto* v = Variant(index);
  return v ? v->name : nullptr;
}
extern "C" int mp_bench_prefill_variant_is_dca(int index) {
  const auto* v = Variant(index);
  return v && v->dca ? 1 : 0;
}
extern "C" const char* mp_bench_prefill_variant_baseline(int index) {
  const auto* v = Variant(index);
  return v ? v->baseline : nullptr;
}
extern "C" const char* mp_bench_prefill_variant_what(int index) {
  const auto* v = Variant(index);
  return v ? v->what : nullptr;
}

// Runs entry `index` (arguments as mp_bench_paged_prefill_attention; the DCA constants are used
// by dca entries only). Returns the cudaError_t, or cudaErrorInvalidValue for a bad index.
extern "C" int mp_bench_prefill_variant(int index, const void* q, const void* k_cache,
                                        const void* v_cache, const int32_t* block_table,
                                        void* out, float* lse, int64_t num_queries,
                                        int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                                        int64_t num_blocks, int64_t block_size,
                                        int64_t key_begin, int64_t key_end, int causal,
                                        float scale, int64_t dca_chunk_len,
                                        int64_t dca_chunk_size, double dca_rope_theta,
                                        void* stream) {
  const auto* v = Variant(index);
  if (v == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const mp::cuda::PagedPrefillAttentionArgs a =
      MakeArgs(q, k_cache, v_cache, block_table, out, lse, num_queries, q_heads, kv_heads,
               head_dim, num_blocks, block_size, key_begin, key_end, causal, scale);
  mp::cuda::DcaParams dca;
  dca.chunk_len = dca_chunk_len;
  dca.chunk_size = dca_chunk_size;
  dca.rope_theta = dca_rope_theta;
  return static_cast<int>(v->launch(a, dca, static_cast<cudaStream_t>(stream)));
}
