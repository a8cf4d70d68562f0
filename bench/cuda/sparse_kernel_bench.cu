// What limits the vertical-slash sparse attention kernel (kernels/cuda/vertical_slash_attention.h)?
// The kernel alone, on indices built here instead of estimated, so that the same number of key
// tiles per CTA is gathered from key sets with very different memory locality:
//
//   same     every (q head, row block) lists the same blocks and columns at the start of the
//            cache: the gathered set (blocks x 64 + columns keys) stays in L2;
//   band     per row block the blocks right before its rows (a sliding window: neighbouring row
//            blocks share all but one block, the 7 q heads of a KV head share everything), and
//            per head one column set;
//   scatter  per (q head, row block) distinct random blocks and per head random columns, all
//            over the cache: no reuse, every gather comes from HBM.
//
// If the three run at the same rate the kernel is bound by a fixed cost per tile (the producer's
// latency), not by DRAM; if `scatter` is slower, by the memory system. The dense sm_90a kernel on
// the same cache and queries is timed in the same run as the reference.
//
//   mp_sparse_kernel_bench [--keys 1048576] [--blocks 2300] [--columns 3929]
//                          [--patterns same,band,scatter] [--iters 5] [--seed 1]
//
// Shapes: Qwen2.5-7B attention (28 query / 4 KV heads, head_dim 128, bf16, paged cache with
// block size 64 and a shuffled block table), the last 32768 queries of a --keys token prompt,
// without DCA (one causal part). --blocks and --columns are per (q head, 64-row block); the
// defaults give ~15% of the causal keys at 1M, the density the estimated Qwen budgets reach on
// mp_sparse_bench's inputs. Every listed key lies before the block's first row, so no tile needs
// a mask. Computed work = 4 x 128 x 64 x 128 FLOPs per key tile of 128 (two blocks, or 128
// columns); gathered bytes = 128 keys x 512 bytes (K and V) per tile.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/cuda/bench_util.cuh"
#include "kernels/cuda/paged_prefill_attention.h"
#include "kernels/cuda/vertical_slash_attention.h"

namespace {

constexpr int64_t kHeads = 28, kKvHeads = 4, kDim = 128, kChunk = 32768, kBlock = 64;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Host index of one pattern: [heads, row_blocks, blocks] block starts and [heads, row_blocks,
// columns] columns (local keys = sequence positions), ascending per list.
struct HostIndex {
  std::vector<int32_t> block_offset, column_index;
};

HostIndex MakeIndex(const std::string& pattern, int64_t keys, int64_t nb, int64_t nc,
                    uint64_t seed) {
  const int64_t query_begin = keys - kChunk, row_blocks = kChunk / 64;
  HostIndex x;
  x.block_offset.resize(size_t(kHeads * row_blocks * nb));
  x.column_index.resize(size_t(kHeads * row_blocks * nc));
  std::mt19937_64 rng(seed);
  // n distinct sorted values drawn from [lo, lo + range).
  auto distinct = [&](int64_t n, int64_t lo, int64_t range) {
    std::vector<int64_t> v;
    std::uniform_int_distribution<int64_t> pick(0, range - 1);
    while (int64_t(v.size()) < n) {
      v.push_back(lo + pick(rng));
      if (int64_t(v.size()) == n) {
        std::sort(v.begin(), v.end());
        v.erase(std::unique(v.begin(), v.end()), v.end());
      }
    }
    return v;
  };
  // Columns in [0, query_begin / 2), blocks after them (same: columns right after the blocks).
  const int64_t half = query_begin / 2;
  const int64_t group = kHeads / kKvHeads;
  std::vector<int64_t> cols;
  for (int64_t h = 0; h < kHeads; ++h) {
    if (pattern == "same") {
      if (h == 0) {
        cols.resize(size_t(nc));
        std::iota(cols.begin(), cols.end(), 64 * nb);
      }
    } else if (pattern == "scatter" || h % group == 0) {  // band: one set per KV head
      cols = distinct(nc, 0, half);
    }
    for (int64_t m = 0; m < row_blocks; ++m) {
      int32_t* c = x.column_index.data() + (h * row_blocks + m) * nc;
      for (int64_t j = 0; j < nc; ++j) c[j] = int32_t(cols[j]);
    }
  }
  for (int64_t h = 0; h < kHeads; ++h) {
    for (int64_t m = 0; m < row_blocks; ++m) {
      int32_t* b = x.block_offset.data() + (h * row_blocks + m) * nb;
      const int64_t first_row = query_begin + 64 * m;
      if (pattern == "same") {
        for (int64_t j = 0; j < nb; ++j) b[j] = int32_t(64 * j);
      } else if (pattern == "band") {
        for (int64_t j = 0; j < nb; ++j) b[j] = int32_t(first_row - 64 * (nb - j));
      } else {
        // Distinct random 128-key slots of [half, query_begin), a block at a random offset in
        // each (unaligned, like slash blocks; never two in one slot, so no key twice).
        const std::vector<int64_t> slots = distinct(nb, 0, (query_begin - half) / 128);
        std::uniform_int_distribution<int64_t> off(0, 64);
        for (int64_t j = 0; j < nb; ++j) b[j] = int32_t(half + 128 * slots[j] + off(rng));
      }
    }
  }
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t keys = 1048576, nb = 2300, nc = 3929;
  int iters = 5;
  uint64_t seed = 1;
  std::vector<std::string> patterns = {"same", "band", "scatter"};
  CLI::App app{
      "The vertical-slash sparse attention kernel on constructed indices of equal work "
      "and different locality, next to the dense kernel"};
  app.add_option("--keys", keys, "cached keys (the prompt length; the last 32768 are queries)");
  app.add_option("--blocks", nb, "64-key blocks per (q head, 64-row block)");
  app.add_option("--columns", nc, "single columns per (q head, 64-row block)");
  app.add_option("--patterns", patterns, "comma-separated: same, band, scatter")
      ->delimiter(',')
      ->check(CLI::IsMember({"same", "band", "scatter"}));
  app.add_option("--iters", iters, "timed rounds (median) after one warm-up")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--seed", seed, "input and index seed");
  CLI11_PARSE(app, argc, argv);
  const int64_t query_begin = keys - kChunk;
  // Room for the blocks and columns of every pattern before the queries (see MakeIndex).
  if (keys % 64 != 0 || query_begin < 4 * 64 * (nb + 1) || nb < 0 || nc < 0 ||
      nc > query_begin / 4 || patterns.empty()) {
    std::fprintf(stderr,
                 "need --keys a multiple of 64 with keys - 32768 >= 256 x (blocks + 1), "
                 "0 <= columns <= (keys - 32768) / 4, and at least one pattern\n");
    return 2;
  }
  int dev = 0;
  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDevice(&dev));
  BENCH_CHECK(cudaGetDeviceProperties(&prop, dev));
  std::printf(
      "device: %s, %d SMs; keys %lld, 32768 queries, per row block %lld blocks + %lld "
      "columns\n",
      prop.name, prop.multiProcessorCount, (long long)keys, (long long)nb, (long long)nc);

  const int64_t cache_blocks = keys / kBlock;
  const int64_t cache_elems = cache_blocks * kKvHeads * kBlock * kDim;
  const int64_t q_elems = kChunk * kHeads * kDim;
  const int64_t row_blocks = kChunk / 64;
  __nv_bfloat16 *q, *k, *v, *out;
  int32_t *table, *block_count, *block_offset, *column_count, *column_index;
  BENCH_CHECK(cudaMalloc(&q, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&k, cache_elems * 2));
  BENCH_CHECK(cudaMalloc(&v, cache_elems * 2));
  BENCH_CHECK(cudaMalloc(&out, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&table, cache_blocks * 4));
  BENCH_CHECK(cudaMalloc(&block_count, kHeads * row_blocks * 4));
  BENCH_CHECK(cudaMalloc(&column_count, kHeads * row_blocks * 4));
  BENCH_CHECK(cudaMalloc(&block_offset, std::max<int64_t>(1, kHeads * row_blocks * nb) * 4));
  BENCH_CHECK(cudaMalloc(&column_index, std::max<int64_t>(1, kHeads * row_blocks * nc) * 4));
  mp::bench::FillRandomBf16<<<4096, 256>>>(q, q_elems, seed * 3 + 1, 1.0f);
  mp::bench::FillRandomBf16<<<4096, 256>>>(k, cache_elems, seed * 3 + 2, 1.0f);
  mp::bench::FillRandomBf16<<<4096, 256>>>(v, cache_elems, seed * 3 + 3, 1.0f);
  BENCH_CHECK(cudaGetLastError());
  {
    std::vector<int32_t> host_table(cache_blocks);
    std::iota(host_table.begin(), host_table.end(), 0);
    std::shuffle(host_table.begin(), host_table.end(), std::mt19937_64(seed + 4));
    BENCH_CHECK(cudaMemcpy(table, host_table.data(), cache_blocks * 4, cudaMemcpyHostToDevice));
    std::vector<int32_t> nbv(kHeads * row_blocks, int32_t(nb)),
        ncv(kHeads * row_blocks, int32_t(nc));
    BENCH_CHECK(cudaMemcpy(block_count, nbv.data(), nbv.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CHECK(cudaMemcpy(column_count, ncv.data(), ncv.size() * 4, cudaMemcpyHostToDevice));
  }
  const float scale = float(1.0 / std::sqrt(double(kDim)));

  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  auto time_ms = [&](auto&& launch) {
    std::vector<double> t;
    for (int r = 0; r <= iters; ++r) {  // round 0 warms up
      float ms = 0;
      BENCH_CHECK(cudaEventRecord(start));
      BENCH_CHECK(launch());
      BENCH_CHECK(cudaEventRecord(stop));
      BENCH_CHECK(cudaEventSynchronize(stop));
      BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (r > 0) t.push_back(ms);
    }
    return Median(t);
  };

  // Dense reference: the same queries against all keys, causal.
  const mp::cuda::PagedPrefillAttentionArgs d = mp::bench::CausalPrefillArgs(
      q, k, v, table, out, kChunk, kHeads, kKvHeads, kDim, cache_blocks, kBlock, keys, scale);
  const double dense_ms = time_ms([&] { return mp::cuda::PagedPrefillAttention(d, nullptr); });
  const double dense_flops =
      4.0 * kHeads * kDim * double(kChunk) * (double(query_begin) + kChunk / 2.0);
  std::printf(
      "{\"bench\":\"sparse_kernel\",\"pattern\":\"dense\",\"keys\":%lld,\"ms\":%.3f,"
      "\"tflops\":%.1f}\n",
      (long long)keys, dense_ms, dense_flops / (dense_ms * 1e-3) / 1e12);

  mp::cuda::VerticalSlashAttentionArgs a;
  a.q = q;
  a.kv = {k, v, table, cache_blocks, kBlock, kKvHeads, kDim};
  a.out = out;
  a.q_heads = kHeads;
  a.piece_begin = query_begin;
  a.piece_end = keys;
  a.rope_theta = 1e7;
  a.scale = scale;
  a.index[0] = {block_count, block_offset, column_count, column_index, nb, nc};
  const std::string why = mp::cuda::VerticalSlashAttentionUnsupported(a);
  if (!why.empty()) {
    std::fprintf(stderr, "sparse kernel: %s\n", why.c_str());
    return 1;
  }
  const double tiles = double(kHeads) * row_blocks * double((nb + 1) / 2 + (nc + 127) / 128);
  const double flops = tiles * 4.0 * kDim * 64 * 128;
  const double bytes = tiles * 128 * 2 * kDim * 2;
  unsigned long long* bad;
  BENCH_CHECK(cudaMalloc(&bad, sizeof(*bad)));
  struct Row {
    std::string pattern;
    double ms;
  };
  std::vector<Row> rows;
  for (const std::string& pattern : patterns) {
    const HostIndex x = MakeIndex(pattern, keys, nb, nc, seed * 7 + rows.size());
    BENCH_CHECK(cudaMemcpy(block_offset, x.block_offset.data(), x.block_offset.size() * 4,
                           cudaMemcpyHostToDevice));
    BENCH_CHECK(cudaMemcpy(column_index, x.column_index.data(), x.column_index.size() * 4,
                           cudaMemcpyHostToDevice));
    const double ms = time_ms([&] { return mp::cuda::VerticalSlashAttention(a, nullptr); });
    BENCH_CHECK(cudaMemset(bad, 0, sizeof(*bad)));
    mp::bench::CountNonFinite<<<1024, 256>>>(out, q_elems, bad);
    unsigned long long nonfinite = 0;
    BENCH_CHECK(cudaMemcpy(&nonfinite, bad, sizeof(nonfinite), cudaMemcpyDeviceToHost));
    if (nonfinite != 0) {
      std::fprintf(stderr, "%s: %llu non-finite outputs\n", pattern.c_str(), nonfinite);
      return 1;
    }
    std::printf(
        "{\"bench\":\"sparse_kernel\",\"pattern\":\"%s\",\"keys\":%lld,\"blocks\":%lld,"
        "\"columns\":%lld,\"ms\":%.3f,\"computed_tflops\":%.1f,\"gathered_tb_s\":%.2f,"
        "\"density\":%.4f}\n",
        pattern.c_str(), (long long)keys, (long long)nb, (long long)nc, ms,
        flops / (ms * 1e-3) / 1e12, bytes / (ms * 1e-3) / 1e12, flops / dense_flops);
    rows.push_back({pattern, ms});
  }
  std::printf("\n| kernel | ms | computed TFLOP/s | gathered TB/s | vs dense time |\n");
  std::printf("|---|---|---|---|---|\n");
  std::printf("| dense | %.2f | %.0f | - | 1.00 |\n", dense_ms,
              dense_flops / (dense_ms * 1e-3) / 1e12);
  for (const Row& r : rows) {
    std::printf("| sparse, %s | %.2f | %.0f | %.2f | %.3f |\n", r.pattern.c_str(), r.ms,
                flops / (r.ms * 1e-3) / 1e12, bytes / (r.ms * 1e-3) / 1e12, r.ms / dense_ms);
  }
  return 0;
}
