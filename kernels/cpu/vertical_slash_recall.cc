#include "kernels/cpu/vertical_slash_recall.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/vertical_slash_prefill.h"

namespace mp::cpu {

void VerticalSlashRecall(const float* q, const float* k, const float* v,
                         const VerticalSlashRecallShape& shape, const int64_t* budgets,
                         float* recall) {
  const int64_t L = shape.seq_len;
  const int64_t kvh = shape.kv_heads;
  const int64_t d = shape.head_dim;
  const int64_t heads = shape.q_heads;
  if (L <= 0 || heads <= 0 || kvh <= 0 || shape.engine_chunk <= 0) return;
  const bool dca = shape.chunk_size > 0;

  // The whole layer's cache in one page: [1, kv_heads, L, d], K rotated by p mod C (p).
  std::vector<float> k_rot(k, k + L * kvh * d);
  std::vector<int32_t> positions(static_cast<size_t>(L));
  for (int64_t p = 0; p < L; ++p) {
    positions[p] = static_cast<int32_t>(dca ? p % shape.chunk_len : p);
  }
  RopeNeox(k_rot.data(), positions.data(), L, kvh, d, shape.rope_theta);
  std::vector<float> k_cache(static_cast<size_t>(L * kvh * d));
  std::vector<float> v_cache(k_cache.size());
  const int32_t block_table[1] = {0};
  WriteKv(k_rot.data(), v, L, 0, k_cache.data(), v_cache.data(), block_table, L, kvh, d);
  PagedKvView kv;
  kv.k = k_cache.data();
  kv.v = v_cache.data();
  kv.block_table = block_table;
  kv.block_size = L;
  kv.kv_heads = kvh;
  kv.head_dim = d;

  // Engine chunks see only the keys before their end: attention never reads later keys.
  for (int64_t c0 = 0; c0 < L; c0 += shape.engine_chunk) {
    const int64_t n = std::min(shape.engine_chunk, L - c0);
    VerticalSlashPrefillShape ps;
    ps.num_queries = n;
    ps.q_heads = heads;
    ps.query_begin = c0;
    ps.chunk_size = shape.chunk_size;
    ps.chunk_len = shape.chunk_len;
    ps.rope_theta = shape.rope_theta;
    ps.scale = shape.scale;
    ps.last_q = shape.last_q;
    std::vector<float> out(static_cast<size_t>(n * heads * d));
    std::vector<float> lse_dense(static_cast<size_t>(heads * n));
    std::vector<float> lse_sparse(lse_dense.size());
    const float* qc = q + c0 * heads * d;
    VerticalSlashPrefillAttention(qc, kv, ps, nullptr, out.data(), lse_dense.data());
    VerticalSlashPrefillAttention(qc, kv, ps, budgets, out.data(), lse_sparse.data());
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < n; ++i) {
        const float ls = lse_sparse[h * n + i];
        const float ld = lse_dense[h * n + i];
        recall[h * L + c0 + i] = std::exp(ls - ld);  // not clipped: > 1 would show a bug
      }
    }
  }
}

void SummarizeVerticalSlashRecall(const float* recall, int64_t q_heads, int64_t seq_len,
                                  int64_t query_begin, VerticalSlashRecallSummary* summary) {
  query_begin = std::clamp<int64_t>(query_begin, 0, seq_len);
  const int64_t count = seq_len - query_begin;
  std::vector<float> sorted(static_cast<size_t>(count));
  for (int64_t h = 0; h < q_heads; ++h) {
    VerticalSlashRecallSummary& s = summary[h];
    if (count == 0) {
      s = {1.0, 1.0f, 1.0f};
      continue;
    }
    const float* r = recall + h * seq_len + query_begin;
    double sum = 0.0;
    for (int64_t i = 0; i < count; ++i) sum += r[i];
    std::copy(r, r + count, sorted.begin());
    std::sort(sorted.begin(), sorted.end());
    s.mean = sum / static_cast<double>(count);
    s.min = sorted.front();
    // Nearest rank: the ceil(0.05 count)-th smallest value.
    const int64_t rank = std::max<int64_t>(1, (5 * count + 99) / 100);
    s.p05 = sorted[static_cast<size_t>(rank - 1)];
  }
}

}  // namespace mp::cpu
