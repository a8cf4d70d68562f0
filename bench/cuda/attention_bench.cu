// Benchmark of the sm_90a paged prefill attention kernel on the Qwen2.5-7B attention shape
// (28 query heads, 4 KV heads, head_dim 128, bf16), one 32K-token chunk against growing KV
// caches, bottom-right causal. FLOPs are counted as 4 * H * D * n * (P + n / 2) with P = cached
// keys before the chunk (docs: kernel-anchors.md section 1.1); for P = 0 this is the usual
// causal 4 * H * D * n^2 / 2.
//
//   attention_bench [--json FILE] [--variants] [--ablation] [--seq-table] [--no-dca]
//                   [--only NAME,...] [--cases 32k,128k,512k,1m] [--iters N]
//
// The "dca" row is the fused DCA prefill kernel (PagedPrefillDcaAttention) with the
// Qwen2.5-1M constants (C = 253952, S = 262144, theta 1e7) on the same shapes and the same
// FLOPs; its output differs from the dense one by construction, so it is only checked to be
// finite, and its time is reported relative to the default dense kernel (goal: within 5%).
// From 512K keys on, its queries cross DCA chunk boundaries and it walks all three regions.
//
// --variants adds the candidate configurations of prefill_variants.h (compiled in with
// -DMP_PREFILL_CANDIDATES, as build_standalone.sh does); --ablation the earlier ablation
// configurations (-DMP_ATTENTION_BENCH_VARIANTS); --seq-table a row "default@seq" that runs the
// default kernel on an in-order block table (the others use a shuffled one), which separates
// address-translation effects from the rest; --only keeps the named rows.
//
// Prints one line per (case, variant): median time of N timed runs after one warm-up, CUDA
// events around each launch, random inputs, shuffled block table (block_size 64). Variants are
// timed round-robin (one launch of each per round), and each one's output is compared with the
// output of its baseline row ("default" or "dca": max|diff|; the run fails above 0.05 or on
// any non-finite output).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda/bench_util.cuh"
#include "bench/cuda/prefill_variants.h"
#include "kernels/cuda/paged_prefill_attention.h"
#include "kernels/cuda/paged_prefill_attention_sm90.cuh"
#include "kernels/cuda/paged_prefill_dca_attention.h"

namespace {

using mp::bench::CountNonFinite;
using mp::bench::FillRandomBf16;

// Largest |a - b| over two bf16 tensors (as float bits: both values are non-negative floats'
// magnitudes compared through atomicMax on their int patterns).
__global__ void MaxAbsDiff(const __nv_bfloat16* a, const __nv_bfloat16* b, int64_t n,
                           unsigned int* result) {
  float local = 0.0f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float d = fabsf(__bfloat162float(a[i]) - __bfloat162float(b[i]));
    local = d > local || d != d ? d : local;  // NaN wins
  }
  atomicMax(result, __float_as_uint(local));
}

struct BenchCase {
  const char* name;
  int64_t cached;  // P: keys before the chunk
};

struct Variant {
  const char* name;
  mp::bench::PrefillLaunchFn launch;
  const char* baseline;    // the row whose output it must reproduce
  bool seq_table = false;  // run on the in-order block table
};

// The Qwen2.5-1M DCA constants.
mp::cuda::DcaParams QwenDca() {
  mp::cuda::DcaParams dca;
  dca.chunk_len = 253952;
  dca.chunk_size = 262144;
  dca.rope_theta = 1e7;
  return dca;
}

template <class Cfg>
[[maybe_unused]] cudaError_t LaunchAblation(const mp::cuda::PagedPrefillAttentionArgs& a,
                                            const mp::cuda::DcaParams&, cudaStream_t s) {
  return mp::cuda::sm90::LaunchPagedPrefillAttention<Cfg>(a, s);
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, cases_arg = "32k,128k,512k,1m", only;
  bool variants = false, ablation = false, seq_table = false;
  bool dca = true;
  int iters = 0;  // 0: chosen per case
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (arg == "--variants") {
      variants = true;
    } else if (arg == "--ablation") {
      ablation = true;
    } else if (arg == "--seq-table") {
      seq_table = true;
    } else if (arg == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else if (arg == "--no-dca") {
      dca = false;
    } else if (arg == "--cases" && i + 1 < argc) {
      cases_arg = argv[++i];
    } else if (arg == "--iters" && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "unknown argument %s\n", arg.c_str());
      return 2;
    }
  }

  constexpr int64_t kHeads = 28, kKvHeads = 4, kDim = 128, kChunk = 32768, kBlock = 64;
  const std::vector<BenchCase> all_cases = {
      {"32k", 0}, {"128k", 131072 - kChunk}, {"512k", 524288 - kChunk}, {"1m", 1048576 - kChunk}};
  std::vector<BenchCase> cases;
  for (const auto& c : all_cases) {
    if (("," + cases_arg + ",").find(std::string(",") + c.name + ",") != std::string::npos) {
      cases.push_back(c);
    }
  }
  int listed = 0;
  const mp::bench::PrefillVariant* list = mp::bench::PrefillVariants(&listed);
  std::vector<Variant> vars;
  for (int i = 0; i < listed; ++i) {
    const bool library = i < 2;  // "default" and "dca"
    if (!library && !variants) continue;
    if (list[i].dca && !dca) continue;
    vars.push_back({list[i].name, list[i].launch, list[i].baseline});
  }
  if (variants && listed <= 2) {
    std::fprintf(stderr, "--variants needs a build with -DMP_PREFILL_CANDIDATES\n");
    return 2;
  }
  if (seq_table) vars.push_back({"default@seq", list[0].launch, "default", true});
  if (ablation) {
#ifndef MP_ATTENTION_BENCH_VARIANTS
    std::fprintf(stderr, "--ablation needs a build with -DMP_ATTENTION_BENCH_VARIANTS\n");
    return 2;
#else
    using namespace mp::cuda::sm90;
    // name: stages (s2/s3), pingpong (pp/nopp), CTA order (kv: KV-head major, head: query
    // head fastest), softmax (ilp: split reductions + skipped rescale; plain), Q in registers
    // (qreg) or read from shared memory by every S GEMM (qsmem). default = s3-pp-kv-ilp-qreg.
    vars.push_back({"s2-pp-kv-ilp-qreg",
                    &LaunchAblation<PrefillConfig<128, true, 2, true, true, true, true>>,
                    "default"});
    vars.push_back({"s3-pp-kv-ilp-qsmem",
                    &LaunchAblation<PrefillConfig<128, true, 3, true, true, true, false>>,
                    "default"});
    vars.push_back({"s3-pp-head-ilp-qreg",
                    &LaunchAblation<PrefillConfig<128, true, 3, true, false, true, true>>,
                    "default"});
    vars.push_back({"s3-pp-kv-plain-qreg",
                    &LaunchAblation<PrefillConfig<128, true, 3, true, true, false, true>>,
                    "default"});
    vars.push_back({"s3-nopp-kv-ilp-qreg",
                    &LaunchAblation<PrefillConfig<128, true, 3, false, true, true, true>>,
                    "default"});
#endif
  }
  if (!only.empty()) {
    std::vector<Variant> kept;
    for (const auto& v : vars) {
      if (("," + only + ",").find(std::string(",") + v.name + ",") != std::string::npos) {
        kept.push_back(v);
      }
    }
    vars = kept;
  }
  // Baselines are timed and kept whenever a row needs them.
  for (size_t vi = 0; vi < vars.size(); ++vi) {
    bool present = false;
    for (const auto& v : vars) present |= std::strcmp(v.name, vars[vi].baseline) == 0;
    if (!present) {
      std::fprintf(stderr, "row %s needs its baseline row %s\n", vars[vi].name,
                   vars[vi].baseline);
      return 2;
    }
  }
  const mp::cuda::DcaParams qwen_dca = QwenDca();

  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

  int64_t max_keys = 0;
  for (const auto& c : cases) max_keys = std::max(max_keys, c.cached + kChunk);
  const int64_t blocks = (max_keys + kBlock - 1) / kBlock;
  const int64_t cache_elems = blocks * kKvHeads * kBlock * kDim;
  const int64_t q_elems = kChunk * kHeads * kDim;

  __nv_bfloat16 *q, *k, *v, *out, *ref_default, *ref_dca;
  float* lse;
  int32_t *table, *seq_table_dev;
  unsigned long long* bad;
  BENCH_CHECK(cudaMalloc(&q, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&k, cache_elems * 2));
  BENCH_CHECK(cudaMalloc(&v, cache_elems * 2));
  BENCH_CHECK(cudaMalloc(&out, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&ref_default, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&ref_dca, q_elems * 2));
  unsigned int* diff;
  BENCH_CHECK(cudaMalloc(&diff, sizeof(unsigned int)));
  BENCH_CHECK(cudaMalloc(&lse, kHeads * kChunk * 4));
  BENCH_CHECK(cudaMalloc(&table, blocks * 4));
  BENCH_CHECK(cudaMalloc(&seq_table_dev, blocks * 4));
  BENCH_CHECK(cudaMalloc(&bad, sizeof(unsigned long long)));
  FillRandomBf16<<<1024, 256>>>(q, q_elems, 1, 1.0f);
  FillRandomBf16<<<4096, 256>>>(k, cache_elems, 2, 1.0f);
  FillRandomBf16<<<4096, 256>>>(v, cache_elems, 3, 1.0f);
  BENCH_CHECK(cudaGetLastError());
  std::vector<int32_t> host_table(blocks);
  std::iota(host_table.begin(), host_table.end(), 0);
  BENCH_CHECK(cudaMemcpy(seq_table_dev, host_table.data(), blocks * 4, cudaMemcpyHostToDevice));
  std::shuffle(host_table.begin(), host_table.end(), std::mt19937_64(4));
  BENCH_CHECK(cudaMemcpy(table, host_table.data(), blocks * 4, cudaMemcpyHostToDevice));

  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));

  std::string json = "[";
  std::printf("%-6s %-18s %10s %10s %6s %10s %10s %10s\n", "case", "variant", "ms", "TFLOP/s",
              "runs", "max|diff|", "/default", "/baseline");
  auto ref_for = [&](const char* baseline) {
    return std::strcmp(baseline, "dca") == 0 ? ref_dca : ref_default;
  };
  auto index_of = [&](const char* name) {
    for (size_t i = 0; i < vars.size(); ++i) {
      if (std::strcmp(vars[i].name, name) == 0) return i;
    }
    return size_t{0};
  };
  for (const auto& c : cases) {
    mp::cuda::PagedPrefillAttentionArgs a;
    a.q = q;
    a.k_cache = k;
    a.v_cache = v;
    a.block_table = table;
    a.out = out;
    a.lse = lse;
    a.num_queries = kChunk;
    a.q_heads = kHeads;
    a.kv_heads = kKvHeads;
    a.head_dim = kDim;
    a.num_blocks = blocks;
    a.block_size = kBlock;
    a.key_begin = 0;
    a.key_end = c.cached + kChunk;
    a.causal = true;
    a.scale = 1.0f / std::sqrt(float(kDim));
    const double flops = 4.0 * kHeads * kDim * double(kChunk) * (double(c.cached) + kChunk / 2.0);
    // Check every variant once (finite output, same result as the first variant), then time
    // them round-robin so that clock and temperature drift hit all variants alike.
    const int runs = iters > 0 ? iters : (c.cached >= 400000 ? 5 : 10);
    auto launch = [&](const Variant& v) {
      mp::cuda::PagedPrefillAttentionArgs va = a;
      if (v.seq_table) va.block_table = seq_table_dev;
      return v.launch(va, qwen_dca, nullptr);
    };
    std::vector<unsigned long long> nonfinite(vars.size());
    std::vector<float> max_diff(vars.size(), 0.0f);
    for (size_t vi = 0; vi < vars.size(); ++vi) {
      BENCH_CHECK(cudaMemset(out, 0xFF, q_elems * 2));
      BENCH_CHECK(launch(vars[vi]));  // also the warm-up
      BENCH_CHECK(cudaDeviceSynchronize());
      BENCH_CHECK(cudaMemset(bad, 0, sizeof(unsigned long long)));
      CountNonFinite<<<1024, 256>>>(out, q_elems, bad);
      BENCH_CHECK(cudaMemcpy(&nonfinite[vi], bad, sizeof(unsigned long long),
                             cudaMemcpyDeviceToHost));
      if (std::strcmp(vars[vi].name, vars[vi].baseline) == 0) {
        BENCH_CHECK(cudaMemcpy(ref_for(vars[vi].baseline), out, q_elems * 2,
                               cudaMemcpyDeviceToDevice));
      } else {
        BENCH_CHECK(cudaMemset(diff, 0, sizeof(unsigned int)));
        MaxAbsDiff<<<1024, 256>>>(out, ref_for(vars[vi].baseline), q_elems, diff);
        unsigned int bits = 0;
        BENCH_CHECK(cudaMemcpy(&bits, diff, sizeof(bits), cudaMemcpyDeviceToHost));
        std::memcpy(&max_diff[vi], &bits, sizeof(float));
      }
    }
    std::vector<std::vector<float>> ms(vars.size(), std::vector<float>(runs));
    for (int r = 0; r < runs; ++r) {
      for (size_t vi = 0; vi < vars.size(); ++vi) {
        BENCH_CHECK(cudaEventRecord(start));
        BENCH_CHECK(launch(vars[vi]));
        BENCH_CHECK(cudaEventRecord(stop));
        BENCH_CHECK(cudaEventSynchronize(stop));
        BENCH_CHECK(cudaEventElapsedTime(&ms[vi][r], start, stop));
      }
    }
    bool failed = false;
    for (auto& v : ms) std::sort(v.begin(), v.end());
    const double default_ms = ms[index_of("default")][runs / 2];
    for (size_t vi = 0; vi < vars.size(); ++vi) {
      const double med = ms[vi][runs / 2];
      const double base_ms = ms[index_of(vars[vi].baseline)][runs / 2];
      const double tflops = flops / (med * 1e-3) / 1e12;
      std::printf("%-6s %-18s %10.3f %10.1f %6d %10.2e %10.3f %10.3f%s\n", c.name,
                  vars[vi].name, med, tflops, runs, max_diff[vi], med / default_ms,
                  med / base_ms, nonfinite[vi] ? "  NON-FINITE OUTPUT" : "");
      char buf[384];
      std::snprintf(buf, sizeof(buf),
                    "%s{\"case\":\"%s\",\"variant\":\"%s\",\"baseline\":\"%s\",\"ms\":%.4f,"
                    "\"tflops\":%.2f,\"time_vs_default\":%.4f,\"time_vs_baseline\":%.4f,"
                    "\"nonfinite\":%llu,\"max_diff_vs_baseline\":%.3e}",
                    json.size() > 1 ? "," : "", c.name, vars[vi].name, vars[vi].baseline, med,
                    tflops, med / default_ms, med / base_ms, nonfinite[vi], max_diff[vi]);
      json += buf;
      failed |= nonfinite[vi] != 0 || !(max_diff[vi] < 0.05f);
    }
    if (failed) return 1;
  }
  json += "]\n";
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
      return 1;
    }
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  return 0;
}
