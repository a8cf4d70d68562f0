#include "runtime/backend.h"

#include <algorithm>
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

absl::Status ValidateVerticalSlashScalars(const VerticalSlashAttentionParams& p, int64_t n,
                                          int64_t q_heads) {
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  if (p.chunk_size < 0 || p.chunk_size > kInt32Max ||
      (p.chunk_size > 0 && (p.chunk_len <= 0 || p.chunk_len > p.chunk_size))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "VerticalSlashAttention: chunk_len (", p.chunk_len, ") and chunk_size (", p.chunk_size,
        ") must satisfy 0 < chunk_len <= chunk_size <= 2^31 - 1, or chunk_size = 0 (no DCA)"));
  }
  if (p.chunk_size > 0 && p.kv.block_size > 0 && p.chunk_len % p.kv.block_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("VerticalSlashAttention: the KV block size ", p.kv.block_size,
                     " must divide the DCA chunk length ", p.chunk_len));
  }
  if (p.query_begin < 0 || p.query_begin > kInt32Max - std::max<int64_t>(n, 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "VerticalSlashAttention: query_begin must be in [0, 2^31 - 1 - n], got ", p.query_begin));
  }
  if (!(p.rope_theta > 1.0) || !std::isfinite(p.rope_theta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("VerticalSlashAttention: rope_theta must be > 1, got ", p.rope_theta));
  }
  if (!(p.scale > 0.0f) || !std::isfinite(p.scale) || !(p.temperature > 0.0f) ||
      !std::isfinite(p.temperature)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "VerticalSlashAttention: scale and temperature must be positive and finite, got scale ",
        p.scale, " and temperature ", p.temperature));
  }
  if (p.last_q < 1 || p.last_q > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("VerticalSlashAttention: last_q must be in [1, 64], got ", p.last_q));
  }
  if (static_cast<int64_t>(p.budgets.size()) != 2 * q_heads) {
    return absl::InvalidArgumentError(absl::StrCat("VerticalSlashAttention: budgets hold ",
                                                   p.budgets.size(), " values, expected 2 x ",
                                                   q_heads, " (vertical, slash per q head)"));
  }
  for (size_t i = 0; i < p.budgets.size(); ++i) {
    if (p.budgets[i] <= 0 || p.budgets[i] > kInt32Max) {
      return absl::InvalidArgumentError(
          absl::StrCat("VerticalSlashAttention: ", i % 2 == 0 ? "vertical" : "slash",
                       " budget of head ", i / 2, " must be in [1, 2^31 - 1], got ", p.budgets[i]));
    }
  }
  if (!p.index_keys.empty() && static_cast<int64_t>(p.index_keys.size()) != q_heads) {
    return absl::InvalidArgumentError(absl::StrCat("VerticalSlashAttention: index_keys holds ",
                                                   p.index_keys.size(), " values, expected ",
                                                   q_heads, " (one per q head)"));
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
