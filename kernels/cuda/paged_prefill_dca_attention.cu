// Argument checks and head-dim dispatch for PagedPrefillDcaAttention.
#include "kernels/cuda/paged_prefill_dca_attention.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/paged_prefill_attention_launch.h"

namespace mp::cuda {

std::string PagedPrefillDcaAttentionUnsupported(const PagedPrefillAttentionArgs& a,
                                                const DcaParams& dca) {
  std::string why = PagedPrefillAttentionUnsupported(a);
  if (!why.empty()) return why;
  if (!a.causal) return "causal must be true for DCA prefill";
  constexpr int64_t kMaxChunk = int64_t(1) << 30;
  constexpr int64_t kAlign = 64;
  if (dca.chunk_len <= 0 || dca.chunk_len % kAlign != 0 || dca.chunk_len > kMaxChunk) {
    return "dca.chunk_len " + std::to_string(dca.chunk_len) +
           " is not a positive multiple of 64 up to 2^30";
  }
  if (dca.chunk_size < dca.chunk_len || dca.chunk_size > kMaxChunk) {
    return "dca.chunk_size " + std::to_string(dca.chunk_size) + " must be in [chunk_len (" +
           std::to_string(dca.chunk_len) + "), 2^30]";
  }
  if (!(dca.rope_theta > 1.0) || !std::isfinite(dca.rope_theta)) {
    return "dca.rope_theta must be finite and > 1, got " + std::to_string(dca.rope_theta);
  }
  return "";
}

cudaError_t PagedPrefillDcaAttention(const PagedPrefillAttentionArgs& a, const DcaParams& dca,
                                     cudaStream_t stream) {
  if (!PagedPrefillDcaAttentionUnsupported(a, dca).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  if (a.head_dim == 128) return internal::LaunchPagedPrefillDcaSm90<128>(a, dca, stream);
  return internal::LaunchPagedPrefillDcaSm90<64>(a, dca, stream);
}

}  // namespace mp::cuda
