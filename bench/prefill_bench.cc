// CPU prefill throughput of a model directory at several prompt lengths, next to the OpenBLAS
// sgemm rate of the same machine measured in the same run.
//
//   mp_prefill_bench --model DIR [--lengths 1024,4096,8192] [--chunk-size 1024]
//
// Prints one JSON line per measurement and a table. Model FLOPs per prompt of T tokens:
//   linear:    2 T (q + k + v + o + gate + up + down parameters) per layer
//   attention: 4 T^2/2 q_heads head_dim per layer (causal; kernel-anchors.md §1.1 convention)
// The LM head runs on the last row only and is not counted.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "kernels/cpu/gemm.h"
#include "model/config.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/engine.h"

namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Best-of-3 GFLOP/s of C[m, n] = A[m, k] B[n, k]^T.
double SgemmGflops(int64_t m, int64_t n, int64_t k) {
  std::vector<float> a(m * k), b(n * k), c(m * n);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& x : a) x = u(rng);
  for (auto& x : b) x = u(rng);
  double best = 1e30;
  for (int rep = 0; rep < 4; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    mp::cpu::GemmNT(a.data(), k, b.data(), k, c.data(), n, m, n, k, 1.0f, 0.0f);
    auto t1 = std::chrono::steady_clock::now();
    if (rep > 0) best = std::min(best, Seconds(t0, t1));
  }
  return 2.0 * m * n * k / best / 1e9;
}

double PrefillFlops(const mp::ModelConfig& c, int64_t t) {
  double per_layer_params = static_cast<double>(c.hidden_size) * (c.q_dim() + 2 * c.kv_dim()) +
                            static_cast<double>(c.q_dim()) * c.hidden_size +
                            3.0 * c.hidden_size * c.intermediate_size;
  double linear = 2.0 * t * per_layer_params;
  double attention = 4.0 * t * t / 2.0 * c.num_attention_heads * c.head_dim;
  return (linear + attention) * c.num_hidden_layers;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU prefill throughput vs the sgemm rate of the same machine"};
  std::string model_dir;
  std::vector<int64_t> lengths = {1024, 4096, 8192};
  int64_t chunk_size = 1024;
  app.add_option("--model", model_dir, "model directory")->required();
  app.add_option("--lengths", lengths, "prompt lengths")->delimiter(',');
  app.add_option("--chunk-size", chunk_size, "prefill chunk size");
  CLI11_PARSE(app, argc, argv);

  auto config = mp::LoadModelConfig(model_dir + "/config.json");
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    return 1;
  }
  mp::WeightLoadOptions load;
  load.layers = {0, config->num_hidden_layers};
  auto weights = mp::LoadModelWeights(model_dir, *config, load);
  if (!weights.ok()) {
    std::fprintf(stderr, "%s\n", weights.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<mp::Backend> backend = mp::NewCpuBackend();
  mp::EngineOptions options;
  options.chunk_size = chunk_size;
  options.max_context = *std::max_element(lengths.begin(), lengths.end()) + 1;
  auto engine = mp::Engine::Create(*config, *weights, backend, options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 1;
  }

  // The MLP GEMM shapes of one 1K-token chunk (gate/up and down), the bulk of the linear work.
  const int64_t h = config->hidden_size, inter = config->intermediate_size;
  double gemm_gflops =
      (SgemmGflops(1024, 2 * inter, h) + SgemmGflops(1024, h, inter)) / 2.0;
  std::printf("{\"bench\":\"sgemm\",\"m\":1024,\"shapes\":\"[1024x%ldx%ld],[1024x%ldx%ld]\","
              "\"gflops\":%.1f}\n",
              static_cast<long>(2 * inter), static_cast<long>(h), static_cast<long>(h),
              static_cast<long>(inter), gemm_gflops);

  struct Row {
    int64_t t;
    double seconds, gflops;
  };
  std::vector<Row> rows;
  std::mt19937 rng(7);
  for (int64_t t : lengths) {
    std::vector<int32_t> prompt(t);
    std::uniform_int_distribution<int32_t> ids(0, static_cast<int32_t>(config->vocab_size - 1));
    for (auto& id : prompt) id = ids(rng);
    mp::GenerationOptions gen;
    gen.max_new_tokens = 0;
    auto result = (*engine)->Generate(prompt, gen);
    if (!result.ok()) {
      std::fprintf(stderr, "%s\n", result.status().ToString().c_str());
      return 1;
    }
    double s = result->timings.prefill_seconds;
    double gflops = PrefillFlops(*config, t) / s / 1e9;
    rows.push_back({t, s, gflops});
    std::printf("{\"bench\":\"prefill\",\"tokens\":%ld,\"chunk\":%ld,\"seconds\":%.3f,"
                "\"tokens_per_s\":%.1f,\"gflops\":%.1f,\"fraction_of_sgemm\":%.3f}\n",
                static_cast<long>(t), static_cast<long>(chunk_size), s, t / s, gflops,
                gflops / gemm_gflops);
    std::fflush(stdout);
  }
  std::printf("\n| tokens | prefill s | tokens/s | model GFLOP/s | of sgemm %.1f GFLOP/s |\n",
              gemm_gflops);
  std::printf("|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::printf("| %ld | %.2f | %.0f | %.1f | %.0f%% |\n", static_cast<long>(r.t), r.seconds,
                r.t / r.seconds, r.gflops, 100.0 * r.gflops / gemm_gflops);
  }
  return 0;
}
