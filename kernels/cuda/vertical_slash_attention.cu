// Argument checks and head-dim dispatch for VerticalSlashAttention.
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/vertical_slash_attention.h"
#include "kernels/cuda/vertical_slash_parts.h"

namespace mp::cuda {
namespace {

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
std::string Num(int64_t v) { return std::to_string(v); }

}  // namespace

std::string VerticalSlashAttentionUnsupported(const VerticalSlashAttentionArgs& a) {
  constexpr int64_t kMaxPosition = int64_t(1) << 30;
  const VerticalSlashKv& kv = a.kv;
  if (kv.head_dim != 64 && kv.head_dim != 128) {
    return "head_dim " + Num(kv.head_dim) + " is not supported (64 or 128)";
  }
  if (kv.kv_heads <= 0 || a.q_heads <= 0 || a.q_heads % kv.kv_heads != 0) {
    return "q_heads (" + Num(a.q_heads) + ") must be a positive multiple of kv_heads (" +
           Num(kv.kv_heads) + ")";
  }
  if (kv.block_size <= 0 || kv.num_blocks <= 0 || kv.num_blocks > 2147483647) {
    return "block_size and num_blocks must be positive (num_blocks below 2^31)";
  }
  if (kv.num_blocks * kv.kv_heads * kv.block_size > 2147483647) {
    return "the cache has " + Num(kv.num_blocks * kv.kv_heads * kv.block_size) +
           " rows (num_blocks x kv_heads x block_size); at most 2^31 - 1 are supported";
  }
  if (a.piece_begin < 0 || a.piece_end < a.piece_begin || a.piece_end > kMaxPosition) {
    return "piece [" + Num(a.piece_begin) + ", " + Num(a.piece_end) + ") must lie in [0, 2^30]";
  }
  if (a.chunk_len < 0 ||
      (a.chunk_len > 0 && (a.chunk_len % 64 != 0 || a.chunk_len > kMaxPosition ||
                           a.chunk_size < a.chunk_len || a.chunk_size > kMaxPosition))) {
    return "chunk_len " + Num(a.chunk_len) + " / chunk_size " + Num(a.chunk_size) +
           " must be a multiple of 64 and chunk_len <= chunk_size <= 2^30 (chunk_len 0: no DCA)";
  }
  if (a.chunk_len > 0 && (a.chunk_begin % a.chunk_len != 0 || a.piece_begin < a.chunk_begin ||
                          a.piece_end > a.chunk_begin + a.chunk_len)) {
    return "the piece [" + Num(a.piece_begin) + ", " + Num(a.piece_end) +
           ") must lie in the DCA chunk starting at chunk_begin " + Num(a.chunk_begin);
  }
  if (a.chunk_len == 0 && a.chunk_begin != 0) return "chunk_begin must be 0 without DCA";
  if (!(a.scale > 0.0f) || !std::isfinite(a.scale)) return "scale must be positive and finite";
  if (!(a.rope_theta > 1.0) || !std::isfinite(a.rope_theta)) return "rope_theta must be > 1";
  const int64_t n = a.piece_end - a.piece_begin;
  if ((n + 63) / 64 * a.q_heads > 2147483647) return "num_queries x q_heads exceeds the grid";
  if (n == 0) return "";
  if (a.q == nullptr || kv.k == nullptr || kv.v == nullptr || a.out == nullptr ||
      kv.block_table == nullptr) {
    return "q, kv.k, kv.v, kv.block_table and out must be non-null";
  }
  if (!Aligned16(a.q) || !Aligned16(kv.k) || !Aligned16(kv.v) || !Aligned16(a.out)) {
    return "q, k, v and out must be 16-byte aligned";
  }
  if (a.lse_stride != 0 && a.lse_stride < n) return "lse_stride must be 0 or >= num_queries";
  for (int part = 0; part < kVerticalSlashNumParts; ++part) {
    const VerticalSlashPartRange r =
        VerticalSlashPartKeys(a.piece_end, a.chunk_begin, a.chunk_len, part);
    if (!r.present) continue;
    const VerticalSlashIndexDev& x = a.index[part];
    if (x.block_count == nullptr || x.block_offset == nullptr || x.column_count == nullptr ||
        x.column_index == nullptr || x.max_blocks < 0 || x.max_columns < 0) {
      return "index of part " + Num(part) + " is missing";
    }
  }
  return "";
}

cudaError_t VerticalSlashAttention(const VerticalSlashAttentionArgs& a, cudaStream_t stream) {
  if (!VerticalSlashAttentionUnsupported(a).empty()) return cudaErrorInvalidValue;
  if (a.piece_end == a.piece_begin) return cudaSuccess;
  return a.kv.head_dim == 128 ? internal::LaunchVerticalSlashAttentionSm90<128>(a, stream)
                              : internal::LaunchVerticalSlashAttentionSm90<64>(a, stream);
}

}  // namespace mp::cuda
