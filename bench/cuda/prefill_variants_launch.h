// Internal to bench/cuda/prefill_variants*.cu: the launchers of the candidate configurations,
// each compiled in its own translation unit so that the builds run in parallel.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/paged_prefill_attention.h"

namespace mp::bench::internal {

// Dense, 2-CTA clusters sharing K/V through TMA multicast (prefill_variants_dense.cu).
cudaError_t LaunchDenseMc2(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams& dca,
                           cudaStream_t stream);
// DCA with the division-based key walk and a rotation check per visit (prefill_variants_dca.cu).
cudaError_t LaunchDcaWalk(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams& dca,
                          cudaStream_t stream);
// The library's DCA kernel with 2-CTA multicast clusters (prefill_variants_dca.cu).
cudaError_t LaunchDcaSegmentsMc2(const cuda::PagedPrefillAttentionArgs& a,
                                 const cuda::DcaParams& dca, cudaStream_t stream);
// Dense with the exact running max per visit (no kLazyMax; prefill_variants_exact_max.cu).
cudaError_t LaunchDenseExactMax(const cuda::PagedPrefillAttentionArgs& a,
                                const cuda::DcaParams& dca, cudaStream_t stream);
// DCA with the exact running max per visit (prefill_variants_exact_max.cu).
cudaError_t LaunchDcaExactMax(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams& dca,
                              cudaStream_t stream);

}  // namespace mp::bench::internal
