// Seeded, counter-based random bf16 fill on the device: element i is
//   bf16(offset + scale * z(key, i))
// where z is the approximately standard normal value of model/random_weights.cc (a SplitMix64
// hash of the index split into four 16-bit uniforms, summed, centred and scaled to unit
// variance). Every element depends only on (key, i), so device-generated weights equal the host
// ones of RandomModelWeights bit for bit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mp::cuda {

cudaError_t FillRandomNormalishBf16(__nv_bfloat16* out,  // [count]
                                    int64_t count, uint64_t key, float scale, float offset,
                                    cudaStream_t stream);

}  // namespace mp::cuda
