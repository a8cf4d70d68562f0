// Configurations of the sm_90a prefill attention kernel that are candidates for the defaults,
// compiled outside the library (bench/cuda/prefill_variants*.cu) so that the library and CI keep
// their own instantiations only. The benchmark (attention_bench --variants), the cuDNN peer
// (bench/attention_peer.py through libmp_attention_bench.so) and the GPU test
// tests/gpu/paged_prefill_attention_variants_test.cc take them from this list.
//
// Every entry has the contract of PagedPrefillAttention (dense entries; the DcaParams argument is
// ignored) or of PagedPrefillDcaAttention (dca entries), for head_dim 64 and 128, causal and (dense
// entries) non-causal; unsupported arguments give cudaErrorInvalidValue without a launch.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/paged_prefill_attention.h"

namespace mp::bench {

using PrefillLaunchFn = cudaError_t (*)(const cuda::PagedPrefillAttentionArgs& args,
                                        const cuda::DcaParams& dca, cudaStream_t stream);

struct PrefillVariant {
  const char* name;
  bool dca;              // PagedPrefillDcaAttention's contract (else PagedPrefillAttention's)
  const char* baseline;  // the library entry whose output it must reproduce
  PrefillLaunchFn launch;
  const char* what;  // one line: what differs from the baseline
};

// The list, first the two library entry points ("default", "dca") then the candidates; *count
// receives its length.
const PrefillVariant* PrefillVariants(int* count);

}  // namespace mp::bench
