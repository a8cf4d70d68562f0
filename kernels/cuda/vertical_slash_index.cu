// The vertical-slash index builder kernel and the per-head layout; see vertical_slash_index.h.
//
// One warp per row block of one part, 32 slashes per step. The CPU reference
// (kernels/cpu/vertical_slash_index.cc) walks the slashes one by one; the walk's only carried
// state is the open range [start, start + 64 k). For slashes in decreasing d, lo and hi (the
// clipped interval) never decrease and hi <= lo + 64, so after slash i the open range ends at
// start + 64 ceil((hi_i - start) / 64), and slash i opens a new range iff lo_i lies past the
// end the range had after the slash before it. That end lies in [hi_prev, hi_prev + 63]: a gap
// lo_i - hi_prev <= 0 always extends, >= 64 always opens, and only a gap in between needs the
// range's start, i.e. the decisions of the lanes before it. Those are resolved lowest lane
// first, all lanes whose range start is already known at once. Every slash adds at most one
// block (its lane writes it; the lanes' prefix count gives its place).
//
// Verticals (ascending) are taken 32 at a time once the walk has passed them: every block
// emitted later starts at or after the end of the open range, so a vertical below that end is
// final against the blocks emitted so far, and only the blocks of the current step can hold it
// (had an earlier one, the end would have passed it a step earlier). Its covering block is found
// by a binary search over the lanes' last emitted block starts.
#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/cuda/vertical_slash_index.h"

namespace mp::cuda {
namespace {

constexpr int kBlock = 64;
constexpr int kWarps = 4;  // row blocks per CTA, one warp each
constexpr unsigned kAll = 0xffffffffu;

struct PartParams {
  VerticalSlashListsDev lists;
  VerticalSlashIndexDev index;
  int q_len, kv_len, row_blocks;
  bool causal;
};
struct IndexParams {
  PartParams parts[kVerticalSlashIndexMaxParts];
};

// The highest lane set in `mask`, -1 for none.
__device__ __forceinline__ int LastLane(unsigned mask) { return 31 - __clz(mask); }
__device__ __forceinline__ int32_t CeilBlocks(int32_t n) { return (n + kBlock - 1) / kBlock; }

__global__ void __launch_bounds__(kWarps * 32)
    BuildIndexKernel(const __grid_constant__ IndexParams params) {
  const PartParams& p = params.parts[blockIdx.z];
  const int lane = threadIdx.x % 32;
  const int m = blockIdx.x * kWarps + threadIdx.x / 32;
  if (m >= p.row_blocks) return;  // the whole warp
  const unsigned below = (1u << lane) - 1;  // lanes before this one
  const unsigned upto = below | (1u << lane);
  const int h = blockIdx.y;
  const int64_t rb = int64_t(h) * p.row_blocks + m;
  int64_t block_start = rb * p.index.max_blocks, column_start = rb * p.index.max_columns;
  int64_t max_blocks = p.index.max_blocks, max_columns = p.index.max_columns;
  if (p.index.heads != nullptr) {
    const VerticalSlashHeadSpan span = p.index.heads[h];
    max_blocks = span.max_blocks;
    max_columns = span.max_columns;
    block_start = span.block_base + int64_t(m) * max_blocks;
    column_start = span.column_base + int64_t(m) * max_columns;
  }
  int32_t* blocks = p.index.block_offset + block_start;
  int32_t* columns = p.index.column_index + column_start;
  const int64_t kv_len = p.kv_len;
  const int64_t base = p.causal ? kv_len - p.q_len : kv_len;
  const int64_t end_m = min(int64_t(m + 1) * kBlock, int64_t(p.q_len));
  const int64_t limit = p.causal ? min(kv_len, base + end_m) : kv_len;
  const int64_t top = base + end_m;  // slash d covers the keys [top - d - 64, top - d)

  // Verticals: taken in order, each final once below `bound`.
  const int n_vertical = p.lists.vertical_count[h];
  const int32_t* vertical = p.lists.vertical + int64_t(h) * p.lists.vertical_capacity;
  int vi = 0;                  // verticals taken so far
  int32_t prev_v = INT32_MIN;  // the last one taken (duplicates of it are dropped)
  int64_t n_columns = 0;
  bool columns_done = max_columns <= 0;
  // bb: per lane, the start of the last block emitted at or before it (INT32_MIN for none).
  auto take_verticals = [&](int64_t bound, int32_t bb) {
    while (!columns_done && vi < n_vertical) {
      const bool valid = vi + lane < n_vertical;
      const int32_t v = valid ? __ldg(vertical + vi + lane) : INT32_MAX;
      const bool take = valid && v < bound;
      const unsigned taken = __ballot_sync(kAll, take);
      if (taken == 0) return;
      int32_t before = __shfl_up_sync(kAll, v, 1);
      if (lane == 0) before = prev_v;
      const bool duplicate = (lane > 0 || vi > 0) && before == v;
      // The last lane whose bb <= v (bb never decreases over the lanes): its block is the
      // only one that may hold v.
      int32_t cover = __shfl_sync(kAll, bb, 0);
      const bool any_below = cover <= v;
      int at = 0;
      for (int step = 16; step > 0; step /= 2) {
        const int32_t b = __shfl_sync(kAll, bb, at + step);
        if (any_below && b <= v) {
          at += step;
          cover = b;
        }
      }
      const bool covered = any_below && int64_t(v) - cover < kBlock;
      const bool place = take && v >= 0 && v < limit && !duplicate && !covered;
      const unsigned placed = __ballot_sync(kAll, place);
      const int64_t slot = n_columns + __popc(placed & below);
      if (place && slot < max_columns) columns[slot] = v;
      n_columns = min(n_columns + __popc(placed), max_columns);
      // v >= limit: ascending, so the rest are not visible either.
      if (n_columns >= max_columns || __ballot_sync(kAll, take && v >= limit) != 0) {
        columns_done = true;
      }
      prev_v = __shfl_sync(kAll, v, LastLane(taken));
      vi += __popc(taken);
      if (taken != kAll) return;
    }
  };

  const int n_slash = p.lists.slash_count[h];
  const int32_t* slash = p.lists.slash + int64_t(h) * p.lists.slash_capacity;
  // The slashes d >= top lie before key 0 for the whole block: a 32-way search skips them.
  int first = 0;
  for (int last = n_slash; last - first > 32;) {
    const int step = (last - first + 31) / 32;
    const int probe = first + lane * step;
    const unsigned before_key0 =
        __ballot_sync(kAll, probe < last && int64_t(__ldg(slash + probe)) >= top);
    if (before_key0 == 0) break;
    const int n = __popc(before_key0);  // the probes before key 0 are the first n
    last = min(last, first + n * step);
    first += (n - 1) * step + 1;
  }

  // The walk's state: the open range [start, start + 64 k), the hi of its last slash.
  bool open = false;
  int32_t start = 0, k = 0, last_hi = 0;
  int64_t n_blocks = 0;
  bool blocks_done = max_blocks <= 0;
  int32_t last_block = INT32_MIN;  // the last block emitted
  int32_t bb = INT32_MIN;
  int32_t d_next = first + lane < n_slash ? __ldg(slash + first + lane) : 0;
  for (int s0 = first; s0 < n_slash && !blocks_done; s0 += 32) {
    const bool valid = s0 + lane < n_slash;
    const int64_t t = top - int64_t(d_next);
    if (s0 + 32 + lane < n_slash) d_next = __ldg(slash + s0 + 32 + lane);
    const int64_t lo64 = max(t - kBlock, int64_t(0)), hi64 = min(t, limit);
    const bool vis = valid && lo64 < hi64;
    const int32_t lo = vis ? int32_t(lo64) : 0, hi = vis ? int32_t(hi64) : 0;
    const unsigned visible = __ballot_sync(kAll, vis);
    const bool past_end = __ballot_sync(kAll, valid && t - kBlock >= limit) != 0;
    if (visible != 0) {
      // The visible lanes are consecutive; a lane's predecessor is the lane before it or,
      // for the first, the last slash of the open range.
      const bool pred_here = lane > 0 && ((visible >> (lane - 1)) & 1u);
      int32_t prev_hi = __shfl_up_sync(kAll, hi, 1);
      if (!pred_here) prev_hi = last_hi;
      const bool has_pred = pred_here || open;
      const int32_t gap = lo - prev_hi;
      unsigned opens = __ballot_sync(kAll, vis && (!has_pred || gap >= kBlock));
      unsigned pending = __ballot_sync(kAll, vis && has_pred && gap > 0 && gap < kBlock);
      while (pending != 0) {
        const unsigned earlier = opens & below;
        const int src = earlier != 0 ? LastLane(earlier) : 0;
        const int32_t src_lo = __shfl_sync(kAll, lo, src);
        const int32_t range = earlier != 0 ? src_lo : start;
        const unsigned after_src = earlier != 0 ? below & ~((2u << src) - 1) : below;
        const bool ready = ((pending >> lane) & 1u) && (pending & after_src) == 0;
        const bool opens_here = ready && lo > range + kBlock * CeilBlocks(prev_hi - range);
        opens |= __ballot_sync(kAll, opens_here);
        pending &= ~__ballot_sync(kAll, ready);
      }
      const unsigned own = opens & upto;
      const int32_t own_lo = __shfl_sync(kAll, lo, own != 0 ? LastLane(own) : 0);
      const int32_t range = own != 0 ? own_lo : start;
      const int32_t k_here = vis ? CeilBlocks(hi - range) : 0;
      int32_t k_prev = __shfl_up_sync(kAll, k_here, 1);
      if (!pred_here) k_prev = k;
      const bool adds = vis && (((opens >> lane) & 1u) || k_here > k_prev);
      const int32_t block = range + kBlock * (k_here - 1);
      const unsigned added = __ballot_sync(kAll, adds);
      const int64_t slot = n_blocks + __popc(added & below);
      const bool emits = adds && slot < max_blocks;
      if (emits) blocks[slot] = block;
      const unsigned emitted = __ballot_sync(kAll, emits);
      n_blocks += __popc(emitted);
      blocks_done = n_blocks >= max_blocks;
      const unsigned upto_emitted = emitted & upto;
      const int32_t own_block = __shfl_sync(kAll, block, upto_emitted ? LastLane(upto_emitted) : 0);
      bb = upto_emitted != 0 ? own_block : last_block;
      last_block = __shfl_sync(kAll, bb, 31);
      const int lv = LastLane(visible);
      start = __shfl_sync(kAll, range, lv);
      k = __shfl_sync(kAll, k_here, lv);
      last_hi = __shfl_sync(kAll, hi, lv);
      open = true;
      take_verticals(blocks_done ? INT64_MAX : int64_t(start) + kBlock * int64_t(k), bb);
    }
    if (past_end) break;  // the rest lie after the part's keys
  }
  take_verticals(INT64_MAX, bb);
  if (lane == 0) {
    p.index.block_count[rb] = int32_t(n_blocks);
    p.index.column_count[rb] = int32_t(n_columns);
  }
}

struct SpanParams {
  int32_t k[kVerticalSlashMaxHeads][2];
  int64_t kv_len[kVerticalSlashNumParts];
  VerticalSlashHeadSpan* spans[kVerticalSlashNumParts];
  int64_t row_blocks;
  int q_heads, num_parts;
};

// Thread h: head h's span in every part (its base: the heads before it, summed).
__global__ void WriteSpansKernel(const __grid_constant__ SpanParams p) {
  const int h = threadIdx.x;
  if (h >= p.q_heads) return;
  for (int part = 0; part < p.num_parts; ++part) {
    const int64_t kv_len = p.kv_len[part];
    int64_t blocks = 0, columns = 0;
    for (int g = 0; g < h; ++g) {
      blocks += VerticalSlashHeadMaxBlocks(p.k[g][1], kv_len);
      columns += VerticalSlashHeadMaxColumns(p.k[g][0], kv_len);
    }
    VerticalSlashHeadSpan span;
    span.block_base = blocks * p.row_blocks;
    span.column_base = columns * p.row_blocks;
    span.max_blocks = int32_t(VerticalSlashHeadMaxBlocks(p.k[h][1], kv_len));
    span.max_columns = int32_t(VerticalSlashHeadMaxColumns(p.k[h][0], kv_len));
    p.spans[part][h] = span;
  }
}

}  // namespace

VerticalSlashSpanEntries VerticalSlashHeadSpanEntries(const int64_t* k, int64_t q_heads,
                                                      int64_t row_blocks, int64_t kv_len) {
  VerticalSlashSpanEntries n;
  for (int64_t h = 0; h < q_heads; ++h) {
    n.blocks += VerticalSlashHeadMaxBlocks(k[2 * h + 1], kv_len) * row_blocks;
    n.columns += VerticalSlashHeadMaxColumns(k[2 * h], kv_len) * row_blocks;
  }
  return n;
}

cudaError_t WriteVerticalSlashHeadSpans(const VerticalSlashHeadSpanArgs& a, cudaStream_t stream) {
  constexpr int64_t kInt32Max = 2147483647;
  if (a.k == nullptr || a.q_heads <= 0 || a.q_heads > kVerticalSlashMaxHeads ||
      a.row_blocks < 0 || a.num_parts < 0 || a.num_parts > kVerticalSlashNumParts) {
    return cudaErrorInvalidValue;
  }
  SpanParams p{};
  p.q_heads = int(a.q_heads);
  p.num_parts = a.num_parts;
  p.row_blocks = a.row_blocks;
  for (int64_t h = 0; h < a.q_heads; ++h) {
    for (int i = 0; i < 2; ++i) {
      if (a.k[2 * h + i] < 0 || a.k[2 * h + i] > kInt32Max) return cudaErrorInvalidValue;
      p.k[h][i] = int32_t(a.k[2 * h + i]);
    }
  }
  for (int i = 0; i < a.num_parts; ++i) {
    if (a.spans[i] == nullptr || a.kv_len[i] < 0 || a.kv_len[i] > kInt32Max) {
      return cudaErrorInvalidValue;
    }
    p.kv_len[i] = a.kv_len[i];
    p.spans[i] = a.spans[i];
  }
  if (a.num_parts == 0) return cudaSuccess;
  WriteSpansKernel<<<1, kVerticalSlashMaxHeads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t BuildVerticalSlashIndex(const VerticalSlashIndexArgs* parts, int num_parts,
                                    cudaStream_t stream) {
  constexpr int64_t kInt32Max = 2147483647;
  if (num_parts < 0 || num_parts > kVerticalSlashIndexMaxParts || (num_parts > 0 && !parts)) {
    return cudaErrorInvalidValue;
  }
  IndexParams p{};
  int launched = 0;
  int64_t max_row_blocks = 0, heads = 0;  // heads: the parts' common q_heads
  for (int i = 0; i < num_parts; ++i) {
    const VerticalSlashIndexArgs& a = parts[i];
    if (a.q_heads < 0 || a.q_len < 0 || a.kv_len < 0 || a.q_len > kInt32Max ||
        a.kv_len > kInt32Max - 2 * kBlock || a.q_heads > 65535) {
      return cudaErrorInvalidValue;
    }
    const int64_t row_blocks = (a.q_len + kBlock - 1) / kBlock;
    if (a.q_heads == 0 || row_blocks == 0) continue;
    const VerticalSlashListsDev& l = a.lists;
    const VerticalSlashIndexDev& x = a.index;
    if (l.vertical == nullptr || l.vertical_count == nullptr || l.slash == nullptr ||
        l.slash_count == nullptr || x.block_count == nullptr || x.block_offset == nullptr ||
        x.column_count == nullptr || x.column_index == nullptr ||
        (x.heads == nullptr && (x.max_blocks < 0 || x.max_columns < 0))) {
      return cudaErrorInvalidValue;
    }
    if (launched > 0 && a.q_heads != heads) return cudaErrorInvalidValue;  // one grid.y
    PartParams& q = p.parts[launched++];
    q.lists = l;
    q.index = x;
    q.q_len = int(a.q_len);
    q.kv_len = int(a.kv_len);
    q.row_blocks = int(row_blocks);
    q.causal = a.causal;
    max_row_blocks = std::max(max_row_blocks, row_blocks);
    heads = a.q_heads;
  }
  if (launched == 0) return cudaSuccess;
  const dim3 grid(unsigned((max_row_blocks + kWarps - 1) / kWarps), unsigned(heads),
                  unsigned(launched));
  BuildIndexKernel<<<grid, kWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t BuildVerticalSlashIndex(const VerticalSlashIndexArgs& args, cudaStream_t stream) {
  return BuildVerticalSlashIndex(&args, 1, stream);
}

}  // namespace mp::cuda
