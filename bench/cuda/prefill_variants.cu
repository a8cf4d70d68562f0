// The list of prefill attention kernel candidates (prefill_variants.h). The candidates are
// compiled in (prefill_variants_{dense,dca,lazy}.cu) only with -DMP_PREFILL_CANDIDATES, as
// build_standalone.sh and the CMake option MP_ATTENTION_VARIANTS do; otherwise the list holds
// the two library entries.
#include "bench/cuda/prefill_variants.h"
#include "bench/cuda/prefill_variants_launch.h"
#include "kernels/cuda/paged_prefill_dca_attention.h"

namespace mp::bench {
namespace {

cudaError_t LaunchDefault(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams&,
                          cudaStream_t stream) {
  return cuda::PagedPrefillAttention(a, stream);
}

cudaError_t LaunchDca(const cuda::PagedPrefillAttentionArgs& a, const cuda::DcaParams& dca,
                      cudaStream_t stream) {
  return cuda::PagedPrefillDcaAttention(a, dca, stream);
}

const PrefillVariant kVariants[] = {
    {"default", false, "default", &LaunchDefault,
     "the library's dense kernel (lazy running max: unmasked tiles exponentiate against the "
     "running max as it stands; the max moves only when a row sum of the tile exceeds 256)"},
    {"dca", true, "dca", &LaunchDca, "the library's fused DCA kernel"},
#ifdef MP_PREFILL_CANDIDATES
    {"mc2", false, "default", &internal::LaunchDenseMc2,
     "2-CTA clusters: each K/V tile leaves L2 once per pair (TMA multicast)"},
    {"dca-walk", true, "dca", &internal::LaunchDcaWalk,
     "DCA with the division-based key walk and a rotation check per visit (the DCA kernel "
     "before the segmented walk)"},
    {"dca-mc2", true, "dca", &internal::LaunchDcaSegmentsMc2, "the DCA kernel with mc2's clusters"},
    {"exact-max", false, "default", &internal::LaunchDenseExactMax,
     "the dense kernel before the lazy running max: the row max of every tile, its shuffles "
     "and the O rescale check per tile"},
    {"dca-exact-max", true, "dca", &internal::LaunchDcaExactMax,
     "the DCA kernel before the lazy running max"},
#endif
};

}  // namespace

const PrefillVariant* PrefillVariants(int* count) {
  *count = static_cast<int>(sizeof(kVariants) / sizeof(kVariants[0]));
  return kVariants;
}

}  // namespace mp::bench
