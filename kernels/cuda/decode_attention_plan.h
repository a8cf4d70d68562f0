// Work split of the split-KV decode attention kernel (kernels/cuda/decode_attention.h): how many
// splits a launch uses and which key tiles each split reads. Header-only, plain C++ usable from
// host and device code (the CPU tests check it without a GPU).
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/dca_positions.h"  // MP_CUDA_HD

namespace mp::cuda {

// Keys per tile: one bulk tensor copy of 64 cache rows (block_size must be a multiple of it).
inline constexpr int kDecodeTileKeys = 64;
// CTAs one SM holds at a time (the kernel is sized for it: shared memory and registers).
inline constexpr int kDecodeCtasPerSm = 2;
// Largest split count (workspace and combine kernel bound).
inline constexpr int kDecodeMaxSplits = 256;
// The default split count keeps at least this many key tiles per split.
inline constexpr int kDecodeMinTilesPerSplit = 4;

// Default split count: every (sequence, KV head) pair is one CTA per split, and the largest
// count that still runs all CTAs in one wave on num_sms SMs is chosen, limited so each split
// reads at least kDecodeMinTilesPerSplit tiles of the longest sequence (max_keys keys). With
// 28/4 heads and one sequence of 1M keys on 132 SMs: 66 splits, 264 CTAs, two per SM.
inline int DecodeAttentionDefaultSplits(int64_t num_seqs, int64_t kv_heads, int64_t max_keys,
                                        int num_sms) {
  const int64_t ctas = num_seqs * kv_heads;
  if (ctas <= 0 || max_keys <= 0 || num_sms <= 0) return 1;
  const int64_t slots = static_cast<int64_t>(num_sms) * kDecodeCtasPerSm;
  // A key range that does not start on a tile boundary touches one tile more.
  const int64_t tiles = (max_keys + kDecodeTileKeys - 1) / kDecodeTileKeys + 1;
  const int64_t splits =
      std::min<int64_t>({slots / ctas, tiles / kDecodeMinTilesPerSplit, kDecodeMaxSplits});
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

// Key tiles [*first, *end) that split `split` of `num_splits` reads for the keys
// [key_begin, key_end): the tiles touching the range, cut into num_splits runs of equal length
// (the last ones may be shorter or empty).
MP_CUDA_HD inline void DecodeSplitTiles(int key_begin, int key_end, int num_splits, int split,
                                        int* first, int* end) {
  const int t0 = key_begin / kDecodeTileKeys;
  const int t1 = key_end > key_begin ? (key_end + kDecodeTileKeys - 1) / kDecodeTileKeys : t0;
  const int per = (t1 - t0 + num_splits - 1) / num_splits;
  const int f = t0 + split * per;
  *first = f < t1 ? f : t1;
  *end = f + per < t1 ? f + per : t1;
}

}  // namespace mp::cuda
