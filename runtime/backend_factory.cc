#include "runtime/backend_factory.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

#if MP_HAVE_CUDA
#include "runtime/cuda_backend.h"
#include "runtime/cuda_random_weights.h"
#endif

namespace mp {

bool BuildHasCuda() { return MP_HAVE_CUDA != 0; }

absl::StatusOr<std::unique_ptr<Backend>> NewBackend(const std::string& device) {
  if (device == "cpu") return NewCpuBackend();
  if (device == "cuda" || absl::StartsWith(device, "cuda:")) {
    int ordinal = 0;
    if (device != "cuda" && (!absl::SimpleAtoi(device.substr(5), &ordinal) || ordinal < 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("device '", device, "': expected cuda or cuda:N with N >= 0"));
    }
#if MP_HAVE_CUDA
    CudaBackendOptions options;
    options.device = ordinal;
    MP_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> backend, CudaBackend::Create(options));
    return std::unique_ptr<Backend>(std::move(backend));
#else
    return absl::UnimplementedError(absl::StrCat(
        "device '", device,
        "': this build has no CUDA backend (configure with the CUDA toolkit and -DMP_CUDA=ON)"));
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", device, "': expected cpu, cuda or cuda:N"));
}

absl::StatusOr<int64_t> SparseWorkspaceBytes(const std::string& device,
                                             const VerticalSlashReservation& r) {
  if (device == "cpu") return 0;
  if (device != "cuda" && !absl::StartsWith(device, "cuda:")) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown device '", device, "': expected cpu, cuda or cuda:N"));
  }
#if MP_HAVE_CUDA
  return CudaSparseWorkspaceBytes(r);
#else
  (void)r;
  return 0;
#endif
}

absl::StatusOr<ModelWeights> RandomWeightsFor(Backend& backend, const ModelConfig& config,
                                              const WeightLoadOptions& options, uint64_t seed) {
#if MP_HAVE_CUDA
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) {
    return RandomModelWeightsOnDevice(*cuda, config, options, seed);
  }
#endif
  if (backend.device() != DeviceKind::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat("random weights on the ", backend.name(), " backend"));
  }
  return RandomModelWeights(config, options, seed, DType::kBF16);
}

}  // namespace mp
