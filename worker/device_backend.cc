#include "worker/device_backend.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "common/status.h"
#include "runtime/backend_factory.h"

namespace mp {

int DeviceOrdinal(const std::string& device) {
  int ordinal = 0;
  if (absl::StartsWith(device, "cuda:")) {
    if (!absl::SimpleAtoi(device.substr(5), &ordinal)) ordinal = 0;
  }
  return ordinal;
}

absl::StatusOr<std::shared_ptr<Backend>> CreateBackend(const std::string& device) {
  MP_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, NewBackend(device.empty() ? "cpu" : device));
  return std::shared_ptr<Backend>(std::move(backend));
}

}  // namespace mp
