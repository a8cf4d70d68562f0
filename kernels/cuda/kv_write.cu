#include "kernels/cuda/kv_write.h"

#include "kernels/cuda/launch_util.cuh"

namespace mp::cuda {
namespace {

using internal::Aligned16;
using internal::GlobalThread;
using internal::GridFor;
using internal::GridStride;
using internal::kThreads;
using internal::kVec;

// Units of kVec elements (vector) or single elements of one [kv_heads, head_dim] row.
template <bool kVector>
__global__ void WritePagedKvKernel(PagedKvWriteArgs a) {
  const int64_t width = kVector ? kVec : 1;
  const int64_t units_per_head = a.head_dim / width;
  const int64_t units = a.n * a.kv_heads * units_per_head;
  for (int64_t u = GlobalThread(); u < units; u += GridStride()) {
    const int64_t c = (u % units_per_head) * width;
    const int64_t h = (u / units_per_head) % a.kv_heads;
    const int64_t t = u / (units_per_head * a.kv_heads);
    const int64_t pos = a.start + t;
    const int64_t block = a.block_table[pos / a.block_size];
    if (block < 0 || block >= a.num_blocks) continue;
    const int64_t dst = ((block * a.kv_heads + h) * a.block_size + pos % a.block_size) * a.head_dim + c;
    const int64_t src = (t * a.kv_heads + h) * a.head_dim + c;
    if constexpr (kVector) {
      *reinterpret_cast<uint4*>(a.k_cache + dst) = *reinterpret_cast<const uint4*>(a.k + src);
      *reinterpret_cast<uint4*>(a.v_cache + dst) = *reinterpret_cast<const uint4*>(a.v + src);
    } else {
      a.k_cache[dst] = a.k[src];
      a.v_cache[dst] = a.v[src];
    }
  }
}

}  // namespace

cudaError_t WritePagedKv(const PagedKvWriteArgs& a, cudaStream_t stream) {
  if (a.n <= 0 || a.kv_heads <= 0 || a.head_dim <= 0) return cudaSuccess;
  if (a.block_size <= 0 || a.start < 0) return cudaErrorInvalidValue;
  const bool vector = a.head_dim % kVec == 0 && Aligned16(a.k) && Aligned16(a.v) &&
                      Aligned16(a.k_cache) && Aligned16(a.v_cache);
  const int64_t elements = a.n * a.kv_heads * a.head_dim;
  if (vector) {
    WritePagedKvKernel<true><<<GridFor(elements / kVec), kThreads, 0, stream>>>(a);
  } else {
    WritePagedKvKernel<false><<<GridFor(elements), kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace mp::cuda
