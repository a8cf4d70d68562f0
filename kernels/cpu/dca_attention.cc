#include "kernels/cpu/dca_attention.h"

#include <cstring>
#include <vector>

#include "kernels/cpu/dca_positions.h"
#include "kernels/cpu/rope.h"

namespace mp::cpu {
namespace {

// dst = src rotated, row t by positions[t].
void RotatedCopy(const float* src,  // [rows, heads, head_dim]
                 const std::vector<int32_t>& positions, int64_t rows, int64_t heads,
                 int64_t head_dim, double theta,
                 float* dst) {  // [rows, heads, head_dim]
  std::memcpy(dst, src, static_cast<size_t>(rows * heads * head_dim) * sizeof(float));
  RopeNeox(dst, positions.data(), rows, heads, head_dim, theta);
}

}  // namespace

void DcaPagedAttention(const float* q, const PagedKvView& kv, const DcaAttentionShape& shape,
                       float* out, float* lse) {
  DcaPagedAttention(q, kv, shape, AttentionTiles{}, out, lse);
}

void DcaPagedAttention(const float* q, const PagedKvView& kv, const DcaAttentionShape& shape,
                       const AttentionTiles& tiles, float* out, float* lse) {
  const int64_t n = shape.num_queries;
  const int64_t heads = shape.q_heads;
  const int64_t d = kv.head_dim;
  const int64_t C = shape.chunk_len;
  const int64_t S = shape.chunk_size;
  if (n <= 0 || heads <= 0) return;
  const int64_t row_floats = heads * d;
  const float logit_scale = shape.scale * shape.temperature * shape.temperature;
  const int64_t q_begin = shape.query_begin;
  const int64_t q_end = q_begin + n;

  // Per-piece buffers (a piece holds at most min(n, C) queries).
  const int64_t max_rows = n < C ? n : C;
  std::vector<float> q_rot(static_cast<size_t>(max_rows * row_floats));
  std::vector<float> part_out(static_cast<size_t>(max_rows * row_floats));
  std::vector<float> piece_lse(static_cast<size_t>(heads * max_rows));
  std::vector<float> part_lse(static_cast<size_t>(heads * max_rows));
  std::vector<int32_t> positions(static_cast<size_t>(max_rows));

  for (int64_t b = q_begin; b < q_end;) {
    const int64_t e = DcaPieceEnd(b, q_end, C);
    const int64_t rows = e - b;
    const DcaRegions regions = DcaPieceRegions(b, e, C);
    const float* q_piece = q + (b - q_begin) * row_floats;
    float* out_piece = out + (b - q_begin) * row_floats;

    AttentionShape part;
    part.num_queries = rows;
    part.q_heads = heads;
    part.scale = logit_scale;

    // intra: keys [P, e), causal bottom-right (query b + r sees keys <= b + r).
    for (int64_t r = 0; r < rows; ++r) {
      positions[r] = static_cast<int32_t>(DcaIntraQueryPosition(b + r, C));
    }
    RotatedCopy(q_piece, positions, rows, heads, d, shape.rope_theta, q_rot.data());
    part.key_begin = regions.intra.begin;
    part.key_end = regions.intra.end;
    part.causal = true;
    PagedAttention(q_rot.data(), kv, part, tiles, out_piece, piece_lse.data());

    // succ: the C keys of the previous chunk, non-causal.
    if (!regions.succ.empty()) {
      for (int64_t r = 0; r < rows; ++r) {
        positions[r] = static_cast<int32_t>(DcaSuccQueryPosition(b + r, C, S));
      }
      RotatedCopy(q_piece, positions, rows, heads, d, shape.rope_theta, q_rot.data());
      part.key_begin = regions.succ.begin;
      part.key_end = regions.succ.end;
      part.causal = false;
      PagedAttention(q_rot.data(), kv, part, tiles, part_out.data(), part_lse.data());
      MergeAttentionStates(out_piece, piece_lse.data(), part_out.data(), part_lse.data(), rows,
                           heads, d);
    }

    // inter: all older chunks, non-causal, one constant query position.
    if (!regions.inter.empty()) {
      const int32_t inter_pos = static_cast<int32_t>(DcaInterQueryPosition(C, S));
      for (int64_t r = 0; r < rows; ++r) positions[r] = inter_pos;
      RotatedCopy(q_piece, positions, rows, heads, d, shape.rope_theta, q_rot.data());
      part.key_begin = regions.inter.begin;
      part.key_end = regions.inter.end;
      part.causal = false;
      PagedAttention(q_rot.data(), kv, part, tiles, part_out.data(), part_lse.data());
      MergeAttentionStates(out_piece, piece_lse.data(), part_out.data(), part_lse.data(), rows,
                           heads, d);
    }

    if (lse != nullptr) {
      for (int64_t h = 0; h < heads; ++h) {
        std::memcpy(lse + h * n + (b - q_begin), piece_lse.data() + h * rows,
                    static_cast<size_t>(rows) * sizeof(float));
      }
    }
    b = e;
  }
}

}  // namespace mp::cpu
