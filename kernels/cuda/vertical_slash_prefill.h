// Sparse (vertical-slash) DCA prefill attention of one run of queries on the GPU: the deployment
// procedure of qwen1m-spec.md §2.5 + §3.4-3.7, the CUDA counterpart of
// mp::cpu::VerticalSlashPrefillAttention (kernels/cpu/vertical_slash_prefill.h) with the same
// contract in bf16 (fp32 accumulation).
//
// The run is the queries [query_begin, query_begin + n) of a sequence whose paged cache holds
// the keys [0, query_begin + n), K rotated by (p mod C) (p without DCA, chunk_size 0). It is
// split into pieces [b, e) at DCA chunk boundaries; per piece:
//   1. VerticalSlashRotateQueries: the last min(last_q, e - b) queries at the selection
//      positions; 2. VerticalSlashScores; 3. VerticalSlashSelect with the per-head budgets;
//   4. BuildVerticalSlashIndex for every part of the piece; 5. VerticalSlashAttention (all parts
//      in one kernel, one online softmax: the exact LSE merge of the parts).
// Steps 1-3 run piece after piece and share the score buffers; step 4 runs once for the parts of
// all pieces (a chunk that crosses a DCA chunk boundary is two pieces: one launch instead of
// two); step 5 piece after piece. After the call the workspace holds every piece's selection and
// index and the last piece's rotated queries and scores (VerticalSlashPieceBuffers, for tests
// and tools). The index is in the per-head layout (vertical_slash_index.h): each head's lists
// are sized by its own budgets, not by the largest one (at 1M keys with Qwen's 7B budgets,
// 2.2 GiB instead of 5.0 GiB for a 32K chunk).

#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/vertical_slash_estimate.h"
#include "kernels/cuda/vertical_slash_index.h"

namespace mp::cuda {

struct VerticalSlashPrefillArgs {
  const __nv_bfloat16* q = nullptr;  // [num_queries, q_heads, head_dim], not rotated
  VerticalSlashKv kv;                // keys [0, query_begin + num_queries)
  __nv_bfloat16* out = nullptr;      // [num_queries, q_heads, head_dim]
  float* lse = nullptr;              // [q_heads, num_queries] or null
  int64_t num_queries = 0;
  int64_t q_heads = 0;      // <= kVerticalSlashMaxHeads
  int64_t query_begin = 0;  // absolute position of query 0
  int64_t chunk_size = 0;   // S; 0: no DCA
  int64_t chunk_len = 0;    // C = S - W, a multiple of 64
  double rope_theta = 10000.0;
  float scale = 0.0f;                // logit scale, YaRN m^2 included
  int64_t last_q = 64;               // estimation rows per piece, [1, 64]
  const int64_t* budgets = nullptr;  // host [q_heads, 2]: effective (vertical, slash), > 0
  // Optional (benchmarks): kVerticalSlashStageEvents events per piece ([pieces, 8];
  // VerticalSlashPrefillNumPieces gives the count), recorded on `stream` as (start, end) pairs
  // around the piece's estimation (rotation + scores), selection, index and attention. The index
  // of all pieces is built together: its pair is the last piece's, the other pieces' pairs are
  // recorded back to back (zero time).
  cudaEvent_t* stage_events = nullptr;
};
inline constexpr int kVerticalSlashStageEvents = 8;

// Empty when supported; else the offending argument and the limit.
std::string VerticalSlashPrefillUnsupported(const VerticalSlashPrefillArgs& args);
// Bytes of device workspace the call needs (the largest piece's buffers).
int64_t VerticalSlashPrefillWorkspaceBytes(const VerticalSlashPrefillArgs& args);
// Empty when the geometry of `shape` (heads, head_dim, DCA, last_q and budgets) is supported;
// its queries, pointers, scale, theta and cache are not read. Else the offending field.
std::string VerticalSlashPrefillGeometryUnsupported(const VerticalSlashPrefillArgs& shape);
// The workspace of the largest run of `shape`'s geometry (heads, head_dim, DCA, last_q and
// budgets; its queries, pointers, scale and cache are not read): runs of at most max_queries
// queries ending anywhere in [1, max_keys]. Evaluated at the ends where the need can peak (the
// end of every DCA chunk, max_keys, and the splits of a run across a chunk boundary where a
// piece's row-block count changes); 0 for an unsupported geometry.
int64_t VerticalSlashPrefillMaxWorkspaceBytes(const VerticalSlashPrefillArgs& shape,
                                              int64_t max_queries, int64_t max_keys);
// cudaErrorInvalidValue for unsupported arguments or a workspace smaller than
// VerticalSlashPrefillWorkspaceBytes; otherwise the first launch error.
cudaError_t VerticalSlashPrefill(const VerticalSlashPrefillArgs& args, void* workspace,
                                 int64_t workspace_bytes, cudaStream_t stream);

// One piece of the run and where its buffers lie in the workspace.
struct VerticalSlashPieceBuffers {
  int64_t piece_begin = 0, piece_end = 0, chunk_begin = 0;
  int64_t estimate_rows = 0;       // min(last_q, e - b)
  __nv_bfloat16* q_rot = nullptr;  // [3, estimate_rows, q_heads, head_dim]
  float* vertical = nullptr;       // [q_heads, e]
  float* slash = nullptr;          // [q_heads, e]
  void* score_workspace = nullptr;
  int64_t list_capacity = 0;       // vertical and slash capacity of every part
  VerticalSlashListsDev lists[3];  // parts that do not exist have null pointers
  VerticalSlashIndexDev index[3];  // in the per-head layout (index[part].heads)
  VerticalSlashHeadSpan* head_spans[3] = {};  // = index[part].heads, writable
};
// Pieces of the run (DCA chunk boundaries split it).
int64_t VerticalSlashPrefillNumPieces(const VerticalSlashPrefillArgs& args);

// The layout of the last piece of the run (piece_index = -1) or of piece `piece_index`.
VerticalSlashPieceBuffers VerticalSlashPrefillPiece(const VerticalSlashPrefillArgs& args,
                                                    void* workspace, int piece_index = -1);

}  // namespace mp::cuda
