#include "worker/device_backend.h"

#include <type_traits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#ifdef MP_WORKER_HAVE_CUDA_BACKEND
#include "runtime/cuda_backend.h"
#endif

namespace mp {
namespace {

#ifdef MP_WORKER_HAVE_CUDA_BACKEND
// Accepts a factory result of unique_ptr<Backend> or StatusOr<unique_ptr<Backend>>.
template <typename T>
absl::StatusOr<std::shared_ptr<Backend>> Shared(T made) {
  if constexpr (std::is_constructible_v<bool, decltype(made.ok())>) {
    if (!made.ok()) return made.status();
    return std::shared_ptr<Backend>(*std::move(made));
  } else {
    return std::shared_ptr<Backend>(std::move(made));
  }
}
#endif

}  // namespace

int DeviceOrdinal(const std::string& device) {
  int ordinal = 0;
  if (absl::StartsWith(device, "cuda:")) {
    if (!absl::SimpleAtoi(device.substr(5), &ordinal)) ordinal = 0;
  }
  return ordinal;
}

absl::StatusOr<std::shared_ptr<Backend>> CreateBackend(const std::string& device) {
  if (device.empty() || device == "cpu") return std::shared_ptr<Backend>(NewCpuBackend());
  if (device == "cuda" || absl::StartsWith(device, "cuda:")) {
    int ordinal = 0;
    if (device.size() > 4 && !absl::SimpleAtoi(device.substr(5), &ordinal)) {
      return absl::InvalidArgumentError(
          absl::StrCat("device '", device, "': expected cuda or cuda:N"));
    }
#ifdef MP_WORKER_HAVE_CUDA_BACKEND
    return Shared(NewCudaBackend(ordinal));
#else
    return absl::UnimplementedError(absl::StrCat(
        "device '", device, "': this build has no CUDA backend (build on a machine with CUDA)"));
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", device, "'; expected cpu, cuda or cuda:N"));
}

}  // namespace mp
