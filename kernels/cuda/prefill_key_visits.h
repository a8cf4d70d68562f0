// Order in which a CTA of the sm_90a prefill kernel visits its key tiles (shared by the producer
// and the consumer warpgroups, and by the host-side tests). Header-only, plain C++ usable from
// host and device code.
//
// Key tiles are kTileKeys keys aligned to multiples of kTileKeys in sequence positions. They are
// visited from the last one down. For the DCA kernel every visit must lie inside one DCA chunk
// (one query rotation per row and visit): with split = chunk_len > 0, a tile that contains a
// multiple of split strictly inside is visited twice, first its keys at and above that boundary,
// then the keys below it. split must be a multiple of kTileKeys / 2 (then a tile holds at most one
// such boundary); a multiple of kTileKeys never splits a tile.
#pragma once

#include "kernels/cuda/dca_positions.h"  // MP_CUDA_HD

namespace mp::cuda {

// Keys [lo, hi) of key tile `tile`.
struct KeyVisit {
  int tile = 0;
  int lo = 0;
  int hi = 0;
};

template <int kTileKeys>
class KeyVisitWalk {
 public:
  // Starts at the last tile; split 0 (dense) visits every tile once.
  MP_CUDA_HD KeyVisitWalk(int last_tile, int split) : tile_(last_tile), split_(split) {}

  MP_CUDA_HD KeyVisit Current() const {
    KeyVisit v;
    v.tile = tile_;
    v.lo = tile_ * kTileKeys;
    v.hi = v.lo + kTileKeys;
    int b = 0;
    if (Boundary(v.lo, v.hi, &b)) {
      if (lower_) {
        v.hi = b;
      } else {
        v.lo = b;
      }
    }
    return v;
  }

  MP_CUDA_HD void Advance() {
    int b = 0;
    if (!lower_ && Boundary(tile_ * kTileKeys, tile_ * kTileKeys + kTileKeys, &b)) {
      lower_ = true;
      return;
    }
    --tile_;
    lower_ = false;
  }

 private:
  // The multiple of split strictly inside (lo, hi), if any (computed without overflow).
  MP_CUDA_HD bool Boundary(int lo, int hi, int* b) const {
    if (split_ <= 0) return false;
    const int top = (hi - 1) / split_;
    if (top <= lo / split_) return false;
    *b = top * split_;
    return true;
  }

  int tile_;
  int split_;
  bool lower_ = false;
};

// The visits of KeyVisitWalk in the same order, stepped without a division: the cursor keeps the
// DCA chunk [seg_lo, seg_lo + split) of the current visit, and Advance() says whether the next
// visit lies in another DCA chunk (only then can a row's query rotation change). split > 0 and
// last_tile >= 0.
template <int kTileKeys>
class KeyVisitCursor {
 public:
  MP_CUDA_HD KeyVisitCursor(int last_tile, int split) : tile_(last_tile), split_(split) {
    seg_lo_ = (last_tile * kTileKeys + (kTileKeys - 1)) / split * split;
  }

  MP_CUDA_HD KeyVisit Current() const {
    KeyVisit v;
    v.tile = tile_;
    const int lo = tile_ * kTileKeys;
    v.lo = lo > seg_lo_ ? lo : seg_lo_;
    v.hi = lo + kTileKeys;
    if (v.hi - seg_lo_ > split_) v.hi = seg_lo_ + split_;  // no overflow: v.hi - seg_lo_ > 0
    return v;
  }

  // Steps to the next visit; true when it lies in the next lower DCA chunk.
  MP_CUDA_HD bool Advance() {
    if (tile_ * kTileKeys < seg_lo_) {  // the lower part of the same tile
      seg_lo_ -= split_;
      return true;
    }
    --tile_;
    if (tile_ * kTileKeys + kTileKeys <= seg_lo_) {  // the tile ends where the chunk begins
      seg_lo_ -= split_;
      return true;
    }
    return false;
  }

 private:
  int tile_;
  int split_;
  int seg_lo_;
};

// Number of visits of KeyVisitWalk over the tiles [first_tile, first_tile + num_tiles).
MP_CUDA_HD inline int CountKeyVisits(int first_tile, int num_tiles, int tile_keys, int split) {
  if (num_tiles <= 0) return 0;
  if (split <= 0) return num_tiles;
  const long long lo = static_cast<long long>(first_tile) * tile_keys;
  const long long hi = lo + static_cast<long long>(num_tiles) * tile_keys;
  long long a = split, b = tile_keys;  // gcd, then lcm(split, tile_keys)
  while (b != 0) {
    const long long t = a % b;
    a = b;
    b = t;
  }
  const long long lcm = static_cast<long long>(split) / a * tile_keys;
  // Multiples of split strictly inside (lo, hi) that are not tile boundaries (lo >= 0).
  const long long splitting = ((hi - 1) / split - lo / split) - ((hi - 1) / lcm - lo / lcm);
  return num_tiles + static_cast<int>(splitting);
}

}  // namespace mp::cuda
