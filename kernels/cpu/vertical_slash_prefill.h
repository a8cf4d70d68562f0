// Sparse (vertical-slash) DCA prefill attention of one run of queries (fp32, CPU): the
// deployment procedure of qwen1m-spec.md §2.5 + §3.4-3.7 for one engine chunk of a chunked
// prefill, composed from VerticalSlashScores, SelectVerticalSlash, BuildVerticalSlashIndex and
// VerticalSlashAttention; with budgets == nullptr the same procedure runs dense
// (PagedAttention per region), which is the reference for recall.
//
// The run is the queries [query_begin, query_begin + n) of a sequence whose paged cache holds the
// keys [0, query_begin + n), K rotated by RoPE position (p mod C) (p without DCA). The run is
// split into pieces [b, e) at DCA chunk boundaries (P = floor(b / C) C, e = min(P + C, end)).
// Per piece:
//   * queries rotated per region: intra p mod C; succ min(p mod C + C, S); inter min(2C - 1, S);
//   * sparse: the last min(last_q, e - b) queries, rotated at p mod C (intra keys), p mod C + C
//     (succ keys) and p mod C + S (inter keys), give the column and diagonal scores; per q head
//     the forced top-k selection is split into the regions, indexed, and each region runs the
//     sparse kernel (intra causal bottom-right, succ and inter non-causal);
//   * the regions' (out, lse) are merged exactly in fp32.
// Without DCA (chunk_size == 0) positions are absolute and the one region is causal.
// Callers validate shapes; nothing here checks or reports errors.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mp::cpu {

struct VerticalSlashPrefillShape {
  int64_t num_queries = 0;  // n
  int64_t q_heads = 0;      // a multiple of kv.kv_heads
  int64_t query_begin = 0;  // absolute position of query 0
  int64_t chunk_size = 0;   // S; 0: no DCA
  int64_t chunk_len = 0;    // C = S - W (a multiple of 64 in Qwen's configs)
  double rope_theta = 10000.0;
  float scale = 1.0f;  // logit = scale * q.k, YaRN m^2 included
  int64_t last_q = 64;
};

// budgets: [q_heads, 2] effective (vertical, slash) per q head, or nullptr for dense.
// index_keys (sparse only, may be null): per head, the keys of the index of every part of every
// piece are added (AddVerticalSlashIndexKeys).
void VerticalSlashPrefillAttention(const float* q,  // [n, q_heads, head_dim], not rotated
                                   const PagedKvView& kv, const VerticalSlashPrefillShape& shape,
                                   const int64_t* budgets,
                                   float* out,  // [n, q_heads, head_dim]
                                   float* lse,  // [q_heads, n] or nullptr
                                   int64_t* index_keys = nullptr);  // [q_heads] or nullptr

}  // namespace mp::cpu
