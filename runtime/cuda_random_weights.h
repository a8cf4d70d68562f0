// Seeded random model weights generated on the GPU: the values of RandomModelWeights (model/
// weights.h) in bf16, bit for bit, without a host copy (the Qwen2.5-7B weights are 15 GB).
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/weights.h"
#include "runtime/cuda_backend.h"

namespace mp {

// Device bf16 tensors for every weight of the stage of `options`. Each layer's gate_proj and
// up_proj are adjacent halves of one [2 * inter, hidden] allocation, so StageExecutor uses them
// as its stacked gate/up matrix without a copy. A tied LM head aliases the embedding. The fill
// kernels are enqueued on the backend's stream.
absl::StatusOr<ModelWeights> RandomModelWeightsOnDevice(CudaBackend& backend,
                                                        const ModelConfig& config,
                                                        const WeightLoadOptions& options,
                                                        uint64_t seed);

}  // namespace mp
