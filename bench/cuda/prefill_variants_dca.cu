// DCA candidates of prefill_variants.h (head_dim 64/128): the division-free key walk with the
// rotation per DCA chunk, alone and with 2-CTA multicast clusters.
#include "bench/cuda/prefill_variants_launch.h"
#include "kernels/cuda/paged_prefill_attention_sm90.cuh"
#include "kernels/cuda/paged_prefill_dca_attention.h"

namespace mp::bench::internal {
namespace {

template <int kHeadDim, int kCluster>
using DcaSegConfig = cuda::sm90::PrefillConfig<kHeadDim, /*causal=*/true, 3, true, true, true,
                                               true, /*dca=*/true, /*dca_segments=*/true,
                                               kCluster>;

template <int kCluster>
cudaError_t Launch(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams& dca,
                   cudaStream_t stream) {
  if (!cuda::PagedPrefillDcaAttentionUnsupported(a, dca).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  using cuda::sm90::LaunchPagedPrefillAttention;
  if (a.head_dim == 128) {
    return LaunchPagedPrefillAttention<DcaSegConfig<128, kCluster>>(a, stream, &dca);
  }
  return LaunchPagedPrefillAttention<DcaSegConfig<64, kCluster>>(a, stream, &dca);
}

}  // namespace

cudaError_t LaunchDcaSegments(const cuda::PagedPrefillAttentionArgs& a,
                              const cuda::DcaParams& dca, cudaStream_t stream) {
  return Launch<1>(a, dca, stream);
}

cudaError_t LaunchDcaSegmentsMc2(const cuda::PagedPrefillAttentionArgs& a,
                                 const cuda::DcaParams& dca, cudaStream_t stream) {
  return Launch<2>(a, dca, stream);
}

}  // namespace mp::bench::internal
