// Online vertical-slash index estimation on the GPU (qwen1m-spec.md §3.4, §3.6): the CUDA
// counterpart of kernels/cpu/vertical_slash_scores.h and kernels/cpu/vertical_slash_select.h,
// with the same semantics (the CPU functions are the reference of the GPU tests).
//
//   1. VerticalSlashRotateQueries: the last n queries of a prefill piece rotated for each key
//      region of the selection ("continuous positions"): intra p mod C, succ p mod C + C (not
//      clamped), inter p mod C + S; without DCA (chunk_len 0) the absolute position p. NeoX
//      rotate-half, fp32 angles position * inv_freq (inv_freq as mp::cpu::RopeNeox computes it),
//      rounded to bf16.
//   2. VerticalSlashScores: vertical[h, j] and slash[h, t] of VerticalSlashScores (CPU) for the
//      keys [0, e) of a paged bf16 K cache, streamed in two passes over 64-key tiles (tensor-core
//      scores of the n <= 64 rows of one q head per CTA, row max / sum first, then the normalized
//      probabilities reduced into column sums and diagonal sums): no n x e matrix is held. Every
//      column sum and every diagonal sum adds its rows in increasing row order starting from 0,
//      as the CPU reference does, and the result does not depend on the launch: equal inputs
//      give bitwise equal sums, so exact ties stay ties.
//   3. VerticalSlashSelect: forcing (sinks [0, 30), local band of the last 100 diagonals), top-k
//      per head by (score descending, index ascending) with k = min(e, max(budget, 30 / 100)),
//      the split into the three DCA parts, the ~5-entry fallback for empty lists, sorting and
//      padding, exactly as mp::cpu::SelectVerticalSlash (radix select of the k-th key, then an
//      ordered compaction; no sort, no atomics on float data), by a cluster of 8 CTAs per head,
//      kind and piece, each over one slice of the scores.
//
// Tensors live on the device unless stated otherwise; everything runs on `stream` and nothing
// synchronizes. Kernels exist only for sm_90a. Callers validate shapes with
// VerticalSlashEstimateUnsupported (or use VerticalSlashPrefill, which does).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace mp::cuda {

inline constexpr int64_t kVerticalSlashMaxLastQ = 64;   // estimation rows per piece
inline constexpr int64_t kVerticalSlashMaxHeads = 256;  // q heads of one call
inline constexpr int kVerticalSlashVariants = 3;        // rotated query copies: intra, succ, inter

// The paged bf16 KV cache of one layer and one sequence (layout of paged_prefill_attention.h):
// key j lives in block block_table[j / block_size] at row j % block_size. Block ids outside
// [0, num_blocks) read as zeros.
struct VerticalSlashKv {
  const __nv_bfloat16* k = nullptr;      // [num_blocks, kv_heads, block_size, head_dim]
  const __nv_bfloat16* v = nullptr;      // [num_blocks, kv_heads, block_size, head_dim]
  const int32_t* block_table = nullptr;  // [>= ceil(key_end / block_size)]
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

struct VerticalSlashRotateArgs {
  const __nv_bfloat16* q = nullptr;  // [num_queries, q_heads, head_dim], not rotated
  __nv_bfloat16* out = nullptr;      // [3, num_queries, q_heads, head_dim]: intra, succ, inter
  int64_t num_queries = 0;           // n in [1, 64]
  int64_t q_heads = 0;
  int64_t head_dim = 0;        // 64 or 128
  int64_t first_position = 0;  // absolute position of row 0 (e - n)
  int64_t chunk_len = 0;       // C; 0: no DCA (intra only, absolute positions)
  int64_t chunk_size = 0;      // S
  double rope_theta = 10000.0;
  bool succ = false;   // write the succ copy (the piece has a succ region)
  bool inter = false;  // write the inter copy
};
cudaError_t VerticalSlashRotateQueries(const VerticalSlashRotateArgs& args, cudaStream_t stream);

struct VerticalSlashScoreArgs {
  const __nv_bfloat16* q = nullptr;  // [3, num_queries, q_heads, head_dim] (RotateQueries out)
  VerticalSlashKv kv;                // K rotated by its RoPE position (j mod C with DCA)
  int64_t num_queries = 0;           // n in [1, 64]: rows e - n + r, r in [0, n)
  int64_t q_heads = 0;               // a multiple of kv.kv_heads
  int64_t key_end = 0;               // e
  int64_t intra_begin = 0;           // keys [intra_begin, e) use copy 0 (intra)
  int64_t succ_begin = 0;            // [succ_begin, intra_begin) copy 1, [0, succ_begin) copy 2
  float scale = 1.0f;                // logit = scale * q.k (YaRN m^2 included)
  float* vertical = nullptr;         // [q_heads, key_end]
  float* slash = nullptr;            // [q_heads, key_end]
};
// Scratch for VerticalSlashScores (bytes, 256-aligned use).
int64_t VerticalSlashScoresWorkspaceBytes(const VerticalSlashScoreArgs& args);
cudaError_t VerticalSlashScores(const VerticalSlashScoreArgs& args, void* workspace,
                                cudaStream_t stream);

// One DCA part's lists, the layout of mp::cpu::VerticalSlashLists (device pointers).
struct VerticalSlashListsDev {
  int32_t* vertical = nullptr;        // [q_heads, vertical_capacity] ascending, INT32_MAX pad
  int32_t* vertical_count = nullptr;  // [q_heads]
  int32_t* slash = nullptr;           // [q_heads, slash_capacity] descending, INT32_MIN pad
  int32_t* slash_count = nullptr;     // [q_heads]
  int64_t vertical_capacity = 0;
  int64_t slash_capacity = 0;
};

struct VerticalSlashSelectArgs {
  const float* vertical = nullptr;  // [q_heads, e]
  const float* slash = nullptr;     // [q_heads, e]
  int64_t q_heads = 0;              // <= kVerticalSlashMaxHeads
  // The piece (mp::cpu::VerticalSlashPiece): queries [piece_begin, piece_end = e) in the DCA
  // chunk starting at chunk_begin (a multiple of chunk_len; 0 without DCA).
  int64_t piece_begin = 0;
  int64_t piece_end = 0;
  int64_t chunk_begin = 0;
  int64_t chunk_len = 0;
  // Effective (vertical, slash) budget of each q head (host array, copied at launch):
  // [q_heads, 2], vertical_size 30 already raised to 130.
  const int64_t* budgets = nullptr;
  // parts[0] intra, [1] succ, [2] inter (mp::cpu::VerticalSlashPart); only the parts that exist
  // for the piece are written. Capacities as mp::cpu::VerticalSlashListCapacity requires.
  VerticalSlashListsDev parts[3];
};
cudaError_t VerticalSlashSelect(const VerticalSlashSelectArgs& args, cudaStream_t stream);
// Several pieces of a run in one launch (up to kVerticalSlashSelectMaxPieces, each with its own
// scores and lists; the same q_heads and budgets): the same result as one call per piece.
inline constexpr int kVerticalSlashSelectMaxPieces = 4;
cudaError_t VerticalSlashSelect(const VerticalSlashSelectArgs* pieces, int num_pieces,
                                cudaStream_t stream);

// Empty when the shapes are supported, else a message naming the argument and the limit.
std::string VerticalSlashEstimateUnsupported(const VerticalSlashScoreArgs& args);

}  // namespace mp::cuda
