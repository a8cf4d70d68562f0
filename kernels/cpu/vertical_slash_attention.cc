#include "kernels/cpu/vertical_slash_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"

namespace mp::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kB = kVerticalSlashBlock;

const float* CacheRow(const float* cache, const PagedKvView& kv, int64_t head, int64_t token) {
  const int64_t bs = kv.block_size;
  return cache + ((kv.block_table[token / bs] * kv.kv_heads + head) * bs + token % bs) * kv.head_dim;
}

}  // namespace

void VerticalSlashAttention(const float* q, const PagedKvView& kv, const AttentionShape& shape,
                            const VerticalSlashIndexView& index, float* out, float* lse) {
  const int64_t nq = shape.num_queries;
  const int64_t q_heads = shape.q_heads;
  const int64_t d = kv.head_dim;
  if (nq <= 0 || q_heads <= 0 || kv.kv_heads <= 0) return;
  const int64_t group = q_heads / kv.kv_heads;
  const int64_t kv_len = shape.key_end - shape.key_begin;
  const int64_t row_blocks = VerticalSlashRowBlocks(nq);
  const size_t row_bytes = static_cast<size_t>(d) * sizeof(float);

  std::vector<float> q_tile(static_cast<size_t>(kB * d));
  std::vector<float> k_tile(static_cast<size_t>(kB * d));
  std::vector<float> v_tile(static_cast<size_t>(kB * d));
  std::vector<float> scores(static_cast<size_t>(kB * kB));
  std::vector<float> acc(static_cast<size_t>(kB * d));
  std::vector<float> row_max(kB), row_sum(kB);
  std::vector<int64_t> keys(kB);  // local key of each tile column

  for (int64_t h = 0; h < q_heads; ++h) {
    const int64_t hk = h / group;
    for (int64_t m = 0; m < row_blocks; ++m) {
      const int64_t i0 = m * kB;
      const int64_t rows = std::min(kB, nq - i0);
      const int64_t rb = h * row_blocks + m;
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(q_tile.data() + r * d, q + ((i0 + r) * q_heads + h) * d, row_bytes);
      }
      std::fill(acc.begin(), acc.begin() + rows * d, 0.0f);
      std::fill(row_max.begin(), row_max.end(), kNegInf);
      std::fill(row_sum.begin(), row_sum.end(), 0.0f);

      // One step of the online softmax over the w keys in `keys`.
      auto step = [&](int64_t w) {
        for (int64_t c = 0; c < w; ++c) {
          const int64_t token = shape.key_begin + keys[c];
          std::memcpy(k_tile.data() + c * d, CacheRow(kv.k, kv, hk, token), row_bytes);
          std::memcpy(v_tile.data() + c * d, CacheRow(kv.v, kv, hk, token), row_bytes);
        }
        GemmNT(q_tile.data(), d, k_tile.data(), d, scores.data(), w, rows, w, d, shape.scale,
               0.0f);
        for (int64_t r = 0; r < rows; ++r) {
          // Local keys < limit are visible to row i0 + r.
          const int64_t limit = shape.causal ? std::min(kv_len, kv_len - nq + i0 + r + 1) : kv_len;
          float* s = scores.data() + r * w;
          for (int64_t c = 0; c < w; ++c) {
            if (keys[c] >= limit) s[c] = kNegInf;
          }
        }
        OnlineSoftmaxStep(scores.data(), rows, w, row_max.data(), row_sum.data(), acc.data(), d);
        GemmNN(scores.data(), w, v_tile.data(), d, acc.data(), d, rows, d, w, 1.0f, 1.0f);
      };

      // Block phase: 64 consecutive keys per listed block (clipped at kv_len).
      const int32_t* offsets = index.block_offset + rb * index.max_blocks;
      for (int64_t b = 0; b < index.block_count[rb]; ++b) {
        const int64_t start = offsets[b];
        const int64_t w = std::min(kB, kv_len - start);
        if (w <= 0) continue;
        for (int64_t c = 0; c < w; ++c) keys[c] = start + c;
        step(w);
      }
      // Column phase: listed columns, 64 at a time.
      const int32_t* columns = index.column_index + rb * index.max_columns;
      const int64_t n_columns = index.column_count[rb];
      for (int64_t c0 = 0; c0 < n_columns;) {
        int64_t w = 0;
        for (; c0 < n_columns && w < kB; ++c0) {
          if (columns[c0] >= 0 && columns[c0] < kv_len) keys[w++] = columns[c0];
        }
        if (w > 0) step(w);
      }

      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        float* o = out + (i * q_heads + h) * d;
        if (row_sum[r] > 0.0f) {
          const float inv = 1.0f / row_sum[r];
          for (int64_t c = 0; c < d; ++c) o[c] = acc[r * d + c] * inv;
          if (lse != nullptr) lse[h * nq + i] = row_max[r] + std::log(row_sum[r]);
        } else {
          std::fill(o, o + d, 0.0f);
          if (lse != nullptr) lse[h * nq + i] = kNegInf;
        }
      }
    }
  }
}

}  // namespace mp::cpu
