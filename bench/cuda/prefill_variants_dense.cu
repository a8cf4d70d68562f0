// Dense candidates of prefill_variants.h: 2-CTA multicast clusters (head_dim 64/128, causal or
// not).
#include "bench/cuda/prefill_variants_launch.h"
#include "kernels/cuda/paged_prefill_attention_sm90.cuh"

namespace mp::bench::internal {

template <int kHeadDim, bool kCausal>
using Mc2Config = cuda::sm90::PrefillConfig<kHeadDim, kCausal, 3, true, true, true, true,
                                            /*dca=*/false, /*dca_segments=*/false,
                                            /*cluster=*/2>;

cudaError_t LaunchDenseMc2(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams&,
                           cudaStream_t stream) {
  if (!cuda::PagedPrefillAttentionUnsupported(a).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  using cuda::sm90::LaunchPagedPrefillAttention;
  if (a.head_dim == 128) {
    return a.causal ? LaunchPagedPrefillAttention<Mc2Config<128, true>>(a, stream)
                    : LaunchPagedPrefillAttention<Mc2Config<128, false>>(a, stream);
  }
  return a.causal ? LaunchPagedPrefillAttention<Mc2Config<64, true>>(a, stream)
                  : LaunchPagedPrefillAttention<Mc2Config<64, false>>(a, stream);
}

}  // namespace mp::bench::internal
