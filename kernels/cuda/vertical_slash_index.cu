// The vertical-slash index builder kernel and the per-head layout; see vertical_slash_index.h.
// One thread per row block of one part; its slash walk is the CPU reference's
// (kernels/cpu/vertical_slash_index.cc) line by line, its vertical walk is merged into it (same
// result). The parts of a run's pieces go in one launch (blockIdx.z), so that their row blocks
// hide each other's latency.
#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/cuda/vertical_slash_index.h"

namespace mp::cuda {
namespace {

constexpr int kBlock = 64;
constexpr int kThreads = 64;   // row blocks per CTA
constexpr int kStage = 2048;   // list entries staged in shared memory at a time
constexpr int kUnroll = 4;     // slashes read per step (one 16-byte shared load)

struct PartParams {
  VerticalSlashListsDev lists;
  VerticalSlashIndexDev index;
  int q_len, kv_len, row_blocks;
  bool causal;
};
struct IndexParams {
  PartParams parts[kVerticalSlashIndexMaxParts];
};

__global__ void __launch_bounds__(kThreads)
    BuildIndexKernel(const __grid_constant__ IndexParams params) {
  __shared__ alignas(16) int32_t staged[kStage];
  const PartParams& p = params.parts[blockIdx.z];
  if (int64_t(blockIdx.x) * kThreads >= p.row_blocks) return;  // whole CTA past this part
  const int h = blockIdx.y;
  const int m = blockIdx.x * kThreads + threadIdx.x;
  const bool active = m < p.row_blocks;
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

  // Verticals (ascending), walked together with the merged slash ranges (ascending, disjoint):
  // when a range closes, the verticals below it are placed and those inside its emitted blocks
  // skipped. The same outcome, check for check, as the reference's second walk over the
  // finished block list, without reading that list back.
  const int n_vertical = p.lists.vertical_count[h];
  const int32_t* vertical = p.lists.vertical + int64_t(h) * p.lists.vertical_capacity;
  int vi = 0;  // next vertical not yet placed or skipped; its value (loaded ahead) in v_next
  int32_t v_next = n_vertical > 0 ? __ldg(vertical) : INT_MAX;
  bool columns_done = false;
  int64_t n_columns = 0;
  int32_t last = 0;
  // Takes the verticals below `bound`: placed as columns when `place`, else (covered) dropped.
  auto take_below = [&](int64_t bound, bool place) {
    while (!columns_done && vi < n_vertical) {
      const int32_t v = v_next;
      if (v >= bound) return;
      ++vi;
      v_next = vi < n_vertical ? __ldg(vertical + vi) : INT_MAX;
      if (n_columns >= max_columns) {
        columns_done = true;
        return;
      }
      if (v < 0) continue;
      if (v >= limit) {  // ascending: the rest are not visible either
        columns_done = true;
        return;
      }
      if (!place) continue;                      // covered by a block
      if (n_columns > 0 && last == v) continue;  // duplicate input
      columns[n_columns++] = v;
      last = v;
    }
  };

  // Slashes -> merged ranges of whole 64-key blocks.
  int64_t n_blocks = 0;
  bool open = false;
  int64_t range_start = 0, range_end = 0;
  auto close = [&]() {
    int64_t r = range_start;
    for (; r < range_end && n_blocks < max_blocks; r += kBlock) blocks[n_blocks++] = int32_t(r);
    take_below(range_start, /*place=*/true);
    take_below(r, /*place=*/false);  // inside the blocks emitted for this range
  };
  auto walk = [&](int64_t d) {
    const int64_t hi = min(top - d, limit);
    const int64_t lo = max(top - d - kBlock, int64_t(0));
    if (lo >= hi) return;
    if (open && lo <= range_end) {
      if (hi > range_end) range_end += kBlock;  // hi <= range_end + 64: one more block covers it
    } else {
      if (open) close();
      open = true;
      range_start = lo;
      range_end = lo + kBlock;
    }
  };
  const int n_slash = p.lists.slash_count[h];
  const int32_t* slash = p.lists.slash + int64_t(h) * p.lists.slash_capacity;
  for (int s0 = 0; s0 < n_slash; s0 += kStage) {
    const int cnt = min(kStage, n_slash - s0);
    __syncthreads();
    for (int i = threadIdx.x; i < cnt; i += kThreads) staged[i] = slash[s0 + i];
    __syncthreads();
    if (!active) continue;
    int i = 0;
    for (; i + kUnroll <= cnt; i += kUnroll) {
      const int4 d4 = *reinterpret_cast<const int4*>(staged + i);
      walk(d4.x);
      walk(d4.y);
      walk(d4.z);
      walk(d4.w);
    }
    for (; i < cnt; ++i) walk(staged[i]);
  }
  if (!active) return;
  if (open) close();
  take_below(INT64_MAX, /*place=*/true);
  p.index.block_count[rb] = int32_t(n_blocks);
  p.index.column_count[rb] = int32_t(n_columns);
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
  const dim3 grid(unsigned((max_row_blocks + kThreads - 1) / kThreads), unsigned(heads),
                  unsigned(launched));
  BuildIndexKernel<<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t BuildVerticalSlashIndex(const VerticalSlashIndexArgs& args, cudaStream_t stream) {
  return BuildVerticalSlashIndex(&args, 1, stream);
}

}  // namespace mp::cuda
