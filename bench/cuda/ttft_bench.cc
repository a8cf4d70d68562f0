// End-to-end prefill on one GPU: time to first token of a Qwen2.5-1M architecture with
// seeded random weights (generated on the GPU), at several prompt lengths, in fixed-size chunks,
// next to a cuBLAS bf16 GEMM (8192^3) measured in the same run.
//
//   mp_ttft_bench [--preset Qwen2.5-7B-Instruct-1M] [--lengths 32768,131072,262144]
//                 [--chunk-size 32768] [--mlp-block-rows 8192] [--seed 1] [--json FILE]
//                 [--attention dense|dca|sparse] [--sparse-config FILE] [--sparse-threshold N]
//                 [--attention-locality X] [--op-times]
//
// --attention dense (the default): causal attention over the whole prompt with plain RoPE (the
// model's dual chunk attention is switched off), so positions run past the model's 1,010,000
// when asked for 1M = 1,048,576 tokens. --attention dca: the model's dual chunk attention with
// the YaRN temperature (the fused DCA kernel from the DCA chunk length on); the same FLOPs.
// --attention sparse: DCA with vertical-slash sparse prefill (qwen1m-spec.md §3) for prompts
// longer than the threshold, the per-head budgets of --sparse-config (Qwen's file for the 7B
// model); model FLOPs are still counted as dense, so its "TFLOP/s" is an effective rate.
// Per length: a fresh engine whose KV cache holds exactly that prompt (block size 64), one
// request with max_new_tokens = 1; TTFT is the engine's (validation, KV admission, every prefill
// chunk, final norm, LM head of the last row and the sampled token). Model FLOPs
// (kernel-anchors.md §1.1):
//   linear:    2 T (q + k + v + o + gate + up + down weights) per layer
//   attention: 4 (T^2 / 2) q_heads head_dim per layer (causal)
// against the 989 TFLOP/s bf16 dense peak of H100/H200 and against the GEMM rate of this run.
// Memory: the pool's peak bytes in use during the request against weights + KV cache bytes. The
// MLP runs in blocks of --mlp-block-rows rows (StageExecutorOptions::mlp_block_rows), which
// bounds its [rows, 2 * inter] intermediate; 0 runs it over the whole chunk.
// Lengths whose weights + KV + chunk activations do not fit in free device memory are skipped
// (reported as such).
// --attention-locality X gives the attention the structure of mp_sparse_bench's `local` inputs
// (bench/cuda/sparse_bench.cu): every layer's q and k biases are set to a * u_g, u_g a seeded
// unit vector per KV head g shared by the q heads of its group, so that after RoPE each logit
// carries X * u_g.R(i - j)u_g (a term that decays with the distance) on top of the random
// weights' noise; a = sqrt(X / scale) with the logit scale m(L)^2 / sqrt(head_dim) of the longest
// length. Without it (X = 0) random weights give attention without structure, which makes the
// sparse selection pick noise.
// --op-times also reports, per length, the GPU time of each kind of op during the request
// (CudaBackend::EnableOpTiming: GEMMs, attention by kind, the elementwise ops), one JSON line
// "ttft_ops" and a table; the rest of the TTFT is host time and gaps between ops.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/cpu/dca_positions.h"
#include "kernels/cuda/random_fill.h"
#include "model/config.h"
#include "model/presets.h"
#include "model/sparse_attention_config.h"
#include "model/weights.h"
#include "runtime/cuda_backend.h"
#include "runtime/cuda_random_weights.h"
#include "runtime/engine.h"
#include "runtime/stage_executor.h"

namespace {

constexpr double kPeakTflops = 989.0;  // H100/H200 SXM dense bf16
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

template <typename T>
T OrDie(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, v.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(v);
}

void OrDie(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

// Mean TFLOP/s of y[n, n] = x[n, n] w[n, n]^T over `iters` GEMMs after 3 warm-ups.
double GemmTflops(mp::CudaBackend& gpu, int64_t n, int iters) {
  mp::Tensor x = OrDie(gpu.Allocate({n, n}, mp::DType::kBF16), "gemm x");
  mp::Tensor w = OrDie(gpu.Allocate({n, n}, mp::DType::kBF16), "gemm w");
  mp::Tensor y = OrDie(gpu.Allocate({n, n}, mp::DType::kBF16), "gemm y");
  mp::cuda::FillRandomNormalishBf16(x.data_as<__nv_bfloat16>(), n * n, 1, 1.0f, 0.0f, gpu.stream());
  mp::cuda::FillRandomNormalishBf16(w.data_as<__nv_bfloat16>(), n * n, 2, 1.0f, 0.0f, gpu.stream());
  for (int i = 0; i < 3; ++i) OrDie(gpu.Linear(x, w, nullptr, y), "gemm");
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, gpu.stream());
  for (int i = 0; i < iters; ++i) OrDie(gpu.Linear(x, w, nullptr, y), "gemm");
  cudaEventRecord(stop, gpu.stream());
  OrDie(gpu.Synchronize(), "gemm sync");
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 2.0 * n * n * n * iters / (ms * 1e-3) / 1e12;
}

double LinearFlops(const mp::ModelConfig& c, int64_t t) {
  const double per_layer = static_cast<double>(c.hidden_size) * (c.q_dim() + 2 * c.kv_dim()) +
                           static_cast<double>(c.q_dim()) * c.hidden_size +
                           3.0 * c.hidden_size * c.intermediate_size;
  return 2.0 * static_cast<double>(t) * per_layer * c.num_hidden_layers;
}

double AttentionFlops(const mp::ModelConfig& c, int64_t t) {
  return 4.0 * (static_cast<double>(t) * t / 2.0) * c.num_attention_heads * c.head_dim *
         c.num_hidden_layers;
}

// Activation scratch of one chunk (StageExecutor::EnsureScratch) plus a logits row.
int64_t ScratchBytes(const mp::ModelConfig& c, int64_t chunk, int64_t mlp_rows) {
  return (chunk * (3 * c.hidden_size + 2 * c.q_dim() + 2 * c.kv_dim()) +
          mlp_rows * 3 * c.intermediate_size + c.vocab_size) *
         2;
}

// One executor over all layers with a KV cache of exactly `tokens`, in an engine.
std::unique_ptr<mp::Engine> MakeEngine(const mp::ModelConfig& config,
                                       const mp::ModelWeights& weights,
                                       std::shared_ptr<mp::Backend> backend,
                                       const mp::EngineOptions& options, int64_t tokens,
                                       int64_t mlp_block_rows,
                                       std::shared_ptr<const mp::SparsePrefillSettings> sparse) {
  mp::StageExecutorOptions ex;
  ex.sparse = std::move(sparse);
  ex.kv_cache.block_size = 64;
  ex.kv_cache.max_tokens = tokens;
  ex.mlp_block_rows = mlp_block_rows;
  std::vector<std::unique_ptr<mp::StageExecutor>> chain;
  chain.push_back(
      OrDie(mp::StageExecutor::Create(config, weights, std::move(backend), ex), "stage executor"));
  return OrDie(mp::Engine::Create(std::move(chain), options), "engine");
}

std::vector<int32_t> RandomPrompt(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

// The q/k biases of --attention-locality (see the header): a * u_g in both, per KV head g.
absl::Status SetLocalityBiases(const mp::ModelConfig& c, int64_t length, double locality,
                               uint64_t seed, mp::ModelWeights& weights) {
  const int64_t d = c.head_dim, kv = c.num_key_value_heads, group = c.num_attention_heads / kv;
  const double m =
      c.dual_chunk.has_value()
          ? mp::cpu::YarnTemperature(length, c.dual_chunk->original_max_position_embeddings)
          : 1.0;
  const double a = std::sqrt(locality / (m * m / std::sqrt(static_cast<double>(d))));
  std::mt19937_64 rng(seed + 7);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (mp::LayerWeights& layer : weights.layer) {
    if (!layer.q_bias.defined() || !layer.k_bias.defined()) {
      return absl::FailedPreconditionError("--attention-locality needs q/k biases (Qwen2)");
    }
    std::vector<__nv_bfloat16> kb(static_cast<size_t>(kv * d)),
        qb(static_cast<size_t>(kv * group * d));
    for (int64_t g = 0; g < kv; ++g) {
      std::vector<double> u(static_cast<size_t>(d));
      double norm = 0;
      for (double& x : u) norm += (x = normal(rng)) * x;
      for (int64_t i = 0; i < d; ++i) {
        const __nv_bfloat16 b = __float2bfloat16(static_cast<float>(a * u[i] / std::sqrt(norm)));
        kb[g * d + i] = b;
        for (int64_t j = 0; j < group; ++j) qb[(g * group + j) * d + i] = b;
      }
    }
    if (cudaMemcpy(layer.q_bias.data_as<__nv_bfloat16>(), qb.data(), qb.size() * 2,
                   cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(layer.k_bias.data_as<__nv_bfloat16>(), kb.data(), kb.size() * 2,
                   cudaMemcpyHostToDevice) != cudaSuccess) {
      return absl::InternalError("upload of the locality biases failed");
    }
  }
  return absl::OkStatus();
}

struct Row {
  int64_t tokens = 0;
  bool skipped = false;
  std::vector<mp::CudaOpTime> ops;  // with --op-times
  double ttft = 0, prefill = 0, tflops = 0, peak_gib = 0, weights_gib = 0, kv_gib = 0;
  double device_used_gib = 0, scratch_gib = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Dense prefill TTFT of a Qwen2.5-1M architecture on one GPU"};
  std::string preset = "Qwen2.5-7B-Instruct-1M";
  std::vector<int64_t> lengths = {32768, 131072, 262144};
  int64_t chunk = 32768;
  int64_t mlp_block_rows = 8192;
  uint64_t seed = 1;
  int gemm_iters = 10;
  std::string json_path;
  std::string attention = "dense";
  std::string sparse_config;
  int64_t sparse_threshold = -1;
  double locality = 0;
  bool op_times = false;
  app.add_option("--preset", preset, "model architecture (model/presets)");
  app.add_option("--lengths", lengths, "prompt lengths in tokens (1M: 1048576)")->delimiter(',');
  app.add_option("--chunk-size", chunk, "prefill chunk size");
  app.add_option("--mlp-block-rows", mlp_block_rows,
                 "rows per MLP block (bounds the MLP intermediate; 0: the whole chunk)");
  app.add_option("--seed", seed, "weight and prompt seed");
  app.add_option("--gemm-iters", gemm_iters, "timed GEMMs of the 8192^3 reference");
  app.add_option("--json", json_path, "also append the JSON lines to this file");
  app.add_option("--attention", attention,
                 "dense (plain RoPE), dca (the model's DCA) or sparse (DCA with vertical-slash "
                 "sparse prefill; needs --sparse-config)")
      ->check(CLI::IsMember({"dense", "dca", "sparse"}));
  app.add_option("--sparse-config", sparse_config,
                 "sparse_attention_config.json of the model (Qwen's per-head budgets)");
  app.add_option("--sparse-threshold", sparse_threshold,
                 "sparse prefill only for prompts longer than this (default: the model's, 32768)");
  app.add_option("--attention-locality", locality,
                 "strength of a distance-decaying logit term built into the q/k biases "
                 "(0: none; the sparse bench's default inputs use 12)");
  app.add_flag("--op-times", op_times, "report the GPU time of each kind of op per length");
  CLI11_PARSE(app, argc, argv);
  if (chunk <= 0 || lengths.empty() || mlp_block_rows < 0 || !(locality >= 0)) {
    std::fprintf(stderr,
                 "--chunk-size must be positive, --lengths non-empty, --mlp-block-rows >= 0, "
                 "--attention-locality >= 0\n");
    return 2;
  }
  std::sort(lengths.begin(), lengths.end());
  std::FILE* json = json_path.empty() ? nullptr : std::fopen(json_path.c_str(), "a");
  auto emit = [&](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    if (json != nullptr) {
      std::fprintf(json, "%s\n", line.c_str());
      std::fflush(json);
    }
  };

  std::unique_ptr<mp::CudaBackend> owned = OrDie(mp::CudaBackend::Create(), "CUDA backend");
  std::shared_ptr<mp::CudaBackend> gpu(std::move(owned));
  mp::CudaMemoryPool& pool = gpu->memory_pool();

  const double gemm_tflops = GemmTflops(*gpu, 8192, gemm_iters);
  OrDie(pool.ReleaseCached(), "release");
  emit(absl::StrFormat(
      "{\"bench\":\"gemm\",\"device\":\"%s\",\"m\":8192,\"n\":8192,\"k\":8192,\"dtype\":\"bf16\","
      "\"tflops\":%.1f}",
      gpu->name(), gemm_tflops));

  if ((attention == "sparse") != !sparse_config.empty()) {
    std::fprintf(stderr, "--attention sparse needs --sparse-config, and only it takes one\n");
    return 2;
  }
  mp::ModelConfig config = OrDie(mp::LoadModelPreset(preset), "preset");
  std::shared_ptr<const mp::SparsePrefillSettings> sparse;
  if (attention == "sparse") {
    mp::SparsePrefillOverrides overrides;
    overrides.enabled = true;
    if (sparse_threshold >= 0) overrides.threshold = sparse_threshold;
    sparse = std::make_shared<const mp::SparsePrefillSettings>(OrDie(
        mp::ResolveSparsePrefillSettings(
            config, OrDie(mp::LoadSparseAttentionConfig(sparse_config, config), "sparse config"),
            overrides),
        "sparse settings"));
  }
  if (attention == "dense") {
    config.dual_chunk.reset();  // dense attention over the whole prompt
  } else if (!config.dual_chunk.has_value()) {
    std::fprintf(stderr, "--attention dca: preset %s has no dual_chunk_attention_config\n",
                 preset.c_str());
    return 2;
  }
  mp::WeightLoadOptions load;
  load.layers = {0, config.num_hidden_layers};
  const int64_t before_weights = pool.stats().bytes_in_use;
  const auto t_init = std::chrono::steady_clock::now();
  mp::ModelWeights weights =
      OrDie(mp::RandomModelWeightsOnDevice(*gpu, config, load, seed), "random weights");
  if (locality > 0) {
    OrDie(gpu->Synchronize(), "init");  // the fills run on the backend's stream
    OrDie(SetLocalityBiases(config, lengths.back(), locality, seed, weights), "locality biases");
  }
  OrDie(gpu->Synchronize(), "init");
  const double init_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_init).count();
  const int64_t weight_bytes = pool.stats().bytes_in_use - before_weights;
  emit(
      absl::StrFormat("{\"bench\":\"weights\",\"model\":\"%s\",\"bytes\":%d,\"gib\":%.2f,"
                      "\"init_s\":%.2f}",
                      preset, weight_bytes, weight_bytes / kGiB, init_s));

  mp::EngineOptions options;
  options.chunk_size = chunk;
  options.max_context = lengths.back() + 1;
  const int64_t kv_per_token =
      2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 2;

  // Warm-up: one chunk (GEMM plans for the chunk's shapes, kernel modules, pool blocks).
  {
    const int64_t n = std::min(chunk, lengths.front());
    auto engine = MakeEngine(config, weights, gpu, options, n + 1, mlp_block_rows, sparse);
    mp::GenerationOptions gen;
    gen.max_new_tokens = 1;
    OrDie(engine->Generate(RandomPrompt(n, config.vocab_size, seed + 99), gen).status(), "warm-up");
  }
  OrDie(pool.ReleaseCached(), "release");

  std::vector<Row> rows;
  for (int64_t t : lengths) {
    Row row;
    row.tokens = t;
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    const int64_t kv_bytes = (t + 63) / 64 * 64 * kv_per_token;
    const int64_t chunk_rows = std::min(chunk, t);
    const int64_t mlp_rows = mlp_block_rows > 0 ? std::min(chunk_rows, mlp_block_rows) : chunk_rows;
    const int64_t need = kv_bytes + ScratchBytes(config, chunk_rows, mlp_rows) + (int64_t{1} << 30);
    if (need > static_cast<int64_t>(free_bytes)) {
      row.skipped = true;
      rows.push_back(row);
      emit(
          absl::StrFormat("{\"bench\":\"ttft\",\"model\":\"%s\",\"tokens\":%d,\"skipped\":"
                          "\"needs %.1f GiB of KV + activations, %.1f GiB free\"}",
                          preset, t, need / kGiB, free_bytes / kGiB));
      continue;
    }
    auto engine = MakeEngine(config, weights, gpu, options, t, mlp_block_rows, sparse);
    row.kv_gib = engine->executors()[0]->kv_cache().stats().bytes_total / kGiB;
    row.weights_gib = weight_bytes / kGiB;
    const std::vector<int32_t> prompt = RandomPrompt(t, config.vocab_size, seed + t);
    OrDie(gpu->Synchronize(), "sync");
    pool.ResetPeak();
    mp::GenerationOptions gen;
    gen.max_new_tokens = 1;
    gpu->EnableOpTiming(op_times);
    mp::GenerationResult result = OrDie(engine->Generate(prompt, gen), "generate");
    if (op_times) {
      row.ops = OrDie(gpu->TakeOpTimes(), "op times");
      gpu->EnableOpTiming(false);
    }
    row.ttft = result.timings.ttft_seconds;
    row.prefill = result.timings.prefill_seconds;
    row.peak_gib = pool.stats().peak_bytes_in_use / kGiB;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    row.device_used_gib = static_cast<double>(total_bytes - free_bytes) / kGiB;
    const double flops = LinearFlops(config, t) + AttentionFlops(config, t);
    row.tflops = flops / row.ttft / 1e12;
    row.scratch_gib = engine->executors()[0]->scratch_bytes() / kGiB;
    rows.push_back(row);
    emit(absl::StrFormat(
        "{\"bench\":\"ttft\",\"model\":\"%s\",\"attention\":\"%s\",\"locality\":%.1f,\"tokens\":%d,"
        "\"chunk\":%d,\"mlp_block_rows\":%d,\"ttft_s\":%.3f,\"prefill_s\":%.3f,\"tokens_per_s\":%."
        "1f,"
        "\"linear_pflop\":%.2f,\"attention_pflop\":%.2f,\"model_tflops\":%.1f,"
        "\"mfu_of_989\":%.3f,\"of_gemm\":%.3f,\"gemm_tflops\":%.1f,\"peak_gib\":%.2f,"
        "\"weights_gib\":%.2f,\"kv_gib\":%.2f,\"above_weights_kv_gib\":%.2f,"
        "\"scratch_gib\":%.2f,\"device_used_gib\":%.2f}",
        preset, attention, locality, t, chunk, mlp_block_rows, row.ttft, row.prefill, t / row.ttft,
        LinearFlops(config, t) / 1e15, AttentionFlops(config, t) / 1e15, row.tflops,
        row.tflops / kPeakTflops, row.tflops / gemm_tflops, gemm_tflops, row.peak_gib,
        row.weights_gib, row.kv_gib, row.peak_gib - row.weights_gib - row.kv_gib, row.scratch_gib,
        row.device_used_gib));
    if (op_times) {
      std::string line = absl::StrFormat(
          "{\"bench\":\"ttft_ops\",\"model\":\"%s\",\"attention\":\"%s\",\"tokens\":%d,"
          "\"ttft_s\":%.3f",
          preset, attention, t, row.ttft);
      double gpu_s = 0;
      for (const mp::CudaOpTime& op : row.ops) {
        absl::StrAppendFormat(&line, ",\"%s_s\":%.3f,\"%s_calls\":%d",
                              mp::CudaOpKindName(op.kind), op.seconds,
                              mp::CudaOpKindName(op.kind), op.calls);
        gpu_s += op.seconds;
      }
      absl::StrAppendFormat(&line, ",\"ops_s\":%.3f,\"rest_s\":%.3f}", gpu_s, row.ttft - gpu_s);
      emit(line);
    }
    engine.reset();
    OrDie(pool.ReleaseCached(), "release");
  }

  std::printf(
      "\n%s, %s attention (locality %.1f), %lld-token chunks, on %s (cuBLAS bf16 8192^3: "
      "%.0f TFLOP/s)\n",
      preset.c_str(), attention.c_str(), locality, static_cast<long long>(chunk),
      gpu->name().c_str(), gemm_tflops);
  std::printf(
      "| tokens | TTFT s | tokens/s | model TFLOP/s | of 989 | of GEMM | peak GiB | "
      "weights + KV GiB | above |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    if (r.skipped) {
      std::printf("| %lld | skipped: does not fit | | | | | | | |\n",
                  static_cast<long long>(r.tokens));
      continue;
    }
    std::printf("| %lld | %.2f | %.0f | %.0f | %.0f%% | %.0f%% | %.2f | %.2f | %.2f |\n",
                static_cast<long long>(r.tokens), r.ttft, r.tokens / r.ttft, r.tflops,
                100.0 * r.tflops / kPeakTflops, 100.0 * r.tflops / gemm_tflops, r.peak_gib,
                r.weights_gib + r.kv_gib, r.peak_gib - r.weights_gib - r.kv_gib);
  }
  if (op_times) {
    std::printf("\nGPU time per kind of op (s) during the request\n| tokens | TTFT s |");
    for (int k = 0; k < static_cast<int>(mp::CudaOpKind::kCount); ++k) {
      std::printf(" %s |", std::string(mp::CudaOpKindName(static_cast<mp::CudaOpKind>(k))).c_str());
    }
    std::printf(" rest |\n|---|---|");
    for (int k = 0; k <= static_cast<int>(mp::CudaOpKind::kCount); ++k) std::printf("---|");
    std::printf("\n");
    for (const Row& r : rows) {
      if (r.skipped) continue;
      double gpu_s = 0;
      std::printf("| %lld | %.2f |", static_cast<long long>(r.tokens), r.ttft);
      for (const mp::CudaOpTime& op : r.ops) {
        std::printf(" %.2f |", op.seconds);
        gpu_s += op.seconds;
      }
      std::printf(" %.2f |\n", r.ttft - gpu_s);
    }
  }
  if (json != nullptr) std::fclose(json);
  return 0;
}
