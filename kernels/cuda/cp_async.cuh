// cp.async (16-byte global -> shared copies with zero fill) and its mbarrier arrive, the proxy
// fence before wgmma reads such copies, and ldmatrix. Device code; include from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mp::cuda::internal {

// Copies 16 bytes from `gmem` to the shared address `smem` (both 16-byte aligned), or writes 16
// zero bytes when `zero` (cp.async's ignore-src predicate; gmem must still be a valid address).
__device__ __forceinline__ void CpAsync16OrZero(uint32_t smem, const void* gmem, bool zero) {
  asm volatile(
      "{\n\t.reg .pred z;\n\tsetp.ne.b32 z, %2, 0;\n\t"
      "cp.async.cg.shared.global [%0], [%1], 16, z;\n\t}\n" ::"r"(smem),
      "l"(gmem), "r"(int(zero))
      : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of the calling thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Arrives on the mbarrier at shared address `bar` once every cp.async the calling thread issued
// so far has completed; counts as one of the barrier's expected arrivals (.noinc).
__device__ __forceinline__ void CpAsyncArriveNoinc(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

// Makes the calling thread's generic-proxy shared-memory writes (st.shared, completed cp.async)
// visible to the async proxy (wgmma operands).
__device__ __forceinline__ void FenceProxyAsyncShared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem_row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

}  // namespace mp::cuda::internal
