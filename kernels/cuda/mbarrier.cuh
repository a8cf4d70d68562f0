// Waiting on an mbarrier in shared memory, for the kernels whose threads wait on barriers they
// address directly (no CUTLASS barrier object). Device code; include from .cu files only.
#pragma once

#include <cstdint>

namespace mp::cuda::internal {

// Waits until the mbarrier at shared address `bar` has completed the phase of the given parity.
__device__ __forceinline__ void MbarrierWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n\t.reg .pred p;\n\t"
      "WAIT_%=:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t"
      "@!p bra WAIT_%=;\n\t}" ::"r"(bar),
      "r"(parity)
      : "memory");
}

}  // namespace mp::cuda::internal
