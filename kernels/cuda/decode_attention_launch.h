// Internal: the instantiated (head_dim, DCA) launchers of the sm_90a decode attention kernels.
// Each head_dim is compiled in its own translation unit (decode_attention_hd*.cu).
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/decode_attention.h"

namespace mp::cuda::internal {

template <int kHeadDim, bool kDca>
cudaError_t LaunchDecodeSm90(const DecodeAttentionArgs& args, const DcaParams* dca,
                             cudaStream_t stream);

}  // namespace mp::cuda::internal
