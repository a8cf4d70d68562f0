// Candidates of prefill_variants.h with the lazy running max (PrefillConfig::kLazyMax): dense
// (head_dim 64/128, causal or not) and the library's DCA kernel (segmented, division-free key
// walk; head_dim 64/128).
#include "bench/cuda/prefill_variants_launch.h"
#include "kernels/cuda/paged_prefill_attention_sm90.cuh"
#include "kernels/cuda/paged_prefill_dca_attention.h"

namespace mp::bench::internal {
namespace {

template <int kHeadDim, bool kCausal>
using DenseLazyConfig =
    cuda::sm90::PrefillConfig<kHeadDim, kCausal, 3, true, true, true, true, /*dca=*/false,
                              /*dca_segments=*/false, /*cluster=*/1, /*lazy_max=*/true>;

template <int kHeadDim>
using DcaLazyConfig =
    cuda::sm90::PrefillConfig<kHeadDim, /*causal=*/true, 3, true, true, true, true, /*dca=*/true,
                              /*dca_segments=*/true, /*cluster=*/1, /*lazy_max=*/true>;

}  // namespace

cudaError_t LaunchDenseLazy(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams&,
                            cudaStream_t stream) {
  if (!cuda::PagedPrefillAttentionUnsupported(a).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  using cuda::sm90::LaunchPagedPrefillAttention;
  if (a.head_dim == 128) {
    return a.causal ? LaunchPagedPrefillAttention<DenseLazyConfig<128, true>>(a, stream)
                    : LaunchPagedPrefillAttention<DenseLazyConfig<128, false>>(a, stream);
  }
  return a.causal ? LaunchPagedPrefillAttention<DenseLazyConfig<64, true>>(a, stream)
                  : LaunchPagedPrefillAttention<DenseLazyConfig<64, false>>(a, stream);
}

cudaError_t LaunchDcaLazy(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams& dca,
                          cudaStream_t stream) {
  if (!cuda::PagedPrefillDcaAttentionUnsupported(a, dca).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  using cuda::sm90::LaunchPagedPrefillAttention;
  if (a.head_dim == 128) {
    return LaunchPagedPrefillAttention<DcaLazyConfig<128>>(a, stream, &dca);
  }
  return LaunchPagedPrefillAttention<DcaLazyConfig<64>>(a, stream, &dca);
}

}  // namespace mp::bench::internal
