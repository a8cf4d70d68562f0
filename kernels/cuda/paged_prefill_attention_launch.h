// Internal: the instantiated (head_dim, causal) launchers of the sm_90a prefill kernel. Each is
// compiled in its own translation unit (paged_prefill_attention_hd*.cu) to keep builds parallel.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/paged_prefill_attention.h"

namespace mp::cuda::internal {

template <int kHeadDim, bool kCausal>
cudaError_t LaunchPagedPrefillSm90(const PagedPrefillAttentionArgs& args, cudaStream_t stream);

}  // namespace mp::cuda::internal
