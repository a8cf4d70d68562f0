// cp.async (16-byte global -> shared copies with zero fill) and its mbarrier arrive, warp-level
// mma.sync and ldmatrix helpers shared by the vertical-slash kernels. Device code; include from
// .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mp::cuda::internal {

// Copies 16 bytes from `gmem` to `smem` (both 16-byte aligned), or writes 16 zero bytes when
// !valid (gmem is then not read, but must still be a valid address).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes)
               : "memory");
}
// The same with a shared-memory address (cvta done once by the caller) and the zero fill chosen
// by a predicate (cp.async's ignore-src operand): 16 zero bytes when `zero`; gmem must still be
// a valid address.
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

// d += a * b for one m16n8k16 bf16 tile with fp32 accumulation.
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace mp::cuda::internal
