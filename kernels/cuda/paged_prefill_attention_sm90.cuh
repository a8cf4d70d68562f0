// The sm_90a kernel behind mp::cuda::PagedPrefillAttention (header-only; include from .cu files
// compiled for sm_90a). See paged_prefill_attention.h for the contract.
//
// One CTA computes 128 query rows of one query head against all the key tiles those rows can
// see. Three warpgroups:
//   * warpgroup 0 (producer): one thread issues bulk tensor copies (TMA) of Q once and of K/V
//     tiles [128 keys x head_dim] into a kStages-deep ring of shared-memory buffers guarded by
//     mbarriers; its registers are given to the consumers (setmaxnreg).
//   * warpgroups 1 and 2 (consumers): 64 query rows each. Per key tile: S = Q K^T with wgmma
//     (Q loaded once into registers, K from shared memory), online softmax in registers (exp2,
//     scale folded in), O += P V with wgmma (P from registers, V from shared memory read as
//     MN-major). The S GEMM of the next tile is issued together with the PV GEMM of the
//     current one, so the softmax of tile j+1 runs while the tensor cores do P_j V_j; with
//     kPingpong the two consumer warpgroups also take turns issuing their GEMMs (named
//     barriers), so one warpgroup's softmax overlaps the other's GEMMs.
// Key tiles are walked from the last to the first, so the masked tiles (causal diagonal,
// key_end) come first; tiles wholly above the causal diagonal are never loaded. CTAs are
// numbered so that the query tiles with the most keys start first, and (kKvHeadMajor) all
// CTAs of one KV head run before those of the next, so resident CTAs share K/V in L2.
//
// Paging: K/V are addressed as a 4-D tensor (head_dim, block_size, kv_heads, num_blocks); a
// key tile is two 64-row boxes, each looked up in the block table separately, so any
// block_size that is a multiple of 64 works.
//
// DCA (kDca, paged_prefill_dca_attention.h): Q in shared memory is un-rotated. Before the S GEMM
// of a key visit, each warp checks which RoPE position each of its rows needs against that
// visit's keys (intra / successive / inter region of the row's query position, dca_positions.h)
// and, when any changed, reloads its Q fragment from shared memory and rotates it in registers
// (every thread holds both halves of each rotate-half pair: k steps k and k + kHeadDim / 32).
// Each row switches at most twice per CTA. Visits are key tiles, except that a tile holding a
// DCA chunk boundary (C not a multiple of 128) is visited twice, once per side
// (prefill_key_visits.h). One online softmax runs over all visits; the causal mask is the usual
// one (it only bites in the intra region, which holds the diagonal). With kDcaSegments the visits
// are stepped without a division (KeyVisitCursor) and the rotation check runs only when a visit
// enters another DCA chunk, in an outer loop around the key loop; the sin/cos of the first
// rotation are computed while Q is still loading.
//
// Lazy running max (kLazyMax): on unmasked visits the softmax exponentiates against the running
// max as it stands and only bounds the result (every p <= the thread's row sum <= kLazyBound),
// which drops the per-visit row max, its shuffles and the O-rescale vote from the common path;
// when a row sum exceeds the bound (the max rose by more than log2(kLazyBound)), the max is
// raised from the p themselves, or, when an exponent overflowed, from S recomputed with mma.sync
// from the K stage (released only after the softmax).
//
// Clusters (kCluster = 2, prefill_work_order.h): the two CTAs of a cluster are two work items of
// one KV head and walk the union of their key tiles; CTA r loads the 64-row box r of every K/V
// tile and multicasts it to both CTAs, whose empty barriers count the consumer warps of both.
// Each CTA masks the keys its own rows cannot see (a partner may have one more causal tile).
#pragma once

#include <cuda.h>  // CUtensorMap (types only; the driver entry point is fetched at run time)
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cute/arch/cluster_sm90.hpp"
#include "cute/arch/copy_sm90_tma.hpp"
#include "cute/arch/mma_sm90.hpp"
#include "cute/atom/mma_atom.hpp"
#include "cute/tensor.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/arch/reg_reconfig.h"
#include "cutlass/numeric_types.h"
#include "kernels/cuda/paged_prefill_attention.h"
#include "kernels/cuda/paged_prefill_attention_launch.h"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/fast_exp2.cuh"
#include "kernels/cuda/prefill_key_visits.h"
#include "kernels/cuda/prefill_work_order.h"
#include "kernels/cuda/rope_sincos.cuh"
#include "kernels/cuda/tma_tensor_map.h"
#include "kernels/cuda/vertical_slash_parts.h"

namespace mp::cuda::sm90 {

// Tile sizes and buffers of one kernel variant. The defaults are the measured best on H100
// (docs/benchmarks-attention-draft.md); the other settings stay selectable for ablations.
template <int kHeadDim_, bool kCausal_, int kStages_ = 3, bool kPingpong_ = true,
          bool kKvHeadMajor_ = true, bool kSoftmaxIlp_ = true, bool kQInRegs_ = true,
          bool kDca_ = false, bool kDcaSegments_ = false, int kCluster_ = 1, bool kSparse_ = false,
          bool kLazyMax_ = false>
struct PrefillConfig {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kCausal = kCausal_;
  static constexpr int kStages = kStages_;
  static constexpr bool kPingpong = kPingpong_;
  // CTA order: all query tiles of KV head 0 first (then KV head 1, ...), so the CTAs resident
  // at one time share one KV head's keys in L2; otherwise query heads vary fastest.
  static constexpr bool kKvHeadMajor = kKvHeadMajor_;
  // Softmax with split reductions and O rescaling skipped when no row max moved.
  static constexpr bool kSoftmaxIlp = kSoftmaxIlp_;
  // Q loaded once into registers (S GEMM with A from registers) instead of read from shared
  // memory by every S GEMM.
  static constexpr bool kQInRegs = kQInRegs_;
  // Dual chunk attention: Q un-rotated in memory, rotated per key region in registers.
  static constexpr bool kDca = kDca_;
  // DCA: key visits stepped without divisions (KeyVisitCursor), the query rotation looked at only
  // when a visit enters another DCA chunk, outside the inner key loop, and the sin/cos of the
  // first rotation computed while Q is still in flight.
  static constexpr bool kDcaSegments = kDcaSegments_;
  // CTAs per cluster (1 or 2). With 2, the two CTAs of a cluster are two work items of the same
  // KV head (usually two query heads of one query tile) walking the union of their key tiles;
  // each CTA loads half of every K/V tile and multicasts it to both, so each tile leaves L2 once
  // per pair. A CTA masks the keys its own rows cannot see.
  static constexpr int kCluster = kCluster_;
  // Vertical-slash sparse attention (vertical_slash_attention_sm90.cuh): one 64-row block of
  // one query head per CTA, key tiles gathered from the block and column lists of the three DCA
  // parts, split between the two consumer warpgroups (even / odd tiles) whose softmax states
  // are merged at the end; Q un-rotated in memory, rotated per part in registers.
  static constexpr bool kSparse = kSparse_;
  // Unmasked visits exponentiate against the running max as it stands, without the row max of
  // the visit (no max reduction, no shuffles, no O rescale); the max is raised only when a
  // thread's row sum of the visit exceeds kLazyBound (softmax_lazy in Consumer).
  static constexpr bool kLazyMax = kLazyMax_;
  static constexpr float kLazyBound = 256.f;

  static constexpr int kBlockM = 128;  // query rows per CTA
  static constexpr int kWgRows = 64;   // query rows per consumer warpgroup
  static constexpr int kBlockN = 128;  // keys per tile
  static constexpr int kBoxRows = 64;  // rows per bulk tensor copy (block_size granularity)
  static constexpr int kBoxCols = 64;  // 64 bf16 = 128 bytes = one 128B-swizzled panel
  static constexpr int kPanels = kHeadDim / kBoxCols;
  static constexpr int kThreads = 384;
  // setmaxnreg budget. A kernel that uses setmaxnreg starts every thread at the
  // __launch_bounds__(kThreads, 1) cap (ptxas: 65536 / 384 rounded down to 8 = 168), so the
  // CTA's register pool is 168 x 384 = 64512; setmaxnreg.inc blocks until the pool can supply
  // the registers, forever if it never can. The producer warpgroup's 128 threads and the two
  // consumer warpgroups' 256 must therefore fit: 40 + 2 x 232 and 56 + 2 x 224 both come to
  // 168 x 3 exactly. The sparse producer is a whole warpgroup issuing cp.async gathers (its
  // gather loop is unrolled so that it fits in 56 without spilling).
  static constexpr int kProducerRegs = kSparse ? 56 : 40;
  static constexpr int kConsumerRegs = kSparse ? 224 : 232;
  static constexpr int kRegsAtEntry = 65536 / kThreads / 8 * 8;
  static_assert(kProducerRegs * 128 + kConsumerRegs * (kThreads - 128) <= kRegsAtEntry * kThreads,
                "setmaxnreg: the warpgroups ask for more registers than the CTA holds (the "
                "consumers' setmaxnreg.inc would wait forever)");
  static_assert(kProducerRegs % 8 == 0 && kConsumerRegs % 8 == 0 && kProducerRegs >= 24 &&
                    kConsumerRegs <= 256,
                "setmaxnreg counts are multiples of 8 in [24, 256]");
  // Q tiles in shared memory: one per consumer warpgroup, or one shared (sparse).
  static constexpr int kQSlots = kSparse ? 1 : 2;

  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static_assert(kStages >= 2, "at least double buffering");
  static_assert(!kDca || (kCausal && kQInRegs), "DCA rotates the Q fragment in registers");
  static_assert(!kDcaSegments || kDca, "kDcaSegments is a DCA option");
  static_assert(kCluster == 1 || kCluster == 2, "clusters of 1 or 2 CTAs (one K/V half each)");
  static_assert(kCluster == 1 || kKvHeadMajor, "cluster pairs are formed in KV-head-major order");
  static_assert(!kSparse || (kCausal && kQInRegs && !kDca),
                "sparse rotates the Q fragment in registers and masks by key position");
  static_assert(!kSparse || kCluster == 1,
                "sparse CTAs gather their own key tiles (no cluster multicast)");
  static_assert(!kLazyMax || (kQInRegs && kSoftmaxIlp),
                "the lazy max recomputes S from the Q fragment in registers");
  static_assert(!kSparse || !kLazyMax, "the sparse kernel keeps the exact running max");

  using Element = cutlass::bfloat16_t;

  // Q: (rows, head_dim, consumer warpgroup), K-major, 128B swizzle.
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_K_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kWgRows>, cute::Int<kHeadDim>, cute::Int<kQSlots>>{}));
  // K: (keys, head_dim, stage): B operand of S = Q K^T, K-major.
  using SmemLayoutK = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_K_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  // V^T: (head_dim, keys, stage) over the same bytes as a K-style (keys, head_dim) tile: the B
  // operand of O = P V, MN-major (head_dim contiguous).
  using SmemLayoutVt = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_MN_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>, cute::Int<kStages>>{},
      cute::Step<cute::_2, cute::_1, cute::_3>{}));

  using MmaQKSmem = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kWgRows>, cute::Int<kBlockN>,
                                             cute::Int<kHeadDim>>>()));
  using MmaQKRegs = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kWgRows>, cute::Int<kBlockN>,
                                             cute::Int<kHeadDim>>>()));
  using MmaQK = std::conditional_t<kQInRegs, MmaQKRegs, MmaQKSmem>;
  using MmaPV = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kWgRows>, cute::Int<kHeadDim>,
                                             cute::Int<kBlockN>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>()));

  static constexpr int kTileElems = kBlockN * kHeadDim;
  static constexpr int kTileBytes = kTileElems * 2;
  static constexpr int kQBytes = kQSlots * kWgRows * kHeadDim * 2;
  static constexpr int kSparseStages = kSparse ? kStages : 1;
  static constexpr int kSparseKeys = kSparse ? kBlockN : 1;

  struct SharedStorage {
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, 1024> k;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutVt>, 1024> v;
    uint64_t q_full;
    uint64_t k_full[kStages];
    uint64_t k_empty[kStages];
    uint64_t v_full[kStages];
    uint64_t v_empty[kStages];
    // Sparse only: the sequence position of each column of the tile in a K stage (INT32_MAX:
    // no key), and per producer warp whether the tile needs a mask.
    alignas(16) int32_t keys[kSparseStages][kSparseKeys];
    alignas(16) int32_t key_flags[kSparseStages][4];
  };
  // +1024: the dynamic shared memory base is rounded up to the swizzle atom.
  static constexpr int kSmemBytes = int(sizeof(SharedStorage)) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

// Sparse (kSparse) only: one DCA part's index (vertical_slash_index.h layout) and key range.
struct SparsePartParams {
  const int32_t* block_count = nullptr;   // [q_heads, row_blocks]
  const int32_t* block_offset = nullptr;  // [q_heads, row_blocks, max_blocks], local keys
  const int32_t* column_count = nullptr;  // [q_heads, row_blocks]
  const int32_t* column_index = nullptr;  // [q_heads, row_blocks, max_columns], local keys
  int64_t max_blocks = 0;
  int64_t max_columns = 0;
  const VerticalSlashHeadSpan* heads = nullptr;  // [q_heads] per-head layout, or null: uniform
  int key_begin = 0;  // local key k is the sequence position key_begin + k
  int kv_len = 0;     // local keys [0, kv_len)
  int present = 0;
};
struct SparseParams {
  SparsePartParams parts[3];               // intra, succ, inter (vertical_slash_parts.h)
  const __nv_bfloat16* k_cache = nullptr;  // [num_blocks, kv_heads, block_size, head_dim]
  const __nv_bfloat16* v_cache = nullptr;
  int64_t num_blocks = 0;
  int kv_heads = 0;
  int row_blocks = 0;
};
// The key tiles (visits) of one sparse CTA, in order: 6 segments (intra blocks, intra columns,
// succ blocks, succ columns, inter blocks, inter columns); a block segment takes two 64-key
// blocks per tile, a column segment 128 columns.
struct SparseTilePlan {
  int seg_end[6] = {};  // cumulative visit counts
  int entries[6] = {};  // blocks or columns of each segment
  __host__ __device__ int total() const { return seg_end[5]; }
  __host__ __device__ int part_of(int visit) const {
    return visit < seg_end[1] ? 0 : (visit < seg_end[3] ? 1 : 2);
  }
};

// Everything the kernel needs; passed by value as a __grid_constant__ parameter (the tensor
// maps must live in parameter, constant or global memory).
struct PrefillParams {
  CUtensorMap q_map;  // (head_dim, n, q_heads), box (64, 64, 1)
  CUtensorMap k_map;  // (head_dim, block_size, kv_heads, num_blocks), box (64, 64, 1, 1)
  CUtensorMap v_map;  // same as k_map
  const int32_t* block_table;
  __nv_bfloat16* out;  // [n, q_heads, head_dim]
  float* lse;          // [q_heads, n] or null
  int num_queries;
  int q_heads;
  int group;  // q_heads / kv_heads
  int block_size;
  int key_begin;
  int key_end;
  int num_m_tiles;
  float scale;
  float scale_log2;  // scale * log2(e)
  int chunk_len;       // DCA only (0 otherwise): C
  int chunk_size;      // DCA only: S
  float inv_freq[64];  // DCA and sparse only: RoPE inverse frequencies, [head_dim / 2]
  int lse_stride;      // lse[q_head * lse_stride + row]
  SparseParams sparse;  // sparse only
};

// Key tiles (of kBlockN keys, aligned to multiples of kBlockN in sequence positions) that the
// query rows [m_tile * kBlockM, ...) can see: [begin, begin + count).
struct KeyTileRange {
  int begin = 0;
  int count = 0;
};

template <class Cfg>
__host__ __device__ inline KeyTileRange KeyTilesForQueryTile(int m_tile, int n, int key_begin,
                                                             int key_end) {
  const int row_end = n < (m_tile + 1) * Cfg::kBlockM ? n : (m_tile + 1) * Cfg::kBlockM;
  int hi = key_end;
  if (Cfg::kCausal && key_end - n + row_end < hi) hi = key_end - n + row_end;
  KeyTileRange r;
  if (hi <= key_begin) return r;
  r.begin = key_begin / Cfg::kBlockN;
  r.count = (hi + Cfg::kBlockN - 1) / Cfg::kBlockN - r.begin;
  return r;
}

namespace detail {

using internal::Exp2;

__device__ __forceinline__ void NamedBarrierSync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void NamedBarrierArrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void LdMatrixX4(const void* smem, uint32_t (&r)[4]) {
  const uint32_t addr = cute::cast_smem_ptr_to_uint(smem);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Named barrier ids (0 is __syncthreads).
inline constexpr int kBarPingpongFirst = 1;  // +consumer warpgroup: "your turn to issue GEMMs"
inline constexpr int kBarWarpgroupFirst = 3;  // +consumer warpgroup: one warpgroup's threads
inline constexpr int kBarMerge = 5;           // sparse: both consumer warpgroups (state merge)

// Loads one K or V tile (two 64-row boxes, each possibly in a different cache block). In a
// 2-CTA cluster, CTA r loads box r and multicasts it to the same buffer (and the same mbarrier)
// of both CTAs.
template <class Cfg>
__device__ __forceinline__ void LoadKvTile(const CUtensorMap* map, uint64_t* bar,
                                           typename Cfg::Element* dst, const int (&blk)[2],
                                           const int (&row)[2], int kv_head,
                                           [[maybe_unused]] int cta_rank) {
  constexpr auto kHint = static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_NORMAL);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if constexpr (Cfg::kCluster > 1) {
      if (half != cta_rank) continue;
    }
#pragma unroll
    for (int p = 0; p < Cfg::kPanels; ++p) {
      auto* box = dst + p * Cfg::kBlockN * Cfg::kBoxCols + half * Cfg::kBoxRows * Cfg::kBoxCols;
      if constexpr (Cfg::kCluster > 1) {
        cute::SM90_TMA_LOAD_MULTICAST_4D::copy(map, bar, uint16_t((1u << Cfg::kCluster) - 1),
                                               kHint, box, p * Cfg::kBoxCols, row[half],
                                               kv_head, blk[half]);
      } else {
        cute::SM90_TMA_LOAD_4D::copy(map, bar, kHint, box, p * Cfg::kBoxCols, row[half],
                                     kv_head, blk[half]);
      }
    }
  }
}

// The key-visit order of a configuration (prefill_key_visits.h): the same visits either way.
template <class Cfg>
using VisitWalk = std::conditional_t<Cfg::kDcaSegments, KeyVisitCursor<Cfg::kBlockN>,
                                     KeyVisitWalk<Cfg::kBlockN>>;

// Block ids and in-block rows of the two 64-row halves of key tile t. Table indices are
// clamped to the entries of [key_begin, key_end); rows outside that range are masked anyway.
template <class Cfg>
__device__ __forceinline__ void LookupTile(const PrefillParams& p, int t, int (&blk)[2],
                                           int (&row)[2]) {
  const int first = p.key_begin / p.block_size;
  const int last = (p.key_end - 1) / p.block_size;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int pos = t * Cfg::kBlockN + half * Cfg::kBoxRows;
    const int idx = min(max(pos / p.block_size, first), last);
    row[half] = pos % p.block_size;
    blk[half] = __ldg(p.block_table + idx);
  }
}

template <class Cfg>
__device__ void Producer(const PrefillParams& p, typename Cfg::SharedStorage& ss, int m_tile,
                         int q_head, int kv_head, KeyTileRange tiles, int cta_rank) {
  using cutlass::arch::ClusterBarrier;
  using cutlass::arch::ClusterTransactionBarrier;
  constexpr int S = Cfg::kStages;

  ClusterTransactionBarrier::arrive_and_expect_tx(&ss.q_full, Cfg::kQBytes);
#pragma unroll
  for (int g = 0; g < 2; ++g) {
#pragma unroll
    for (int pn = 0; pn < Cfg::kPanels; ++pn) {
      cute::SM90_TMA_LOAD_3D::copy(
          &p.q_map, &ss.q_full, static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_FIRST),
          ss.q.data() + g * Cfg::kWgRows * Cfg::kHeadDim + pn * Cfg::kWgRows * Cfg::kBoxCols,
          pn * Cfg::kBoxCols, m_tile * Cfg::kBlockM + g * Cfg::kWgRows, q_head);
    }
  }

  const int split = Cfg::kDca ? p.chunk_len : 0;  // compile-time 0 for the dense kernel
  const int visits = CountKeyVisits(tiles.begin, tiles.count, Cfg::kBlockN, split);
  VisitWalk<Cfg> walk(tiles.begin + tiles.count - 1, split);
  int blk[2], row[2], prev_blk[2], prev_row[2];
  LookupTile<Cfg>(p, walk.Current().tile, blk, row);
  for (int i = 0; i < visits; ++i) {
    const int stage = i % S;
    const int round = i / S;
    if (i >= S) ClusterBarrier::wait(&ss.k_empty[stage], (round & 1) ^ 1);
    ClusterTransactionBarrier::arrive_and_expect_tx(&ss.k_full[stage], Cfg::kTileBytes);
    LoadKvTile<Cfg>(&p.k_map, &ss.k_full[stage], ss.k.data() + stage * Cfg::kTileElems, blk,
                    row, kv_head, cta_rank);
    if (i > 0) {
      const int pstage = (i - 1) % S;
      const int pround = (i - 1) / S;
      if (i - 1 >= S) ClusterBarrier::wait(&ss.v_empty[pstage], (pround & 1) ^ 1);
      ClusterTransactionBarrier::arrive_and_expect_tx(&ss.v_full[pstage], Cfg::kTileBytes);
      LoadKvTile<Cfg>(&p.v_map, &ss.v_full[pstage], ss.v.data() + pstage * Cfg::kTileElems,
                      prev_blk, prev_row, kv_head, cta_rank);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      prev_blk[h] = blk[h];
      prev_row[h] = row[h];
    }
    // Look the next tile up now, so the table read overlaps the wait for a free buffer.
    walk.Advance();
    if (i + 1 < visits) LookupTile<Cfg>(p, walk.Current().tile, blk, row);
  }
  const int i = visits - 1;
  const int stage = i % S;
  const int round = i / S;
  if (i >= S) ClusterBarrier::wait(&ss.v_empty[stage], (round & 1) ^ 1);
  ClusterTransactionBarrier::arrive_and_expect_tx(&ss.v_full[stage], Cfg::kTileBytes);
  LoadKvTile<Cfg>(&p.v_map, &ss.v_full[stage], ss.v.data() + stage * Cfg::kTileElems, prev_blk,
                  prev_row, kv_head, cta_rank);
}

// Issues acc (+)= A * B over all k-blocks as one wgmma batch (not waited for).
template <class Mma, class TA, class TB, class TC>
__device__ __forceinline__ void IssueGemm(Mma& mma, const TA& a, const TB& b, TC& c,
                                          bool zero_init) {
  cute::warpgroup_fence_operand(c);
  cute::warpgroup_arrive();
  mma.accumulate_ = zero_init ? cute::GMMA::ScaleOut::Zero : cute::GMMA::ScaleOut::One;
#pragma unroll
  for (int k = 0; k < cute::size<2>(a); ++k) {
    cute::gemm(mma, a(cute::_, cute::_, k), b(cute::_, cute::_, k), c);
    mma.accumulate_ = cute::GMMA::ScaleOut::One;
  }
  cute::warpgroup_commit_batch();
  cute::warpgroup_fence_operand(c);
}

// Writes zeros over the V rows of a tile that lie outside [key_begin, key_end): those cache
// rows may hold NaN, and 0 * NaN would poison O even though their P is 0. Both consumer
// warpgroups zero the same rows (identical values), each before its own PV GEMM.
template <class Cfg>
__device__ __forceinline__ void ZeroOutOfRangeRows(typename Cfg::Element* v_tile, int lo, int hi,
                                                   int tid, int cwg) {
  // Rows [0, lo) and [hi, kBlockN) of each panel; a row of a panel is 128 contiguous bytes.
  const int bad_rows = lo + (Cfg::kBlockN - hi);
  const int chunks = bad_rows * Cfg::kPanels * 8;  // 16-byte chunks
  char* base = reinterpret_cast<char*>(v_tile);
  for (int c = tid; c < chunks; c += 128) {
    const int r = c / (Cfg::kPanels * 8);
    const int rest = c % (Cfg::kPanels * 8);
    const int panel = rest / 8;
    const int chunk = rest % 8;
    const int row = r < lo ? r : hi + (r - lo);
    *reinterpret_cast<uint4*>(base + panel * Cfg::kBlockN * 128 + row * 128 + chunk * 16) =
        make_uint4(0, 0, 0, 0);
  }
  cutlass::arch::fence_view_async_shared();
  NamedBarrierSync(kBarWarpgroupFirst + cwg, 128);
}

// DCA: rotates the Q fragment of the S GEMM (loaded un-rotated, register order as in the
// consumer's load_q) in registers by the RoPE positions pos[0] (the thread's row lane / 4 of its
// warp's 16) and pos[1] (that row + 8): NeoX rotate-half, fp32 angles pos * inv_freq, rounded
// back to bf16. Column c < head_dim / 2 pairs with c + head_dim / 2, which sits in k step
// k + kHeadDim / 32 of the same register slot, so no value moves between threads.
template <class Cfg, class TensorQ>
__device__ __forceinline__ void RotateQFragment(TensorQ& tSrQ, const int (&pos)[2],
                                                const float* inv_freq, int lane) {
  auto q32 = cute::recast<uint32_t>(tSrQ);
  constexpr int kHalfSteps = Cfg::kHeadDim / 32;
#pragma unroll
  for (int k = 0; k < kHalfSteps; ++k) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float fpos = static_cast<float>(pos[j % 2]);
      const int col = k * 16 + (j / 2) * 8 + (lane % 4) * 2;
      uint32_t first = q32(k * 4 + j);
      uint32_t second = q32((k + kHalfSteps) * 4 + j);
      const __nv_bfloat162 x1 = *reinterpret_cast<const __nv_bfloat162*>(&first);
      const __nv_bfloat162 x2 = *reinterpret_cast<const __nv_bfloat162*>(&second);
      const float a0 = __low2float(x1), a1 = __high2float(x1);
      const float b0 = __low2float(x2), b1 = __high2float(x2);
      float s0, c0, s1, c1;
      RopeSinCos(fpos * inv_freq[col], &s0, &c0);
      RopeSinCos(fpos * inv_freq[col + 1], &s1, &c1);
      __nv_bfloat162 y1 = __floats2bfloat162_rn(a0 * c0 - b0 * s0, a1 * c1 - b1 * s1);
      __nv_bfloat162 y2 = __floats2bfloat162_rn(b0 * c0 + a0 * s0, b1 * c1 + a1 * s1);
      q32(k * 4 + j) = *reinterpret_cast<uint32_t*>(&y1);
      q32((k + kHalfSteps) * 4 + j) = *reinterpret_cast<uint32_t*>(&y2);
    }
  }
}

// RotateQFragment in two steps (kDcaSegments), so that the sin/cos of the first rotation can be
// computed before Q has arrived: the angles of the thread's 2 rows x kHeadDim / 8 columns c of the
// first half (slot (k * 4 + j) * 2 + e: k step k, register j, element e), then the rotation with
// them; the arithmetic is RotateQFragment's.
template <class Cfg>
struct QRotation {
  static constexpr int kSlots = Cfg::kHeadDim / 32 * 4 * 2;
  float sine[kSlots];
  float cosine[kSlots];
};

template <class Cfg>
__device__ __forceinline__ void ComputeQRotation(QRotation<Cfg>& rot, const int (&pos)[2],
                                                 const float* inv_freq, int lane) {
  constexpr int kHalfSteps = Cfg::kHeadDim / 32;
#pragma unroll
  for (int k = 0; k < kHalfSteps; ++k) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float fpos = static_cast<float>(pos[j % 2]);
      const int col = k * 16 + (j / 2) * 8 + (lane % 4) * 2;
      const int slot = (k * 4 + j) * 2;
      RopeSinCos(fpos * inv_freq[col], &rot.sine[slot], &rot.cosine[slot]);
      RopeSinCos(fpos * inv_freq[col + 1], &rot.sine[slot + 1], &rot.cosine[slot + 1]);
    }
  }
}

template <class Cfg, class TensorQ>
__device__ __forceinline__ void ApplyQRotation(TensorQ& tSrQ, const QRotation<Cfg>& rot) {
  auto q32 = cute::recast<uint32_t>(tSrQ);
  constexpr int kHalfSteps = Cfg::kHeadDim / 32;
#pragma unroll
  for (int k = 0; k < kHalfSteps; ++k) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int slot = (k * 4 + j) * 2;
      const float s0 = rot.sine[slot], c0 = rot.cosine[slot];
      const float s1 = rot.sine[slot + 1], c1 = rot.cosine[slot + 1];
      uint32_t first = q32(k * 4 + j);
      uint32_t second = q32((k + kHalfSteps) * 4 + j);
      const __nv_bfloat162 x1 = *reinterpret_cast<const __nv_bfloat162*>(&first);
      const __nv_bfloat162 x2 = *reinterpret_cast<const __nv_bfloat162*>(&second);
      const float a0 = __low2float(x1), a1 = __high2float(x1);
      const float b0 = __low2float(x2), b1 = __high2float(x2);
      __nv_bfloat162 y1 = __floats2bfloat162_rn(a0 * c0 - b0 * s0, a1 * c1 - b1 * s1);
      __nv_bfloat162 y2 = __floats2bfloat162_rn(b0 * c0 + a0 * s0, b1 * c1 + a1 * s1);
      q32(k * 4 + j) = *reinterpret_cast<uint32_t*>(&y1);
      q32((k + kHalfSteps) * 4 + j) = *reinterpret_cast<uint32_t*>(&y2);
    }
  }
}

// d += a * b for one 16 x 8 x 16 block (bf16 in, fp32 accumulation), warp-wide.
__device__ __forceinline__ void Mma16816(float& d0, float& d1, float& d2, float& d3,
                                         const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// What RecomputeS assumes of SmemLayoutK: key r + 16 nb sits 16 nb rows of kBoxCols elements
// after key r, for every column (the 128-byte swizzle pattern repeats every 8 rows).
template <class Cfg>
constexpr bool KRowsRepeatEvery16() {
  constexpr typename Cfg::SmemLayoutK layout{};
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < Cfg::kHeadDim; c += 8) {
      for (int nb = 1; nb < Cfg::kBlockN / 16; ++nb) {
        if (int(layout(nb * 16 + r, c, 0)) - int(layout(r, c, 0)) != nb * 16 * Cfg::kBoxCols) {
          return false;
        }
      }
    }
  }
  return true;
}

// kLazyMax, rare path: S of this warp's 16 query rows against the key tile of one stage,
// recomputed with warp-level mma.sync from the Q fragment in registers (whose k step k, registers
// 0-3, is exactly the A fragment of m16n8k16) and K in shared memory (ldmatrix; a K row is a key,
// so the non-transposed 8 x 8 matrices are the B fragments). The m16n8 accumulator block n is
// values 4n .. 4n + 3 of the S GEMM's accumulator (rows lane / 4 and lane / 4 + 8, columns
// 8n + 2 (lane % 4) + {0, 1}), so the result lands where the wgmma would have put it.
template <class Cfg, class TensorQ, class TensorK, class TensorS>
__device__ __forceinline__ void RecomputeS(TensorQ& tSrQ, const TensorK& sK, int stage,
                                           TensorS& tSrS, int lane) {
  static_assert(KRowsRepeatEvery16<Cfg>(), "K rows 16 apart must be 16 * 128 bytes apart");
  auto q32 = cute::recast<uint32_t>(tSrQ);
#pragma unroll
  for (int i = 0; i < cute::size(tSrS); ++i) tSrS(i) = 0.f;
  const int matrix = lane / 8;  // ldmatrix.x4: lanes 8m .. 8m + 7 address the rows of matrix m
#pragma unroll
  for (int k = 0; k < Cfg::kHeadDim / 16; ++k) {
    const uint32_t a[4] = {q32(k * 4 + 0), q32(k * 4 + 1), q32(k * 4 + 2), q32(k * 4 + 3)};
    // Matrices: keys +0..7 dims +0..7 / +8..15, then keys +8..15 likewise; 16 keys further on
    // is 16 rows of 128 bytes further (KRowsRepeatEvery16).
    const char* row0 = reinterpret_cast<const char*>(
        &sK((matrix / 2) * 8 + lane % 8, k * 16 + (matrix % 2) * 8, stage));
#pragma unroll
    for (int nb = 0; nb < Cfg::kBlockN / 16; ++nb) {
      uint32_t b[4];
      LdMatrixX4(row0 + nb * 16 * 128, b);
      const int c = 8 * nb;  // accumulator values of blocks 2 nb and 2 nb + 1
      Mma16816(tSrS(c), tSrS(c + 1), tSrS(c + 2), tSrS(c + 3), a, b[0], b[1]);
      Mma16816(tSrS(c + 4), tSrS(c + 5), tSrS(c + 6), tSrS(c + 7), a, b[2], b[3]);
    }
  }
  __syncwarp();  // every lane is done with the K stage before lane 0 releases it
}

template <class Cfg>
__device__ void Consumer(const PrefillParams& p, typename Cfg::SharedStorage& ss, int m_tile,
                         int q_head, KeyTileRange tiles, int cwg, bool writes,
                         const SparseTilePlan& plan = SparseTilePlan{}) {
  using namespace cute;
  using cutlass::arch::ClusterBarrier;
  using Element = typename Cfg::Element;
  constexpr int S = Cfg::kStages;
  constexpr int kN = Cfg::kBlockN;
  const int tid = threadIdx.x % 128;
  const int lane = threadIdx.x % 32;

  typename Cfg::MmaQK mma_qk;
  typename Cfg::MmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(tid);
  auto thr_pv = mma_pv.get_thread_slice(tid);

  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Cfg::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Cfg::SmemLayoutK{});
  Tensor sVt = make_tensor(make_smem_ptr(ss.v.data()), typename Cfg::SmemLayoutVt{});

  // (MMA, 1, head_dim / 16): smem descriptors, or registers filled once Q has arrived.
  auto tSrQ = [&] {
    if constexpr (Cfg::kQInRegs) {
      return make_tensor<Element>(
          Layout<Shape<Shape<_2, _2, _2>, _1, Int<Cfg::kHeadDim / 16>>>{});
    } else {
      return thr_qk.partition_fragment_A(sQ(_, _, cwg));
    }
  }();
  Tensor tSrK = thr_qk.partition_fragment_B(sK);              // (MMA, 1, head_dim / 16, S)
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);             // (MMA, 1, kN / 16, S)
  Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<Cfg::kWgRows>, Int<kN>>{});
  Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<Cfg::kWgRows>, Int<Cfg::kHeadDim>>{});
  // P in the register layout of the A operand of the PV GEMM: per 16-key step the accumulator
  // values (col pair, row pair, 8-col half) are exactly the A fragment's (k pair, m pair, k half).
  Tensor tOrP = make_tensor<Element>(Layout<Shape<Shape<_2, _2, _2>, _1, Int<kN / 16>>>{});
  CUTE_STATIC_ASSERT_V(size(tOrP) == size(tSrS));

  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<Cfg::kWgRows>, Int<kN>>{}));
  Tensor tOcO =
      thr_pv.partition_C(make_identity_tensor(Shape<Int<Cfg::kWgRows>, Int<Cfg::kHeadDim>>{}));

  const int n = p.num_queries;
  // Sparse: both warpgroups hold the same 64 rows (they split the key tiles instead).
  const int wg_row0 =
      Cfg::kSparse ? m_tile * Cfg::kWgRows : m_tile * Cfg::kBlockM + cwg * Cfg::kWgRows;
  // Per thread: two query rows (r = 0, 1). Keys visible to row r: [key_begin, row_hi[r]).
  int row_hi[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int q_row = wg_row0 + get<0>(tScS(2 * r));
    row_hi[r] = Cfg::kCausal ? min(p.key_end, p.key_end - n + q_row + 1) : p.key_end;
  }
  // Tiles whose keys all lie in [key_begin, unmasked_hi) need no mask for any row of the CTA.
  const int unmasked_hi =
      Cfg::kCausal ? min(p.key_end, p.key_end - n + m_tile * Cfg::kBlockM + 1) : p.key_end;

  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};
  // kLazyMax: the exponent offset -row_max * scale_log2 of the running max, +inf while a row has
  // seen no key (so the fast path overflows and takes the exact path).
  [[maybe_unused]] float lazy_nsm[2] = {INFINITY, INFINITY};
  clear(tOrO);

  const float sl2 = p.scale_log2;

  // Masks (if kMask) the keys outside [key_begin, row_hi) and outside the visit's [lo, hi),
  // updates the running max/sum, turns S into unnormalized probabilities and returns the
  // factor by which O must be rescaled.
  auto softmax = [&](auto mask_tag, const auto& v, float(&corr)[2]) {
    constexpr bool kMask = decltype(mask_tag)::value;
    if constexpr (kMask) {
      const int base = v.tile * kN;
      if constexpr (Cfg::kDca) {
        const int lo = max(p.key_begin, v.lo);
        const int hi[2] = {min(row_hi[0], v.hi), min(row_hi[1], v.hi)};
#pragma unroll
        for (int i = 0; i < size(tSrS); ++i) {
          const int r = (i / 2) % 2;
          const int key = base + get<1>(tScS(i));
          if (key < lo || key >= hi[r]) tSrS(i) = -INFINITY;
        }
      } else {
#pragma unroll
        for (int i = 0; i < size(tSrS); ++i) {
          const int r = (i / 2) % 2;
          const int key = base + get<1>(tScS(i));
          if (key < p.key_begin || key >= row_hi[r]) tSrS(i) = -INFINITY;
        }
      }
    }
    // Row max and row sum use kAcc independent partial results per row: one warp issues the
    // softmax alone on its scheduler while the other warpgroup's GEMMs run, so short
    // dependency chains matter.
    constexpr int kAcc = Cfg::kSoftmaxIlp ? 4 : 1;
    float mx[2] = {row_max[0], row_max[1]};
    {
      float part[2][kAcc];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int a = 0; a < kAcc; ++a) part[r][a] = mx[r];
      }
#pragma unroll
      for (int i = 0; i < size(tSrS); ++i) {
        const int r = (i / 2) % 2;
        const int a = (i / 4) % kAcc;
        part[r][a] = fmaxf(part[r][a], tSrS(i));
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int a = 1; a < kAcc; ++a) part[r][0] = fmaxf(part[r][0], part[r][a]);
        mx[r] = part[r][0];
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 2));
    }
    float neg_scaled_max[2], sum[2][kAcc];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_safe = mx[r] == -INFINITY ? 0.f : mx[r];
      corr[r] = Exp2((row_max[r] - m_safe) * sl2);
      row_max[r] = mx[r];
      neg_scaled_max[r] = -m_safe * sl2;
      if constexpr (Cfg::kLazyMax) lazy_nsm[r] = mx[r] == -INFINITY ? INFINITY : neg_scaled_max[r];
#pragma unroll
      for (int a = 0; a < kAcc; ++a) sum[r][a] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < size(tSrS); ++i) {
      const int r = (i / 2) % 2;
      const float e = Exp2(fmaf(tSrS(i), sl2, neg_scaled_max[r]));
      tSrS(i) = e;
      sum[r][(i / 4) % kAcc] += e;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
#pragma unroll
      for (int a = 1; a < kAcc; ++a) sum[r][0] += sum[r][a];
      row_sum[r] = row_sum[r] * corr[r] + sum[r][0];
    }
  };

  // kLazyMax, unmasked visits: p = exp2(s * scale_log2 - running max * scale_log2) with the
  // running max as it stands: no row max of the visit, no shuffles, no O rescale. Every p of a
  // thread is at most its row sum, so while all row sums of the visit stay <= kLazyBound, no p
  // exceeds it and the max need not move (the softmax is exact for any offset; the bound only
  // keeps P, O and the row sums far from overflow). Otherwise (rare; warp-uniform) the max is
  // raised to the visit's: from the p themselves when all are finite (p *= 1 / max p), else (an
  // exponent overflowed, or a row had seen no key) from S recomputed with mma.sync from the K
  // stage, which the caller releases only after this. Returns whether O must be rescaled by corr.
  auto softmax_lazy = [&](const KeyVisit& v, int stage, float (&corr)[2]) {
    if constexpr (!Cfg::kLazyMax) {
      return false;
    } else {
      constexpr int kAcc = 4;
      float sum[2][kAcc];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int a = 0; a < kAcc; ++a) sum[r][a] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < size(tSrS); ++i) {
        const int r = (i / 2) % 2;
        const float e = Exp2(fmaf(tSrS(i), sl2, lazy_nsm[r]));
        tSrS(i) = e;
        sum[r][(i / 4) % kAcc] += e;
      }
      float ts[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) ts[r] = (sum[r][0] + sum[r][1]) + (sum[r][2] + sum[r][3]);
      // False for inf and NaN too.
      const bool small = ts[0] <= Cfg::kLazyBound && ts[1] <= Cfg::kLazyBound;
      if (__all_sync(0xffffffff, small)) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          row_sum[r] += ts[r];
          corr[r] = 1.f;
        }
        return false;
      }
      const bool finite = ts[0] <= FLT_MAX && ts[1] <= FLT_MAX;
      if (!__all_sync(0xffffffff, finite)) {
        RecomputeS<Cfg>(tSrQ, sK, stage, tSrS, lane);
        softmax(cute::false_type{}, v, corr);
        return true;
      }
      float pm[2] = {0.f, 0.f};
#pragma unroll
      for (int i = 0; i < size(tSrS); ++i) {
        const int r = (i / 2) % 2;
        pm[r] = fmaxf(pm[r], tSrS(i));
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        pm[r] = fmaxf(pm[r], __shfl_xor_sync(0xffffffff, pm[r], 1));
        pm[r] = fmaxf(pm[r], __shfl_xor_sync(0xffffffff, pm[r], 2));
        corr[r] = 1.f;
        if (pm[r] > 1.f) {
          corr[r] = __frcp_rn(pm[r]);
          lazy_nsm[r] -= __log2f(pm[r]);
          row_max[r] = -lazy_nsm[r] / sl2;
        }
      }
#pragma unroll
      for (int i = 0; i < size(tSrS); ++i) tSrS(i) *= corr[(i / 2) % 2];
#pragma unroll
      for (int r = 0; r < 2; ++r) row_sum[r] = (row_sum[r] + ts[r]) * corr[r];
      return true;
    }
  };

  auto convert_p = [&]() {
    Tensor p32 = recast<uint32_t>(tOrP);
#pragma unroll
    for (int i = 0; i < size(p32); ++i) {
      __nv_bfloat162 v = __floats2bfloat162_rn(tSrS(2 * i), tSrS(2 * i + 1));
      p32(i) = *reinterpret_cast<uint32_t*>(&v);
    }
  };

  auto needs_mask = [&](const KeyVisit& v) {
    const bool partial = Cfg::kDca && (v.lo != v.tile * kN || v.hi != (v.tile + 1) * kN);
    return partial || v.tile * kN < p.key_begin || (v.tile + 1) * kN > unmasked_hi;
  };
  // Sparse stages are filled by cp.async (generic proxy) and read by wgmma (async proxy): after
  // the full barrier shows the copies landed, a proxy fence orders them before the wgmma reads.
  auto sparse_fence = [&]() {
    if constexpr (Cfg::kSparse) internal::FenceProxyAsyncShared();
  };
  auto wait_v_and_fix = [&](int i, const auto& v) {
    const int stage = i % S;
    ClusterBarrier::wait(&ss.v_full[stage], (i / S) & 1);
    sparse_fence();
    if constexpr (!Cfg::kSparse) {  // sparse tiles hold zeros wherever there is no key
      const int t = v.tile;
      const int lo = max(0, min(kN, p.key_begin - t * kN));
      const int hi = max(0, min(kN, p.key_end - t * kN));
      if (lo > 0 || hi < kN) {
        ZeroOutOfRangeRows<Cfg>(ss.v.data() + stage * Cfg::kTileElems, lo, hi, tid, cwg);
      }
    }
  };
  // A stage is free once every consumer warp of every CTA of the cluster is done with it (the
  // peer's multicast writes into this CTA's buffer too).
  auto release = [&](uint64_t* bar) {
    if constexpr (Cfg::kCluster > 1) {
#pragma unroll
      for (int c = 0; c < Cfg::kCluster; ++c) ClusterBarrier::arrive(bar, c, lane == 0);
    } else {
      if (lane == 0) ClusterBarrier::arrive(bar);
    }
  };
  // Sparse CTAs with a single key tile leave the second warpgroup idle: no pingpong then.
  const int total_visits = [&] {
    if constexpr (Cfg::kSparse) {
      return tiles.count;
    } else {
      return CountKeyVisits(tiles.begin, tiles.count, kN, Cfg::kDca ? p.chunk_len : 0);
    }
  }();
  const bool pingpong = Cfg::kPingpong && (!Cfg::kSparse || total_visits >= 2);
  auto pingpong_wait = [&]() {
    if constexpr (Cfg::kPingpong) {
      if (pingpong) NamedBarrierSync(kBarPingpongFirst + cwg, 256);
    }
  };
  auto pingpong_pass = [&]() {
    if constexpr (Cfg::kPingpong) {
      if (pingpong) NamedBarrierArrive(kBarPingpongFirst + (1 - cwg), 256);
    }
  };

  // Q fragment (kQInRegs): a 16x16 block per warp and k step = four 8x8 matrices (rows +0/+8,
  // cols +0/+8), in the register order of the wgmma A operand: register j of k step k holds
  // row (warp_in_wg * 16 + lane / 4 + 8 * (j % 2)), columns k * 16 + 8 * (j / 2) + 2 * (lane % 4)
  // and the next one.
  auto load_q = [&]() {
    if constexpr (Cfg::kQInRegs) {
      Tensor q32 = recast<uint32_t>(tSrQ);
      const int warp_in_wg = tid / 32;
      const int row = warp_in_wg * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
#pragma unroll
      for (int k = 0; k < Cfg::kHeadDim / 16; ++k) {
        uint32_t regs[4];
        LdMatrixX4(&sQ(row, k * 16 + (lane / 16) * 8, Cfg::kQSlots == 1 ? 0 : cwg), regs);
#pragma unroll
        for (int j = 0; j < 4; ++j) q32(k * 4 + j) = regs[j];
      }
    }
  };

  // DCA: RoPE position of each of the thread's two rows in its intra / succ / inter region,
  // and the position its Q fragment is currently rotated by (-1: not loaded yet).
  [[maybe_unused]] DcaQueryPositions<int> dca_pos[2];
  [[maybe_unused]] DcaKeyRegions<int> dca_reg[2];
  [[maybe_unused]] int dca_cur[2] = {-1, -1};
  if constexpr (Cfg::kDca || Cfg::kSparse) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q_row = wg_row0 + get<0>(tScS(2 * r));
      // Rows before the first key position see no key; rows past n are never written.
      const int pos = max(0, p.key_end - n + q_row);
      dca_pos[r] = DcaQueryPositionsAt(pos, p.chunk_len, p.chunk_size);
      dca_reg[r] = DcaKeyRegionsAt(pos, p.chunk_len);
    }
  }
  // Makes the Q fragment rotated right for the keys of visit v (which lie in one DCA chunk).
  auto prepare_q = [&](const KeyVisit& v) {
    if constexpr (Cfg::kDca) {
      int want[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        want[r] = v.lo >= dca_reg[r].intra_begin
                      ? dca_pos[r].intra
                      : (v.lo >= dca_reg[r].succ_begin ? dca_pos[r].succ : dca_pos[r].inter);
      }
      if (__any_sync(0xffffffff, want[0] != dca_cur[0] || want[1] != dca_cur[1])) {
        load_q();
        RotateQFragment<Cfg>(tSrQ, want, p.inv_freq, lane);
        dca_cur[0] = want[0];
        dca_cur[1] = want[1];
      }
    }
  };

  // DCA (kDcaSegments): the RoPE positions of the thread's rows for the keys of visit v.
  auto wanted_positions = [&](const KeyVisit& v, int (&want)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      want[r] = v.lo >= dca_reg[r].intra_begin
                    ? dca_pos[r].intra
                    : (v.lo >= dca_reg[r].succ_begin ? dca_pos[r].succ : dca_pos[r].inter);
    }
  };

  // Sparse: the Q fragment rotated for DCA part `part` (0 intra, 1 succ, 2 inter) of the rows.
  auto prepare_q_part = [&](int part) {
    if constexpr (Cfg::kSparse) {
      int want[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        want[r] = part == 0 ? dca_pos[r].intra : (part == 1 ? dca_pos[r].succ : dca_pos[r].inter);
      }
      if (__any_sync(0xffffffff, want[0] != dca_cur[0] || want[1] != dca_cur[1])) {
        load_q();
        RotateQFragment<Cfg>(tSrQ, want, p.inv_freq, lane);
        dca_cur[0] = want[0];
        dca_cur[1] = want[1];
      }
    }
  };
  // Sparse visit: its index and DCA part.
  struct SparseVisit {
    int index = 0;
    int part = 0;
  };
  using Visit = std::conditional_t<Cfg::kSparse, SparseVisit, KeyVisit>;
  // Sparse: whether the tile in a stage needs a mask (the producer's per-warp flags), read as
  // soon as the stage is full (sparse_flags, into tile_masked) so that the shared load
  // completes under the S GEMM.
  [[maybe_unused]] bool tile_masked = true;
  auto sparse_flags = [&](int stage) {
    if constexpr (Cfg::kSparse) {
      const uint32_t a = cute::cast_smem_ptr_to_uint(&ss.key_flags[stage][0]);
      int4 f;
      asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(f.x), "=r"(f.y), "=r"(f.z), "=r"(f.w)
                   : "r"(a));
      tile_masked = (f.x | f.y | f.z | f.w) != 0;
    }
  };
  // Sparse: masks the columns of stage `stage` that hold no key or a key after the row's
  // position, in the flagged tiles.
  auto sparse_mask = [&](int stage) {
    if constexpr (Cfg::kSparse) {
      if (!tile_masked) return;
      const int32_t* keys = ss.keys[stage];
#pragma unroll
      for (int i = 0; i < size(tSrS); i += 2) {
        const int r = (i / 2) % 2;
        const int2 kk = *reinterpret_cast<const int2*>(keys + get<1>(tScS(i)));
        if (kk.x >= row_hi[r]) tSrS(i) = -INFINITY;
        if (kk.y >= row_hi[r]) tSrS(i + 1) = -INFINITY;
      }
    }
  };
  // S (in tSrS) -> probabilities of visit v from stage `stage`; frees the K stage. With
  // `lazy` (true_type) and kLazyMax, unmasked visits take softmax_lazy, which reads the K stage
  // on its rare path, so the stage is released after it. Returns false when O certainly needs
  // no rescale.
  auto scores_to_probs = [&](const auto& v, int stage, float(&corr)[2], auto lazy) -> bool {
    if constexpr (Cfg::kSparse) {
      sparse_mask(stage);  // reads the stage's keys: before the stage is released
      release(&ss.k_empty[stage]);
      softmax(cute::false_type{}, v, corr);
      return true;
    } else {
      constexpr bool kLazy = decltype(lazy)::value && Cfg::kLazyMax;
      if constexpr (!kLazy) release(&ss.k_empty[stage]);
      bool maybe = true;
      if (needs_mask(v)) {
        softmax(cute::true_type{}, v, corr);
      } else if constexpr (kLazy) {
        maybe = softmax_lazy(v, stage, corr);
      } else {
        softmax(cute::false_type{}, v, corr);
      }
      if constexpr (kLazy) release(&ss.k_empty[stage]);
      return maybe;
    }
  };

  // The visits of this warpgroup: all of them, or (sparse) every second one starting at cwg.
  // One online softmax (row_max, row_sum, tOrO) runs over all visits of the warpgroup.
  constexpr int kStep = Cfg::kSparse ? 2 : 1;
  const int first_visit = Cfg::kSparse ? cwg : 0;
  const int my_visits = Cfg::kSparse ? (total_visits - cwg + 1) / 2 : total_visits;
  if (my_visits > 0) {
    if (pingpong && cwg == 1) NamedBarrierArrive(kBarPingpongFirst + 0, 256);
    const int split = Cfg::kDca ? p.chunk_len : 0;  // compile-time 0 for the dense kernel
    VisitWalk<Cfg> walk(tiles.begin + tiles.count - 1, split);
    Visit prev;
    if constexpr (Cfg::kSparse) {
      ClusterBarrier::wait(&ss.q_full, 0);
      prev = SparseVisit{first_visit, plan.part_of(first_visit)};
      prepare_q_part(prev.part);
    } else if constexpr (Cfg::kDcaSegments) {
      prev = walk.Current();
      // The sin/cos of the first rotation do not depend on Q: compute them while it loads.
      int want[2];
      wanted_positions(prev, want);
      QRotation<Cfg> rot;
      ComputeQRotation<Cfg>(rot, want, p.inv_freq, lane);
      ClusterBarrier::wait(&ss.q_full, 0);
      load_q();
      ApplyQRotation<Cfg>(tSrQ, rot);
      dca_cur[0] = want[0];
      dca_cur[1] = want[1];
    } else {
      ClusterBarrier::wait(&ss.q_full, 0);
      if constexpr (!Cfg::kDca) load_q();
      prev = walk.Current();
      prepare_q(prev);
    }

    // First visit: S only.
    {
      const int i = first_visit;
      const int stage = i % S;
      ClusterBarrier::wait(&ss.k_full[stage], (i / S) & 1);
      sparse_fence();
      sparse_flags(stage);
      pingpong_wait();
      IssueGemm(mma_qk, tSrQ, tSrK(_, _, _, stage), tSrS, true);
      pingpong_pass();
      warpgroup_wait<0>();
      warpgroup_fence_operand(tSrS);
      float corr[2];
      scores_to_probs(prev, stage, corr, cute::false_type{});  // O is still zero
      convert_p();
    }

    // The running max of most rows stops moving after the first tiles: skip the rescale
    // when no row of the warp changed (corr is exactly 1 then).
    auto rescale_o = [&](const float (&corr)[2], bool maybe) {
      const bool rescale = corr[0] != 1.f || corr[1] != 1.f;
      if (!Cfg::kSoftmaxIlp || (maybe && __any_sync(0xffffffff, rescale))) {
#pragma unroll
        for (int j = 0; j < size(tOrO); ++j) tOrO(j) *= corr[(j / 2) % 2];
      }
    };

    // Visit i after visit ip of this warpgroup (Q already right for i): S of visit i with the
    // PV of visit ip. (Sparse: the proxy fence after the V wait covers the K stage too.)
    auto step = [&](int i, int ip, const Visit& cur) {
      const int stage = i % S;
      const int pstage = ip % S;
      ClusterBarrier::wait(&ss.k_full[stage], (i / S) & 1);
      sparse_flags(stage);
      wait_v_and_fix(ip, prev);
      pingpong_wait();
      IssueGemm(mma_qk, tSrQ, tSrK(_, _, _, stage), tSrS, true);
      warpgroup_fence_operand(tOrP);
      IssueGemm(mma_pv, tOrP, tOrV(_, _, _, pstage), tOrO, false);
      pingpong_pass();
      warpgroup_wait<1>();
      warpgroup_fence_operand(tSrS);
      float corr[2];
      const bool maybe_rescale = scores_to_probs(cur, stage, corr, cute::true_type{});
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
      warpgroup_fence_operand(tOrP);
      release(&ss.v_empty[pstage]);
      rescale_o(corr, maybe_rescale);
      convert_p();
      prev = cur;
    };

    if constexpr (Cfg::kSparse) {
      // Every second visit (the other warpgroup takes the rest), part after part: the rotation
      // is looked at once per part, not per visit.
      int i = first_visit + kStep;
#pragma unroll 1
      for (int part = 0; part < 3; ++part) {
        const int part_end =
            part == 0 ? plan.seg_end[1] : (part == 1 ? plan.seg_end[3] : plan.seg_end[5]);
        if (i >= part_end) continue;
        prepare_q_part(part);
        for (; i < part_end; i += kStep) step(i, i - kStep, SparseVisit{i, part});
      }
    } else if constexpr (Cfg::kDcaSegments) {
      // Outer loop: one pass per DCA chunk of keys (the only place where a row's rotation can
      // change); inner loop: the visits inside it, with no rotation code.
      int i = 1;
      bool changed = i < total_visits && walk.Advance();
      while (i < total_visits) {
        if (changed) prepare_q(walk.Current());
        do {
          step(i, i - 1, walk.Current());
          ++i;
          changed = i < total_visits && walk.Advance();
        } while (i < total_visits && !changed);
      }
    } else {
      // Dense and plain DCA: step() written out (the library kernels keep their generated code).
      for (int i = 1; i < total_visits; ++i) {
        walk.Advance();
        const KeyVisit cur = walk.Current();
        const int stage = i % S;
        const int pstage = (i - 1) % S;
        prepare_q(cur);
        ClusterBarrier::wait(&ss.k_full[stage], (i / S) & 1);
        wait_v_and_fix(i - 1, prev);
        pingpong_wait();
        IssueGemm(mma_qk, tSrQ, tSrK(_, _, _, stage), tSrS, true);
        warpgroup_fence_operand(tOrP);
        IssueGemm(mma_pv, tOrP, tOrV(_, _, _, pstage), tOrO, false);
        pingpong_pass();
        warpgroup_wait<1>();
        warpgroup_fence_operand(tSrS);
        float corr[2];
        const bool maybe_rescale = scores_to_probs(cur, stage, corr, cute::true_type{});
        warpgroup_wait<0>();
        warpgroup_fence_operand(tOrO);
        warpgroup_fence_operand(tOrP);
        release(&ss.v_empty[pstage]);
        rescale_o(corr, maybe_rescale);
        convert_p();
        prev = cur;
      }
    }

    // Last PV.
    {
      const int i = first_visit + kStep * (my_visits - 1);
      const int stage = i % S;
      wait_v_and_fix(i, prev);
      pingpong_wait();
      warpgroup_fence_operand(tOrP);
      IssueGemm(mma_pv, tOrP, tOrV(_, _, _, stage), tOrO, false);
      pingpong_pass();
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
      release(&ss.v_empty[stage]);
    }
    // Balance the named-barrier arrivals: warpgroup 1 arrived once more (at the start) when
    // both took as many turns; with one visit more (sparse, odd count) warpgroup 0 did.
    if (pingpong) {
      if (!Cfg::kSparse || total_visits % 2 == 0) {
        if (cwg == 0) NamedBarrierSync(kBarPingpongFirst + 0, 256);
      } else {
        if (cwg == 1) NamedBarrierSync(kBarPingpongFirst + 1, 256);
      }
    }
  }

  // Sparse: warpgroup 1 hands its softmax state (per thread: O fragment, row max, partial row
  // sums) to warpgroup 0 through the K buffers (free once both have consumed all tiles), which
  // merges it into its own: M = max(m0, m1), O = O0 e^(m0 - M) + O1 e^(m1 - M), same for sums.
  if constexpr (Cfg::kSparse) {
    constexpr int kO = Cfg::kWgRows * Cfg::kHeadDim / 128;  // accumulator values per thread
    static_assert(kO * 128 + 4 * 128 <= cute::cosize_v<typename Cfg::SmemLayoutK> / 2,
                  "merge buffer fits in the K stages");
    float* buf = reinterpret_cast<float*>(ss.k.data());
    NamedBarrierSync(kBarMerge, 256);
    if (cwg == 1) {
#pragma unroll
      for (int j = 0; j < kO; ++j) buf[j * 128 + tid] = tOrO(j);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        buf[(kO + r) * 128 + tid] = row_max[r];
        buf[(kO + 2 + r) * 128 + tid] = row_sum[r];
      }
      NamedBarrierArrive(kBarMerge, 256);
      return;
    }
    NamedBarrierSync(kBarMerge, 256);
    float c0[2], c1[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m1 = buf[(kO + r) * 128 + tid];
      const float s1 = buf[(kO + 2 + r) * 128 + tid];
      const float mx = fmaxf(row_max[r], m1);
      c0[r] = row_max[r] == -INFINITY ? 0.f : Exp2((row_max[r] - mx) * sl2);
      c1[r] = m1 == -INFINITY ? 0.f : Exp2((m1 - mx) * sl2);
      row_sum[r] = row_sum[r] * c0[r] + s1 * c1[r];
      row_max[r] = mx;
    }
#pragma unroll
    for (int j = 0; j < kO; ++j) {
      tOrO(j) = tOrO(j) * c0[(j / 2) % 2] + buf[j * 128 + tid] * c1[(j / 2) % 2];
    }
  }

  if constexpr (Cfg::kCluster > 1) {
    // Done with the peer's barriers (the kernel waits for the whole cluster before it exits).
    // Arriving before the output stores keeps them out of the arrival's release.
    cute::cluster_arrive();
  }

  // Epilogue: normalize, write O (bf16) and LSE (natural log).
  float inv[2], lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float s = row_sum[r];
    s += __shfl_xor_sync(0xffffffff, s, 1);
    s += __shfl_xor_sync(0xffffffff, s, 2);
    const bool empty = !(s > 0.f);
    inv[r] = empty ? 0.f : 1.f / s;
    // kLazyMax: the running max is the offset of the fast path (-lazy_nsm / scale_log2).
    const float m = Cfg::kLazyMax ? -lazy_nsm[r] * 0.6931471805599453f : row_max[r] * p.scale;
    lse[r] = empty ? -INFINITY : m + logf(s);
  }
  const int64_t row_stride = int64_t(p.q_heads) * Cfg::kHeadDim;
  __nv_bfloat16* out = p.out + int64_t(q_head) * Cfg::kHeadDim;
#pragma unroll
  for (int i = 0; i < size(tOrO); i += 2) {
    const int r = (i / 2) % 2;
    const int q_row = wg_row0 + get<0>(tOcO(i));
    if (writes && q_row < n) {
      const int col = get<1>(tOcO(i));
      *reinterpret_cast<__nv_bfloat162*>(out + q_row * row_stride + col) =
          __floats2bfloat162_rn(tOrO(i) * inv[r], tOrO(i + 1) * inv[r]);
    }
  }
  if (writes && p.lse != nullptr && tid % 4 == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q_row = wg_row0 + get<0>(tScS(2 * r));
      if (q_row < n) p.lse[int64_t(q_head) * p.lse_stride + q_row] = lse[r];
    }
  }
}

}  // namespace detail

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    PagedPrefillAttentionKernel(const __grid_constant__ PrefillParams p) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using cutlass::arch::ClusterBarrier;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Cfg::SharedStorage*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));

  const int warp = __shfl_sync(0xffffffff, int(threadIdx.x) / 32, 0);
  const int lane = threadIdx.x % 32;
  const int wg = warp / 4;

  // Longest rows first (per KV head): with a causal mask the last query tiles see the most keys.
  int m_tile, q_head;
  int cta_rank = 0;
  bool writes = true;
  KeyTileRange tiles;
  if constexpr (Cfg::kCluster > 1) {
    // Two work items of one KV head per cluster (prefill_work_order.h).
    cta_rank = int(cute::block_rank_in_cluster());
    const PairedWorkItem w = PairedWorkItemOf(int(blockIdx.x), p.num_m_tiles, p.group);
    m_tile = w.m_tile;
    q_head = w.q_head;
    writes = w.writes;
    // Both CTAs walk the union of their key tiles (the same first tile when not empty).
    const KeyTileRange mine =
        KeyTilesForQueryTile<Cfg>(m_tile, p.num_queries, p.key_begin, p.key_end);
    const KeyTileRange theirs =
        KeyTilesForQueryTile<Cfg>(w.partner_m_tile, p.num_queries, p.key_begin, p.key_end);
    tiles = mine.count >= theirs.count ? mine : theirs;
  } else if constexpr (Cfg::kKvHeadMajor) {
    const int per_kv_head = p.num_m_tiles * p.group;
    const int rest = int(blockIdx.x) % per_kv_head;
    m_tile = p.num_m_tiles - 1 - rest / p.group;
    q_head = int(blockIdx.x) / per_kv_head * p.group + rest % p.group;
  } else {
    m_tile = p.num_m_tiles - 1 - int(blockIdx.x) / p.q_heads;
    q_head = int(blockIdx.x) % p.q_heads;
  }
  const int kv_head = q_head / p.group;
  if constexpr (Cfg::kCluster == 1) {
    tiles = KeyTilesForQueryTile<Cfg>(m_tile, p.num_queries, p.key_begin, p.key_end);
  }

  if (threadIdx.x == 0) {
    ClusterBarrier::init(&ss.q_full, 1);
#pragma unroll
    for (int s = 0; s < Cfg::kStages; ++s) {
      ClusterBarrier::init(&ss.k_full[s], 1);
      ClusterBarrier::init(&ss.v_full[s], 1);
      // One arrival per consumer warp of every CTA of the cluster.
      ClusterBarrier::init(&ss.k_empty[s], 8 * Cfg::kCluster);
      ClusterBarrier::init(&ss.v_empty[s], 8 * Cfg::kCluster);
    }
    cutlass::arch::fence_barrier_init();
  }
  if constexpr (Cfg::kCluster > 1) {
    // The peer's barriers must be initialized before any multicast or remote arrival.
    cute::cluster_arrive_relaxed();
    cute::cluster_wait();
  } else {
    __syncthreads();
  }

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    if (warp == 0 && lane == 0 && tiles.count > 0) {
      detail::Producer<Cfg>(p, ss, m_tile, q_head, kv_head, tiles, cta_rank);
    }
    if constexpr (Cfg::kCluster > 1) {
      __syncwarp();
      cute::cluster_arrive();
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Cfg::kConsumerRegs>();
    detail::Consumer<Cfg>(p, ss, m_tile, q_head, tiles, wg - 1, writes);  // arrives too
  }
  if constexpr (Cfg::kCluster > 1) {
    // No CTA may exit while its peer can still arrive on its barriers: every thread of the
    // cluster arrived after its last remote arrival (release), and waits here (acquire).
    cute::cluster_wait();
  }
#endif
}

// ---- host side ----------------------------------------------------------------------------

// dca: the DCA constants, for configurations with kDca only (q is then un-rotated).
template <class Cfg>
cudaError_t LaunchPagedPrefillAttention(const PagedPrefillAttentionArgs& a, cudaStream_t stream,
                                        const DcaParams* dca = nullptr) {
  if (a.num_queries == 0) return cudaSuccess;
  PrefillParams p{};
  const uint64_t d = Cfg::kHeadDim;
  {
    const uint64_t dims[3] = {d, uint64_t(a.num_queries), uint64_t(a.q_heads)};
    const uint64_t strides[2] = {uint64_t(a.q_heads) * d * 2, d * 2};
    const uint32_t box[3] = {Cfg::kBoxCols, Cfg::kBoxRows, 1};
    cudaError_t e = EncodeBf16TensorMap(&p.q_map, a.q, 3, dims, strides, box);
    if (e != cudaSuccess) return e;
  }
  {
    const uint64_t dims[4] = {d, uint64_t(a.block_size), uint64_t(a.kv_heads),
                              uint64_t(a.num_blocks)};
    const uint64_t strides[3] = {d * 2, uint64_t(a.block_size) * d * 2,
                                 uint64_t(a.kv_heads) * a.block_size * d * 2};
    const uint32_t box[4] = {Cfg::kBoxCols, Cfg::kBoxRows, 1, 1};
    cudaError_t e = EncodeBf16TensorMap(&p.k_map, a.k_cache, 4, dims, strides, box);
    if (e != cudaSuccess) return e;
    e = EncodeBf16TensorMap(&p.v_map, a.v_cache, 4, dims, strides, box);
    if (e != cudaSuccess) return e;
  }
  p.block_table = a.block_table;
  p.out = a.out;
  p.lse = a.lse;
  p.num_queries = int(a.num_queries);
  p.q_heads = int(a.q_heads);
  p.group = int(a.q_heads / a.kv_heads);
  p.block_size = int(a.block_size);
  p.key_begin = int(a.key_begin);
  p.key_end = int(a.key_end);
  p.num_m_tiles = int((a.num_queries + Cfg::kBlockM - 1) / Cfg::kBlockM);
  p.scale = a.scale;
  p.scale_log2 = a.scale * 1.4426950408889634f;
  p.lse_stride = p.num_queries;
  if constexpr (Cfg::kDca) {
    if (dca == nullptr) return cudaErrorInvalidValue;
    p.chunk_len = int(dca->chunk_len);
    p.chunk_size = int(dca->chunk_size);
    RopeInvFreq(Cfg::kHeadDim, dca->rope_theta, p.inv_freq);
  }

  auto kernel = &PagedPrefillAttentionKernel<Cfg>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       Cfg::kSmemBytes);
  if (e != cudaSuccess) return e;
  if constexpr (Cfg::kCluster > 1) {
    const long long grid =
        PairedGridSize(p.num_m_tiles, p.group, int(a.q_heads / p.group));
    if (grid > 2147483647) return cudaErrorInvalidValue;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(unsigned(grid));
    config.blockDim = dim3(Cfg::kThreads);
    config.dynamicSmemBytes = Cfg::kSmemBytes;
    config.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = Cfg::kCluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    config.attrs = attr;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, kernel, p);
  } else {
    const int64_t grid = int64_t(p.num_m_tiles) * p.q_heads;
    kernel<<<dim3(unsigned(grid)), dim3(Cfg::kThreads), Cfg::kSmemBytes, stream>>>(p);
    return cudaGetLastError();
  }
}

}  // namespace mp::cuda::sm90

namespace mp::cuda::internal {

// Instantiated explicitly in paged_prefill_attention_hd{64,128}.cu.
template <int kHeadDim, bool kCausal>
cudaError_t LaunchPagedPrefillSm90(const PagedPrefillAttentionArgs& args, cudaStream_t stream) {
  using Cfg = sm90::PrefillConfig<kHeadDim, kCausal, 3, true, true, true, true, /*dca=*/false,
                                  /*dca_segments=*/false, /*cluster=*/1, /*sparse=*/false,
                                  /*lazy_max=*/true>;
  return sm90::LaunchPagedPrefillAttention<Cfg>(args, stream);
}

// Instantiated explicitly in paged_prefill_dca_attention_hd{64,128}.cu.
template <int kHeadDim>
cudaError_t LaunchPagedPrefillDcaSm90(const PagedPrefillAttentionArgs& args, const DcaParams& dca,
                                      cudaStream_t stream) {
  using Cfg = sm90::PrefillConfig<kHeadDim, /*causal=*/true, 3, true, true, true, true,
                                  /*dca=*/true, /*dca_segments=*/true, /*cluster=*/1,
                                  /*sparse=*/false, /*lazy_max=*/true>;
  return sm90::LaunchPagedPrefillAttention<Cfg>(args, stream, &dca);
}

}  // namespace mp::cuda::internal
