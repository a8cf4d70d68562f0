// Throughput of the CPU kernels on this machine, one JSON object per line:
//   sgemm through Linear (the SmolLM2-135M projection shapes and a large square),
//   causal paged attention (SmolLM2-135M heads: 9 q / 3 kv, head_dim 64) at 1K and 4K tokens,
//   and the elementwise ops of one layer at 1K tokens.
// Usage: kernels_bench [--quick]   (--quick: fewer repetitions and no 4K attention).
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rope.h"

namespace mp::cpu {
namespace {

std::vector<float> Random(int64_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(count));
  for (float& x : v) x = dist(rng);
  return v;
}

struct Timing {
  double best_s = 0.0;
  double median_s = 0.0;
  int reps = 0;
};

// One warm-up call, then repetitions until min_reps and min_seconds are both reached.
Timing Time(const std::function<void()>& fn, int min_reps, double min_seconds) {
  using Clock = std::chrono::steady_clock;
  fn();
  std::vector<double> times;
  const Clock::time_point start = Clock::now();
  while (static_cast<int>(times.size()) < min_reps ||
         std::chrono::duration<double>(Clock::now() - start).count() < min_seconds) {
    const Clock::time_point t0 = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return Timing{times.front(), times[times.size() / 2], static_cast<int>(times.size())};
}

void PrintLine(const std::string& fields, double flops, const Timing& t) {
  std::printf(
      "{%s, \"best_ms\": %.3f, \"median_ms\": %.3f, \"reps\": %d, \"gflops_best\": %.2f, "
      "\"gflops_median\": %.2f}\n",
      fields.c_str(), t.best_s * 1e3, t.median_s * 1e3, t.reps, flops / t.best_s * 1e-9,
      flops / t.median_s * 1e-9);
  std::fflush(stdout);
}

// y[tokens, out] = x[tokens, in] W[out, in]^T.
void BenchLinear(int64_t tokens, int64_t in, int64_t out, int min_reps, double min_seconds) {
  const std::vector<float> x = Random(tokens * in, 1);
  const std::vector<float> w = Random(out * in, 2);
  std::vector<float> y(static_cast<size_t>(tokens * out));
  const Timing t = Time([&] { Linear(x.data(), w.data(), nullptr, tokens, in, out, y.data()); },
                        min_reps, min_seconds);
  char fields[256];
  std::snprintf(
      fields, sizeof(fields), "\"bench\": \"sgemm\", \"tokens\": %lld, \"in\": %lld, \"out\": %lld",
      static_cast<long long>(tokens), static_cast<long long>(in), static_cast<long long>(out));
  PrintLine(fields, 2.0 * tokens * in * out, t);
}

// Causal prefill of n tokens against a paged cache holding exactly those n tokens.
void BenchAttention(int64_t n, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                    int64_t block_size, int min_reps, double min_seconds) {
  const int64_t blocks = (n + block_size - 1) / block_size;
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937_64(3));
  const std::vector<float> k_cache = Random(blocks * kv_heads * block_size * head_dim, 4);
  const std::vector<float> v_cache = Random(blocks * kv_heads * block_size * head_dim, 5);
  const std::vector<float> q = Random(n * q_heads * head_dim, 6);
  std::vector<float> out(static_cast<size_t>(n * q_heads * head_dim));
  std::vector<float> lse(static_cast<size_t>(q_heads * n));
  PagedKvView kv;
  kv.k = k_cache.data();
  kv.v = v_cache.data();
  kv.block_table = table.data();
  kv.block_size = block_size;
  kv.kv_heads = kv_heads;
  kv.head_dim = head_dim;
  AttentionShape shape;
  shape.num_queries = n;
  shape.q_heads = q_heads;
  shape.key_end = n;
  shape.causal = true;
  shape.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const Timing t = Time([&] { PagedAttention(q.data(), kv, shape, out.data(), lse.data()); },
                        min_reps, min_seconds);
  // Useful work only: QK^T and PV over the n (n + 1) / 2 visible pairs.
  const double flops = 4.0 * head_dim * q_heads * (static_cast<double>(n) * (n + 1) / 2.0);
  char fields[256];
  std::snprintf(fields, sizeof(fields),
                "\"bench\": \"attention_causal\", \"tokens\": %lld, \"q_heads\": %lld, "
                "\"kv_heads\": %lld, \"head_dim\": %lld, \"block_size\": %lld",
                static_cast<long long>(n), static_cast<long long>(q_heads),
                static_cast<long long>(kv_heads), static_cast<long long>(head_dim),
                static_cast<long long>(block_size));
  PrintLine(fields, flops, t);
}

// Bandwidth-bound ops of one layer at `tokens` tokens: reported as elements per second.
void BenchElementwise(int64_t tokens, int64_t hidden, int64_t inter, int64_t heads,
                      int64_t head_dim, int min_reps, double min_seconds) {
  auto print = [](const char* name, int64_t elements, const Timing& t) {
    std::printf(
        "{\"bench\": \"%s\", \"elements\": %lld, \"best_ms\": %.3f, \"median_ms\": %.3f, "
        "\"reps\": %d, \"gelem_per_s\": %.3f}\n",
        name, static_cast<long long>(elements), t.best_s * 1e3, t.median_s * 1e3, t.reps,
        elements / t.best_s * 1e-9);
    std::fflush(stdout);
  };
  const std::vector<float> gate_up = Random(tokens * 2 * inter, 7);
  std::vector<float> act(static_cast<size_t>(tokens * inter));
  print("silu_mul", tokens * inter,
        Time([&] { SiluMul(gate_up.data(), tokens, inter, act.data()); }, min_reps, min_seconds));
  const std::vector<float> x = Random(tokens * hidden, 8);
  const std::vector<float> w = Random(hidden, 9);
  std::vector<float> y(static_cast<size_t>(tokens * hidden));
  print("rms_norm", tokens * hidden,
        Time([&] { RmsNorm(x.data(), w.data(), tokens, hidden, 1e-5f, y.data()); }, min_reps,
             min_seconds));
  std::vector<float> q = Random(tokens * heads * head_dim, 10);
  std::vector<int32_t> pos(static_cast<size_t>(tokens));
  std::iota(pos.begin(), pos.end(), 0);
  print("rope", tokens * heads * head_dim,
        Time([&] { RopeNeox(q.data(), pos.data(), tokens, heads, head_dim, 100000.0); }, min_reps,
             min_seconds));
}

}  // namespace
}  // namespace mp::cpu

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int reps = quick ? 2 : 5;
  const double seconds = quick ? 0.2 : 1.0;
  std::printf("{\"bench\": \"config\", \"openblas_threads\": %d, \"openblas\": \"%s\"}\n",
              openblas_get_num_threads(), openblas_get_config());
  // SmolLM2-135M: hidden 576, intermediate 1536, 9 q heads / 3 kv heads of 64.
  mp::cpu::BenchLinear(1024, 576, 1536, reps, seconds);   // up (or gate) projection
  mp::cpu::BenchLinear(1024, 1536, 576, reps, seconds);   // down projection
  mp::cpu::BenchLinear(1024, 576, 3072, reps, seconds);   // fused gate_up
  mp::cpu::BenchLinear(1024, 576, 576, reps, seconds);    // q / o projection
  mp::cpu::BenchLinear(2048, 2048, 2048, reps, seconds);  // large square
  mp::cpu::BenchAttention(1024, 9, 3, 64, 16, reps, seconds);
  mp::cpu::BenchAttention(1024, 9, 3, 64, 64, reps, seconds);
  if (!quick) {
    mp::cpu::BenchAttention(4096, 9, 3, 64, 16, reps, seconds);
    mp::cpu::BenchAttention(4096, 28, 4, 128, 64, 2, seconds);  // Qwen2.5-7B heads
  }
  mp::cpu::BenchElementwise(1024, 576, 1536, 9, 64, reps, seconds);
  return 0;
}
