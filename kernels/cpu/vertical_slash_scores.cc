#include "kernels/cpu/vertical_slash_scores.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/gemm.h"

namespace mp::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kDefaultKeyBlock = 512;

// dst[c, :] = K row of key j0 + c of kv head `head`, c in [0, j1 - j0).
void GatherKeys(const PagedKvView& kv, int64_t head, int64_t j0, int64_t j1, float* dst) {
  const int64_t bs = kv.block_size;
  const int64_t d = kv.head_dim;
  for (int64_t t = j0; t < j1;) {
    const int64_t page = kv.block_table[t / bs];
    const int64_t row = t % bs;
    const int64_t run = std::min(j1 - t, bs - row);
    std::memcpy(dst + (t - j0) * d, kv.k + ((page * kv.kv_heads + head) * bs + row) * d,
                static_cast<size_t>(run * d) * sizeof(float));
    t += run;
  }
}

}  // namespace

void VerticalSlashScores(const float* q_intra, const float* q_succ, const float* q_inter,
                         const PagedKvView& kv, const VerticalSlashScoreShape& shape,
                         const VerticalSlashScoreTiles& tiles, float* vertical, float* slash) {
  const int64_t n = shape.num_queries;
  const int64_t e = shape.key_end;
  const int64_t q_heads = shape.q_heads;
  const int64_t kv_heads = kv.kv_heads;
  const int64_t d = kv.head_dim;
  if (q_heads <= 0 || e <= 0) return;
  std::fill(vertical, vertical + q_heads * e, 0.0f);
  std::fill(slash, slash + q_heads * e, 0.0f);
  if (n <= 0 || kv_heads <= 0) return;
  const int64_t group = q_heads / kv_heads;
  const int64_t rows = n * group;  // row ri = r * group + g
  const int64_t kb = tiles.key_block > 0 ? tiles.key_block : kDefaultKeyBlock;
  const int64_t first_masked = e - n;  // row r sees keys j <= e - n + r

  std::vector<float> q_tiles[3];  // intra, succ, inter: [rows, d]
  std::vector<float> k_tile(static_cast<size_t>(kb * d));
  std::vector<float> scores(static_cast<size_t>(rows * kb));
  std::vector<float> row_max(static_cast<size_t>(rows));
  std::vector<float> row_sum(static_cast<size_t>(rows));
  const float* q_src[3] = {q_intra, q_succ, q_inter};

  for (int64_t hk = 0; hk < kv_heads; ++hk) {
    for (int v = 0; v < 3; ++v) {
      q_tiles[v].clear();
      if (q_src[v] == nullptr) continue;
      q_tiles[v].resize(static_cast<size_t>(rows * d));
      for (int64_t r = 0; r < n; ++r) {
        std::memcpy(q_tiles[v].data() + r * group * d, q_src[v] + (r * q_heads + hk * group) * d,
                    static_cast<size_t>(group * d) * sizeof(float));
      }
    }
    // Scores of keys [j0, j1) (one region) into `scores` [rows, w], causal mask applied.
    auto score_tile = [&](int64_t j0, int64_t j1) {
      const int64_t w = j1 - j0;
      const int v = j0 >= shape.intra_begin ? 0 : (j0 >= shape.succ_begin ? 1 : 2);
      GatherKeys(kv, hk, j0, j1, k_tile.data());
      GemmNT(q_tiles[v].data(), d, k_tile.data(), d, scores.data(), w, rows, w, d, shape.scale,
             0.0f);
      if (j1 - 1 > first_masked) {
        for (int64_t ri = 0; ri < rows; ++ri) {
          const int64_t visible_end = first_masked + ri / group + 1;  // keys < visible_end
          const int64_t vis = std::clamp<int64_t>(visible_end - j0, 0, w);
          std::fill(scores.data() + ri * w + vis, scores.data() + (ri + 1) * w, kNegInf);
        }
      }
    };
    // Tiles never straddle a region boundary.
    auto next_end = [&](int64_t j0) {
      int64_t j1 = std::min(e, j0 + kb);
      for (int64_t boundary : {shape.succ_begin, shape.intra_begin}) {
        if (boundary > j0 && boundary < j1) j1 = boundary;
      }
      return j1;
    };

    // Pass 1: row max and sum of exp over all e columns (online).
    std::fill(row_max.begin(), row_max.end(), kNegInf);
    std::fill(row_sum.begin(), row_sum.end(), 0.0f);
    for (int64_t j0 = 0; j0 < e;) {
      const int64_t j1 = next_end(j0);
      const int64_t w = j1 - j0;
      score_tile(j0, j1);
      for (int64_t ri = 0; ri < rows; ++ri) {
        const float* s = scores.data() + ri * w;
        float m = row_max[ri];
        for (int64_t c = 0; c < w; ++c) m = std::max(m, s[c]);
        if (m == kNegInf) continue;
        float sum = row_max[ri] == kNegInf ? 0.0f : row_sum[ri] * std::exp(row_max[ri] - m);
        for (int64_t c = 0; c < w; ++c) sum += std::exp(s[c] - m);
        row_max[ri] = m;
        row_sum[ri] = sum;
      }
      j0 = j1;
    }

    // Pass 2: the normalized probabilities, reduced into columns and diagonals.
    for (int64_t j0 = 0; j0 < e;) {
      const int64_t j1 = next_end(j0);
      const int64_t w = j1 - j0;
      score_tile(j0, j1);
      for (int64_t ri = 0; ri < rows; ++ri) {
        const int64_t r = ri / group;
        const int64_t h = hk * group + ri % group;
        const float* s = scores.data() + ri * w;
        const float m = row_max[ri];
        const float inv = 1.0f / row_sum[ri];
        float* vert = vertical + h * e;
        float* diag = slash + h * e + (n - 1 - r);  // diag[j] = slash[j + n - 1 - r]
        // Column j0 + c lies on diagonal t = j0 + c + n - 1 - r; keep t < e.
        const int64_t c_end = std::min(w, e - (n - 1 - r) - j0);
        for (int64_t c = 0; c < w; ++c) {
          if (s[c] == kNegInf) continue;
          const float p = std::exp(s[c] - m) * inv;
          vert[j0 + c] += p;
          if (c < c_end) diag[j0 + c] += p;
        }
      }
      j0 = j1;
    }
  }
}

}  // namespace mp::cpu
