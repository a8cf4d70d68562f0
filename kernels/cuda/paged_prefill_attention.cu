// Argument checks, tensor-map encoding and head-dim/mask dispatch for PagedPrefillAttention.
#include "kernels/cuda/paged_prefill_attention.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/paged_prefill_attention_launch.h"

namespace mp::cuda {
namespace {

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

std::string Num(int64_t v) { return std::to_string(v); }

}  // namespace

std::string PagedPrefillAttentionUnsupported(const PagedPrefillAttentionArgs& a) {
  constexpr int64_t kInt32Max = 2147483647;
  if (a.num_queries < 0) return "num_queries is negative (" + Num(a.num_queries) + ")";
  if (a.head_dim != 64 && a.head_dim != 128) {
    return "head_dim " + Num(a.head_dim) + " is not supported (64 or 128)";
  }
  if (a.kv_heads <= 0) return "kv_heads must be positive, got " + Num(a.kv_heads);
  if (a.q_heads <= 0 || a.q_heads % a.kv_heads != 0) {
    return "q_heads (" + Num(a.q_heads) + ") must be a positive multiple of kv_heads (" +
           Num(a.kv_heads) + ")";
  }
  if (a.block_size <= 0 || a.block_size % kPagedPrefillBlockAlign != 0) {
    return "block_size " + Num(a.block_size) + " is not a positive multiple of " +
           Num(kPagedPrefillBlockAlign);
  }
  if (a.num_blocks <= 0) return "num_blocks must be positive, got " + Num(a.num_blocks);
  if (a.key_begin < 0 || a.key_end < a.key_begin) {
    return "key range [" + Num(a.key_begin) + ", " + Num(a.key_end) + ") is invalid";
  }
  if (a.key_end > kInt32Max - 256) {
    return "key_end " + Num(a.key_end) + " exceeds the int32 position limit";
  }
  if (a.num_queries > kInt32Max - 256) {
    return "num_queries " + Num(a.num_queries) + " exceeds the int32 limit";
  }
  const int64_t m_tiles = (a.num_queries + 127) / 128;
  if (m_tiles * a.q_heads > kInt32Max) {
    return "num_queries x q_heads = " + Num(a.num_queries) + " x " + Num(a.q_heads) +
           " exceeds the grid limit";
  }
  if (a.num_blocks > kInt32Max) return "num_blocks " + Num(a.num_blocks) + " exceeds int32";
  if (!(a.scale > 0.0f) || !std::isfinite(a.scale)) {
    return "scale must be positive and finite, got " + std::to_string(a.scale);
  }
  if (a.num_queries == 0) return "";
  if (a.q == nullptr || a.k_cache == nullptr || a.v_cache == nullptr || a.out == nullptr) {
    return "q, k_cache, v_cache and out must be non-null";
  }
  if (a.key_end > a.key_begin && a.block_table == nullptr) return "block_table is null";
  if (!Aligned16(a.q) || !Aligned16(a.k_cache) || !Aligned16(a.v_cache) || !Aligned16(a.out)) {
    return "q, k_cache, v_cache and out must be 16-byte aligned";
  }
  return "";
}

cudaError_t PagedPrefillAttention(const PagedPrefillAttentionArgs& a, cudaStream_t stream) {
  if (!PagedPrefillAttentionUnsupported(a).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  if (a.head_dim == 128) {
    return a.causal ? internal::LaunchPagedPrefillSm90<128, true>(a, stream)
                    : internal::LaunchPagedPrefillSm90<128, false>(a, stream);
  }
  return a.causal ? internal::LaunchPagedPrefillSm90<64, true>(a, stream)
                  : internal::LaunchPagedPrefillSm90<64, false>(a, stream);
}

}  // namespace mp::cuda
