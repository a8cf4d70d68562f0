#include "kernels/cpu/attention.h"

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
constexpr int64_t kTargetTileRows = 768;  // q rows (queries x group heads) per tile
constexpr int64_t kDefaultKeyBlock = 512;
constexpr int64_t kDiagonalKeyBlock = 64;  // key block on the causal diagonal

// dst[r, :] = cache row of token begin + r of kv head `head`, for r in [0, end - begin):
// contiguous runs of one page are copied at once.
void GatherRows(const float* cache, const PagedKvView& kv, int64_t head, int64_t begin, int64_t end,
                float* dst) {  // [end - begin, head_dim]
  const int64_t bs = kv.block_size;
  const int64_t d = kv.head_dim;
  for (int64_t t = begin; t < end;) {
    const int64_t page = kv.block_table[t / bs];
    const int64_t row = t % bs;
    const int64_t run = std::min(end - t, bs - row);
    const float* src = cache + ((page * kv.kv_heads + head) * bs + row) * d;
    std::memcpy(dst + (t - begin) * d, src, static_cast<size_t>(run * d) * sizeof(float));
    t += run;
  }
}

}  // namespace

void WriteKv(const float* k, const float* v, int64_t n, int64_t start, float* k_cache,
             float* v_cache, const int32_t* block_table, int64_t block_size, int64_t kv_heads,
             int64_t head_dim) {
  const size_t row_bytes = static_cast<size_t>(head_dim) * sizeof(float);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = start + t;
    const int64_t page = block_table[pos / block_size];
    const int64_t row = pos % block_size;
    for (int64_t h = 0; h < kv_heads; ++h) {
      const int64_t src = (t * kv_heads + h) * head_dim;
      const int64_t dst = ((page * kv_heads + h) * block_size + row) * head_dim;
      std::memcpy(k_cache + dst, k + src, row_bytes);
      std::memcpy(v_cache + dst, v + src, row_bytes);
    }
  }
}

void PagedAttention(const float* q, const PagedKvView& kv, const AttentionShape& shape, float* out,
                    float* lse) {
  PagedAttention(q, kv, shape, AttentionTiles{}, out, lse);
}

void PagedAttention(const float* q, const PagedKvView& kv, const AttentionShape& shape,
                    const AttentionTiles& tiles, float* out, float* lse) {
  const int64_t nq = shape.num_queries;
  const int64_t q_heads = shape.q_heads;
  const int64_t kv_heads = kv.kv_heads;
  const int64_t d = kv.head_dim;
  if (nq <= 0 || q_heads <= 0 || kv_heads <= 0) return;
  const int64_t group = q_heads / kv_heads;
  const int64_t key_begin = shape.key_begin;
  const int64_t key_end = shape.key_end;
  // Query i sees keys [key_begin, visible_end(i)).
  auto visible_end = [&](int64_t i) {
    return shape.causal ? std::min(key_end, key_end - nq + i + 1) : key_end;
  };

  int64_t qb =
      tiles.query_block > 0 ? tiles.query_block : std::max<int64_t>(1, kTargetTileRows / group);
  qb = std::min(qb, nq);
  const int64_t kb = tiles.key_block > 0 ? tiles.key_block : kDefaultKeyBlock;
  const int64_t diagonal_kb = std::min(kb, kDiagonalKeyBlock);
  const int64_t max_rows = qb * group;

  std::vector<float> q_tile(static_cast<size_t>(max_rows * d));   // [rows, d], row = ii*group+g
  std::vector<float> acc(static_cast<size_t>(max_rows * d));      // [rows, d]
  std::vector<float> scores(static_cast<size_t>(max_rows * kb));  // [rows, keys]
  std::vector<float> k_tile(static_cast<size_t>(kb * d));         // [keys, d]
  std::vector<float> v_tile(static_cast<size_t>(kb * d));         // [keys, d]
  std::vector<float> row_max(static_cast<size_t>(max_rows));
  std::vector<float> row_sum(static_cast<size_t>(max_rows));
  const size_t group_bytes = static_cast<size_t>(group * d) * sizeof(float);

  for (int64_t hk = 0; hk < kv_heads; ++hk) {
    for (int64_t i0 = 0; i0 < nq; i0 += qb) {
      const int64_t i1 = std::min(nq, i0 + qb);
      const int64_t rows = (i1 - i0) * group;
      // The group's heads of one query are adjacent in q and out: one copy per query.
      for (int64_t i = i0; i < i1; ++i) {
        std::memcpy(q_tile.data() + (i - i0) * group * d, q + (i * q_heads + hk * group) * d,
                    group_bytes);
      }
      std::fill(acc.begin(), acc.begin() + rows * d, 0.0f);
      std::fill(row_max.begin(), row_max.begin() + rows, kNegInf);
      std::fill(row_sum.begin(), row_sum.begin() + rows, 0.0f);

      // Keys [key_begin, full_end) are visible to every row of the tile: large key blocks, no
      // mask. Keys [full_end, tile_end) form the diagonal: small blocks, each multiplied only
      // with the rows that see part of it (a suffix, as rows are ordered by query).
      const int64_t tile_end = visible_end(i1 - 1);
      const int64_t full_end = std::max(key_begin, std::min(visible_end(i0), tile_end));
      for (int64_t j0 = key_begin; j0 < tile_end;) {
        const int64_t j1 =
            j0 < full_end ? std::min(j0 + kb, full_end) : std::min(j0 + diagonal_kb, tile_end);
        const int64_t w = j1 - j0;
        // First query that sees key j0: visible_end(i) > j0.
        const int64_t i_first = shape.causal ? std::clamp(j0 - key_end + nq, i0, i1 - 1) : i0;
        const int64_t r0 = (i_first - i0) * group;
        const int64_t n_rows = rows - r0;
        GatherRows(kv.k, kv, hk, j0, j1, k_tile.data());
        GatherRows(kv.v, kv, hk, j0, j1, v_tile.data());
        // scores[r, c] = scale * q_{r0 + r} . k_{j0 + c}
        GemmNT(q_tile.data() + r0 * d, d, k_tile.data(), d, scores.data(), w, n_rows, w, d,
               shape.scale, 0.0f);
        if (j1 > full_end) {  // mask the keys past each row's limit
          for (int64_t r = 0; r < n_rows; ++r) {
            float* s = scores.data() + r * w;
            const int64_t vis = std::clamp<int64_t>(visible_end(i0 + (r0 + r) / group) - j0, 0, w);
            std::fill(s + vis, s + w, kNegInf);
          }
        }
        OnlineSoftmaxStep(scores.data(), n_rows, w, row_max.data() + r0, row_sum.data() + r0,
                          acc.data() + r0 * d, d);
        // acc[r0 + r, :] += p[r, :] V
        GemmNN(scores.data(), w, v_tile.data(), d, acc.data() + r0 * d, d, n_rows, d, w, 1.0f,
               1.0f);
        j0 = j1;
      }

      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r / group;
        const int64_t h = hk * group + r % group;
        float* o = out + (i * q_heads + h) * d;
        const float* a = acc.data() + r * d;
        if (row_sum[r] > 0.0f) {
          const float inv = 1.0f / row_sum[r];
          for (int64_t c = 0; c < d; ++c) o[c] = a[c] * inv;
          if (lse != nullptr) lse[h * nq + i] = row_max[r] + std::log(row_sum[r]);
        } else {
          std::fill(o, o + d, 0.0f);
          if (lse != nullptr) lse[h * nq + i] = kNegInf;
        }
      }
    }
  }
}

void MergeAttentionStates(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                          int64_t num_queries, int64_t heads, int64_t head_dim) {
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < num_queries; ++i) {
      float& la = lse_a[h * num_queries + i];
      const float lb = lse_b[h * num_queries + i];
      float* oa = out_a + (i * heads + h) * head_dim;
      const float* ob = out_b + (i * heads + h) * head_dim;
      const float m = std::max(la, lb);
      if (m == kNegInf) {  // both parts empty
        std::fill(oa, oa + head_dim, 0.0f);
        la = kNegInf;
        continue;
      }
      const float wa = std::exp(la - m);  // exactly 1 for the larger part, 0 for an empty one
      const float wb = std::exp(lb - m);
      const float total = wa + wb;
      for (int64_t c = 0; c < head_dim; ++c) oa[c] = (wa * oa[c] + wb * ob[c]) / total;
      la = m + std::log(total);
    }
  }
}

}  // namespace mp::cpu
