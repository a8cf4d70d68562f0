// The DCA parts of a vertical-slash prefill piece (qwen1m-spec.md §3.4 step 5), for host and
// device code: the same key ranges as mp::cpu::VerticalSlashPartKeyRange. Plain C++ (no CUDA
// header needed).
//
// A piece is the queries [b, e) of one engine chunk inside the DCA chunk starting at P (a
// multiple of C; P = 0 without DCA):
//   part 0 intra  keys [P, e)        causal (bottom-right: query b + i sees keys <= b + i)
//   part 1 succ   keys [P - C, P)    non-causal, present when P >= C > 0
//   part 2 inter  keys [0, P - C)    non-causal, present when P >= 2C > 0
#pragma once

#include <cstdint>

#include "kernels/cuda/dca_positions.h"  // MP_CUDA_HD

namespace mp::cuda {

inline constexpr int kVerticalSlashIntra = 0;
inline constexpr int kVerticalSlashSucc = 1;
inline constexpr int kVerticalSlashInter = 2;
inline constexpr int kVerticalSlashNumParts = 3;

struct VerticalSlashPartRange {
  bool present = false;
  bool causal = false;
  int64_t key_begin = 0;
  int64_t key_end = 0;
  MP_CUDA_HD int64_t num_keys() const { return key_end - key_begin; }
};

MP_CUDA_HD inline VerticalSlashPartRange VerticalSlashPartKeys(int64_t piece_end,
                                                               int64_t chunk_begin,
                                                               int64_t chunk_len, int part) {
  VerticalSlashPartRange r;
  const int64_t p = chunk_begin, c = chunk_len;
  if (part == kVerticalSlashIntra) {
    r.present = true;
    r.causal = true;
    r.key_begin = p;
    r.key_end = piece_end;
  } else if (part == kVerticalSlashSucc) {
    if (p > 0 && p >= c) {
      r.present = true;
      r.key_begin = p - c;
      r.key_end = p;
    }
  } else if (part == kVerticalSlashInter) {
    if (p > 0 && p >= 2 * c) {
      r.present = true;
      r.key_begin = 0;
      r.key_end = p - c;
    }
  }
  return r;
}

// Where one q head's row blocks lie in a part's index under the per-head layout
// (VerticalSlashIndexDev::heads): row block m of the head at block_offset + block_base +
// m * max_blocks and column_index + column_base + m * max_columns. Each head's capacities come
// from its own list lengths, so a head with small budgets does not pay for the largest one.
struct VerticalSlashHeadSpan {
  int64_t block_base = 0;
  int64_t column_base = 0;
  int32_t max_blocks = 0;
  int32_t max_columns = 0;
};

// Capacities of one row block of a head in a part of kv_len keys, from the head's top-k sizes
// (the empty-set fallback of a part has at most 9 entries): every slash adds at most one block and
// blocks are disjoint 64-key spans starting in [0, kv_len); columns are distinct keys.
MP_CUDA_HD inline int64_t VerticalSlashHeadMaxBlocks(int64_t slash_k, int64_t kv_len) {
  const int64_t list = slash_k > 9 ? slash_k : 9;
  const int64_t spans = (kv_len + 63) / 64;
  return list < spans ? list : spans;
}
MP_CUDA_HD inline int64_t VerticalSlashHeadMaxColumns(int64_t vertical_k, int64_t kv_len) {
  const int64_t list = vertical_k > 9 ? vertical_k : 9;
  return list < kv_len ? list : kv_len;
}

}  // namespace mp::cuda
