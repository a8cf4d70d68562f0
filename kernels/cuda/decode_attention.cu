// Argument checks, workspace size and head-dim / DCA dispatch for DecodeAttention.
#include "kernels/cuda/decode_attention.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/decode_attention_launch.h"

namespace mp::cuda {
namespace {

constexpr int64_t kInt32Max = 2147483647;

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

std::string Num(int64_t v) { return std::to_string(v); }

template <bool kDca>
cudaError_t Dispatch(const DecodeAttentionArgs& a, const DcaParams* dca, cudaStream_t stream) {
  if (a.head_dim == 128) return internal::LaunchDecodeSm90<128, kDca>(a, dca, stream);
  return internal::LaunchDecodeSm90<64, kDca>(a, dca, stream);
}

}  // namespace

int64_t DecodeAttentionWorkspaceBytes(const DecodeAttentionArgs& a) {
  if (a.num_splits <= 1 || a.num_seqs <= 0 || a.q_heads <= 0 || a.head_dim <= 0) return 0;
  return int64_t(a.num_splits) * a.num_seqs * a.q_heads * (a.head_dim + 1) *
         int64_t(sizeof(float));
}

std::string DecodeAttentionUnsupported(const DecodeAttentionArgs& a, const DcaParams* dca) {
  if (a.num_seqs < 0 || a.num_seqs > 65535) {
    return "num_seqs " + Num(a.num_seqs) + " is outside [0, 65535]";
  }
  if (a.head_dim != 64 && a.head_dim != 128) {
    return "head_dim " + Num(a.head_dim) + " is not supported (64 or 128)";
  }
  if (a.kv_heads <= 0 || a.kv_heads > 65535) {
    return "kv_heads " + Num(a.kv_heads) + " is outside [1, 65535]";
  }
  if (a.q_heads <= 0 || a.q_heads % a.kv_heads != 0) {
    return "q_heads (" + Num(a.q_heads) + ") must be a positive multiple of kv_heads (" +
           Num(a.kv_heads) + ")";
  }
  if (a.q_heads / a.kv_heads > kDecodeMaxGroup) {
    return "q_heads / kv_heads = " + Num(a.q_heads / a.kv_heads) + " exceeds " +
           Num(kDecodeMaxGroup);
  }
  if (a.num_seqs * a.q_heads > kInt32Max) {
    return "num_seqs x q_heads = " + Num(a.num_seqs * a.q_heads) + " exceeds int32";
  }
  if (a.block_size <= 0 || a.block_size % kDecodeTileKeys != 0) {
    return "block_size " + Num(a.block_size) + " is not a positive multiple of " +
           Num(kDecodeTileKeys);
  }
  if (a.num_blocks <= 0 || a.num_blocks > kInt32Max) {
    return "num_blocks " + Num(a.num_blocks) + " is outside [1, 2^31)";
  }
  if (a.table_stride <= 0) return "table_stride must be positive, got " + Num(a.table_stride);
  if (a.table_stride * a.block_size > kInt32Max - kDecodeTileKeys) {
    return "table_stride x block_size = " + Num(a.table_stride * a.block_size) +
           " exceeds the int32 position limit";
  }
  if (a.num_splits < 1 || a.num_splits > kDecodeMaxSplits) {
    return "num_splits " + Num(a.num_splits) + " is outside [1, " + Num(kDecodeMaxSplits) + "]";
  }
  if (!(a.scale > 0.0f) || !std::isfinite(a.scale)) {
    return "scale must be positive and finite, got " + std::to_string(a.scale);
  }
  if (dca != nullptr) {
    constexpr int64_t kMaxChunk = int64_t(1) << 30;
    if (dca->chunk_len <= 0 || dca->chunk_len % kDecodeTileKeys != 0 ||
        dca->chunk_len > kMaxChunk) {
      return "dca.chunk_len " + Num(dca->chunk_len) + " is not a positive multiple of " +
             Num(kDecodeTileKeys) + " up to 2^30";
    }
    if (dca->chunk_size < dca->chunk_len || dca->chunk_size > kMaxChunk) {
      return "dca.chunk_size " + Num(dca->chunk_size) + " must be in [chunk_len (" +
             Num(dca->chunk_len) + "), 2^30]";
    }
    if (!(dca->rope_theta > 1.0) || !std::isfinite(dca->rope_theta)) {
      return "dca.rope_theta must be finite and > 1, got " + std::to_string(dca->rope_theta);
    }
    if (a.key_begin != nullptr) return "key_begin must be null for DCA decode (keys start at 0)";
  }
  if (a.num_seqs == 0) return "";
  if (a.q == nullptr || a.k_cache == nullptr || a.v_cache == nullptr || a.out == nullptr ||
      a.block_tables == nullptr || a.key_end == nullptr) {
    return "q, k_cache, v_cache, block_tables, key_end and out must be non-null";
  }
  if (!Aligned16(a.q) || !Aligned16(a.k_cache) || !Aligned16(a.v_cache)) {
    return "q, k_cache and v_cache must be 16-byte aligned";
  }
  const int64_t need = DecodeAttentionWorkspaceBytes(a);
  if (need > 0) {
    if (a.workspace == nullptr || a.workspace_bytes < need) {
      return "workspace_bytes " + Num(a.workspace == nullptr ? 0 : a.workspace_bytes) +
             " is less than the " + Num(need) + " bytes needed for " + Num(a.num_splits) +
             " splits";
    }
    if (!Aligned16(a.workspace)) return "workspace must be 16-byte aligned";
  }
  return "";
}

cudaError_t DecodeAttention(const DecodeAttentionArgs& a, cudaStream_t stream) {
  if (!DecodeAttentionUnsupported(a, nullptr).empty()) return cudaErrorInvalidValue;
  if (a.num_seqs == 0) return cudaSuccess;
  return Dispatch<false>(a, nullptr, stream);
}

cudaError_t DcaDecodeAttention(const DecodeAttentionArgs& a, const DcaParams& dca,
                               cudaStream_t stream) {
  if (!DecodeAttentionUnsupported(a, &dca).empty()) return cudaErrorInvalidValue;
  if (a.num_seqs == 0) return cudaSuccess;
  return Dispatch<true>(a, &dca, stream);
}

}  // namespace mp::cuda
