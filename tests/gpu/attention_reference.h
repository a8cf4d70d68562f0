// Double-precision references for the GPU prefill attention tests, over a PagedCache
// (kernel_test_util.h): plain attention (bottom-right causal or not) and DCA, the latter
// literally after qwen1m-spec.md §2.5: per query, the query rotated on the host for each key
// region (CPU reference RoPE, rounded to bf16 as the kernel's contract says), a dense softmax per
// region, and the LSE merge of the parts (§2.4). Rows are spread over the host's threads.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/cpu/rope.h"
#include "kernels/cuda/dca_positions.h"
#include "tests/gpu/kernel_test_util.h"

namespace mp::cuda::testing {

// The queries [key_end - n, key_end) of sequence 0 of `cache` (q: [n, q_heads, d]) over its keys
// [key_begin, key_end). Outputs out [n, q_heads, d] (row = i * q_heads + h) and lse [q_heads, n].
struct ReferenceProblem {
  const PagedCache* cache = nullptr;
  const std::vector<__nv_bfloat16>* q = nullptr;
  int64_t q_heads = 0;
  int64_t num_queries = 0;
  int64_t key_begin = 0;
  int64_t key_end = 0;
};

template <class RowFn>
void ForEachRow(int64_t rows, RowFn fn) {
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>(rows, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int64_t row = t; row < rows; row += threads) fn(row);
    });
  }
  for (auto& th : pool) th.join();
}

inline void PlainReference(const ReferenceProblem& pr, bool causal, std::vector<double>* ref_out,
                           std::vector<double>* ref_lse) {
  const PagedCache& c = *pr.cache;
  const int64_t d = c.head_dim, n = pr.num_queries, group = pr.q_heads / c.kv_heads;
  ref_out->assign(n * pr.q_heads * d, 0.0);
  ref_lse->assign(pr.q_heads * n, -std::numeric_limits<double>::infinity());
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  ForEachRow(n * pr.q_heads, [&](int64_t row) {
    const int64_t i = row / pr.q_heads, h = row % pr.q_heads;
    const int64_t hi = causal ? std::min(pr.key_end, pr.key_end - n + i + 1) : pr.key_end;
    std::vector<double> qd(d);
    for (int64_t x = 0; x < d; ++x) qd[x] = Bf((*pr.q)[row * d + x]);
    (*ref_lse)[h * n + i] = ReferenceAttention(c, 0, h / group, qd.data(), pr.key_begin, hi,
                                               scale, &(*ref_out)[row * d]);
  });
}

inline void DcaReference(const ReferenceProblem& pr, const DcaParams& dca,
                         std::vector<double>* ref_out, std::vector<double>* ref_lse) {
  const PagedCache& c = *pr.cache;
  const int64_t d = c.head_dim, n = pr.num_queries, group = pr.q_heads / c.kv_heads;
  const int64_t C = dca.chunk_len, S = dca.chunk_size;
  ref_out->assign(n * pr.q_heads * d, 0.0);
  ref_lse->assign(pr.q_heads * n, -std::numeric_limits<double>::infinity());
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  ForEachRow(n * pr.q_heads, [&](int64_t row) {
    const int64_t i = row / pr.q_heads, h = row % pr.q_heads;
    const int64_t p = pr.key_end - n + i;  // bottom-right aligned position
    if (p < 0) return;
    // Spec §2.5: the DCA chunk [P, P + C) of the query; intra [P, p], succ [P - C, P),
    // inter [0, P - C), each clipped to [key_begin, key_end).
    const int64_t P = p / C * C;
    struct Region {
      int64_t lo, hi, pos;
    };
    const Region regions[3] = {{P, p + 1, p % C},
                               {P - C, P, std::min(p % C + C, S)},
                               {0, P - C, std::min(2 * C - 1, S)}};
    std::vector<float> qf(d);
    for (int64_t x = 0; x < d; ++x) qf[x] = Bf((*pr.q)[row * d + x]);
    std::vector<std::vector<double>> outs;
    std::vector<double> lses;
    for (const Region& r : regions) {
      const int64_t lo = std::max({r.lo, pr.key_begin, int64_t{0}});
      const int64_t hi = std::min(r.hi, pr.key_end);
      std::vector<float> rotated = qf;
      const int32_t pos = static_cast<int32_t>(r.pos);
      cpu::RopeNeox(rotated.data(), &pos, 1, 1, d, dca.rope_theta);
      // The kernel's contract: the rotated query is rounded to bf16, as the unfused path's RoPE
      // output would be.
      for (float& x : rotated) x = Bf(__float2bfloat16(x));
      std::vector<double> qd(rotated.begin(), rotated.end()), o(d);
      lses.push_back(ReferenceAttention(c, 0, h / group, qd.data(), lo, hi, scale, o.data()));
      outs.push_back(std::move(o));
    }
    (*ref_lse)[h * n + i] = MergeParts(outs, lses, d, &(*ref_out)[row * d]);
  });
}

}  // namespace mp::cuda::testing
