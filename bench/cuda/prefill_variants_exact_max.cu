// Reference points of prefill_variants.h without the lazy running max (PrefillConfig::kLazyMax,
// which the library's kernels use): the exact running max per visit, dense (head_dim 64/128,
// causal or not) and DCA (segmented, division-free key walk; head_dim 64/128).
#include "bench/cuda/prefill_variants_launch.h"
#include "kernels/cuda/paged_prefill_attention_sm90.cuh"
#include "kernels/cuda/paged_prefill_dca_attention.h"

namespace mp::bench::internal {
namespace {

template <int kHeadDim, bool kCausal>
using DenseExactMaxConfig =
    cuda::sm90::PrefillConfig<kHeadDim, kCausal, 3, true, true, true, true, /*dca=*/false,
                              /*dca_segments=*/false, /*cluster=*/1, /*sparse=*/false,
                              /*lazy_max=*/false>;

template <int kHeadDim>
using DcaExactMaxConfig =
    cuda::sm90::PrefillConfig<kHeadDim, /*causal=*/true, 3, true, true, true, true, /*dca=*/true,
                              /*dca_segments=*/true, /*cluster=*/1, /*sparse=*/false,
                              /*lazy_max=*/false>;

}  // namespace

cudaError_t LaunchDenseExactMax(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams&,
                            cudaStream_t stream) {
  if (!cuda::PagedPrefillAttentionUnsupported(a).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  using cuda::sm90::LaunchPagedPrefillAttention;
  if (a.head_dim == 128) {
    return a.causal ? LaunchPagedPrefillAttention<DenseExactMaxConfig<128, true>>(a, stream)
                    : LaunchPagedPrefillAttention<DenseExactMaxConfig<128, false>>(a, stream);
  }
  return a.causal ? LaunchPagedPrefillAttention<DenseExactMaxConfig<64, true>>(a, stream)
                  : LaunchPagedPrefillAttention<DenseExactMaxConfig<64, false>>(a, stream);
}

cudaError_t LaunchDcaExactMax(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams& dca,
                          cudaStream_t stream) {
  if (!cuda::PagedPrefillDcaAttentionUnsupported(a, dca).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  using cuda::sm90::LaunchPagedPrefillAttention;
  if (a.head_dim == 128) {
    return LaunchPagedPrefillAttention<DcaExactMaxConfig<128>>(a, stream, &dca);
  }
  return LaunchPagedPrefillAttention<DcaExactMaxConfig<64>>(a, stream, &dca);
}

}  // namespace mp::bench::internal
