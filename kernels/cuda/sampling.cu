#include "kernels/cuda/sampling.h"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <cmath>

namespace mp::cuda {
namespace {

constexpr int kArgmaxThreads = 1024;

struct Best {
  float value;
  int32_t index;  // -1: nothing seen yet
};

// b beats a when it is larger, or equal with a lower index.
__device__ __forceinline__ Best Better(Best a, Best b) {
  if (a.index < 0) return b;
  if (b.index < 0) return a;
  if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
  return a;
}

// One block: each thread scans a strided slice, then a shared-memory tree picks the winner.
__global__ void ArgmaxKernel(const __nv_bfloat16* logits, int32_t vocab, int32_t* out) {
  __shared__ Best best[kArgmaxThreads];
  Best mine{0.0f, -1};
  for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    mine = Better(mine, Best{__bfloat162float(logits[i]), i});
  }
  best[threadIdx.x] = mine;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) best[threadIdx.x] = Better(best[threadIdx.x], best[threadIdx.x + stride]);
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = best[0].index < 0 ? 0 : best[0].index;
}

// weight[i] = exp((l[i] - l[argmax]) / T) in fp64, index[i] = i.
__global__ void WeightsKernel(const __nv_bfloat16* logits, int32_t vocab, const int32_t* argmax,
                              double inv_t, double* weight, int32_t* index) {
  const double max_logit = __bfloat162float(logits[*argmax]);
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < vocab; i += gridDim.x * blockDim.x) {
    weight[i] = exp((static_cast<double>(__bfloat162float(logits[i])) - max_logit) * inv_t);
    index[i] = i;
  }
}

// First r in [0, count) with cumulative[r] > u (or >= u when `inclusive`), else count.
__device__ int32_t FirstAbove(const double* cumulative, int32_t count, double u, bool inclusive) {
  int32_t lo = 0, hi = count;
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    const bool above = inclusive ? cumulative[mid] >= u : cumulative[mid] > u;
    if (above) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// cumulative: inclusive prefix sums of the weights in sorted order; order: their token ids.
__global__ void PickKernel(const double* cumulative, const int32_t* order, int32_t vocab,
                           float top_p, double uniform, int32_t* out) {
  const double total = cumulative[vocab - 1];
  int32_t count = vocab;
  if (top_p < 1.0f) {
    const double target = static_cast<double>(top_p) * total;
    count = min(FirstAbove(cumulative, vocab, target, /*inclusive=*/true) + 1, vocab);
  }
  const double kept = cumulative[count - 1];
  const double u = fmin(fmax(uniform, 0.0), 1.0) * kept;
  const int32_t r = min(FirstAbove(cumulative, count, u, /*inclusive=*/false), count - 1);
  *out = order[r];
}

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// CUB temporary storage for sorting and scanning `vocab` items.
size_t CubBytes(int32_t vocab) {
  size_t sort_bytes = 0, scan_bytes = 0;
  cub::DeviceRadixSort::SortPairsDescending(nullptr, sort_bytes, static_cast<const double*>(nullptr),
                                            static_cast<double*>(nullptr),
                                            static_cast<const int32_t*>(nullptr),
                                            static_cast<int32_t*>(nullptr), vocab);
  cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, static_cast<const double*>(nullptr),
                                static_cast<double*>(nullptr), vocab);
  return std::max(sort_bytes, scan_bytes);
}

}  // namespace

cudaError_t ArgmaxBf16(const __nv_bfloat16* logits, int64_t vocab, int32_t* out,
                       cudaStream_t stream) {
  if (vocab <= 0 || vocab > 0x7fffffff) return cudaErrorInvalidValue;
  ArgmaxKernel<<<1, kArgmaxThreads, 0, stream>>>(logits, static_cast<int32_t>(vocab), out);
  return cudaGetLastError();
}

size_t TopPSampleWorkspaceBytes(int64_t vocab) {
  if (vocab <= 0 || vocab > 0x7fffffff) return 0;
  const size_t v = static_cast<size_t>(vocab);
  // weights in/out, cumulative (fp64); ids in/out (i32); argmax; CUB scratch.
  return 3 * Align256(v * sizeof(double)) + 2 * Align256(v * sizeof(int32_t)) + 256 +
         Align256(CubBytes(static_cast<int32_t>(vocab)));
}

cudaError_t TopPSampleBf16(const __nv_bfloat16* logits, int64_t vocab, float temperature,
                           float top_p, double uniform, void* workspace, size_t workspace_bytes,
                           int32_t* out, cudaStream_t stream) {
  if (vocab <= 0 || vocab > 0x7fffffff || !(temperature > 0.0f) || workspace == nullptr ||
      workspace_bytes < TopPSampleWorkspaceBytes(vocab)) {
    return cudaErrorInvalidValue;
  }
  const int32_t n = static_cast<int32_t>(vocab);
  char* p = static_cast<char*>(workspace);
  auto take = [&p](size_t bytes) {
    char* q = p;
    p += Align256(bytes);
    return q;
  };
  auto* weight_in = reinterpret_cast<double*>(take(n * sizeof(double)));
  auto* weight_out = reinterpret_cast<double*>(take(n * sizeof(double)));
  auto* cumulative = reinterpret_cast<double*>(take(n * sizeof(double)));
  auto* index_in = reinterpret_cast<int32_t*>(take(n * sizeof(int32_t)));
  auto* index_out = reinterpret_cast<int32_t*>(take(n * sizeof(int32_t)));
  auto* argmax = reinterpret_cast<int32_t*>(take(sizeof(int32_t)));
  size_t cub_bytes = Align256(CubBytes(n));
  void* cub_scratch = take(cub_bytes);

  ArgmaxKernel<<<1, kArgmaxThreads, 0, stream>>>(logits, n, argmax);
  const int blocks = std::min<int>((n + 255) / 256, 1024);
  WeightsKernel<<<blocks, 256, 0, stream>>>(logits, n, argmax,
                                            1.0 / static_cast<double>(temperature), weight_in,
                                            index_in);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  // Radix sort is stable: equal weights keep their ascending token order.
  e = cub::DeviceRadixSort::SortPairsDescending(cub_scratch, cub_bytes, weight_in, weight_out,
                                                index_in, index_out, n, 0, 64, stream);
  if (e != cudaSuccess) return e;
  e = cub::DeviceScan::InclusiveSum(cub_scratch, cub_bytes, weight_out, cumulative, n, stream);
  if (e != cudaSuccess) return e;
  PickKernel<<<1, 1, 0, stream>>>(cumulative, index_out, n, top_p, uniform, out);
  return cudaGetLastError();
}

}  // namespace mp::cuda
