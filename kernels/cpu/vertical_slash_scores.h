// Online vertical-slash index estimation, step 1-3 of qwen1m-spec.md §3.4 (fp32, CPU): the
// column sums and diagonal sums of the softmaxed scores of the last n queries of one prefill
// piece against every key [0, e), streamed over key tiles (two passes: row max and sum, then
// the normalized reductions), so no n x e matrix is ever held.
//
// Rows and columns. Row r in [0, n) is the query at absolute position e - n + r. Column j is
// the key at absolute position j in [0, e). The keys are scored with the query rotated for
// their DCA region (§3.6, "continuous positions"):
//   keys [intra_begin, e)           q_intra  (RoPE position p mod C)
//   keys [succ_begin, intra_begin)  q_succ   (p mod C + C, not clamped)
//   keys [0, succ_begin)            q_inter  (p mod C + S)
// Without DCA (or in the first DCA chunk) intra_begin = succ_begin = 0.
//
//   logit[r, j] = scale * q_region(j)[r] . k_j,   -inf for j > e - n + r (causal mask, which
//                                                 only touches the last n columns)
//   A[r, :]     = softmax over all e columns (fp32)
//   vertical[j] = sum_r A[r, j]
//   slash[t]    = sum_r A[r, t - (n - 1 - r)]  over rows with t - (n - 1 - r) >= 0, t in [0, e)
//                 (the diagonal through (last query, key t), i.e. distance d = e - 1 - t; the
//                 diagonals t >= e lie above the causal boundary and are dropped)
//
// GQA: q head h reads kv head h / (q_heads / kv_heads); K is never repeated. No forcing here:
// the sinks and the local band are forced by SelectVerticalSlash. Callers validate shapes.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mp::cpu {

struct VerticalSlashScoreShape {
  int64_t num_queries = 0;  // n in [1, key_end - intra_begin]: the last n queries of the piece
  int64_t q_heads = 0;      // a multiple of kv.kv_heads
  int64_t key_end = 0;      // e: columns are the keys [0, e)
  int64_t intra_begin = 0;  // P: keys [P, e) use q_intra
  int64_t succ_begin = 0;   // keys [succ_begin, P) use q_succ, keys [0, succ_begin) use q_inter
  float scale = 1.0f;       // logit = scale * q.k (the attention's scale, YaRN m^2 included)
};

// Key tile of the streamed passes; it changes the result only by rounding (tests use tiny ones).
struct VerticalSlashScoreTiles {
  int64_t key_block = 0;  // 0: automatic
};

// q_succ may be nullptr when intra_begin == succ_begin, q_inter when succ_begin == 0.
void VerticalSlashScores(const float* q_intra,  // [n, q_heads, head_dim]
                         const float* q_succ,   // [n, q_heads, head_dim] or nullptr
                         const float* q_inter,  // [n, q_heads, head_dim] or nullptr
                         const PagedKvView& kv, const VerticalSlashScoreShape& shape,
                         const VerticalSlashScoreTiles& tiles,
                         float* vertical,  // [q_heads, key_end]
                         float* slash);    // [q_heads, key_end]

}  // namespace mp::cpu
