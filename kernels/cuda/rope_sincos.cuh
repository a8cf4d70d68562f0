// sin and cos of an fp32 RoPE angle (position * inv_freq, already rounded to fp32 as the CPU
// reference computes it), for device code. DCA positions reach ~2^18-2^20, where sincosf would
// take its slow (Payne-Hanek) argument reduction; instead the exact fp32 angle is reduced
// modulo 2 pi in double (a two-term 2 pi, error ~1e-15 for |angle| < 2^40) and sincosf runs on
// the reduced argument |r| <= pi, its fast path. Result within ~1 ulp of sin/cos of the exact
// fp32 angle.
#pragma once

#include <cuda_runtime.h>

namespace mp::cuda {

__device__ __forceinline__ void RopeSinCos(float angle, float* s, float* c) {
  constexpr double kInvTwoPi = 0.15915494309189535;
  constexpr double kTwoPiHi = 6.283185307179586;       // nearest double to 2 pi
  constexpr double kTwoPiLo = 2.4492935982947064e-16;  // 2 pi - kTwoPiHi
  const double a = static_cast<double>(angle);
  const double k = rint(a * kInvTwoPi);
  const double r = fma(-k, kTwoPiLo, fma(-k, kTwoPiHi, a));
  sincosf(static_cast<float>(r), s, c);
}

}  // namespace mp::cuda
