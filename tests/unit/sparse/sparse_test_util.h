// Shared helpers of the vertical-slash tests: random K/V scattered into shuffled pages of a
// paged cache, and double-precision references.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/attention.h"
#include "tests/unit/kernels/kernel_test_util.h"

namespace mp::cpu::testing {

// K/V of a sequence, logically [seq_len, kv_heads, head_dim], in a paged cache whose block table
// is a random permutation; unused cache rows hold NaN so that reading them shows in the outputs.
struct PagedKv {
  int64_t seq_len = 0, kv_heads = 0, head_dim = 0, block_size = 0;
  std::vector<float> k, v;              // logical
  std::vector<float> k_cache, v_cache;  // [num_blocks, kv_heads, block_size, head_dim]
  std::vector<int32_t> block_table;

  PagedKv(std::vector<float> k_, std::vector<float> v_, int64_t seq_len_, int64_t kv_heads_,
          int64_t head_dim_, int64_t block_size_, uint64_t seed)
      : seq_len(seq_len_), kv_heads(kv_heads_), head_dim(head_dim_), block_size(block_size_),
        k(std::move(k_)), v(std::move(v_)) {
    const int64_t used = std::max<int64_t>(1, (seq_len + block_size - 1) / block_size);
    const int64_t num_blocks = used + 2;
    std::vector<int32_t> perm(num_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed));
    block_table.assign(perm.begin(), perm.begin() + used);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    k_cache.assign(num_blocks * kv_heads * block_size * head_dim, nan);
    v_cache.assign(k_cache.size(), nan);
    WriteKv(k.data(), v.data(), seq_len, 0, k_cache.data(), v_cache.data(), block_table.data(),
            block_size, kv_heads, head_dim);
  }

  static PagedKv Random(int64_t seq_len, int64_t kv_heads, int64_t head_dim, int64_t block_size,
                        uint64_t seed) {
    return PagedKv(RandomUniform(seq_len * kv_heads * head_dim, seed),
                   RandomUniform(seq_len * kv_heads * head_dim, seed + 1), seq_len, kv_heads,
                   head_dim, block_size, seed + 2);
  }

  PagedKvView View() const {
    PagedKvView view;
    view.k = k_cache.data();
    view.v = v_cache.data();
    view.block_table = block_table.data();
    view.block_size = block_size;
    view.kv_heads = kv_heads;
    view.head_dim = head_dim;
    return view;
  }
  const float* K(int64_t t, int64_t h) const { return k.data() + (t * kv_heads + h) * head_dim; }
  const float* V(int64_t t, int64_t h) const { return v.data() + (t * kv_heads + h) * head_dim; }
};

inline double Dot(const float* a, const float* b, int64_t d) {
  double s = 0.0;
  for (int64_t c = 0; c < d; ++c) s += static_cast<double>(a[c]) * b[c];
  return s;
}

// Dense attention in double of one query row over the keys `keys` (absolute positions) of kv
// head hk: out[d] and lse (-inf when keys is empty).
inline void ReferenceRow(const float* q, const PagedKv& kv, int64_t hk,
                         const std::vector<int64_t>& keys, double scale, std::vector<double>* out,
                         double* lse) {
  const int64_t d = kv.head_dim;
  out->assign(d, 0.0);
  if (keys.empty()) {
    *lse = -std::numeric_limits<double>::infinity();
    return;
  }
  std::vector<double> logits(keys.size());
  double m = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < keys.size(); ++i) {
    logits[i] = scale * Dot(q, kv.K(keys[i], hk), d);
    m = std::max(m, logits[i]);
  }
  double sum = 0.0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const double p = std::exp(logits[i] - m);
    sum += p;
    const float* v = kv.V(keys[i], hk);
    for (int64_t c = 0; c < d; ++c) (*out)[c] += p * v[c];
  }
  for (int64_t c = 0; c < d; ++c) (*out)[c] /= sum;
  *lse = m + std::log(sum);
}

}  // namespace mp::cpu::testing
