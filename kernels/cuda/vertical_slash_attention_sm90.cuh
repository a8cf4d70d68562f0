// The sm_90a kernel behind mp::cuda::VerticalSlashAttention (header-only; include from .cu files
// compiled for sm_90a). See vertical_slash_attention.h for the contract.
//
// It is the prefill mainloop of paged_prefill_attention_sm90.cuh with kSparse: the consumers
// (S = Q K^T and O += P V with wgmma, online softmax, pingpong) are that header's; what is
// specific lives here:
//   * the CTA: one q head and one 64-row block m; its key tiles are the 6 segments of
//     SparseTilePlan (per part: blocks two at a time, then columns 128 at a time);
//   * the producer: warpgroup 0 (128 threads). Per tile, thread t looks up column t (its
//     sequence position from the index, its paged-cache row from the block table; the two
//     loads pipelined over the iterations before) and writes the position into the stage's
//     key list (INT32_MAX where there is none); each warp flags whether its columns need a
//     mask; then each warp gathers its 32 rows with cp.async, a whole 128-byte line per row and
//     instruction (zero fill where there is no key), into the 128B-swizzled K stage, and one
//     tile later the V stage. Completion: cp.async.mbarrier.arrive.noinc per thread on
//     the stage's full barrier (128 arrivals), so loads of all stages are in flight at once;
//     the consumers fence the async proxy after the wait, before wgmma reads the stage;
//   * the consumers take even (warpgroup 1) and odd (warpgroup 2) tiles, rotate Q per part
//     (intra / succ / inter position of each row), mask by the key list, and merge their states.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <climits>
#include <cstdint>

#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/mbarrier.cuh"
#include "kernels/cuda/paged_prefill_attention_sm90.cuh"
#include "kernels/cuda/vertical_slash_attention.h"
#include "kernels/cuda/vertical_slash_parts.h"

namespace mp::cuda::sm90 {

template <int kHeadDim>
using SparseConfig = PrefillConfig<kHeadDim, /*causal=*/true, /*stages=*/3, /*pingpong=*/true,
                                   /*kv_head_major=*/true, /*softmax_ilp=*/true,
                                   /*q_in_regs=*/true, /*dca=*/false, /*dca_segments=*/false,
                                   /*cluster=*/1, /*sparse=*/true>;

namespace detail {

__device__ __forceinline__ SparseTilePlan MakeSparseTilePlan(const PrefillParams& p, int q_head,
                                                             int m) {
  SparseTilePlan plan;
  const int64_t rb = int64_t(q_head) * p.sparse.row_blocks + m;
  int end = 0;
#pragma unroll
  for (int part = 0; part < 3; ++part) {
    const SparsePartParams& x = p.sparse.parts[part];
    // Counts clamped to the index's capacity, so that a corrupt index cannot send the walk
    // outside its lists (or give a segment a negative tile count).
    int64_t max_blocks = x.max_blocks, max_columns = x.max_columns;
    if (x.present && x.heads != nullptr) {
      max_blocks = __ldg(&x.heads[q_head].max_blocks);
      max_columns = __ldg(&x.heads[q_head].max_columns);
    }
    const int nb =
        x.present ? int(min(int64_t(max(__ldg(x.block_count + rb), 0)), max_blocks)) : 0;
    const int nc =
        x.present ? int(min(int64_t(max(__ldg(x.column_count + rb), 0)), max_columns)) : 0;
    plan.entries[2 * part] = nb;
    plan.entries[2 * part + 1] = nc;
    end += (nb + 1) / 2;
    plan.seg_end[2 * part] = end;
    end += (nc + 127) / 128;
    plan.seg_end[2 * part + 1] = end;
  }
  return plan;
}

template <class Cfg>
__device__ void SparseProducer(const PrefillParams& p, typename Cfg::SharedStorage& ss, int m,
                               int q_head, int kv_head, const SparseTilePlan& plan) {
  using cutlass::arch::ClusterTransactionBarrier;
  constexpr int S = Cfg::kStages;
  constexpr int kN = Cfg::kBlockN;
  // Copy layout: lane l of warp w resolves column 32w + l of every tile (its position and cache
  // row), and the warp copies its 32 columns 4 rows per instruction, 8 lanes per row, each lane
  // one 16-byte chunk of a 128-byte line (lane l: row 4k + l / 8 of the warp's rows in step k,
  // chunk l % 8 of each 128-byte half of the row): every request is a whole cache line. The
  // rows reach the copying lanes by warp shuffles.
  constexpr int kLanesPerRow = 8;
  constexpr int kRowsPerStep = 32 / kLanesPerRow;          // rows per copy instruction
  constexpr int kRowSteps = 32 / kRowsPerStep;             // instructions per 32 rows
  constexpr int kHalves = Cfg::kHeadDim * 2 / 128;         // 128-byte lines per row
  constexpr int kRowBytes = Cfg::kHeadDim * 2;
  constexpr int kPanelBytes = kN * 128;                    // 64 dims of every tile row
  static_assert(kN == 128 && Cfg::kThreads == 384, "one producer warp per 32 key columns");
  static_assert(kHalves >= 1 && kRowsPerStep * kLanesPerRow == 32, "copy layout");
  const int T = plan.total();
  if (T == 0) return;
  const int tid = threadIdx.x;  // 0..127
  const int warp = tid / 32, lane = tid % 32;
  const int step_row = lane / kLanesPerRow, chunk = lane % kLanesPerRow;

  if (tid == 0) {
    ClusterTransactionBarrier::arrive_and_expect_tx(&ss.q_full, Cfg::kQBytes);
#pragma unroll
    for (int pn = 0; pn < Cfg::kPanels; ++pn) {
      cute::SM90_TMA_LOAD_3D::copy(&p.q_map, &ss.q_full,
                                   static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_FIRST),
                                   ss.q.data() + pn * Cfg::kWgRows * Cfg::kBoxCols,
                                   pn * Cfg::kBoxCols, m * Cfg::kWgRows, q_head);
    }
  }

  // Keys of row block m's first row: positions <= first_limit are visible to every row.
  const int first_limit = p.key_end - p.num_queries + m * Cfg::kWgRows;
  const int64_t rb = int64_t(q_head) * p.sparse.row_blocks + m;
  const int bs = p.block_size;
  const int bs_shift = (bs & (bs - 1)) == 0 ? __ffs(bs) - 1 : -1;  // -1: not a power of two

  // Column 32 warp + lane of a tile takes two dependent loads, its local key from the index
  // list and its cache block from the block table; back to back they would stall the producer
  // for two load latencies per tile, so they are software-pipelined over three iterations: in
  // iteration i the list entry of tile i + 2 is loaded (Local), the block-table entry of tile
  // i + 1 (Lookup, from the Local loaded in iteration i - 1), and the cache row of tile i is
  // formed from the Lookup loaded in iteration i - 1. Nothing uses a loaded value in the
  // iteration that loads it (the block lanes' offset is added in Lookup).
  struct Local {
    int entry;   // list entry (-1: none)
    int offset;  // added to the entry: the lane's key within a listed block (0 for columns)
    int part;
  };
  struct Lookup {
    int key;  // sequence position (INT_MAX: none)
    int blk;  // its cache block as loaded from the block table
  };
  // The segment of the tiles being resolved (tiles are resolved in order, so it is looked up
  // only when a tile leaves it): its first tile, the tile after it, its entry count and its
  // list of this row block (block starts or columns).
  int seg_begin = 0, seg_stop = 0, seg_entries = 0, seg_part = 0;
  bool seg_blocks = true;
  const int32_t* list = nullptr;
  auto local_of = [&](int i) {
    if (i >= seg_stop) {  // uniform: at most once per segment
      // The last segment that begins at or before tile i (unrolled: no local arrays).
      int seg = 0, begin = 0, entries = plan.entries[0], stop = plan.seg_end[0];
#pragma unroll
      for (int s = 0; s < 5; ++s) {
        if (i >= plan.seg_end[s]) {
          seg = s + 1;
          begin = plan.seg_end[s];
          entries = plan.entries[s + 1];
          stop = plan.seg_end[s + 1];
        }
      }
      seg_begin = begin;
      seg_stop = stop;
      seg_entries = entries;
      seg_part = seg / 2;
      seg_blocks = seg % 2 == 0;
      const SparsePartParams& x = p.sparse.parts[seg_part];
      int64_t start = rb * (seg_blocks ? x.max_blocks : x.max_columns);
      if (x.heads != nullptr) {  // per-head layout
        const VerticalSlashHeadSpan* span = x.heads + q_head;
        start = seg_blocks ? __ldg(&span->block_base) + int64_t(m) * __ldg(&span->max_blocks)
                           : __ldg(&span->column_base) + int64_t(m) * __ldg(&span->max_columns);
      }
      list = (seg_blocks ? x.block_offset : x.column_index) + start;
    }
    const int t = i - seg_begin;  // tile within the segment
    Local l{-1, 0, seg_part};
    if (seg_blocks) {  // two 64-key blocks: warps 0-1 take the first, warps 2-3 the second
      const int b = 2 * t + warp / 2;
      if (b < seg_entries) {
        l.entry = __ldg(list + b);
        l.offset = (warp % 2) * 32 + lane;
      }
    } else {  // 128 columns
      const int col = kN * t + warp * 32 + lane;
      if (col < seg_entries) l.entry = __ldg(list + col);
    }
    return l;
  };
  auto lookup = [&](const Local& l) {
    Lookup u{INT_MAX, -1};
    const SparsePartParams& x = p.sparse.parts[l.part];
    // Unsigned: a negative entry (none, or a corrupt list) falls outside the part's keys.
    const uint32_t local = uint32_t(l.entry) + uint32_t(l.offset);
    if (l.entry >= 0 && local < uint32_t(x.kv_len)) {
      u.key = x.key_begin + int(local);
      const int page = bs_shift >= 0 ? u.key >> bs_shift : u.key / bs;
      u.blk = __ldg(p.block_table + page);
    }
    return u;
  };
  // Position (INT_MAX: none) and paged-cache row (-1: no key, or its cache block is missing).
  auto row_of = [&](const Lookup& u, int* key) {
    const bool ok = u.key != INT_MAX && u.blk >= 0 && u.blk < p.sparse.num_blocks;
    const int page = bs_shift >= 0 ? u.key >> bs_shift : u.key / bs;
    *key = ok ? u.key : INT_MAX;
    return ok ? (u.blk * p.sparse.kv_heads + kv_head) * bs + (u.key - page * bs) : -1;
  };

  // Shared addresses (cvta once): the storage, the barriers, the rings, and this lane's chunk
  // in the warp's first row of copy step 0 (even steps) and 1 (odd steps) with the 128B
  // swizzle, the layout TMA writes (16-byte chunk index XOR row % 8; row 4k + step_row has
  // row % 8 = step_row + 4 (k % 2)).
  static_assert(kRowsPerStep == 4, "the swizzle offsets below assume 4 rows per step");
  const uint32_t smem = static_cast<uint32_t>(__cvta_generic_to_shared(&ss));
  auto offset_of = [&](const void* member) {
    return uint32_t(reinterpret_cast<uintptr_t>(member) - reinterpret_cast<uintptr_t>(&ss));
  };
  const uint32_t k_full = smem + offset_of(&ss.k_full[0]);
  const uint32_t k_empty = smem + offset_of(&ss.k_empty[0]);
  const uint32_t v_full = smem + offset_of(&ss.v_full[0]);
  const uint32_t v_empty = smem + offset_of(&ss.v_empty[0]);
  const uint32_t key_list = smem + offset_of(&ss.keys[0][0]) + uint32_t(tid) * 4u;
  const uint32_t key_flag = smem + offset_of(&ss.key_flags[0][0]) + uint32_t(warp) * 4u;
  const uint32_t lane_dst = uint32_t(warp * 32 + step_row) * 128u;
  const uint32_t dst_even = lane_dst + uint32_t(chunk ^ step_row) * 16u;
  const uint32_t dst_odd = lane_dst + uint32_t(chunk ^ (step_row + 4)) * 16u;
  const uint32_t k_ring = smem + offset_of(ss.k.data());
  const uint32_t v_ring = smem + offset_of(ss.v.data());
  // The lanes' source bases as per-thread registers (left uniform, the compiler would add the
  // cache base to every copy's address in two more instructions).
  auto lane_base = [&](const void* cache) {
    uint64_t a = reinterpret_cast<uint64_t>(cache) + uint64_t(chunk * 16);
    asm volatile("mov.b64 %0, %0;" : "+l"(a));
    return reinterpret_cast<const char*>(a);
  };
  const char* k_src = lane_base(p.sparse.k_cache);
  const char* v_src = lane_base(p.sparse.v_cache);
  // Gathers the warp's 32 rows of one tile into the tile at `tile`: `row` is this lane's
  // column's cache row (any valid row where there is none), bit l of `present` whether lane
  // l's column has a key (zero fill otherwise). Per step: one shuffle, one address, the
  // predicate from the lane's shifted mask, one copy per 128-byte line.
  auto gather = [&](uint32_t tile, const char* lane_src, int row, unsigned present) {
    const unsigned lane_rows = present >> step_row;  // bit 4k: the row of step k
#pragma unroll
    for (int k = 0; k < kRowSteps; ++k) {
      const uint32_t src_row =
          uint32_t(__shfl_sync(0xffffffffu, row, kRowsPerStep * k + step_row));
      const char* src = lane_src + uint64_t(src_row) * uint64_t(kRowBytes);
      const bool zero = ((lane_rows >> (kRowsPerStep * k)) & 1u) == 0u;
      const uint32_t dst = tile + (k % 2 ? dst_odd : dst_even) + uint32_t(k * kRowsPerStep * 128);
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
        internal::CpAsync16OrZero(dst + uint32_t(h * kPanelBytes), src + h * 128, zero);
      }
    }
  };

  // Tile i: K(i) then V(i - 1), tile i in stage i % S of round i / S (counted, not divided).
  // Each thread's copies complete asynchronously onto the stage's full barrier
  // (cp.async.mbarrier.arrive.noinc: one of its 128 arrivals per phase), so the producer only
  // ever waits for free stages, never for its own loads.
  Local ahead = local_of(0);
  Lookup next = lookup(ahead);
  if (T > 1) ahead = local_of(1);
  int prev_row = 0;            // cache row of tile i - 1, whose V is gathered in iteration i
  unsigned prev_present = 0u;  // and which of its columns have a key
  int stage = 0, pstage = 0;   // stages of tiles i and i - 1
  uint32_t parity = 0, pparity = 0;  // their rounds' parities
  for (int i = 0; i <= T; ++i) {
    int cur_row = 0;
    unsigned cur_present = 0u;
    if (i < T) {
      if (i >= S) internal::MbarrierWait(k_empty + uint32_t(stage) * 8u, parity ^ 1u);
      int cur_key;
      const int row = row_of(next, &cur_key);
      asm volatile("st.shared.b32 [%0], %1;" ::"r"(key_list + uint32_t(stage * kN) * 4u),
                   "r"(cur_key)
                   : "memory");
      // A column without a key has position INT_MAX, above first_limit: masked.
      const unsigned masked = __ballot_sync(0xffffffffu, cur_key > first_limit);
      cur_present = __ballot_sync(0xffffffffu, row >= 0);
      cur_row = row >= 0 ? row : 0;
      if (lane == 0) {
        asm volatile("st.shared.b32 [%0], %1;" ::"r"(key_flag + uint32_t(stage) * 16u),
                     "r"(int(masked != 0u))
                     : "memory");
      }
      gather(k_ring + uint32_t(stage * Cfg::kTileBytes), k_src, cur_row, cur_present);
      internal::CpAsyncArriveNoinc(k_full + uint32_t(stage) * 8u);
      if (i + 1 < T) next = lookup(ahead);
      if (i + 2 < T) ahead = local_of(i + 2);
    }
    if (i >= 1) {
      if (i - 1 >= S) internal::MbarrierWait(v_empty + uint32_t(pstage) * 8u, pparity ^ 1u);
      gather(v_ring + uint32_t(pstage * Cfg::kTileBytes), v_src, prev_row, prev_present);
      internal::CpAsyncArriveNoinc(v_full + uint32_t(pstage) * 8u);
      if (++pstage == S) {
        pstage = 0;
        pparity ^= 1u;
      }
    }
    if (i < T) {
      prev_row = cur_row;
      prev_present = cur_present;
      if (++stage == S) {
        stage = 0;
        parity ^= 1u;
      }
    }
  }
  internal::CpAsyncWait<0>();
}

}  // namespace detail

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    VerticalSlashAttentionKernel(const __grid_constant__ PrefillParams p) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using cutlass::arch::ClusterBarrier;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Cfg::SharedStorage*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));

  const int warp = __shfl_sync(0xffffffff, int(threadIdx.x) / 32, 0);
  const int wg = warp / 4;

  // Per q head, its row blocks next to each other, the last first. A head's slash set is the
  // same for all its row blocks, and row block m + 1 reads for slash d the keys row block m reads
  // for slash d - 64, so the resident CTAs of one head find most of their keys in L2 (measured
  // at 1M keys with the 7B budgets: 71% L2 hits against 15% with the group's q heads next to
  // each other, 4x less DRAM traffic; docs/benchmarks.md).
  const int rbs = p.sparse.row_blocks;
  const int m = rbs - 1 - int(blockIdx.x) % rbs;
  const int q_head = int(blockIdx.x) / rbs;
  const int kv_head = q_head / p.group;
  const SparseTilePlan plan = detail::MakeSparseTilePlan(p, q_head, m);

  // Synchronization (T = plan.total() tiles; tile i in stage i % kStages, round i / kStages,
  // consumed by warpgroup i % 2 alone):
  //   * q_full: 1 arrival (+ the Q bytes by TMA), made only when T > 0; waited for only by
  //     the consumer warpgroups that have a tile (both when T >= 2, the first when T = 1);
  //   * k_full / v_full: 128 arrivals per round, one per producer thread, made by the hardware
  //     once that thread's copies of the tile completed (cp.async.mbarrier.arrive.noinc; no
  //     transaction bytes); the producer issues round r + 1 only after the consumers released
  //     round r, so no arrival can land in the wrong phase;
  //   * k_empty / v_empty: 4 arrivals per round, lane 0 of each warp of the one warpgroup that
  //     consumed the tile; the producer waits for round r - 1 before refilling in round r;
  //   * named barriers (Consumer): pingpong 1 + cwg (256 threads) balanced for either parity
  //     of T and off for T < 2, the merge barrier synced by both consumer warpgroups;
  //   * setmaxnreg: all 4 warps of each warpgroup, budgets within the CTA's pool (PrefillConfig).
  if (threadIdx.x == 0) {
    ClusterBarrier::init(&ss.q_full, 1);
#pragma unroll
    for (int s = 0; s < Cfg::kStages; ++s) {
      ClusterBarrier::init(&ss.k_full[s], 128);  // every producer thread
      ClusterBarrier::init(&ss.v_full[s], 128);
      ClusterBarrier::init(&ss.k_empty[s], 4);  // the 4 warps of the consuming warpgroup
      ClusterBarrier::init(&ss.v_empty[s], 4);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    detail::SparseProducer<Cfg>(p, ss, m, q_head, kv_head, plan);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Cfg::kConsumerRegs>();
    detail::Consumer<Cfg>(p, ss, m, q_head, KeyTileRange{0, plan.total()}, wg - 1,
                          /*writes=*/true, plan);
  }
#endif
}

template <class Cfg>
cudaError_t LaunchVerticalSlashAttention(const VerticalSlashAttentionArgs& a, cudaStream_t stream) {
  const int64_t n = a.piece_end - a.piece_begin;
  if (n <= 0) return cudaSuccess;
  PrefillParams p{};
  const uint64_t d = Cfg::kHeadDim;
  {
    const uint64_t dims[3] = {d, uint64_t(n), uint64_t(a.q_heads)};
    const uint64_t strides[2] = {uint64_t(a.q_heads) * d * 2, d * 2};
    const uint32_t box[3] = {Cfg::kBoxCols, Cfg::kBoxRows, 1};
    cudaError_t e = EncodeBf16TensorMap(&p.q_map, a.q, 3, dims, strides, box);
    if (e != cudaSuccess) return e;
  }
  p.block_table = a.kv.block_table;
  p.out = a.out;
  p.lse = a.lse;
  p.num_queries = int(n);
  p.q_heads = int(a.q_heads);
  p.group = int(a.q_heads / a.kv.kv_heads);
  p.block_size = int(a.kv.block_size);
  p.key_begin = 0;  // keys are sequence positions; row i sees positions <= b + i
  p.key_end = int(a.piece_end);
  p.num_m_tiles = int((n + Cfg::kWgRows - 1) / Cfg::kWgRows);
  p.scale = a.scale;
  p.scale_log2 = a.scale * 1.4426950408889634f;
  p.lse_stride = int(a.lse_stride > 0 ? a.lse_stride : n);
  // Without DCA the fold never happens: positions stay below 2^30.
  const bool dca = a.chunk_len > 0;
  p.chunk_len = dca ? int(a.chunk_len) : (1 << 30);
  p.chunk_size = dca ? int(a.chunk_size) : (1 << 30);
  RopeInvFreq(Cfg::kHeadDim, a.rope_theta, p.inv_freq);
  SparseParams& sp = p.sparse;
  sp.k_cache = a.kv.k;
  sp.v_cache = a.kv.v;
  sp.num_blocks = a.kv.num_blocks;
  sp.kv_heads = int(a.kv.kv_heads);
  sp.row_blocks = p.num_m_tiles;
  for (int part = 0; part < 3; ++part) {
    const VerticalSlashPartRange r =
        VerticalSlashPartKeys(a.piece_end, dca ? a.chunk_begin : 0, a.chunk_len, part);
    if (!r.present) continue;
    const VerticalSlashIndexDev& x = a.index[part];
    SparsePartParams& s = sp.parts[part];
    s.block_count = x.block_count;
    s.block_offset = x.block_offset;
    s.column_count = x.column_count;
    s.column_index = x.column_index;
    s.max_blocks = x.max_blocks;
    s.max_columns = x.max_columns;
    s.heads = x.heads;
    s.key_begin = int(r.key_begin);
    s.kv_len = int(r.num_keys());
    s.present = 1;
  }

  auto kernel = &VerticalSlashAttentionKernel<Cfg>;
  cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (e != cudaSuccess) return e;
  const int64_t grid = int64_t(p.num_m_tiles) * p.q_heads;
  kernel<<<dim3(unsigned(grid)), dim3(Cfg::kThreads), Cfg::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace mp::cuda::sm90

namespace mp::cuda::internal {

template <int kHeadDim>
cudaError_t LaunchVerticalSlashAttentionSm90(const VerticalSlashAttentionArgs& args,
                                             cudaStream_t stream) {
  return sm90::LaunchVerticalSlashAttention<sm90::SparseConfig<kHeadDim>>(args, stream);
}

}  // namespace mp::cuda::internal
