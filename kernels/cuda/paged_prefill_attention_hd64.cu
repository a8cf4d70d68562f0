// Instantiations of the sm_90a prefill attention kernel for head_dim 64.
#include "kernels/cuda/paged_prefill_attention_sm90.cuh"

namespace mp::cuda::internal {

template cudaError_t LaunchPagedPrefillSm90<64, true>(const PagedPrefillAttentionArgs&,
                                                       cudaStream_t);
template cudaError_t LaunchPagedPrefillSm90<64, false>(const PagedPrefillAttentionArgs&,
                                                        cudaStream_t);

}  // namespace mp::cuda::internal
