// Internal: the instantiated (head_dim, causal) launchers of the sm_90a prefill kernel and its
// DCA variant. Each head_dim is compiled in its own translation unit
// (paged_prefill_attention_hd*.cu, paged_prefill_dca_attention_hd*.cu) to keep builds parallel.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/paged_prefill_attention.h"

namespace mp::cuda::internal {

template <int kHeadDim, bool kCausal>
cudaError_t LaunchPagedPrefillSm90(const PagedPrefillAttentionArgs& args, cudaStream_t stream);

template <int kHeadDim>
cudaError_t LaunchPagedPrefillDcaSm90(const PagedPrefillAttentionArgs& args, const DcaParams& dca,
                                      cudaStream_t stream);

}  // namespace mp::cuda::internal
