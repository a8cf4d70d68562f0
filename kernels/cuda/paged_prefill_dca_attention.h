// Dual Chunk Attention (DCA) prefill of a chunk of queries over a paged bf16 KV cache, fused in
// one kernel on Hopper GPUs (sm_90a): the sm_90a prefill kernel of paged_prefill_attention.h with
// the query rotated per key region inside the kernel (qwen1m-spec.md §2.2, §2.5).
//
// Contract: the queries are the last num_queries positions of the sequence, query row i at
// position p_i = key_end - num_queries + i (bottom-right aligned), and see the keys
// j in [key_begin, key_end) with j <= p_i. With C = dca.chunk_len, S = dca.chunk_size and
// R(x) the NeoX rotate-half RoPE by position x (theta = dca.rope_theta, rotary_dim = head_dim,
// fp32 angles x * inv_freq as mp::cpu::RopeNeox computes them):
//   logit(i, h, j) = scale * (R(pq(p_i, j)) q[i, h]) . k[j, h / group]
//   pq(p, j) = p mod C               if j >= floor(p / C) C            (intra)
//            = min(p mod C + C, S)   if j >= (floor(p / C) - 1) C      (successive)
//            = min(2C - 1, S)        otherwise                          (inter)
//   out[i, h, :] = sum_j softmax_j(logit) v[j, h / group];  lse[h, i] = log sum_j exp(logit)
// i.e. exactly the LSE merge of the three per-region attentions of spec §2.5, computed as one
// online softmax. q is NOT rotated; the cached K must be stored rotated by (j mod C) and, for
// YaRN, pre-multiplied by m(L); pass scale = m(L) / sqrt(head_dim). The rotated query is rounded
// to bf16 (as an engine that materializes rotated Q in bf16 would) before the Q K^T product.
// Rows that see no key get out = 0 and lse = -inf. Paging, NaN-tolerance of unused cache rows,
// threading and error behaviour are those of PagedPrefillAttention.
//
// Supported: everything PagedPrefillAttention supports with causal = true; dca.chunk_len a
// positive multiple of 64 (a multiple of 128 keeps every key tile in one DCA chunk; otherwise the
// tiles that hold a chunk boundary are processed twice), dca.chunk_size >= chunk_len, both <= 2^30;
// dca.rope_theta > 1. PagedPrefillDcaAttentionUnsupported() names the first violated requirement.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/paged_prefill_attention.h"

namespace mp::cuda {

// Empty when supported; otherwise a message naming the offending argument and the limit.
std::string PagedPrefillDcaAttentionUnsupported(const PagedPrefillAttentionArgs& args,
                                                const DcaParams& dca);

// args.q is un-rotated. cudaErrorInvalidValue for unsupported arguments, else the launch status.
cudaError_t PagedPrefillDcaAttention(const PagedPrefillAttentionArgs& args, const DcaParams& dca,
                                     cudaStream_t stream);

}  // namespace mp::cuda
