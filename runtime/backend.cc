#include "runtime/backend.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cpu/sampling.h"

namespace mp {

absl::Status ValidateSampling(float temperature, float top_p) {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling: temperature must be >= 0, got ", temperature));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling: top_p must be in (0, 1], got ", top_p));
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> Backend::SampleToken(const Tensor& logits, float temperature, float top_p,
                                             double uniform) {
  if (logits.rank() != 2 || logits.dim(0) < 1 || logits.dim(1) < 1 ||
      logits.dim(1) > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SampleToken: logits have shape ", logits.ShapeString(),
        ", expected [rows >= 1, vocab >= 1]"));
  }
  MP_RETURN_IF_ERROR(ValidateSampling(temperature, top_p));
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  MP_ASSIGN_OR_RETURN(Tensor host, ToHostF32(logits.Slice(rows - 1, rows)));
  const float* row = host.data_as<const float>();
  if (temperature == 0.0f) return cpu::SampleGreedy(row, vocab);
  return cpu::SampleTopP(row, vocab, temperature, top_p, uniform);
}

}  // namespace mp
