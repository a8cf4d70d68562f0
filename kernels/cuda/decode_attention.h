// Decode attention on Hopper GPUs (sm_90a): one query token per sequence against its paged bf16
// KV cache (up to millions of keys), split-KV ("flash-decoding") with a log-sum-exp combine.
//
// Contract, per sequence s and query head h (group = q_heads / kv_heads, g = h / group):
//   out[s, h, :] = sum_j softmax_j(scale * q[s, h] . k[j, g]) v[j, g]
//   lse[s, h]    = log(sum_j exp(scale * q[s, h] . k[j, g]))              (natural log)
// over the keys j in [key_begin[s], key_end[s]) of sequence s, without a mask. A sequence whose
// range is empty gets out = 0 and lse = -inf. bf16 inputs and output, fp32 accumulation; the
// partial results of the splits are merged in fp32 and rounded to bf16 once.
//
// Key j of sequence s lives in block block_tables[s * table_stride + j / block_size] at row
// j % block_size of the cache. Only the table entries for the key range are read. Cache rows
// outside the range may hold anything (NaN included): they never reach the result. Block ids
// outside [0, num_blocks) read as zeros instead of faulting. Key ranges are clamped to
// [0, table_stride * block_size).
//
// Work split: every (sequence, KV head) pair is one CTA per split; the CTA reads each K/V tile
// once for all `group` query heads of its KV head (GQA: K/V never repeated). The key tiles of a
// sequence are cut into num_splits runs (decode_attention_plan.h). With num_splits > 1 each split
// writes a normalized fp32 partial output and its LSE to the workspace and a second kernel
// merges them; with num_splits == 1 the first kernel writes out/lse directly.
//
// DcaDecodeAttention: the same over the three DCA key regions of the query at position
// p = key_end[s] - 1 (dca_positions.h, qwen1m-spec.md §2.6) in one pass: q is NOT rotated, the
// kernel rotates it per region (NeoX rotate-half, fp32 angles, rounded to bf16) and runs one
// online softmax over all keys [0, key_end[s]), which equals the LSE merge of the three regions.
// The cached K must already be rotated by (j mod C). YaRN: fold the query-side temperature into
// `scale` (scale = m(L) / sqrt(head_dim)); K is stored pre-multiplied.
//
// Supported: head_dim 64 or 128; q_heads a multiple of kv_heads with q_heads / kv_heads <= 16;
// block_size a positive multiple of 64; 16-byte aligned q/k/v/workspace pointers; for DCA,
// chunk_len a positive multiple of 64, chunk_size >= chunk_len, both <= 2^30, key_begin null.
// DecodeAttentionUnsupported() names the first violated requirement; the launchers then return
// cudaErrorInvalidValue without launching. Kernels exist only for sm_90a (H100/H200). Everything
// runs on `stream` and nothing synchronizes; no state besides a lazily fetched driver entry
// point (thread-safe).
//
// Typical use:
//   int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
//   args.num_splits = DecodeAttentionDefaultSplits(num_seqs, kv_heads, longest_range, sms);
//   args.workspace_bytes = DecodeAttentionWorkspaceBytes(args);   // 0 for one split
//   ... allocate args.workspace ...; DecodeAttention(args, stream);
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/decode_attention_plan.h"

namespace mp::cuda {

// Largest q_heads / kv_heads (one 16-row MMA tile of query heads per CTA).
inline constexpr int64_t kDecodeMaxGroup = 16;

struct DecodeAttentionArgs {
  const __nv_bfloat16* q = nullptr;        // [num_seqs, q_heads, head_dim]
  const __nv_bfloat16* k_cache = nullptr;  // [num_blocks, kv_heads, block_size, head_dim]
  const __nv_bfloat16* v_cache = nullptr;  // [num_blocks, kv_heads, block_size, head_dim]
  const int32_t* block_tables = nullptr;   // [num_seqs, table_stride], device memory
  const int32_t* key_begin = nullptr;      // [num_seqs], device memory; null: all 0
  const int32_t* key_end = nullptr;        // [num_seqs], device memory
  __nv_bfloat16* out = nullptr;            // [num_seqs, q_heads, head_dim]
  float* lse = nullptr;                    // [num_seqs, q_heads]; may be null (not written)
  void* workspace = nullptr;  // device scratch of workspace_bytes (unused for one split)
  int64_t workspace_bytes = 0;
  int64_t num_seqs = 0;  // 0 launches nothing
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t num_blocks = 0;    // blocks in each of k_cache and v_cache
  int64_t block_size = 0;    // cache rows per block
  int64_t table_stride = 0;  // entries per sequence in block_tables
  int num_splits = 1;        // 1..kDecodeMaxSplits; see DecodeAttentionDefaultSplits
  float scale = 0.0f;        // logit = scale * q.k; positive and finite
};

// Scratch bytes the launch needs for args.num_splits (0 when num_splits == 1).
int64_t DecodeAttentionWorkspaceBytes(const DecodeAttentionArgs& args);

// Empty when the arguments are supported; otherwise a message naming the offending argument and
// the limit. Checks only host-visible facts (shapes, alignment, null pointers, workspace size).
// dca is null for plain decode.
std::string DecodeAttentionUnsupported(const DecodeAttentionArgs& args,
                                       const DcaParams* dca = nullptr);

// Plain decode: q already rotated like the cached keys.
cudaError_t DecodeAttention(const DecodeAttentionArgs& args, cudaStream_t stream);

// DCA decode: q un-rotated, query position key_end[s] - 1, keys [0, key_end[s]).
cudaError_t DcaDecodeAttention(const DecodeAttentionArgs& args, const DcaParams& dca,
                               cudaStream_t stream);

}  // namespace mp::cuda
