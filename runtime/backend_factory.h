// Backends by name, for the CLI and the benchmarks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/weights.h"
#include "runtime/backend.h"

namespace mp {

// "cpu": the fp32 reference backend. "cuda" or "cuda:N": the CUDA backend on device 0 or N
// (UNIMPLEMENTED in builds without CUDA; FAILED_PRECONDITION without a suitable GPU).
// INVALID_ARGUMENT for other names.
absl::StatusOr<std::unique_ptr<Backend>> NewBackend(const std::string& device);

// True when this build includes the CUDA backend.
bool BuildHasCuda();

// Device bytes a stage on `device` sets aside for the sparse prefill workspace of `r`
// (Backend::ReserveVerticalSlashWorkspace), computed without a device: "cuda" / "cuda:N" as
// CudaSparseWorkspaceBytes; 0 on "cpu" (the CPU backend needs none) and for cuda in builds
// without CUDA (unknown there). INVALID_ARGUMENT for a request the kernels do not support or
// an unknown device name.
absl::StatusOr<int64_t> SparseWorkspaceBytes(const std::string& device,
                                             const VerticalSlashReservation& r);

// Seeded random weights of the stage of `options` for `backend`, with the values of
// RandomModelWeights(config, options, seed, bf16): host bf16 tensors for the CPU backend,
// generated on the GPU for the CUDA backend (no host copy).
absl::StatusOr<ModelWeights> RandomWeightsFor(Backend& backend, const ModelConfig& config,
                                              const WeightLoadOptions& options, uint64_t seed);

}  // namespace mp
