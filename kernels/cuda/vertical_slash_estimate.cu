// Vertical-slash estimation kernels: query rotation, the two streamed score passes, and the
// forced top-k selection with the split into the DCA parts. See vertical_slash_estimate.h.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cooperative_groups.h>
#include <cub/block/block_scan.cuh>
#include <limits>
#include <string>
#include <type_traits>

#include "cute/arch/mma_sm90_desc.hpp"
#include "cute/arch/mma_sm90_gmma.hpp"
#include "kernels/cpu/vertical_slash_select.h"  // kVerticalSlashSinks, kVerticalSlashLocalBand
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/fast_exp2.cuh"
#include "kernels/cuda/rope_sincos.cuh"
#include "kernels/cuda/vertical_slash_estimate.h"
#include "kernels/cuda/vertical_slash_parts.h"

namespace mp::cuda {
namespace {

using internal::CpAsyncCommit;
using internal::CpAsyncWait;
using internal::Exp2;

constexpr int kTile = 64;        // keys per score tile (region boundaries are multiples of 64)
constexpr int kRangeTiles = 32;  // tiles per CTA of a score pass
constexpr int kScoreThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMaxHalfDim = 64;

// ---- query rotation --------------------------------------------------------------------------

struct RotateParams {
  const __nv_bfloat16* q;
  __nv_bfloat16* out;
  int n, heads, half;
  int64_t first_position;
  int64_t chunk_len, chunk_size;
  bool succ, inter;
  float inv_freq[kMaxHalfDim];
};

__global__ void RotateKernel(const __grid_constant__ RotateParams p) {
  const int64_t total = int64_t(p.n) * p.heads * p.half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int i = int(idx % p.half);
    const int64_t rh = idx / p.half;
    const int h = int(rh % p.heads);
    const int r = int(rh / p.heads);
    const int64_t pos = p.first_position + r;
    const int64_t base = p.chunk_len > 0 ? pos % p.chunk_len : pos;
    const __nv_bfloat16* in = p.q + (int64_t(r) * p.heads + h) * 2 * p.half;
    const float a = __bfloat162float(in[i]);
    const float b = __bfloat162float(in[i + p.half]);
    for (int v = 0; v < kVerticalSlashVariants; ++v) {
      if ((v == 1 && !p.succ) || (v == 2 && !p.inter)) continue;
      const int64_t rot = v == 0 ? base : (v == 1 ? base + p.chunk_len : base + p.chunk_size);
      const float angle = static_cast<float>(static_cast<int32_t>(rot)) * p.inv_freq[i];
      float s, c;
      RopeSinCos(angle, &s, &c);
      __nv_bfloat16* o = p.out + ((int64_t(v) * p.n + r) * p.heads + h) * 2 * p.half;
      o[i] = __float2bfloat16_rn(a * c - b * s);
      o[i + p.half] = __float2bfloat16_rn(b * c + a * s);
    }
  }
}

// ---- score passes ----------------------------------------------------------------------------

// The key regions of a piece in key order: 0 inter [0, succ_begin), 1 succ [succ_begin,
// intra_begin), 2 intra [intra_begin, e); region r is scored with query copy 2 - r. Each region's
// 64-key tiles are cut into ranges of kRangeTiles tiles, one CTA per (range, q head).
struct ScoreRanges {
  int tile_begin[3];
  int tile_end[3];
  int range_begin[4];
};

ScoreRanges MakeScoreRanges(int64_t e, int64_t intra_begin, int64_t succ_begin) {
  ScoreRanges r{};
  const int64_t lo[3] = {0, succ_begin, intra_begin};
  const int64_t hi[3] = {succ_begin, intra_begin, e};
  r.range_begin[0] = 0;
  for (int g = 0; g < 3; ++g) {
    const int64_t tb = lo[g] / kTile;
    const int64_t te = hi[g] > lo[g] ? (hi[g] + kTile - 1) / kTile : tb;
    r.tile_begin[g] = int(tb);
    r.tile_end[g] = int(te);
    r.range_begin[g + 1] = r.range_begin[g] + int((te - tb + kRangeTiles - 1) / kRangeTiles);
  }
  return r;
}

struct ScoreParams {
  const __nv_bfloat16* q;  // [3, n, heads, HD]
  const __nv_bfloat16* k;
  const int32_t* table;
  int64_t num_blocks;
  int block_size, kv_heads;
  int n, heads, group, e;
  int intra_begin, succ_begin;
  float scale_log2;
  ScoreRanges ranges;
  float2* partial;        // [num_ranges, heads, 64] (max, sum) in the log2 domain
  const float2* rowstat;  // [heads, 64] (max, 1 / sum)
  float* vertical;        // [heads, e]
  float* slash;           // [heads, e]
};

// Shared memory of a score pass: two key tiles in the 128-byte-swizzled K-major layout that
// wgmma reads (dims 64 p .. 64 p + 63 of key row r in panel p at r * 128 bytes, 16-byte chunk c
// at position c ^ (r % 8)), from a base rounded up to the 1024-byte swizzle atom (kAlign more
// bytes asked for); then (pass 2) the probabilities and the diagonal carries.
template <int HD>
struct ScoreSmem {
  static constexpr int kSwizzledTileBytes = kTile * HD * 2;
  static constexpr int kKBytes = 2 * kSwizzledTileBytes;
  static constexpr int kPStride = 72;  // floats per probability row
  static constexpr int kPBytes = kTile * kPStride * 4;
  static constexpr int kCarryBytes = 2 * kTile * 4;
  static constexpr int kAlign = 1024;
  static constexpr int kBytes1 = kKBytes + kAlign;
  static constexpr int kBytes2 = kKBytes + kPBytes + kCarryBytes + kAlign;
  static_assert(HD % 64 == 0, "whole 128-byte panels");
};

// Bytes from `raw` (the dynamic shared memory) to the first 1024-byte-aligned shared address.
__device__ __forceinline__ uint32_t SwizzleAtomOffset(const void* raw) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
  return ((a + 1023u) & ~1023u) - a;
}

__device__ __forceinline__ int QueryCopyOfKey(const ScoreParams& p, int key) {
  return key >= p.intra_begin ? 0 : (key >= p.succ_begin ? 1 : 2);
}

// The tiles [t0, t1) and the region of CTA range `range`.
__device__ __forceinline__ void RangeTiles(const ScoreParams& p, int range, int* t0, int* t1) {
  int g = 0;
  while (g < 2 && range >= p.ranges.range_begin[g + 1]) ++g;
  *t0 = p.ranges.tile_begin[g] + (range - p.ranges.range_begin[g]) * kRangeTiles;
  *t1 = min(*t0 + kRangeTiles, p.ranges.tile_end[g]);
}

// Key rows of tile `tile` of kv head kvh into the swizzled tile at shared address `dst` (16-byte
// chunk ch of a row in panel ch / 8, at position ch % 8 XOR row % 8; zeros past e or for block
// ids outside the pool).
template <int HD>
__device__ __forceinline__ void LoadKeyTile(const ScoreParams& p, int kvh, int tile, uint32_t dst) {
  constexpr int kChunks = HD / 8;
  auto copy = [dst](int row, int ch, const __nv_bfloat16* src, bool valid) {
    const uint32_t at =
        dst + uint32_t((ch / 8) * kTile * 128 + row * 128 + (((ch % 8) ^ (row % 8)) * 16));
    internal::CpAsync16OrZero(at, src, !valid);
  };
  if (p.block_size % kTile == 0) {
    // The tile lies in one cache block: one block-table lookup per tile, not per copy.
    const int key0 = tile * kTile;
    const int page = key0 < p.e ? __ldg(p.table + key0 / p.block_size) : -1;
    const bool page_ok = page >= 0 && page < p.num_blocks;
    const __nv_bfloat16* rows =
        p.k + ((int64_t(page_ok ? page : 0) * p.kv_heads + kvh) * p.block_size +
               key0 % p.block_size) * HD;
#pragma unroll
    for (int c = threadIdx.x; c < kTile * kChunks; c += kScoreThreads) {
      const int row = c / kChunks, ch = c % kChunks;
      const bool valid = page_ok && key0 + row < p.e;
      copy(row, ch, valid ? rows + row * HD + ch * 8 : p.k, valid);
    }
    return;
  }
  for (int c = threadIdx.x; c < kTile * kChunks; c += kScoreThreads) {
    const int row = c / kChunks, ch = c % kChunks;
    const int key = tile * kTile + row;
    const __nv_bfloat16* src = p.k;
    bool valid = key < p.e;
    if (valid) {
      const int page = __ldg(p.table + key / p.block_size);
      valid = page >= 0 && page < p.num_blocks;
      if (valid) {
        src = p.k + ((int64_t(page) * p.kv_heads + kvh) * p.block_size + key % p.block_size) * HD +
              ch * 8;
      }
    }
    copy(row, ch, src, valid);
  }
}

// Waits for this thread's copies up to the newest N groups, makes them visible to wgmma (the
// async proxy) and synchronizes the CTA.
template <int N>
__device__ __forceinline__ void KeyTileReady() {
  CpAsyncWait<N>();
  internal::FenceProxyAsyncShared();
  __syncthreads();
}

// The A fragments (m16n8k16, row-major) of this warp's 16 query rows of copy `copy`, head h.
template <int HD>
__device__ __forceinline__ void LoadQueryFragments(const ScoreParams& p, int copy, int h, int warp,
                                                   int lane, uint32_t (&qa)[HD / 16][4]) {
  const int g = lane / 4, t4 = lane % 4;
  const __nv_bfloat16* base = p.q + int64_t(copy) * p.n * p.heads * HD;
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int row = warp * 16 + g + 8 * (j % 2);
      const int col = ks * 16 + 2 * t4 + 8 * (j / 2);
      qa[ks][j] =
          row < p.n
              ? *reinterpret_cast<const uint32_t*>(base + (int64_t(row) * p.heads + h) * HD + col)
              : 0u;
    }
  }
}

// acc[nt][j] = q . k (unscaled) for this warp's rows and keys 8 nt + (0..7) of the tile at
// shared address `sk`: element j is row g + 8 (j / 2), key column 8 nt + 2 t4 + j % 2. One wgmma
// m64n64k16 per 16 dims for the CTA's warpgroup, Q from the registers (the m16n8k16 A fragments
// are the wgmma A operand's registers), K from the swizzled tile: the tile is read from shared
// memory once per CTA, not once per warp as by ldmatrix.
template <int HD>
__device__ __forceinline__ void TileScores(const uint32_t (&qa)[HD / 16][4], uint32_t sk,
                                           float (&acc)[8][4]) {
  using Mma = cute::SM90::GMMA::MMA_64x64x16_F32BF16BF16_RS<cute::SM90::GMMA::Major::K,
                                                           cute::SM90::GMMA::Major::K>;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(acc[nt][j])::"memory");
  }
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks) {
    // K-major, 128-byte swizzle: 8-row groups 1024 bytes apart; k step ks is 32 bytes into
    // panel ks / 4.
    cute::GmmaDescriptor desc;
    desc.bitfield.start_address_ =
        uint16_t((sk + uint32_t((ks / 4) * kTile * 128 + (ks % 4) * 32)) >> 4);
    desc.bitfield.leading_byte_offset_ = 1;
    desc.bitfield.stride_byte_offset_ = 1024 >> 4;
    desc.bitfield.base_offset_ = 0;
    desc.bitfield.layout_type_ = uint8_t(cute::SM90::GMMA::LayoutType::B128);
    Mma::fma(qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], desc.desc_, acc[0][0], acc[0][1],
             acc[0][2], acc[0][3], acc[1][0], acc[1][1], acc[1][2], acc[1][3], acc[2][0],
             acc[2][1], acc[2][2], acc[2][3], acc[3][0], acc[3][1], acc[3][2], acc[3][3],
             acc[4][0], acc[4][1], acc[4][2], acc[4][3], acc[5][0], acc[5][1], acc[5][2],
             acc[5][3], acc[6][0], acc[6][1], acc[6][2], acc[6][3], acc[7][0], acc[7][1],
             acc[7][2], acc[7][3],
             ks == 0 ? cute::SM90::GMMA::ScaleOut::Zero : cute::SM90::GMMA::ScaleOut::One);
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(acc[nt][j])::"memory");
  }
}

// Whether key column `col` of tile `tile` is visible to query row `row` (before e, and causal:
// key <= e - n + row).
__device__ __forceinline__ bool KeyVisible(const ScoreParams& p, int tile, int row, int col) {
  const int key = tile * kTile + col;
  return key < p.e && key <= p.e - p.n + row;
}
// Whether every key of tile `tile` is visible to every row (the tiles before the last query's
// window), so that the passes skip the per-element mask there.
__device__ __forceinline__ bool TileUnmasked(const ScoreParams& p, int tile) {
  return (tile + 1) * kTile - 1 <= p.e - p.n;
}
template <bool kMasked>
using MaskTag = std::integral_constant<bool, kMasked>;

// Pass 1: per (range, head) and row, the max and the sum of exp2 over the range's keys.
template <int HD>
__global__ void __launch_bounds__(kScoreThreads)
    ScoresPass1(const __grid_constant__ ScoreParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t sk =
      static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw + SwizzleAtomOffset(smem_raw)));
  constexpr uint32_t kBuf = ScoreSmem<HD>::kSwizzledTileBytes;
  const int range = int(blockIdx.x) / p.heads, h = int(blockIdx.x) % p.heads;
  const int kvh = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int t0, t1;
  RangeTiles(p, range, &t0, &t1);
  uint32_t qa[HD / 16][4];
  LoadQueryFragments<HD>(p, QueryCopyOfKey(p, t0 * kTile), h, warp, lane, qa);

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  LoadKeyTile<HD>(p, kvh, t0, sk);
  CpAsyncCommit();
  for (int t = t0; t < t1; ++t) {
    const int buf = (t - t0) & 1;
    if (t + 1 < t1) {
      LoadKeyTile<HD>(p, kvh, t + 1, sk + (buf ^ 1) * kBuf);
      CpAsyncCommit();
      KeyTileReady<1>();
    } else {
      KeyTileReady<0>();
    }
    float acc[8][4];
    TileScores<HD>(qa, sk + buf * kBuf, acc);
    // Online max and sum of exp2 of this thread's two rows, masked on the last tiles only.
    auto update = [&](auto masked) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = warp * 16 + lane / 4 + 8 * r;
        float mx = m[r];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            float& s = acc[nt][2 * r + c];
            const int col = nt * 8 + 2 * (lane % 4) + c;
            const bool visible = !decltype(masked)::value || KeyVisible(p, t, row, col);
            s = visible ? s * p.scale_log2 : -INFINITY;
            mx = fmaxf(mx, s);
          }
        }
        if (mx == -INFINITY) continue;
        float sum = m[r] == -INFINITY ? 0.0f : l[r] * Exp2(m[r] - mx);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int c = 0; c < 2; ++c) sum += Exp2(acc[nt][2 * r + c] - mx);
        }
        m[r] = mx;
        l[r] = sum;
      }
    };
    if (TileUnmasked(p, t)) {
      update(MaskTag<false>{});
    } else {
      update(MaskTag<true>{});
    }
    __syncthreads();  // the buffer is refilled by the next iteration's prefetch
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[r], off);
      const float lo = __shfl_xor_sync(0xffffffffu, l[r], off);
      const float mx = fmaxf(m[r], mo);
      float sum = 0.0f;
      if (m[r] != -INFINITY) sum += l[r] * Exp2(m[r] - mx);
      if (mo != -INFINITY) sum += lo * Exp2(mo - mx);
      m[r] = mx;
      l[r] = sum;
    }
    if (lane % 4 == 0) {
      const int row = warp * 16 + lane / 4 + 8 * r;
      p.partial[(int64_t(range) * p.heads + h) * 64 + row] = make_float2(m[r], l[r]);
    }
  }
}

// Row statistics over all ranges, merged in range order.
__global__ void CombineRowStats(const float2* partial, float2* rowstat, int num_ranges, int heads) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= heads * 64) return;
  const int h = idx / 64, r = idx % 64;
  float mx = -INFINITY;
  for (int i = 0; i < num_ranges; ++i) mx = fmaxf(mx, partial[(int64_t(i) * heads + h) * 64 + r].x);
  float sum = 0.0f;
  for (int i = 0; i < num_ranges; ++i) {
    const float2 v = partial[(int64_t(i) * heads + h) * 64 + r];
    if (v.x != -INFINITY) sum += v.y * exp2f(v.x - mx);
  }
  rowstat[idx] = make_float2(mx, sum > 0.0f ? 1.0f / sum : 0.0f);
}

// Pass 2: normalized probabilities reduced into the column sums and the diagonal sums of the
// range's keys. Diagonal t (through the last query and key t) collects the keys
// t - (n - 1) + r for rows r = 0 .. n - 1, in increasing row order: its rows with keys before
// the tile holding key t were summed by the previous tile (the carry); the first tile of a range
// recomputes the tile before it for that carry.
template <int HD>
__global__ void __launch_bounds__(kScoreThreads, 4)
    ScoresPass2(const __grid_constant__ ScoreParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using Smem = ScoreSmem<HD>;
  unsigned char* smem = smem_raw + SwizzleAtomOffset(smem_raw);
  const uint32_t sk = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  auto* sp = reinterpret_cast<float*>(smem + Smem::kKBytes);                     // [64][kPStride]
  auto* carry = reinterpret_cast<float*>(smem + Smem::kKBytes + Smem::kPBytes);  // [2][64]
  constexpr uint32_t kBuf = Smem::kSwizzledTileBytes;
  const int range = int(blockIdx.x) / p.heads, h = int(blockIdx.x) % p.heads;
  const int kvh = h / p.group;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int n = p.n, e = p.e;
  int t0, t1;
  RangeTiles(p, range, &t0, &t1);

  float row_max[2], row_inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warp * 16 + lane / 4 + 8 * r;
    const float2 st = row < n ? p.rowstat[h * 64 + row] : make_float2(0.0f, 0.0f);
    row_max[r] = st.x;
    row_inv[r] = st.y;
  }
  if (tid < 64) {
    carry[tid] = 0.0f;
    carry[64 + tid] = 0.0f;
  }

  const int first = t0 > 0 ? t0 - 1 : t0;  // tile `first` < t0 only feeds the carry
  int copy = -1;
  uint32_t qa[HD / 16][4];
  int cb = 0;  // carry[cb] holds the carry into the current tile
  LoadKeyTile<HD>(p, kvh, first, sk);
  CpAsyncCommit();
  for (int t = first; t < t1; ++t) {
    const int buf = (t - first) & 1;
    if (t + 1 < t1) {
      LoadKeyTile<HD>(p, kvh, t + 1, sk + (buf ^ 1) * kBuf);
      CpAsyncCommit();
      KeyTileReady<1>();
    } else {
      KeyTileReady<0>();
    }
    const int want = QueryCopyOfKey(p, t * kTile);
    if (want != copy) {
      LoadQueryFragments<HD>(p, want, h, warp, lane, qa);
      copy = want;
    }
    float acc[8][4];
    TileScores<HD>(qa, sk + buf * kBuf, acc);
    // Normalized probabilities of this thread's two rows into sp (0 for masked keys and for the
    // rows past n), masked on the last tiles only.
    auto probabilities = [&](auto masked) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = warp * 16 + lane / 4 + 8 * r;
        const float neg_max = -row_max[r];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          const int col = nt * 8 + 2 * (lane % 4);
          float pr[2];
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const bool visible =
                row < n && (!decltype(masked)::value || KeyVisible(p, t, row, col + c));
            pr[c] = visible ? Exp2(fmaf(acc[nt][2 * r + c], p.scale_log2, neg_max)) * row_inv[r]
                            : 0.0f;
          }
          *reinterpret_cast<float2*>(sp + row * Smem::kPStride + col) = make_float2(pr[0], pr[1]);
        }
      }
    };
    if (TileUnmasked(p, t)) {
      probabilities(MaskTag<false>{});
    } else {
      probabilities(MaskTag<true>{});
    }
    __syncthreads();
    const int j0 = t * kTile;
    // Threads 0-63 sum the columns, threads 64-127 the diagonals (n rows each at most). The
    // loops are unrolled so that their shared loads overlap; the additions stay in row order.
    if (tid < 64) {
      const int c = tid, key = j0 + c;
      if (t >= t0 && key < e) {
        float v = 0.0f;
#pragma unroll 8
        for (int r = 0; r < n; ++r) v += sp[r * Smem::kPStride + c];
        p.vertical[int64_t(h) * e + key] = v;
      }
    } else {
      const int c = tid - 64;
      // Diagonal j0 + c: the carry (its rows with keys in the tile before), then the rows
      // r >= n - 1 - c, whose keys lie in this tile.
      if (t >= t0 && j0 + c < e) {
        float s = carry[cb * 64 + c];
#pragma unroll 8
        for (int r = max(0, n - 1 - c); r < n; ++r) s += sp[r * Smem::kPStride + c - n + 1 + r];
        p.slash[int64_t(h) * e + j0 + c] = s;
      }
      // Diagonal j0 + 64 + c: rows 0 .. n - 2 - c lie in this tile.
      if (c < n - 1) {
        float s = 0.0f;
#pragma unroll 8
        for (int r = 0; r <= n - 2 - c; ++r) s += sp[r * Smem::kPStride + 64 + c - n + 1 + r];
        carry[(cb ^ 1) * 64 + c] = s;
      }
    }
    __syncthreads();
    cb ^= 1;
  }
}

// ---- selection -------------------------------------------------------------------------------

constexpr int kSelThreads = 256;
constexpr int kSelItems = 16;
constexpr uint32_t kForcedKey = 0xFF800000u;  // OrderedKey(+inf)

// Order-preserving map of a float (not NaN) to uint32: a > b <=> key(a) > key(b); -0 == +0.
__device__ __forceinline__ uint32_t OrderedKey(float x) {
  uint32_t u = __float_as_uint(x);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct Counts3 {
  int v[3];
};
struct AddCounts3 {
  __device__ __forceinline__ Counts3 operator()(const Counts3& a, const Counts3& b) const {
    return {{a.v[0] + b.v[0], a.v[1] + b.v[1], a.v[2] + b.v[2]}};
  }
};

struct SelectPart {
  int32_t* list = nullptr;   // [heads, capacity]
  int32_t* count = nullptr;  // [heads]
  int capacity = 0;
  int key_begin = 0;  // index range of the scores that land in this part
  int key_end = 0;    // (exclusive)
  int last = 0;       // slash of a non-causal part: value = last - t
  int klen = 0;       // keys of the part (the fallback's range)
  bool present = false;
  bool causal = false;
};

struct SelectPiece {
  const float* scores[2];  // vertical, slash: [heads, e]
  int e;
  SelectPart parts[2][3];  // [kind][part]
};
struct SelectParams {
  int k[kVerticalSlashMaxHeads][2];  // top-k size per head and kind, before the cap at e
  SelectPiece piece[kVerticalSlashSelectMaxPieces];
};

// One cluster of kSelCluster CTAs per (q head, kind, piece): blockIdx.x / kSelCluster is the
// head, blockIdx.y the kind (0: vertical, 1: slash), blockIdx.z the piece. CTA r of a cluster
// owns the r-th slice of the scores (whole chunks of kSelChunk in index order). The radix
// histograms of the slices are summed through distributed shared memory, so every CTA finds the
// same k-th key; the number of keys equal to it in each slice (the last pass's bin) gives each
// slice its share of the ties (lowest indices first across the whole score row), a counting pass
// gives each slice its per-part offsets, and each slice writes its part of the lists in order.
// The result is the single-CTA selection's, bit for bit.
//
// Only the first radix pass needs every key: a key whose top bits lie below the bin it finds
// can be neither selected nor counted by a later pass. A second read of the slice copies the
// others (its candidates, about the k keys above the k-th and the rest of its bin) in index
// order into shared memory, and the later passes, the counting and the compaction read that
// list. A slice with more than kSelCandidates candidates reads its scores again instead, pass
// after pass (the same result; its cluster then takes the time of a full read per pass).
constexpr int kSelCluster = 8;
constexpr int kSelChunk = kSelThreads * kSelItems;
constexpr int kSelCandidates = 3584;

// A slice's keys in index order, at positions [begin, end): the scores themselves, or the
// candidate list in shared memory. At(q) gives the key at position q and its score index.
struct GlobalSliceKeys {
  const float* scores;
  int f_lo, f_hi;  // forced keys: [f_lo, f_hi)
  int begin, end;
  __device__ __forceinline__ void At(int q, uint32_t& key, int& j) const {
    j = q;
    key = (q >= f_lo && q < f_hi) ? kForcedKey : OrderedKey(__ldg(scores + q));
  }
};
struct SharedSliceKeys {
  const uint32_t* key;
  const int* index;
  int begin, end;
  __device__ __forceinline__ void At(int q, uint32_t& k, int& j) const {
    k = key[q];
    j = index[q];
  }
};

__global__ void __cluster_dims__(kSelCluster, 1, 1) __launch_bounds__(kSelThreads, 4)
    SelectKernel(const __grid_constant__ SelectParams p) {
  namespace cg = cooperative_groups;
  using IntScan = cub::BlockScan<int, kSelThreads>;
  using CountScan = cub::BlockScan<Counts3, kSelThreads>;
  __shared__ union {
    typename IntScan::TempStorage ints;
    typename CountScan::TempStorage counts;
  } scan_storage;
  __shared__ unsigned hist[2][2048];  // one per radix pass, alternating (read by the cluster)
  __shared__ int found_bin, found_above;
  __shared__ int slice_parts[3];  // selected keys of this slice per part (read by the cluster)
  __shared__ uint32_t cand_key[kSelCandidates];
  __shared__ int cand_index[kSelCandidates];

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  const int h = blockIdx.x / kSelCluster;
  const int kind = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32;
  const SelectPiece& piece = p.piece[blockIdx.z];
  const int e = piece.e;
  const int k = min(p.k[h][kind], e);
  // This CTA's slice [begin, end) of the scores.
  const int chunks = (e + kSelChunk - 1) / kSelChunk;
  const int per_rank = (chunks + kSelCluster - 1) / kSelCluster;
  const GlobalSliceKeys slice{piece.scores[kind] + int64_t(h) * e,
                              kind == 0 ? 0 : max(0, e - int(cpu::kVerticalSlashLocalBand)),
                              kind == 0 ? min(e, int(cpu::kVerticalSlashSinks)) : e,
                              min(e, rank * per_rank * kSelChunk),
                              min(e, (rank + 1) * per_rank * kSelChunk)};

  // Radix select over the whole row: the k-th largest key, 11 + 11 + 10 bits. Pass `pass` over
  // the keys of `src` that match the bits found so far.
  uint32_t prefix = 0, mask = 0;
  int remaining = k;
  constexpr int kShift[3] = {21, 10, 0};
  constexpr int kBits[3] = {11, 11, 10};
  auto radix_pass = [&](int pass, const auto& src) {
    const int buf = pass & 1;
    const int nbins = 1 << kBits[pass];
    const uint32_t bin_mask = uint32_t(nbins - 1);
    for (int b = tid; b < 2048; b += kSelThreads) hist[buf][b] = 0;
    __syncthreads();
    // kSelItems independent loads per thread in flight, then the (warp-aggregated) counts.
    for (int q0 = src.begin; q0 < src.end; q0 += kSelChunk) {
      uint32_t keys[kSelItems];
#pragma unroll
      for (int i = 0; i < kSelItems; ++i) {
        const int q = q0 + i * kSelThreads + tid;
        int j;
        keys[i] = 0u;
        if (q < src.end) src.At(q, keys[i], j);
      }
#pragma unroll
      for (int i = 0; i < kSelItems; ++i) {
        const int q = q0 + i * kSelThreads + tid;
        int bin = -1;
        if (q < src.end && (keys[i] & mask) == prefix) {
          bin = int((keys[i] >> kShift[pass]) & bin_mask);
        }
        // After the first pass most keys of a warp miss the prefix: no match then.
        if (pass > 0 && !__any_sync(0xffffffffu, bin >= 0)) continue;
        const unsigned peers = __match_any_sync(0xffffffffu, bin);
        if (bin >= 0 && lane == __ffs(peers) - 1) {
          atomicAdd(&hist[buf][bin], unsigned(__popc(peers)));
        }
      }
    }
    // Every slice's histogram is complete (and the buffer of two passes ago no longer read).
    cluster.sync();
    // Bins from the top, summed over the cluster: thread tid holds bins nbins - 1 - per * tid - q.
    const int per = nbins / kSelThreads;
    int counts[2048 / kSelThreads];
    int local = 0;
    for (int q = 0; q < per; ++q) {
      const int bin = nbins - 1 - per * tid - q;
      int c = 0;
      for (int r = 0; r < kSelCluster; ++r) {
        c += int(cluster.map_shared_rank(&hist[buf][0], r)[bin]);
      }
      counts[q] = c;
      local += c;
    }
    int before = 0;
    IntScan(scan_storage.ints).ExclusiveSum(local, before);
    int cum = before;
    for (int q = 0; q < per; ++q) {
      const int bin = nbins - 1 - per * tid - q;
      const int c = counts[q];
      if (cum < remaining && remaining <= cum + c) {
        found_bin = bin;
        found_above = cum;
      }
      cum += c;
    }
    __syncthreads();
    prefix |= uint32_t(found_bin) << kShift[pass];
    mask |= bin_mask << kShift[pass];
    remaining -= found_above;
    __syncthreads();
  };

  // The candidates of the slice (keys >= prefix after the first pass) into the shared list, in
  // index order; returns their number (those past kSelCandidates are not stored).
  auto gather_candidates = [&]() {
    int n = 0;
    for (int base = slice.begin; base < slice.end; base += kSelChunk) {
      uint32_t keys[kSelItems];
      int mine = 0;
#pragma unroll
      for (int i = 0; i < kSelItems; ++i) {
        const int q = base + tid * kSelItems + i;
        int j;
        keys[i] = 0u;
        if (q < slice.end) slice.At(q, keys[i], j);
        mine += (q < slice.end && keys[i] >= prefix) ? 1 : 0;
      }
      int before = 0, total = 0;
      IntScan(scan_storage.ints).ExclusiveSum(mine, before, total);
      __syncthreads();
      int pos = n + before;
#pragma unroll
      for (int i = 0; i < kSelItems; ++i) {
        const int q = base + tid * kSelItems + i;
        if (q < slice.end && keys[i] >= prefix) {
          if (pos < kSelCandidates) {
            cand_key[pos] = keys[i];
            cand_index[pos] = q;
          }
          ++pos;
        }
      }
      n += total;
    }
    __syncthreads();
    return n;
  };

  const SelectPart(&parts)[3] = piece.parts[kind];
  int part_off[3] = {0, 0, 0};
  int part_total[3] = {0, 0, 0};

  // The passes after the first, the ties, the counting and the compaction over `src`.
  auto finish = [&](const auto& src) {
    for (int pass = 1; pass < 3 && k > 0; ++pass) radix_pass(pass, src);
    const uint32_t tau = prefix;
    constexpr int kLastBuf = 0;  // pass 2's buffer
    // Keys == tau taken, lowest indices first over the row: after the last pass the keys of a
    // slice in the found bin are exactly its keys equal to tau. Only when the slice takes some
    // but not all of them do their ranks matter (`ranked`).
    int take_eq = 0;
    bool ranked = false;
    if (k > 0) {
      int eq_before = 0;
      for (int r = 0; r < rank; ++r) {
        eq_before += int(cluster.map_shared_rank(&hist[kLastBuf][0], r)[found_bin]);
      }
      const int eq_here = int(hist[kLastBuf][found_bin]);
      take_eq = min(max(remaining - eq_before, 0), eq_here);
      ranked = take_eq > 0 && take_eq < eq_here;
    }

    // Whether the keys of one chunk of the slice are selected (and their score indices), with
    // the chunk's eq ranks.
    auto select_chunk = [&](int base, bool(&sel)[kSelItems], int(&idx)[kSelItems],
                            int& eq_seen) {
      uint32_t keys[kSelItems];
      int eq_local = 0;
#pragma unroll
      for (int i = 0; i < kSelItems; ++i) {
        const int q = base + tid * kSelItems + i;
        keys[i] = 0u;
        idx[i] = 0;
        if (q < src.end) src.At(q, keys[i], idx[i]);
        eq_local += (q < src.end && keys[i] == tau) ? 1 : 0;
      }
      if (!ranked) {
#pragma unroll
        for (int i = 0; i < kSelItems; ++i) {
          const int q = base + tid * kSelItems + i;
          sel[i] = q < src.end && (keys[i] > tau || (take_eq > 0 && keys[i] == tau));
        }
        return;
      }
      int eq_before = 0, eq_total = 0;
      IntScan(scan_storage.ints).ExclusiveSum(eq_local, eq_before, eq_total);
      __syncthreads();
      int eq_rank = eq_seen + eq_before;
#pragma unroll
      for (int i = 0; i < kSelItems; ++i) {
        const int q = base + tid * kSelItems + i;
        sel[i] = false;
        if (q < src.end) {
          if (keys[i] > tau) {
            sel[i] = true;
          } else if (keys[i] == tau) {
            sel[i] = eq_rank < take_eq;
            ++eq_rank;
          }
        }
      }
      eq_seen += eq_total;
    };
    auto part_counts = [&](const bool(&sel)[kSelItems], const int(&idx)[kSelItems]) {
      Counts3 c{{0, 0, 0}};
#pragma unroll
      for (int i = 0; i < kSelItems; ++i) {
        if (!sel[i]) continue;
#pragma unroll
        for (int q = 0; q < 3; ++q) {
          const SelectPart& pt = parts[q];
          if (pt.present && idx[i] >= pt.key_begin && idx[i] < pt.key_end) ++c.v[q];
        }
      }
      return c;
    };

    // Counting pass: this slice's selected keys per part, then its offsets in the lists.
    if (k > 0) {
      int eq_seen = 0;
      Counts3 mine{{0, 0, 0}};
      for (int base = src.begin; base < src.end; base += kSelChunk) {
        bool sel[kSelItems];
        int idx[kSelItems];
        select_chunk(base, sel, idx, eq_seen);
        const Counts3 local = part_counts(sel, idx);
        for (int q = 0; q < 3; ++q) mine.v[q] += local.v[q];
      }
      Counts3 total{{0, 0, 0}}, ignored{{0, 0, 0}};
      CountScan(scan_storage.counts)
          .ExclusiveScan(mine, ignored, Counts3{{0, 0, 0}}, AddCounts3(), total);
      if (tid == 0) {
        for (int q = 0; q < 3; ++q) slice_parts[q] = total.v[q];
      }
    }
    cluster.sync();
    if (k > 0) {
      for (int r = 0; r < kSelCluster; ++r) {
        const int* other = cluster.map_shared_rank(&slice_parts[0], r);
        for (int q = 0; q < 3; ++q) {
          if (r < rank) part_off[q] += other[q];
          part_total[q] += other[q];
        }
      }
    }

    // Ordered compaction of this slice into the parts.
    if (k > 0) {
      int eq_seen = 0;
      for (int base = src.begin; base < src.end; base += kSelChunk) {
        bool sel[kSelItems];
        int idx[kSelItems];
        select_chunk(base, sel, idx, eq_seen);
        const Counts3 local = part_counts(sel, idx);
        Counts3 before{{0, 0, 0}}, total{{0, 0, 0}};
        CountScan(scan_storage.counts)
            .ExclusiveScan(local, before, Counts3{{0, 0, 0}}, AddCounts3(), total);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kSelItems; ++i) {
          if (!sel[i]) continue;
          const int j = idx[i];
#pragma unroll
          for (int q = 0; q < 3; ++q) {
            const SelectPart& pt = parts[q];
            if (!pt.present || j < pt.key_begin || j >= pt.key_end) continue;
            const int pos = part_off[q] + before.v[q]++;
            if (pos >= pt.capacity) continue;
            int value;
            if (kind == 0) {
              value = j - pt.key_begin;
            } else if (pt.causal) {
              value = (e - 1) - j;
            } else {
              value = pt.last - j;
            }
            pt.list[int64_t(h) * pt.capacity + pos] = value;
          }
        }
#pragma unroll
        for (int q = 0; q < 3; ++q) part_off[q] += total.v[q];
      }
    }
  };

  int candidates = kSelCandidates + 1;
  if (k > 0) {
    radix_pass(0, slice);
    candidates = gather_candidates();
  }
  if (candidates <= kSelCandidates) {
    finish(SharedSliceKeys{cand_key, cand_index, 0, candidates});
  } else {
    finish(slice);
  }

  // Counts, the fallback for empty lists, padding: the cluster's first CTA.
  if (rank == 0) {
    for (int q = 0; q < 3; ++q) {
      const SelectPart& pt = parts[q];
      if (!pt.present) continue;
      int32_t* list = pt.list + int64_t(h) * pt.capacity;
      int count = min(part_total[q], pt.capacity);
      const bool fallback = part_total[q] == 0 && (kind == 0 || !pt.causal);
      if (fallback) {
        // arange(0, klen, max(1, klen / 5)); slash lists descending.
        const int klen = pt.klen;
        const int step = max(1, klen / 5);
        const int m = klen > 0 ? (klen + step - 1) / step : 0;
        count = min(m, pt.capacity);
        for (int i = tid; i < count; i += kSelThreads) {
          list[i] = kind == 0 ? i * step : (m - 1 - i) * step;
        }
      }
      const int32_t pad =
          kind == 0 ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int32_t>::min();
      for (int i = count + tid; i < pt.capacity; i += kSelThreads) list[i] = pad;
      if (tid == 0) pt.count[h] = count;
    }
  }
  // No CTA leaves while another may still read its shared memory.
  cluster.sync();
}

std::string Num(int64_t v) { return std::to_string(v); }

}  // namespace

std::string VerticalSlashEstimateUnsupported(const VerticalSlashScoreArgs& a) {
  if (a.kv.head_dim != 64 && a.kv.head_dim != 128) {
    return "head_dim " + Num(a.kv.head_dim) + " is not supported (64 or 128)";
  }
  if (a.num_queries < 1 || a.num_queries > kVerticalSlashMaxLastQ) {
    return "num_queries " + Num(a.num_queries) + " must be in [1, 64]";
  }
  if (a.kv.kv_heads <= 0 || a.q_heads <= 0 || a.q_heads % a.kv.kv_heads != 0 ||
      a.q_heads > kVerticalSlashMaxHeads) {
    return "q_heads (" + Num(a.q_heads) + ") must be a positive multiple of kv_heads (" +
           Num(a.kv.kv_heads) + ") up to " + Num(kVerticalSlashMaxHeads);
  }
  if (a.key_end < a.num_queries || a.key_end > (int64_t(1) << 30)) {
    return "key_end " + Num(a.key_end) + " must be in [num_queries, 2^30]";
  }
  if (a.succ_begin < 0 || a.succ_begin > a.intra_begin ||
      a.intra_begin > a.key_end - a.num_queries || a.succ_begin % kTile != 0 ||
      a.intra_begin % kTile != 0) {
    return "region starts succ_begin " + Num(a.succ_begin) + " and intra_begin " +
           Num(a.intra_begin) +
           " must be multiples of 64 with 0 <= succ_begin <= intra_begin <= "
           "key_end - num_queries";
  }
  if (a.kv.block_size <= 0 || a.kv.num_blocks <= 0) {
    return "block_size and num_blocks must be positive";
  }
  if (!(a.scale > 0.0f) || !std::isfinite(a.scale)) return "scale must be positive and finite";
  if (a.q == nullptr || a.kv.k == nullptr || a.kv.block_table == nullptr || a.vertical == nullptr ||
      a.slash == nullptr) {
    return "q, kv.k, kv.block_table, vertical and slash must be non-null";
  }
  return "";
}

cudaError_t VerticalSlashRotateQueries(const VerticalSlashRotateArgs& a, cudaStream_t stream) {
  if (a.num_queries <= 0) return cudaSuccess;
  if ((a.head_dim != 64 && a.head_dim != 128) || a.q == nullptr || a.out == nullptr ||
      a.q_heads <= 0 || a.num_queries > kVerticalSlashMaxLastQ) {
    return cudaErrorInvalidValue;
  }
  RotateParams p{};
  p.q = a.q;
  p.out = a.out;
  p.n = int(a.num_queries);
  p.heads = int(a.q_heads);
  p.half = int(a.head_dim / 2);
  p.first_position = a.first_position;
  p.chunk_len = a.chunk_len;
  p.chunk_size = a.chunk_size;
  p.succ = a.succ;
  p.inter = a.inter;
  RopeInvFreq(int(a.head_dim), a.rope_theta, p.inv_freq);
  const int64_t total = a.num_queries * a.q_heads * p.half;
  const unsigned blocks = unsigned(std::min<int64_t>((total + 255) / 256, 4096));
  RotateKernel<<<blocks, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

int64_t VerticalSlashScoresWorkspaceBytes(const VerticalSlashScoreArgs& a) {
  const ScoreRanges r = MakeScoreRanges(a.key_end, a.intra_begin, a.succ_begin);
  const int64_t partial = int64_t(r.range_begin[3]) * a.q_heads * 64 * int64_t(sizeof(float2));
  const int64_t rowstat = a.q_heads * 64 * int64_t(sizeof(float2));
  return ((partial + 255) / 256) * 256 + rowstat;
}

namespace {

template <int HD>
cudaError_t LaunchScores(const ScoreParams& base, int num_ranges, cudaStream_t stream) {
  constexpr int kSmem1 = ScoreSmem<HD>::kBytes1;
  constexpr int kSmem2 = ScoreSmem<HD>::kBytes2;
  cudaError_t e =
      cudaFuncSetAttribute(ScoresPass1<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem1);
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(ScoresPass2<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem2);
  if (e != cudaSuccess) return e;
  const unsigned grid = unsigned(int64_t(num_ranges) * base.heads);
  ScoresPass1<HD><<<grid, kScoreThreads, kSmem1, stream>>>(base);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  CombineRowStats<<<unsigned((base.heads * 64 + 255) / 256), 256, 0, stream>>>(
      base.partial, const_cast<float2*>(base.rowstat), num_ranges, base.heads);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  ScoresPass2<HD><<<grid, kScoreThreads, kSmem2, stream>>>(base);
  return cudaGetLastError();
}

}  // namespace

cudaError_t VerticalSlashScores(const VerticalSlashScoreArgs& a, void* workspace,
                                cudaStream_t stream) {
  if (!VerticalSlashEstimateUnsupported(a).empty() || workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  ScoreParams p{};
  p.q = a.q;
  p.k = a.kv.k;
  p.table = a.kv.block_table;
  p.num_blocks = a.kv.num_blocks;
  p.block_size = int(a.kv.block_size);
  p.kv_heads = int(a.kv.kv_heads);
  p.n = int(a.num_queries);
  p.heads = int(a.q_heads);
  p.group = int(a.q_heads / a.kv.kv_heads);
  p.e = int(a.key_end);
  p.intra_begin = int(a.intra_begin);
  p.succ_begin = int(a.succ_begin);
  p.scale_log2 = a.scale * kLog2e;
  p.ranges = MakeScoreRanges(a.key_end, a.intra_begin, a.succ_begin);
  const int num_ranges = p.ranges.range_begin[3];
  const int64_t partial_bytes = int64_t(num_ranges) * a.q_heads * 64 * int64_t(sizeof(float2));
  p.partial = static_cast<float2*>(workspace);
  p.rowstat = reinterpret_cast<const float2*>(static_cast<char*>(workspace) +
                                              ((partial_bytes + 255) / 256) * 256);
  p.vertical = a.vertical;
  p.slash = a.slash;
  if (num_ranges == 0) return cudaSuccess;
  return a.kv.head_dim == 128 ? LaunchScores<128>(p, num_ranges, stream)
                              : LaunchScores<64>(p, num_ranges, stream);
}

namespace {

// One piece's launch parameters; false for invalid arguments.
bool MakeSelectPiece(const VerticalSlashSelectArgs& a, SelectPiece* out) {
  const int64_t e = a.piece_end;
  if (a.q_heads <= 0 || a.q_heads > kVerticalSlashMaxHeads || e <= 0 || e > (int64_t(1) << 30) ||
      a.piece_begin < a.chunk_begin || a.piece_begin >= e || a.vertical == nullptr ||
      a.slash == nullptr || a.budgets == nullptr) {
    return false;
  }
  SelectPiece& p = *out;
  p.scores[0] = a.vertical;
  p.scores[1] = a.slash;
  p.e = int(e);
  const int64_t qn = e - a.piece_begin;
  for (int q = 0; q < 3; ++q) {
    const VerticalSlashPartRange r = VerticalSlashPartKeys(e, a.chunk_begin, a.chunk_len, q);
    if (!r.present) continue;
    const VerticalSlashListsDev& l = a.parts[q];
    if (l.vertical == nullptr || l.vertical_count == nullptr || l.slash == nullptr ||
        l.slash_count == nullptr || l.vertical_capacity <= 0 || l.slash_capacity <= 0 ||
        l.vertical_capacity > (int64_t(1) << 30) || l.slash_capacity > (int64_t(1) << 30)) {
      return false;
    }
    SelectPart& v = p.parts[0][q];
    v.list = l.vertical;
    v.count = l.vertical_count;
    v.capacity = int(l.vertical_capacity);
    v.key_begin = int(r.key_begin);
    v.key_end = int(r.key_end);
    v.klen = int(r.num_keys());
    v.present = true;
    v.causal = r.causal;
    SelectPart& s = p.parts[1][q];
    s.list = l.slash;
    s.count = l.slash_count;
    s.capacity = int(l.slash_capacity);
    s.klen = int(r.num_keys());
    s.present = true;
    s.causal = r.causal;
    if (r.causal) {  // intra: diagonals t >= P, value (e - 1) - t
      s.key_begin = int(r.key_begin);
      s.key_end = int(e);
      s.last = int(e - 1);
    } else {  // virtual frame: t in [key_begin, key_end + qn - 1], value last - t
      s.last = int(r.key_end + qn - 1);
      s.key_begin = int(r.key_begin);
      s.key_end = int(std::min(e, r.key_end + qn));
    }
  }
  return true;
}

}  // namespace

cudaError_t VerticalSlashSelect(const VerticalSlashSelectArgs* pieces, int num_pieces,
                                cudaStream_t stream) {
  if (num_pieces < 0 || num_pieces > kVerticalSlashSelectMaxPieces ||
      (num_pieces > 0 && pieces == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (num_pieces == 0) return cudaSuccess;
  SelectParams p{};
  const VerticalSlashSelectArgs& first = pieces[0];
  for (int i = 0; i < num_pieces; ++i) {
    const VerticalSlashSelectArgs& a = pieces[i];
    if (!MakeSelectPiece(a, &p.piece[i]) || a.q_heads != first.q_heads) {
      return cudaErrorInvalidValue;
    }
    // One k table for the launch: the pieces' budgets must agree.
    for (int64_t j = 0; j < 2 * a.q_heads; ++j) {
      if (a.budgets[j] != first.budgets[j]) return cudaErrorInvalidValue;
    }
  }
  constexpr int64_t kNoCap = int64_t(1) << 30;  // the kernel caps each k at its piece's e
  for (int64_t h = 0; h < first.q_heads; ++h) {
    p.k[h][0] = int(cpu::VerticalSlashVerticalK(first.budgets[2 * h], kNoCap));
    p.k[h][1] = int(cpu::VerticalSlashSlashK(first.budgets[2 * h + 1], kNoCap));
  }
  SelectKernel<<<dim3(unsigned(first.q_heads * kSelCluster), 2, unsigned(num_pieces)),
                 kSelThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t VerticalSlashSelect(const VerticalSlashSelectArgs& args, cudaStream_t stream) {
  return VerticalSlashSelect(&args, 1, stream);
}

}  // namespace mp::cuda
