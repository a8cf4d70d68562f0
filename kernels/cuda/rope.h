// Rotary position embedding on bf16, NeoX rotate-half over the full head_dim, the same function
// as kernels/cpu/rope.h: for token t, head h and i in [0, d/2),
//   a = positions[t] * inv_freq[i]                      (fp32)
//   x1' = x1 cos a - x2 sin a ; x2' = x2 cos a + x1 sin a  with x1 = x[i], x2 = x[i + d/2]
// in fp32, rounded to bf16. Positions are arbitrary per token (DCA passes remapped ones).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mp::cuda {

// inv_freq[i] = 1 / theta^(2i / head_dim) computed on the host in fp32 exactly as the CPU
// reference does, so that both backends use bit-identical frequencies.
void RopeInvFreq(double theta, int64_t head_dim, float* inv_freq);  // [head_dim / 2], host

// In place. head_dim must be even and at most 8192.
cudaError_t RopeNeox(__nv_bfloat16* x,          // [n, heads, head_dim]
                     const int32_t* positions,  // [n] device
                     const float* inv_freq,     // [head_dim / 2] device (RopeInvFreq)
                     int64_t n, int64_t heads, int64_t head_dim, cudaStream_t stream);

}  // namespace mp::cuda
