// Benchmark of the sm_90a split-KV decode attention kernels on the Qwen2.5-7B attention shape
// (28 query heads, 4 KV heads, head_dim 128, bf16): one query token per sequence against 128K,
// 512K and 1M cached keys (paged, block_size 64, shuffled block table), against the
// device-to-device copy bandwidth measured in the same process.
//
//   decode_bench [--json FILE] [--cases 128k,512k,1m] [--iters N] [--batch B]
//
// Per round (round-robin, so clock and temperature drift hit every kernel alike): one
// cudaMemcpyAsync device-to-device of 1 GiB, one DecodeAttention and one DcaDecodeAttention
// (Qwen2.5-1M DCA constants: the same bytes over the three regions), each timed with CUDA
// events (the decode time includes the combine kernel) after the L2 cache is flushed. Reported:
// medians; bytes/s of a decode = K + V bytes read (2 * kv_heads * keys * head_dim * 2 per
// sequence) / time; copy bandwidth = 2 * bytes copied / time (each byte read and written once),
// the rate the anchors quote. "ratio" = decode bytes/s / copy bandwidth (goal >= 0.85 at 1M).
// Checks: outputs finite, and the default split count agrees with a one-split run (relative
// Frobenius difference <= 2e-2); the run fails otherwise.
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

#include "bench/cuda/bench_util.cuh"
#include "kernels/cuda/decode_attention.h"

namespace {

using mp::bench::CountNonFinite;
using mp::bench::FillRandomBf16;

struct BenchCase {
  const char* name;
  int64_t keys;
};

float Median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double RelDiff(const std::vector<__nv_bfloat16>& a, const std::vector<__nv_bfloat16>& b) {
  double e = 0, r = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = __bfloat162float(a[i]), y = __bfloat162float(b[i]);
    e += (x - y) * (x - y);
    r += y * y;
  }
  return r > 0 ? std::sqrt(e / r) : 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, cases_arg = "128k,512k,1m";
  int iters = 30;
  int64_t batch = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (arg == "--cases" && i + 1 < argc) {
      cases_arg = argv[++i];
    } else if (arg == "--iters" && i + 1 < argc) {
      iters = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--batch" && i + 1 < argc) {
      batch = std::max<int64_t>(1, std::atoll(argv[++i]));
    } else {
      std::fprintf(stderr, "unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  constexpr int64_t kHeads = 28, kKvHeads = 4, kDim = 128, kBlock = 64;
  const std::vector<BenchCase> all_cases = {{"128k", 131072}, {"512k", 524288}, {"1m", 1048576}};
  std::vector<BenchCase> cases;
  for (const auto& c : all_cases) {
    if (("," + cases_arg + ",").find(std::string(",") + c.name + ",") != std::string::npos) {
      cases.push_back(c);
    }
  }
  if (cases.empty()) {
    std::fprintf(stderr, "no case selected\n");
    return 2;
  }

  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, batch %lld\n", prop.name, prop.multiProcessorCount,
              static_cast<long long>(batch));

  int64_t max_keys = 0;
  for (const auto& c : cases) max_keys = std::max(max_keys, c.keys);
  const int64_t blocks_per_seq = (max_keys + kBlock - 1) / kBlock;
  const int64_t blocks = blocks_per_seq * batch;
  const int64_t cache_elems = blocks * kKvHeads * kBlock * kDim;
  const int64_t q_elems = batch * kHeads * kDim;

  __nv_bfloat16 *q, *k, *v, *out, *out_ref;
  float* lse;
  int32_t *tables, *key_end;
  unsigned long long* bad;
  void *copy_src, *copy_dst, *flush;
  constexpr size_t kCopyBytes = size_t(1) << 30;
  constexpr size_t kFlushBytes = size_t(256) << 20;  // > L2 (50 MB on H100/H200)
  BENCH_CHECK(cudaMalloc(&q, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&k, cache_elems * 2));
  BENCH_CHECK(cudaMalloc(&v, cache_elems * 2));
  BENCH_CHECK(cudaMalloc(&out, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&out_ref, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&lse, batch * kHeads * 4));
  BENCH_CHECK(cudaMalloc(&tables, blocks * 4));
  BENCH_CHECK(cudaMalloc(&key_end, batch * 4));
  BENCH_CHECK(cudaMalloc(&bad, sizeof(unsigned long long)));
  BENCH_CHECK(cudaMalloc(&copy_src, kCopyBytes));
  BENCH_CHECK(cudaMalloc(&copy_dst, kCopyBytes));
  BENCH_CHECK(cudaMalloc(&flush, kFlushBytes));
  FillRandomBf16<<<1024, 256>>>(q, q_elems, 1, 1.0f);
  FillRandomBf16<<<4096, 256>>>(k, cache_elems, 2, 1.0f);
  FillRandomBf16<<<4096, 256>>>(v, cache_elems, 3, 1.0f);
  BENCH_CHECK(cudaMemset(copy_src, 1, kCopyBytes));
  BENCH_CHECK(cudaGetLastError());
  std::vector<int32_t> host_tables(blocks);
  std::iota(host_tables.begin(), host_tables.end(), 0);
  std::shuffle(host_tables.begin(), host_tables.end(), std::mt19937_64(4));
  BENCH_CHECK(cudaMemcpy(tables, host_tables.data(), blocks * 4, cudaMemcpyHostToDevice));

  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  auto timed = [&](auto&& fn) {
    BENCH_CHECK(cudaMemsetAsync(flush, 0, kFlushBytes));
    BENCH_CHECK(cudaEventRecord(start));
    fn();
    BENCH_CHECK(cudaEventRecord(stop));
    BENCH_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return ms;
  };

  mp::cuda::DcaParams dca;  // Qwen2.5-1M
  dca.chunk_len = 253952;
  dca.chunk_size = 262144;
  dca.rope_theta = 1e7;
  std::string json;
  struct Row {
    std::string name;
    int splits;
    double copy_gbs, dec_ms, dec_gbs, dca_ms, dca_gbs, diff;
  };
  std::vector<Row> rows;
  bool failed = false;
  for (const auto& c : cases) {
    std::vector<int32_t> ends(batch, static_cast<int32_t>(c.keys));
    BENCH_CHECK(cudaMemcpy(key_end, ends.data(), batch * 4, cudaMemcpyHostToDevice));
    mp::cuda::DecodeAttentionArgs a;
    a.q = q;
    a.k_cache = k;
    a.v_cache = v;
    a.block_tables = tables;
    a.key_end = key_end;
    a.out = out;
    a.lse = lse;
    a.num_seqs = batch;
    a.q_heads = kHeads;
    a.kv_heads = kKvHeads;
    a.head_dim = kDim;
    a.num_blocks = blocks;
    a.block_size = kBlock;
    a.table_stride = blocks_per_seq;
    a.scale = 1.0f / std::sqrt(float(kDim));

    // One-split reference run, then the default split count.
    a.num_splits = 1;
    BENCH_CHECK(mp::cuda::DecodeAttention(a, nullptr));
    BENCH_CHECK(cudaMemcpy(out_ref, out, q_elems * 2, cudaMemcpyDeviceToDevice));
    a.num_splits =
        mp::cuda::DecodeAttentionDefaultSplits(batch, kKvHeads, c.keys, prop.multiProcessorCount);
    a.workspace_bytes = mp::cuda::DecodeAttentionWorkspaceBytes(a);
    void* ws = nullptr;
    if (a.workspace_bytes > 0) BENCH_CHECK(cudaMalloc(&ws, a.workspace_bytes));
    a.workspace = ws;
    const std::string why = mp::cuda::DecodeAttentionUnsupported(a, &dca);
    if (!why.empty()) {
      std::fprintf(stderr, "unsupported: %s\n", why.c_str());
      return 1;
    }
    BENCH_CHECK(mp::cuda::DecodeAttention(a, nullptr));  // warm-up
    BENCH_CHECK(cudaDeviceSynchronize());
    std::vector<__nv_bfloat16> h_out(q_elems), h_ref(q_elems);
    BENCH_CHECK(cudaMemcpy(h_out.data(), out, q_elems * 2, cudaMemcpyDeviceToHost));
    BENCH_CHECK(cudaMemcpy(h_ref.data(), out_ref, q_elems * 2, cudaMemcpyDeviceToHost));
    const double diff = RelDiff(h_out, h_ref);
    BENCH_CHECK(mp::cuda::DcaDecodeAttention(a, dca, nullptr));  // warm-up
    BENCH_CHECK(cudaDeviceSynchronize());
    unsigned long long nonfinite = 0;
    BENCH_CHECK(cudaMemset(bad, 0, sizeof(unsigned long long)));
    CountNonFinite<<<64, 256>>>(out, q_elems, bad);
    CountNonFinite<<<64, 256>>>(out_ref, q_elems, bad);
    BENCH_CHECK(cudaMemcpy(&nonfinite, bad, sizeof(nonfinite), cudaMemcpyDeviceToHost));

    std::vector<float> copy_ms, dec_ms, dca_ms;
    for (int r = 0; r < iters; ++r) {
      copy_ms.push_back(timed([&] {
        BENCH_CHECK(cudaMemcpyAsync(copy_dst, copy_src, kCopyBytes, cudaMemcpyDeviceToDevice));
      }));
      dec_ms.push_back(timed([&] { BENCH_CHECK(mp::cuda::DecodeAttention(a, nullptr)); }));
      dca_ms.push_back(timed([&] { BENCH_CHECK(mp::cuda::DcaDecodeAttention(a, dca, nullptr)); }));
    }
    if (ws != nullptr) BENCH_CHECK(cudaFree(ws));
    const double bytes = 2.0 * kKvHeads * double(c.keys) * kDim * 2 * double(batch);
    Row row;
    row.name = c.name;
    row.splits = a.num_splits;
    row.copy_gbs = 2.0 * double(kCopyBytes) / (Median(copy_ms) * 1e-3) / 1e9;
    row.dec_ms = Median(dec_ms);
    row.dec_gbs = bytes / (row.dec_ms * 1e-3) / 1e9;
    row.dca_ms = Median(dca_ms);
    row.dca_gbs = bytes / (row.dca_ms * 1e-3) / 1e9;
    row.diff = diff;
    rows.push_back(row);
    for (int kind = 0; kind < 2; ++kind) {
      char buf[512];
      const double ms = kind == 0 ? row.dec_ms : row.dca_ms;
      const double gbs = kind == 0 ? row.dec_gbs : row.dca_gbs;
      std::snprintf(buf, sizeof(buf),
                    "{\"case\":\"%s\",\"kernel\":\"%s\",\"batch\":%lld,\"keys\":%lld,"
                    "\"splits\":%d,\"bytes\":%.0f,\"ms\":%.4f,\"gb_per_s\":%.1f,"
                    "\"copy_gb_per_s\":%.1f,\"ratio\":%.3f,\"rel_diff_vs_one_split\":%.2e,"
                    "\"nonfinite\":%llu,\"rounds\":%d}",
                    c.name, kind == 0 ? "decode" : "dca_decode", static_cast<long long>(batch),
                    static_cast<long long>(c.keys), row.splits, bytes, ms, gbs, row.copy_gbs,
                    gbs / row.copy_gbs, diff, nonfinite, iters);
      std::printf("%s\n", buf);
      json += std::string(buf) + "\n";
    }
    failed |= nonfinite != 0 || !(diff <= 2e-2);
  }

  std::printf("\n| keys | splits | copy GB/s | decode ms | decode GB/s | decode / copy | "
              "DCA decode ms | DCA GB/s | DCA / copy |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const Row& r : rows) {
    std::printf("| %s | %d | %.0f | %.3f | %.0f | %.2f | %.3f | %.0f | %.2f |\n", r.name.c_str(),
                r.splits, r.copy_gbs, r.dec_ms, r.dec_gbs, r.dec_gbs / r.copy_gbs, r.dca_ms,
                r.dca_gbs, r.dca_gbs / r.copy_gbs);
  }
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
      return 1;
    }
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  if (failed) {
    std::fprintf(stderr, "FAILED: non-finite output or split results disagree\n");
    return 1;
  }
  return 0;
}
