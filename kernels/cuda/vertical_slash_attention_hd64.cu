// Instantiation of the sm_90a vertical-slash sparse attention kernel for head_dim 64.
#include "kernels/cuda/vertical_slash_attention_sm90.cuh"

namespace mp::cuda::internal {

template cudaError_t LaunchVerticalSlashAttentionSm90<64>(const VerticalSlashAttentionArgs&,
                                                          cudaStream_t);

}  // namespace mp::cuda::internal
