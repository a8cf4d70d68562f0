// The vertical-slash index builder kernel; see vertical_slash_index.h. The per-row-block walk is
// the CPU reference's (kernels/cpu/vertical_slash_index.cc) line by line.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/vertical_slash_index.h"

namespace mp::cuda {
namespace {

constexpr int kBlock = 64;
constexpr int kThreads = 128;  // row blocks per CTA
constexpr int kStage = 2048;   // list entries staged in shared memory at a time

struct IndexParams {
  VerticalSlashListsDev lists;
  VerticalSlashIndexDev index;
  int q_heads, q_len, kv_len, row_blocks;
  bool causal;
};

__global__ void __launch_bounds__(kThreads)
    BuildIndexKernel(const __grid_constant__ IndexParams p) {
  __shared__ int32_t staged[kStage];
  const int h = blockIdx.y;
  const int m = blockIdx.x * kThreads + threadIdx.x;
  const bool active = m < p.row_blocks;
  const int64_t rb = int64_t(h) * p.row_blocks + m;
  int32_t* blocks = p.index.block_offset + rb * p.index.max_blocks;
  int32_t* columns = p.index.column_index + rb * p.index.max_columns;
  const int64_t kv_len = p.kv_len;
  const int64_t base = p.causal ? kv_len - p.q_len : kv_len;
  const int64_t end_m = min(int64_t(m + 1) * kBlock, int64_t(p.q_len));
  const int64_t limit = p.causal ? min(kv_len, base + end_m) : kv_len;
  const int64_t max_blocks = p.index.max_blocks;

  // Slashes -> merged ranges of whole 64-key blocks.
  int64_t n_blocks = 0;
  bool open = false;
  int64_t range_start = 0, range_end = 0;
  auto close = [&]() {
    for (int64_t r = range_start; r < range_end && n_blocks < max_blocks; r += kBlock) {
      blocks[n_blocks++] = int32_t(r);
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
    for (int i = 0; i < cnt; ++i) {
      const int64_t d = staged[i];
      const int64_t hi = min(base + end_m - d, limit);
      const int64_t lo = max(base + end_m - d - kBlock, int64_t(0));
      if (lo >= hi) continue;
      if (open && lo <= range_end) {
        if (hi > range_end) range_end += kBlock;
      } else {
        if (open) close();
        open = true;
        range_start = lo;
        range_end = lo + kBlock;
      }
    }
  }
  if (active) {
    if (open) close();
    p.index.block_count[rb] = int32_t(n_blocks);
  }

  // Verticals not inside a block and visible to some row of the block.
  int64_t n_columns = 0;
  int64_t b = 0;
  int32_t last = 0;
  bool done = !active;
  const int n_vertical = p.lists.vertical_count[h];
  const int32_t* vertical = p.lists.vertical + int64_t(h) * p.lists.vertical_capacity;
  for (int v0 = 0; v0 < n_vertical; v0 += kStage) {
    const int cnt = min(kStage, n_vertical - v0);
    __syncthreads();
    for (int i = threadIdx.x; i < cnt; i += kThreads) staged[i] = vertical[v0 + i];
    __syncthreads();
    for (int i = 0; i < cnt && !done; ++i) {
      if (n_columns >= p.index.max_columns) {
        done = true;
        break;
      }
      const int32_t v = staged[i];
      if (v < 0) continue;
      if (v >= limit) {  // ascending: the rest are not visible either
        done = true;
        break;
      }
      while (b < n_blocks && int64_t(blocks[b]) + kBlock <= v) ++b;
      if (b < n_blocks && blocks[b] <= v) continue;  // covered by block b
      if (n_columns > 0 && last == v) continue;      // duplicate input
      columns[n_columns++] = v;
      last = v;
    }
  }
  if (active) p.index.column_count[rb] = int32_t(n_columns);
}

}  // namespace

cudaError_t BuildVerticalSlashIndex(const VerticalSlashIndexArgs& a, cudaStream_t stream) {
  constexpr int64_t kInt32Max = 2147483647;
  if (a.q_heads < 0 || a.q_len < 0 || a.kv_len < 0 || a.q_len > kInt32Max ||
      a.kv_len > kInt32Max - 2 * kBlock || a.q_heads > 65535) {
    return cudaErrorInvalidValue;
  }
  const int64_t row_blocks = (a.q_len + kBlock - 1) / kBlock;
  if (a.q_heads == 0 || row_blocks == 0) return cudaSuccess;
  const VerticalSlashListsDev& l = a.lists;
  const VerticalSlashIndexDev& x = a.index;
  if (l.vertical == nullptr || l.vertical_count == nullptr || l.slash == nullptr ||
      l.slash_count == nullptr || x.block_count == nullptr || x.block_offset == nullptr ||
      x.column_count == nullptr || x.column_index == nullptr || x.max_blocks < 0 ||
      x.max_columns < 0) {
    return cudaErrorInvalidValue;
  }
  IndexParams p{};
  p.lists = l;
  p.index = x;
  p.q_heads = int(a.q_heads);
  p.q_len = int(a.q_len);
  p.kv_len = int(a.kv_len);
  p.row_blocks = int(row_blocks);
  p.causal = a.causal;
  const dim3 grid(unsigned((row_blocks + kThreads - 1) / kThreads), unsigned(a.q_heads));
  BuildIndexKernel<<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace mp::cuda
