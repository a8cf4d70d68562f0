// The compute backend of a worker by device name: "cpu" (the fp32 reference backend) or
// "cuda" / "cuda:N" (the CUDA backend, when this build has it).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/backend.h"

namespace mp {

// INVALID_ARGUMENT for an unknown name, UNIMPLEMENTED for cuda in a build without the CUDA
// backend.
absl::StatusOr<std::shared_ptr<Backend>> CreateBackend(const std::string& device);
// The CUDA device ordinal of "cuda:N" (0 for "cuda" and "cpu").
int DeviceOrdinal(const std::string& device);

}  // namespace mp
