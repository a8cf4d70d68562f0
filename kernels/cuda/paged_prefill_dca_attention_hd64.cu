// Instantiation of the sm_90a DCA prefill attention kernel for head_dim 64.
#include "kernels/cuda/paged_prefill_attention_sm90.cuh"

namespace mp::cuda::internal {

template cudaError_t LaunchPagedPrefillDcaSm90<64>(const PagedPrefillAttentionArgs&,
                                                  const DcaParams&, cudaStream_t);

}  // namespace mp::cuda::internal
