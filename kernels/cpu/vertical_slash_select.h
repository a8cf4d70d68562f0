// Online vertical-slash index estimation, steps 2-6 of qwen1m-spec.md §3.4 (CPU): forcing of the
// attention sinks and the local band, top-k per head, and the split of the selection into the
// three DCA parts (intra, succ, inter) in the index builder's conventions.
//
// Input: vertical[h, j] and slash[h, t] of VerticalSlashScores over the keys [0, e) of a piece
// [b, e) that lies in the DCA chunk starting at P (qn = e - b queries). Per q head h, with the
// effective budgets (v_h, s_h) (vertical_size 30 already raised to 130 by the caller):
//   vertical[0 : 30] = +inf                     (sinks: the first 30 keys are always kept)
//   slash[e - 100 : e] = +inf                   (local band: distances 0..99 always kept)
//   topV = top-k(vertical, min(e, max(v_h, 30)))
//   topS = top-k(slash, min(e, max(s_h, 100)))
// Top-k orders by score, ties by lower index. (The max(., 30) / max(., 100) keep the forced
// keys for budgets below the forced counts; Qwen's files never have such budgets.)
//
// Split, per part (vertical indices are local to the part's keys, slash values are distances):
//   part   keys (causal?)          verticals          slashes
//   intra  [P, e) (causal)         j - P, j >= P      (e - 1) - t for t >= P
//   succ   [P - C, P)              j - (P - C)        (P + qn - 1) - t for P - C <= t < P + qn
//   inter  [0, P - C)              j, j < P - C       (P - C + qn - 1) - t for t < P - C + qn
// succ exists when P >= C, inter when P >= 2C. For succ and inter the distance is taken in the
// virtual frame where the piece's qn queries follow the part's keys directly; diagonals have
// slope 1, so it is the same set of (query, key) cells. An empty list (vertical of any part,
// slash of succ or inter) becomes arange(0, Klen, max(1, Klen / 5)), Klen = the part's key
// count (about 5 evenly spaced entries). Lists are stored sorted, vertical ascending padded with
// INT32_MAX, slash descending padded with INT32_MIN, with their true counts (the layout of the
// batched index builder).
#pragma once

#include <cstdint>

namespace mp::cpu {

inline constexpr int64_t kVerticalSlashSinks = 30;       // keys [0, 30) always selected
inline constexpr int64_t kVerticalSlashLocalBand = 100;  // distances [0, 100) always selected

enum VerticalSlashPart : int { kIntraPart = 0, kSuccPart = 1, kInterPart = 2 };
inline constexpr int kVerticalSlashParts = 3;

// A prefill piece: queries [piece_begin, piece_end) inside the DCA chunk starting at
// chunk_begin (a multiple of chunk_len). Without DCA: chunk_begin = 0 (chunk_len unused).
struct VerticalSlashPiece {
  int64_t piece_begin = 0;  // b
  int64_t piece_end = 0;    // e, b < e <= chunk_begin + chunk_len
  int64_t chunk_begin = 0;  // P
  int64_t chunk_len = 0;    // C
  int64_t num_queries() const { return piece_end - piece_begin; }
};

// The keys of one part of a piece: [key_begin, key_end), intra is causal (bottom-right).
struct VerticalSlashPartKeys {
  bool present = false;
  bool causal = false;
  int64_t key_begin = 0;
  int64_t key_end = 0;
  int64_t num_keys() const { return key_end - key_begin; }
};
VerticalSlashPartKeys VerticalSlashPartKeyRange(const VerticalSlashPiece& piece, int part);

// One part's selection for all q heads (the index builder's input).
struct VerticalSlashLists {
  int32_t* vertical = nullptr;        // [q_heads, vertical_capacity] ascending, INT32_MAX pad
  int32_t* vertical_count = nullptr;  // [q_heads]
  int32_t* slash = nullptr;           // [q_heads, slash_capacity] descending, INT32_MIN pad
  int32_t* slash_count = nullptr;     // [q_heads]
  int64_t vertical_capacity = 0;
  int64_t slash_capacity = 0;
};

// The top-k sizes of one head for a piece ending at e (step 4): its effective budgets raised to
// the forced minimums (30 sinks, 100 local diagonals), at most e.
inline int64_t VerticalSlashVerticalK(int64_t vertical_budget, int64_t e) {
  const int64_t k = vertical_budget > kVerticalSlashSinks ? vertical_budget : kVerticalSlashSinks;
  return k < e ? k : e;
}
inline int64_t VerticalSlashSlashK(int64_t slash_budget, int64_t e) {
  const int64_t k = slash_budget > kVerticalSlashLocalBand ? slash_budget : kVerticalSlashLocalBand;
  return k < e ? k : e;
}

// The list capacity that holds any selection for budgets up to max_budget (forced minimums and
// the fallback included).
inline int64_t VerticalSlashListCapacity(int64_t max_budget) {
  return max_budget > kVerticalSlashLocalBand ? max_budget : kVerticalSlashLocalBand;
}

// The k largest of scores[0, count) by (score descending, index ascending), written to
// out[0, min(k, count)) in that order. NaN scores are not supported.
void TopKIndices(const float* scores, int64_t count, int64_t k, int32_t* out);

// Steps 2-6 for every q head. parts[kIntraPart], parts[kSuccPart], parts[kInterPart] receive
// the lists of the parts that exist for `piece` (the others are not touched and may be empty
// structs); their capacities must be at least VerticalSlashListCapacity(max budget).
void SelectVerticalSlash(const float* vertical,  // [q_heads, e], e = piece.piece_end
                         const float* slash,     // [q_heads, e]
                         int64_t q_heads, const VerticalSlashPiece& piece,
                         const int64_t* budgets,  // [q_heads, 2]: effective (vertical, slash)
                         const VerticalSlashLists* parts);  // [3]

}  // namespace mp::cpu
