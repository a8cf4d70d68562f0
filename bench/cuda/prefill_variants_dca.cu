// DCA candidates of prefill_variants.h (head_dim 64/128): the library's DCA kernel (segmented,
// division-free key walk) with 2-CTA multicast clusters, and the earlier division-based walk
// with a rotation check per visit, kept as the reference point of that change.
#include "bench/cuda/prefill_variants_launch.h"
#include "kernels/cuda/paged_prefill_attention_sm90.cuh"
#include "kernels/cuda/paged_prefill_dca_attention.h"

namespace mp::bench::internal {
namespace {

template <int kHeadDim, bool kSegments, int kCluster>
using DcaConfig = cuda::sm90::PrefillConfig<kHeadDim, /*causal=*/true, 3, true, true, true, true,
                                            /*dca=*/true, kSegments, kCluster>;

template <bool kSegments, int kCluster>
cudaError_t Launch(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams& dca,
                   cudaStream_t stream) {
  if (!cuda::PagedPrefillDcaAttentionUnsupported(a, dca).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  using cuda::sm90::LaunchPagedPrefillAttention;
  if (a.head_dim == 128) {
    return LaunchPagedPrefillAttention<DcaConfig<128, kSegments, kCluster>>(a, stream, &dca);
  }
  return LaunchPagedPrefillAttention<DcaConfig<64, kSegments, kCluster>>(a, stream, &dca);
}

}  // namespace

cudaError_t LaunchDcaWalk(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams& dca,
                          cudaStream_t stream) {
  return Launch</*segments=*/false, 1>(a, dca, stream);
}

cudaError_t LaunchDcaSegmentsMc2(const cuda::PagedPrefillAttentionArgs& a,
                                 const cuda::DcaParams& dca, cudaStream_t stream) {
  return Launch</*segments=*/true, 2>(a, dca, stream);
}

}  // namespace mp::bench::internal
