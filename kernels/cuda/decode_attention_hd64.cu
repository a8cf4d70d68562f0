// Instantiations of the sm_90a decode attention kernels for head_dim 64 (plain and DCA).
#include "kernels/cuda/decode_attention_sm90.cuh"

namespace mp::cuda::internal {

template cudaError_t LaunchDecodeSm90<64, false>(const DecodeAttentionArgs&, const DcaParams*,
                                                 cudaStream_t);
template cudaError_t LaunchDecodeSm90<64, true>(const DecodeAttentionArgs&, const DcaParams*,
                                                cudaStream_t);

}  // namespace mp::cuda::internal
