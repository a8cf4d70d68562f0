// The sm_90a kernels behind mp::cuda::DecodeAttention and DcaDecodeAttention (header-only;
// include from .cu files compiled for sm_90a). See decode_attention.h for the contract.
//
// Split kernel: one CTA per (split, KV head, sequence), five warps.
//   * warp 4 (producer): reads the block table one 32-tile batch ahead (one entry per lane) and
//     lets lane 0 issue the bulk tensor copies (TMA) of the K and V tiles [64 keys x head_dim]
//     into a kStages-deep ring of shared-memory buffers (128-byte swizzle) guarded by mbarriers.
//     The ring holds ~96 KB per CTA, two CTAs per SM: enough bytes in flight to stream HBM.
//   * warps 0-3 (consumers): warp w takes keys [16w, 16w + 16) of every tile and keeps its own
//     online softmax over them for the `group` query heads of the KV head, which are the rows of
//     one 16-row mma.sync tile (rows >= group are zero): S = Q K^T (m16n8k16, Q fragments in
//     registers, K through ldmatrix), P = exp2(S * scale * log2 e - max) packed in registers as
//     the A operand of O += P V (V through ldmatrix.trans). Keys outside the sequence's range
//     get S = -inf and their V fragments are zeroed (the cache rows may hold NaN). At the end
//     the four warps merge their (max, sum, O) states through shared memory.
//   With one split the CTA writes bf16 out and lse; otherwise a normalized fp32 partial output
//   and its LSE, merged by the combine kernel (launched with programmatic dependent launch, so
//   its launch overlaps the split kernel's tail).
// DCA (kDca): Q is staged in shared memory three times, rotated for the intra, successive and
// inter regions of the query position; each 64-key tile lies in one region (C % 64 == 0), and a
// warp reloads its Q fragments when the region of the next tile differs (at most twice).
#pragma once

#include <cuda.h>  // CUtensorMap (types only; the driver entry point is fetched at run time)
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>

#include "cute/arch/copy_sm90_tma.hpp"
#include "cutlass/arch/barrier.h"
#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/decode_attention_plan.h"
#include "kernels/cuda/fast_exp2.cuh"
#include "kernels/cuda/mbarrier.cuh"
#include "kernels/cuda/rope_sincos.cuh"
#include "kernels/cuda/tma_tensor_map.h"

namespace mp::cuda::sm90 {

template <int kHeadDim_, bool kDca_>
struct DecodeConfig {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kDca = kDca_;
  static constexpr int kTileKeys = kDecodeTileKeys;  // 64: one bulk copy box of cache rows
  static constexpr int kConsumerWarps = 4;
  static constexpr int kWarpKeys = kTileKeys / kConsumerWarps;  // 16 = one k step of P V
  static constexpr int kConsumerThreads = kConsumerWarps * 32;
  static constexpr int kThreads = kConsumerThreads + 32;
  static constexpr int kRows = 16;                      // query heads per MMA tile
  static constexpr int kPanelBytes = kTileKeys * 128;   // 64 rows x 64 bf16 (one swizzle panel)
  static constexpr int kPanels = kHeadDim / 64;
  static constexpr int kKSteps = kHeadDim / 16;         // k steps of S = Q K^T
  static constexpr int kOTiles = kHeadDim / 8;          // n tiles of O
  static constexpr int kTileBytes = kTileKeys * kHeadDim * 2;  // one K or V tile
  static constexpr int kStages = (96 * 1024) / (2 * kTileBytes);  // 3 (hd128) or 6 (hd64)
  static constexpr int kQVariants = kDca ? 3 : 1;       // intra, succ, inter
  static constexpr int kQRowStride = kHeadDim + 8;      // bf16; padding against bank conflicts

  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static_assert(kWarpKeys == 16, "one k16 step of P V per warp and tile");

  struct SharedStorage {
    alignas(1024) unsigned char k[kStages][kTileBytes];
    alignas(1024) unsigned char v[kStages][kTileBytes];
    alignas(16) __nv_bfloat16 q[kQVariants][kRows][kQRowStride];
    float2 state[kConsumerWarps][kRows];  // (running max, sum) per warp and row
    float weight[kRows][kConsumerWarps];  // merge weight per row and warp, 1/sum included
    float row_lse[kRows];
    uint64_t full[kStages];
    uint64_t empty[kStages];
  };
  // +1024: the dynamic shared memory base is rounded up to the swizzle atom.
  static constexpr int kSmemBytes = int(sizeof(SharedStorage)) + 1024;
  static_assert(kConsumerWarps * kRows * kHeadDim * 4 <= kStages * kTileBytes,
                "the merge buffer reuses the K ring");
  static_assert(kDecodeCtasPerSm * (kSmemBytes + 1024) <= 228 * 1024, "two CTAs per SM");
};

// Everything the split kernel needs; passed by value as a __grid_constant__ parameter (the
// tensor maps must live in parameter, constant or global memory).
struct DecodeParams {
  CUtensorMap k_map;  // (head_dim, block_size, kv_heads, num_blocks), box (64, 64, 1, 1)
  CUtensorMap v_map;  // same as k_map
  const __nv_bfloat16* q;       // [num_seqs, q_heads, head_dim]
  const int32_t* block_tables;  // [num_seqs, table_stride]
  const int32_t* key_begin;     // [num_seqs] or null
  const int32_t* key_end;       // [num_seqs]
  __nv_bfloat16* out;           // [num_seqs, q_heads, head_dim]
  float* lse;                   // [num_seqs, q_heads] or null
  float* part_out;              // [num_splits, num_seqs * q_heads, head_dim]
  float* part_lse;              // [num_splits, num_seqs * q_heads]
  int num_seqs;
  int q_heads;
  int group;  // q_heads / kv_heads
  int block_size;
  int table_stride;
  int key_limit;  // table_stride * block_size
  int num_splits;
  float scale;
  float scale_log2;  // scale * log2(e)
  int chunk_len;     // DCA only
  int chunk_size;    // DCA only
  float inv_freq[64];  // DCA only: RoPE inverse frequencies, [head_dim / 2]
};

namespace decode_detail {

using internal::Exp2;

__device__ __forceinline__ void NamedBarrierSync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void MbarWait(const uint64_t* bar, uint32_t parity) {
  internal::MbarrierWait(cute::cast_smem_ptr_to_uint(bar), parity);
}

__device__ __forceinline__ void MbarArrive(const uint64_t* bar) {
  const uint32_t addr = cute::cast_smem_ptr_to_uint(bar);
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(addr) : "memory");
}

__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a * b for one m16n8k16 tile (bf16 inputs, fp32 accumulators).
__device__ __forceinline__ void Mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Byte offset of 16-byte chunk `chunk` (of head_dim / 8) of tile row `row` in a tile written by
// the bulk tensor copies: panels of 64 columns, rows of 128 bytes, 128-byte swizzle.
template <class Cfg>
__device__ __forceinline__ uint32_t SwizzledOffset(int row, int chunk) {
  return uint32_t((chunk / 8) * Cfg::kPanelBytes + row * 128 + (((chunk % 8) ^ (row % 8)) << 4));
}

template <class Cfg>
__device__ void Producer(const DecodeParams& p, typename Cfg::SharedStorage& ss, int seq,
                         int kv_head, int first, int count, int lane) {
  using cutlass::arch::ClusterTransactionBarrier;
  constexpr int S = Cfg::kStages;
  constexpr int K = Cfg::kTileKeys;
  const int32_t* table = p.block_tables + int64_t(seq) * p.table_stride;
  // Block id of tile first + 32 * batch + lane (one table entry per lane).
  auto lookup = [&](int batch) {
    const int i = batch * 32 + lane;
    return i < count ? __ldg(table + (first + i) * K / p.block_size) : 0;
  };
  int next = lookup(0);
  int cur = 0;
  for (int i = 0; i < count; ++i) {
    if (i % 32 == 0) {  // warp-uniform: fetch the batch after this one now
      cur = next;
      next = lookup(i / 32 + 1);
    }
    const int blk = __shfl_sync(0xffffffffu, cur, i % 32);
    const int stage = i % S;
    if (i >= S) MbarWait(&ss.empty[stage], ((i / S) & 1) ^ 1);
    if (lane == 0) {
      ClusterTransactionBarrier::arrive_and_expect_tx(&ss.full[stage], 2 * Cfg::kTileBytes);
      const int row = ((first + i) * K) % p.block_size;
#pragma unroll
      for (int pn = 0; pn < Cfg::kPanels; ++pn) {
        cute::SM90_TMA_LOAD_4D::copy(
            &p.k_map, &ss.full[stage],
            static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_FIRST),
            ss.k[stage] + pn * Cfg::kPanelBytes, pn * 64, row, kv_head, blk);
        cute::SM90_TMA_LOAD_4D::copy(
            &p.v_map, &ss.full[stage],
            static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_FIRST),
            ss.v[stage] + pn * Cfg::kPanelBytes, pn * 64, row, kv_head, blk);
      }
    }
    __syncwarp();
  }
}

template <class Cfg>
__device__ void Consumer(const DecodeParams& p, typename Cfg::SharedStorage& ss, int seq,
                         int kv_head, int split, int key_begin, int key_end, int query_end,
                         int first, int count, int warp, int lane) {
  constexpr int D = Cfg::kHeadDim;
  constexpr int S = Cfg::kStages;
  constexpr int kRows = Cfg::kRows;
  const int tid = threadIdx.x;  // 0..127: consumer warps are warps 0..3
  const int group = p.group;
  const __nv_bfloat16* q = p.q + (int64_t(seq) * p.q_heads + int64_t(kv_head) * group) * D;

  // ---- Q staged in shared memory: rows >= group are zero; DCA: one copy per region. ----
  int succ_begin = 0, intra_begin = 0;
  if constexpr (Cfg::kDca) {
    const int pos = query_end - 1;  // the query's position; < 0: no keys at all
    DcaQueryPositions<int> qp{0, 0, 0};
    if (pos >= 0) {
      qp = DcaQueryPositionsAt(pos, p.chunk_len, p.chunk_size);
      const DcaKeyRegions<int> reg = DcaKeyRegionsAt(pos, p.chunk_len);
      succ_begin = reg.succ_begin;
      intra_begin = reg.intra_begin;
    }
    // One angle per (region, frequency), applied to every row (NeoX rotate-half).
    constexpr int kHalf = D / 2;
    for (int idx = tid; idx < 3 * kHalf; idx += Cfg::kConsumerThreads) {
      const int v = idx / kHalf;
      const int i = idx % kHalf;
      const int rot = v == 0 ? qp.intra : (v == 1 ? qp.succ : qp.inter);
      float sn, cs;
      RopeSinCos(static_cast<float>(rot) * p.inv_freq[i], &sn, &cs);
#pragma unroll 4
      for (int r = 0; r < kRows; ++r) {
        float x1 = 0.f, x2 = 0.f;
        if (r < group) {
          x1 = __bfloat162float(q[r * D + i]);
          x2 = __bfloat162float(q[r * D + i + kHalf]);
        }
        ss.q[v][r][i] = __float2bfloat16_rn(x1 * cs - x2 * sn);
        ss.q[v][r][i + kHalf] = __float2bfloat16_rn(x2 * cs + x1 * sn);
      }
    }
  } else {
    for (int idx = tid; idx < kRows * (D / 8); idx += Cfg::kConsumerThreads) {
      const int r = idx / (D / 8);
      const int c = idx % (D / 8);
      uint4 val = make_uint4(0, 0, 0, 0);
      if (r < group) val = __ldg(reinterpret_cast<const uint4*>(q + r * D) + c);
      *reinterpret_cast<uint4*>(&ss.q[0][r][c * 8]) = val;
    }
  }
  NamedBarrierSync(1, Cfg::kConsumerThreads);

  // A fragments of Q for the k steps: rows g and g + 8, columns c, c + 1 and c + 8, c + 9.
  const int g = lane / 4;
  const int c2 = (lane % 4) * 2;
  uint32_t qa[Cfg::kKSteps][4];
  auto load_q = [&](int v) {
#pragma unroll
    for (int ks = 0; ks < Cfg::kKSteps; ++ks) {
      qa[ks][0] = *reinterpret_cast<const uint32_t*>(&ss.q[v][g][ks * 16 + c2]);
      qa[ks][1] = *reinterpret_cast<const uint32_t*>(&ss.q[v][g + 8][ks * 16 + c2]);
      qa[ks][2] = *reinterpret_cast<const uint32_t*>(&ss.q[v][g][ks * 16 + 8 + c2]);
      qa[ks][3] = *reinterpret_cast<const uint32_t*>(&ss.q[v][g + 8][ks * 16 + 8 + c2]);
    }
  };
  int cur_v = -1;
  if constexpr (!Cfg::kDca) {
    load_q(0);
    cur_v = 0;
  }

  // ldmatrix row addresses: lane l feeds row l % 8 of matrix l / 8.
  const int mi = lane / 8;
  const int k_row = warp * Cfg::kWarpKeys + (mi / 2) * 8 + lane % 8;  // K: (keys 0-7 | 8-15)
  const int v_row = warp * Cfg::kWarpKeys + (mi % 2) * 8 + lane % 8;  // V: (keys 0-7 | 8-15)
  const uint32_t k_smem = cute::cast_smem_ptr_to_uint(&ss.k[0][0]);
  const uint32_t v_smem = cute::cast_smem_ptr_to_uint(&ss.v[0][0]);

  float o[Cfg::kOTiles][4];
#pragma unroll
  for (int j = 0; j < Cfg::kOTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};  // this thread's columns only; reduced over the quad at the end
  const float sl2 = p.scale_log2;

  for (int i = 0; i < count; ++i) {
    const int t = first + i;
    const int stage = i % S;
    if constexpr (Cfg::kDca) {
      const int key = t * Cfg::kTileKeys;
      const int v = key >= intra_begin ? 0 : (key >= succ_begin ? 1 : 2);
      if (v != cur_v) {  // warp-uniform
        load_q(v);
        cur_v = v;
      }
    }
    MbarWait(&ss.full[stage], (i / S) & 1);
    const uint32_t kb = k_smem + stage * Cfg::kTileBytes;
    const uint32_t vb = v_smem + stage * Cfg::kTileBytes;

    // S = Q K^T over this warp's 16 keys: two n tiles of 8 keys, two accumulator chains each.
    float sa[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    float sb[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int ks = 0; ks < Cfg::kKSteps; ++ks) {
      uint32_t b[4];
      LdMatrixX4(kb + SwizzledOffset<Cfg>(k_row, 2 * ks + mi % 2), b);
      if (ks % 2 == 0) {
        Mma16816(sa[0], qa[ks], b[0], b[1]);
        Mma16816(sa[1], qa[ks], b[2], b[3]);
      } else {
        Mma16816(sb[0], qa[ks], b[0], b[1]);
        Mma16816(sb[1], qa[ks], b[2], b[3]);
      }
    }
    float s[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = sa[n][e] + sb[n][e];
    }

    // Keys outside [key_begin, key_end): logit -inf, V zeroed (its rows may hold NaN).
    const int key0 = t * Cfg::kTileKeys + warp * Cfg::kWarpKeys;
    uint32_t vmask_lo = 0xffffffffu, vmask_hi = 0xffffffffu;
    if (key0 < key_begin || key0 + Cfg::kWarpKeys > key_end) {  // warp-uniform
      const int kk = key0 + c2;
      auto valid = [&](int key) { return key >= key_begin && key < key_end; };
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (!valid(kk + n * 8 + e % 2)) s[n][e] = -INFINITY;
        }
      }
      vmask_lo = (valid(kk) ? 0x0000ffffu : 0u) | (valid(kk + 1) ? 0xffff0000u : 0u);
      vmask_hi = (valid(kk + 8) ? 0x0000ffffu : 0u) | (valid(kk + 9) ? 0xffff0000u : 0u);
    }

    // Online softmax; rows g (r = 0) and g + 8 (r = 1).
    float mx[2];
    mx[0] = fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1]));
    mx[1] = fmaxf(fmaxf(s[0][2], s[0][3]), fmaxf(s[1][2], s[1][3]));
    float corr[2], neg_max[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      mx[r] = fmaxf(mx[r], row_max[r]);
      const float m_safe = mx[r] == -INFINITY ? 0.f : mx[r];
      corr[r] = Exp2((row_max[r] - m_safe) * sl2);
      row_max[r] = mx[r];
      neg_max[r] = -m_safe * sl2;
    }
    float pr[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) pr[n][e] = Exp2(fmaf(s[n][e], sl2, neg_max[e / 2]));
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_sum[r] = row_sum[r] * corr[r] +
                   ((pr[0][2 * r] + pr[0][2 * r + 1]) + (pr[1][2 * r] + pr[1][2 * r + 1]));
    }
    // The running max stops moving after the first tiles: skip the rescale when it did not.
    if (__any_sync(0xffffffffu, corr[0] != 1.f || corr[1] != 1.f)) {
#pragma unroll
      for (int j = 0; j < Cfg::kOTiles; ++j) {
        o[j][0] *= corr[0];
        o[j][1] *= corr[0];
        o[j][2] *= corr[1];
        o[j][3] *= corr[1];
      }
    }
    // P as the A fragment (rows g, g + 8; keys c2, c2 + 1 and c2 + 8, c2 + 9).
    const uint32_t pa[4] = {PackBf16(pr[0][0], pr[0][1]), PackBf16(pr[0][2], pr[0][3]),
                            PackBf16(pr[1][0], pr[1][1]), PackBf16(pr[1][2], pr[1][3])};
    // O += P V: per 16 head-dim columns one ldmatrix.trans gives the B fragments of two n tiles.
#pragma unroll
    for (int j = 0; j < D / 16; ++j) {
      uint32_t b[4];
      LdMatrixX4Trans(vb + SwizzledOffset<Cfg>(v_row, 2 * j + mi / 2), b);
      b[0] &= vmask_lo;
      b[1] &= vmask_hi;
      b[2] &= vmask_lo;
      b[3] &= vmask_hi;
      Mma16816(o[2 * j], pa, b[0], b[1]);
      Mma16816(o[2 * j + 1], pa, b[2], b[3]);
    }
    MbarArrive(&ss.empty[stage]);  // every consumer thread: its reads of the stage are done
  }

  // ---- Merge the four warps' states. ----
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }
  NamedBarrierSync(1, Cfg::kConsumerThreads);  // every warp is done with the ring
  float* merge = reinterpret_cast<float*>(&ss.k[0][0]);  // [warps][kRows][D]
#pragma unroll
  for (int j = 0; j < Cfg::kOTiles; ++j) {
    *reinterpret_cast<float2*>(&merge[(warp * kRows + g) * D + j * 8 + c2]) =
        make_float2(o[j][0], o[j][1]);
    *reinterpret_cast<float2*>(&merge[(warp * kRows + g + 8) * D + j * 8 + c2]) =
        make_float2(o[j][2], o[j][3]);
  }
  if (lane % 4 == 0) {
    ss.state[warp][g] = make_float2(row_max[0], row_sum[0]);
    ss.state[warp][g + 8] = make_float2(row_max[1], row_sum[1]);
  }
  NamedBarrierSync(1, Cfg::kConsumerThreads);
  if (tid < group) {
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < Cfg::kConsumerWarps; ++w) m = fmaxf(m, ss.state[w][tid].x);
    float w_of[Cfg::kConsumerWarps];
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < Cfg::kConsumerWarps; ++w) {
      w_of[w] = m == -INFINITY ? 0.f : Exp2((ss.state[w][tid].x - m) * sl2);
      sum += w_of[w] * ss.state[w][tid].y;
    }
    const bool empty = !(sum > 0.f);
    const float inv = empty ? 0.f : 1.f / sum;
#pragma unroll
    for (int w = 0; w < Cfg::kConsumerWarps; ++w) ss.weight[tid][w] = w_of[w] * inv;
    ss.row_lse[tid] = empty ? -INFINITY : m * p.scale + logf(sum);
  }
  NamedBarrierSync(1, Cfg::kConsumerThreads);

  const bool direct = p.num_splits == 1;
  const int64_t row0 = int64_t(seq) * p.q_heads + int64_t(kv_head) * group;
  const int64_t split_rows = int64_t(split) * p.num_seqs * p.q_heads;
  for (int idx = tid; idx < group * D; idx += Cfg::kConsumerThreads) {
    const int r = idx / D;
    const int c = idx % D;
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < Cfg::kConsumerWarps; ++w) acc += merge[(w * kRows + r) * D + c] * ss.weight[r][w];
    if (direct) {
      p.out[(row0 + r) * D + c] = __float2bfloat16_rn(acc);
    } else {
      p.part_out[(split_rows + row0 + r) * D + c] = acc;
    }
  }
  if (tid < group) {
    if (direct) {
      if (p.lse != nullptr) p.lse[row0 + tid] = ss.row_lse[tid];
    } else {
      p.part_lse[split_rows + row0 + tid] = ss.row_lse[tid];
    }
  }
}

}  // namespace decode_detail

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, kDecodeCtasPerSm)
    DecodeAttentionKernel(const __grid_constant__ DecodeParams p) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Cfg::SharedStorage*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  // The combine kernel (if any) may be scheduled now; it waits for this grid to finish.
  asm volatile("griddepcontrol.launch_dependents;");

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int seq = blockIdx.z;
  const int warp = __shfl_sync(0xffffffffu, int(threadIdx.x) / 32, 0);
  const int lane = threadIdx.x % 32;

  const int query_end = __ldg(p.key_end + seq);
  const int key_begin = p.key_begin != nullptr ? max(__ldg(p.key_begin + seq), 0) : 0;
  const int key_end = min(query_end, p.key_limit);
  int first = 0, end = 0;
  if (key_end > key_begin) DecodeSplitTiles(key_begin, key_end, p.num_splits, split, &first, &end);
  const int count = end - first;

  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < Cfg::kStages; ++s) {
      cutlass::arch::ClusterBarrier::init(&ss.full[s], 1);
      cutlass::arch::ClusterBarrier::init(&ss.empty[s], Cfg::kConsumerThreads);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (warp == Cfg::kConsumerWarps) {
    if (count > 0) decode_detail::Producer<Cfg>(p, ss, seq, kv_head, first, count, lane);
    return;
  }
  decode_detail::Consumer<Cfg>(p, ss, seq, kv_head, split, key_begin, key_end, query_end, first,
                               count, warp, lane);
#endif
}

// Merges the splits' partial results: one CTA of 256 threads per (sequence, query head) row.
template <int kHeadDim>
__global__ void __launch_bounds__(256)
    DecodeCombineKernel(const float* __restrict__ part_out,  // [splits, rows, head_dim]
                        const float* __restrict__ part_lse,  // [splits, rows]
                        __nv_bfloat16* __restrict__ out,     // [rows, head_dim]
                        float* __restrict__ lse,             // [rows] or null
                        int rows, int num_splits) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
  asm volatile("griddepcontrol.wait;" ::: "memory");  // the split kernel's results are visible
#endif
  constexpr int kWarps = 8;
  constexpr int kPer = kHeadDim / 32;  // columns per lane
  __shared__ float weight[kDecodeMaxSplits];
  __shared__ float red[kWarps];
  __shared__ float part[kWarps][kHeadDim];
  const int row = blockIdx.x;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  // Max and sum of exp over the splits' LSEs (num_splits <= 256 = one per thread).
  const float l = tid < num_splits ? part_lse[int64_t(tid) * rows + row] : -INFINITY;
  float m = l;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) red[warp] = m;
  __syncthreads();
  m = red[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) m = fmaxf(m, red[w]);
  const float e = m == -INFINITY || l == -INFINITY ? 0.f : expf(l - m);
  float sum = e;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  __syncthreads();  // everyone has read red[] as maxima
  if (lane == 0) red[warp] = sum;
  if (tid < kDecodeMaxSplits) weight[tid] = e;
  __syncthreads();
  sum = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) sum += red[w];
  const float inv = sum > 0.f ? 1.f / sum : 0.f;

  // Weighted sum of the partial outputs: warp w takes splits w, w + 8, ...
  float acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.f;
#pragma unroll 4
  for (int s = warp; s < num_splits; s += kWarps) {
    const float w = weight[s];
    const float* src = part_out + (int64_t(s) * rows + row) * kHeadDim + lane * kPer;
    if constexpr (kPer == 4) {
      const float4 x = *reinterpret_cast<const float4*>(src);
      acc[0] += w * x.x;
      acc[1] += w * x.y;
      acc[2] += w * x.z;
      acc[3] += w * x.w;
    } else {
      const float2 x = *reinterpret_cast<const float2*>(src);
      acc[0] += w * x.x;
      acc[1] += w * x.y;
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) part[warp][lane * kPer + i] = acc[i];
  __syncthreads();
  if (tid < kHeadDim) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += part[w][tid];
    out[int64_t(row) * kHeadDim + tid] = __float2bfloat16_rn(v * inv);
  }
  if (tid == 0 && lse != nullptr) lse[row] = sum > 0.f ? m + logf(sum) : -INFINITY;
}

// ---- host side ----------------------------------------------------------------------------

template <class Cfg>
cudaError_t LaunchDecodeAttention(const DecodeAttentionArgs& a, const DcaParams* dca,
                                  cudaStream_t stream) {
  if (a.num_seqs == 0) return cudaSuccess;
  DecodeParams p{};
  {
    const uint64_t d = Cfg::kHeadDim;
    const uint64_t dims[4] = {d, uint64_t(a.block_size), uint64_t(a.kv_heads),
                              uint64_t(a.num_blocks)};
    const uint64_t strides[3] = {d * 2, uint64_t(a.block_size) * d * 2,
                                 uint64_t(a.kv_heads) * a.block_size * d * 2};
    const uint32_t box[4] = {64, uint32_t(Cfg::kTileKeys), 1, 1};
    cudaError_t e = EncodeBf16TensorMap(&p.k_map, a.k_cache, 4, dims, strides, box);
    if (e != cudaSuccess) return e;
    e = EncodeBf16TensorMap(&p.v_map, a.v_cache, 4, dims, strides, box);
    if (e != cudaSuccess) return e;
  }
  const int64_t rows = a.num_seqs * a.q_heads;
  p.q = a.q;
  p.block_tables = a.block_tables;
  p.key_begin = a.key_begin;
  p.key_end = a.key_end;
  p.out = a.out;
  p.lse = a.lse;
  if (a.num_splits > 1) {
    p.part_out = static_cast<float*>(a.workspace);
    p.part_lse = p.part_out + int64_t(a.num_splits) * rows * Cfg::kHeadDim;
  }
  p.num_seqs = int(a.num_seqs);
  p.q_heads = int(a.q_heads);
  p.group = int(a.q_heads / a.kv_heads);
  p.block_size = int(a.block_size);
  p.table_stride = int(a.table_stride);
  p.key_limit = int(a.table_stride * a.block_size);
  p.num_splits = a.num_splits;
  p.scale = a.scale;
  p.scale_log2 = a.scale * 1.4426950408889634f;
  if constexpr (Cfg::kDca) {
    p.chunk_len = int(dca->chunk_len);
    p.chunk_size = int(dca->chunk_size);
    RopeInvFreq(Cfg::kHeadDim, dca->rope_theta, p.inv_freq);
  }

  auto kernel = &DecodeAttentionKernel<Cfg>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       Cfg::kSmemBytes);
  if (e != cudaSuccess) return e;
  // All of the unified L1/shared storage as shared memory: two CTAs per SM need ~2 x 112 KB.
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                           cudaSharedmemCarveoutMaxShared);
  if (e != cudaSuccess) return e;
  const dim3 grid(unsigned(a.num_splits), unsigned(a.kv_heads), unsigned(a.num_seqs));
  kernel<<<grid, dim3(Cfg::kThreads), Cfg::kSmemBytes, stream>>>(p);
  e = cudaGetLastError();
  if (e != cudaSuccess || a.num_splits == 1) return e;

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(rows));
  cfg.blockDim = dim3(256);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, &DecodeCombineKernel<Cfg::kHeadDim>,
                            static_cast<const float*>(p.part_out),
                            static_cast<const float*>(p.part_lse), a.out, a.lse, int(rows),
                            a.num_splits);
}

}  // namespace mp::cuda::sm90

namespace mp::cuda::internal {

// Instantiated explicitly in decode_attention_hd{64,128}.cu.
template <int kHeadDim, bool kDca>
cudaError_t LaunchDecodeSm90(const DecodeAttentionArgs& args, const DcaParams* dca,
                             cudaStream_t stream) {
  return sm90::LaunchDecodeAttention<sm90::DecodeConfig<kHeadDim, kDca>>(args, dca, stream);
}

}  // namespace mp::cuda::internal
