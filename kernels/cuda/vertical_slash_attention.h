// Vertical-slash sparse attention of one DCA prefill piece on Hopper (sm_90a), all three DCA
// parts in one kernel with one online softmax (qwen1m-spec.md §3.5, §3.6): the CUDA counterpart
// of running mp::cpu::VerticalSlashAttention per part and merging the parts
// (kernels/cpu/vertical_slash_prefill.cc), in bf16 with fp32 accumulation.
//
// Contract. The piece is the queries [b, e) (num_queries = e - b, row i at position p_i = b + i)
// inside the DCA chunk starting at P = chunk_begin; the parts are those of
// vertical_slash_parts.h (intra [P, e) causal, succ [P - C, P), inter [0, P - C)), each with an
// index in the layout of vertical_slash_index.h over its local keys. For q head h and row i in
// row block m = i / 64, the attended keys are
//   K(h, i) = union over present parts x of
//               { x.key_begin + k : k in a listed block [o, o + 64) of (x, h, m) or a listed
//                 column of (x, h, m), 0 <= k < x.kv_len }  restricted to keys <= p_i,
// and with R(pos) the NeoX RoPE rotation (theta = rope_theta, fp32 angles, the rotated query
// rounded to bf16), pos_x(p) the DCA query position of part x (intra p mod C, succ
// min(p mod C + C, S), inter min(2C - 1, S); without DCA, chunk_len = 0: p):
//   logit(i, h, j) = scale * (R(pos_x(p_i)) q[i, h]) . k[j, h / group]     (j in part x)
//   out[i, h, :] = sum_{j in K(h, i)} softmax_j(logit) v[j, h / group]
//   lse[h, i]    = log sum_{j in K(h, i)} exp(logit)                        (natural log)
// Rows with no key get out = 0, lse = -inf. The index must not list a key twice within a part
// (BuildVerticalSlashIndex guarantees it). q is NOT rotated; the cache holds K rotated by
// (j mod C) (by j without DCA). GQA: K/V are read per KV head from the paged cache, never
// repeated.
//
// Kernel: one CTA per (q head, 64-row block); a warpgroup gathers the key tiles (two listed
// blocks, or 128 listed columns, per 128-key tile) token by token with cp.async from the paged
// cache into the 128B-swizzled ring of the sm_90a prefill mainloop (paged_prefill_attention_sm90
// .cuh, kSparse), whose two consumer warpgroups take even and odd tiles and merge their softmax
// states at the end. Any block_size >= 1 works (gathers are per key). Entries of the cache
// outside the listed keys are never read; a listed key whose block id lies outside
// [0, num_blocks) counts as absent (masked).
//
// Supported: head_dim 64 or 128; q_heads a multiple of kv_heads; positions below 2^30; fewer
// than 2^31 cache rows (num_blocks x kv_heads x block_size); 16-byte
// aligned q, k, v, out. VerticalSlashAttentionUnsupported() names the first violated requirement.
// Everything runs on `stream`; nothing synchronizes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/vertical_slash_estimate.h"
#include "kernels/cuda/vertical_slash_index.h"

namespace mp::cuda {

struct VerticalSlashAttentionArgs {
  const __nv_bfloat16* q = nullptr;  // [num_queries, q_heads, head_dim], the piece's rows
  VerticalSlashKv kv;
  __nv_bfloat16* out = nullptr;  // [num_queries, q_heads, head_dim]
  float* lse = nullptr;          // lse[h * lse_stride + i]; may be null
  int64_t lse_stride = 0;        // 0: num_queries
  int64_t q_heads = 0;
  int64_t piece_begin = 0;  // b
  int64_t piece_end = 0;    // e
  int64_t chunk_begin = 0;  // P (0 without DCA)
  int64_t chunk_len = 0;    // C; 0: no DCA
  int64_t chunk_size = 0;   // S
  double rope_theta = 10000.0;
  float scale = 0.0f;  // logit scale (YaRN m^2 included)
  // Per part (intra, succ, inter): the index of the parts that exist for the piece.
  VerticalSlashIndexDev index[3];
};

std::string VerticalSlashAttentionUnsupported(const VerticalSlashAttentionArgs& args);
cudaError_t VerticalSlashAttention(const VerticalSlashAttentionArgs& args, cudaStream_t stream);

namespace internal {
// Instantiated in vertical_slash_attention_hd{64,128}.cu.
template <int kHeadDim>
cudaError_t LaunchVerticalSlashAttentionSm90(const VerticalSlashAttentionArgs& args,
                                             cudaStream_t stream);
}  // namespace internal

}  // namespace mp::cuda
