// Benchmark of the sm_90a paged prefill attention kernel on the Qwen2.5-7B attention shape
// (28 query heads, 4 KV heads, head_dim 128, bf16), one 32K-token chunk against growing KV
// caches, bottom-right causal. FLOPs are counted as 4 * H * D * n * (P + n / 2) with P = cached
// keys before the chunk (docs: kernel-anchors.md section 1.1); for P = 0 this is the usual
// causal 4 * H * D * n^2 / 2.
//
//   attention_bench [--json FILE] [--variants] [--no-dca] [--cases 32k,128k,512k,1m] [--iters N]
//
// The "dca" row is the fused DCA prefill kernel (PagedPrefillDcaAttention) with the
// Qwen2.5-1M constants (C = 253952, S = 262144, theta 1e7) on the same shapes and the same
// FLOPs; its output differs from the dense one by construction, so it is only checked to be
// finite, and its time is reported relative to the default dense kernel (goal: within 5%).
// From 512K keys on, its queries cross DCA chunk boundaries and it walks all three regions.
//
// --variants (builds with -DMP_ATTENTION_BENCH_VARIANTS only, as build_standalone.sh does)
// adds other kernel configurations for ablation.
//
// Prints one line per (case, variant): median time of N timed runs after one warm-up, CUDA
// events around each launch, random inputs, shuffled block table (block_size 64). With
// --variants, kernel configurations are timed round-robin (one launch of each per round) and
// each one's output is compared with the default's (max|diff|; the run fails above 0.05 or on
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

using LaunchFn = cudaError_t (*)(const mp::cuda::PagedPrefillAttentionArgs&, cudaStream_t);

struct Variant {
  const char* name;
  LaunchFn launch;
  bool same_result = true;  // output must match the default variant's
};

// The fused DCA kernel with the Qwen2.5-1M constants.
cudaError_t LaunchDcaQwen(const mp::cuda::PagedPrefillAttentionArgs& a, cudaStream_t s) {
  mp::cuda::DcaParams dca;
  dca.chunk_len = 253952;
  dca.chunk_size = 262144;
  dca.rope_theta = 1e7;
  return mp::cuda::PagedPrefillDcaAttention(a, dca, s);
}

template <class Cfg>
[[maybe_unused]] cudaError_t LaunchVariant(const mp::cuda::PagedPrefillAttentionArgs& a,
                                           cudaStream_t s) {
  return mp::cuda::sm90::LaunchPagedPrefillAttention<Cfg>(a, s);
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, cases_arg = "32k,128k,512k,1m";
  bool variants = false;
  bool dca = true;
  int iters = 0;  // 0: chosen per case
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (arg == "--variants") {
      variants = true;
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
  std::vector<Variant> vars = {{"default", &mp::cuda::PagedPrefillAttention}};
  if (dca) vars.push_back({"dca", &LaunchDcaQwen, false});
  if (variants) {
#ifndef MP_ATTENTION_BENCH_VARIANTS
    std::fprintf(stderr, "--variants needs a build with -DMP_ATTENTION_BENCH_VARIANTS\n");
    return 2;
#else
    using namespace mp::cuda::sm90;
    // name: stages (s2/s3), pingpong (pp/nopp), CTA order (kv: KV-head major, head: query
    // head fastest), softmax (ilp: split reductions + skipped rescale; plain), Q in registers
    // (qreg) or read from shared memory by every S GEMM (qsmem). default = s3-pp-kv-ilp-qreg.
    vars.push_back({"s2-pp-kv-ilp-qreg",
                    &LaunchVariant<PrefillConfig<128, true, 2, true, true, true, true>>});
    vars.push_back({"s3-pp-kv-ilp-qsmem",
                    &LaunchVariant<PrefillConfig<128, true, 3, true, true, true, false>>});
    vars.push_back({"s3-pp-head-ilp-qreg",
                    &LaunchVariant<PrefillConfig<128, true, 3, true, false, true, true>>});
    vars.push_back({"s3-pp-kv-plain-qreg",
                    &LaunchVariant<PrefillConfig<128, true, 3, true, true, false, true>>});
    vars.push_back({"s3-nopp-kv-ilp-qreg",
                    &LaunchVariant<PrefillConfig<128, true, 3, false, true, true, true>>});
#endif
  }

  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

  int64_t max_keys = 0;
  for (const auto& c : cases) max_keys = std::max(max_keys, c.cached + kChunk);
  const int64_t blocks = (max_keys + kBlock - 1) / kBlock;
  const int64_t cache_elems = blocks * kKvHeads * kBlock * kDim;
  const int64_t q_elems = kChunk * kHeads * kDim;

  __nv_bfloat16 *q, *k, *v, *out, *ref_out;
  float* lse;
  int32_t* table;
  unsigned long long* bad;
  BENCH_CHECK(cudaMalloc(&q, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&k, cache_elems * 2));
  BENCH_CHECK(cudaMalloc(&v, cache_elems * 2));
  BENCH_CHECK(cudaMalloc(&out, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&ref_out, q_elems * 2));
  unsigned int* diff;
  BENCH_CHECK(cudaMalloc(&diff, sizeof(unsigned int)));
  BENCH_CHECK(cudaMalloc(&lse, kHeads * kChunk * 4));
  BENCH_CHECK(cudaMalloc(&table, blocks * 4));
  BENCH_CHECK(cudaMalloc(&bad, sizeof(unsigned long long)));
  FillRandomBf16<<<1024, 256>>>(q, q_elems, 1, 1.0f);
  FillRandomBf16<<<4096, 256>>>(k, cache_elems, 2, 1.0f);
  FillRandomBf16<<<4096, 256>>>(v, cache_elems, 3, 1.0f);
  BENCH_CHECK(cudaGetLastError());
  std::vector<int32_t> host_table(blocks);
  std::iota(host_table.begin(), host_table.end(), 0);
  std::shuffle(host_table.begin(), host_table.end(), std::mt19937_64(4));
  BENCH_CHECK(cudaMemcpy(table, host_table.data(), blocks * 4, cudaMemcpyHostToDevice));

  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));

  std::string json = "[";
  std::printf("%-6s %-18s %10s %10s %6s %10s %10s\n", "case", "variant", "ms", "TFLOP/s", "runs",
              "max|diff|", "/default");
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
    const int runs = iters > 0 ? iters : (c.cached >= 400000 ? 3 : 10);
    std::vector<unsigned long long> nonfinite(vars.size());
    std::vector<float> max_diff(vars.size(), 0.0f);
    for (size_t vi = 0; vi < vars.size(); ++vi) {
      BENCH_CHECK(cudaMemset(out, 0xFF, q_elems * 2));
      BENCH_CHECK(vars[vi].launch(a, nullptr));  // also the warm-up
      BENCH_CHECK(cudaDeviceSynchronize());
      BENCH_CHECK(cudaMemset(bad, 0, sizeof(unsigned long long)));
      CountNonFinite<<<1024, 256>>>(out, q_elems, bad);
      BENCH_CHECK(cudaMemcpy(&nonfinite[vi], bad, sizeof(unsigned long long),
                             cudaMemcpyDeviceToHost));
      if (vi == 0) {
        BENCH_CHECK(cudaMemcpy(ref_out, out, q_elems * 2, cudaMemcpyDeviceToDevice));
      } else if (vars[vi].same_result) {
        BENCH_CHECK(cudaMemset(diff, 0, sizeof(unsigned int)));
        MaxAbsDiff<<<1024, 256>>>(out, ref_out, q_elems, diff);
        unsigned int bits = 0;
        BENCH_CHECK(cudaMemcpy(&bits, diff, sizeof(bits), cudaMemcpyDeviceToHost));
        std::memcpy(&max_diff[vi], &bits, sizeof(float));
      }
    }
    std::vector<std::vector<float>> ms(vars.size(), std::vector<float>(runs));
    for (int r = 0; r < runs; ++r) {
      for (size_t vi = 0; vi < vars.size(); ++vi) {
        BENCH_CHECK(cudaEventRecord(start));
        BENCH_CHECK(vars[vi].launch(a, nullptr));
        BENCH_CHECK(cudaEventRecord(stop));
        BENCH_CHECK(cudaEventSynchronize(stop));
        BENCH_CHECK(cudaEventElapsedTime(&ms[vi][r], start, stop));
      }
    }
    bool failed = false;
    for (auto& v : ms) std::sort(v.begin(), v.end());
    const double default_ms = ms[0][runs / 2];
    for (size_t vi = 0; vi < vars.size(); ++vi) {
      const double med = ms[vi][runs / 2];
      const double tflops = flops / (med * 1e-3) / 1e12;
      std::printf("%-6s %-18s %10.3f %10.1f %6d %10.2e %10.3f%s\n", c.name, vars[vi].name, med,
                  tflops, runs, max_diff[vi], med / default_ms,
                  nonfinite[vi] ? "  NON-FINITE OUTPUT" : "");
      char buf[320];
      std::snprintf(buf, sizeof(buf),
                    "%s{\"case\":\"%s\",\"variant\":\"%s\",\"ms\":%.4f,\"tflops\":%.2f,"
                    "\"time_vs_default\":%.4f,\"nonfinite\":%llu,\"max_diff_vs_default\":%.3e}",
                    json.size() > 1 ? "," : "", c.name, vars[vi].name, med, tflops,
                    med / default_ms, nonfinite[vi], max_diff[vi]);
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
