// The whole engine on the CUDA backend: the transformers fixtures (tests/testdata/tiny_qwen2,
// tiny_llama), chunk-size and layer-split invariance, a Qwen2.5-1M-shaped model with device
// random weights against the fp32 CPU engine, bounded activation memory and seeded sampling.
// Needs an sm_90 GPU.
//
// Tolerances. bf16 storage rounds every activation to 8 significant bits; through the three
// layers of the fixtures that leaves logits about 2% (relative Frobenius) from the fp32 result
// of transformers, and row errors up to ~0.15 in logits of size ~5. Greedy decoding of such a
// random model meets near-ties (tiny_qwen2's fp32 top-2 margin is 0.003 at one step), which bf16
// may legitimately break the other way, so greedy tokens are required to be identical
//   - free-running, at every step before the first one whose reference top-2 margin is below
//     kDecisiveMargin (after a near-tie the two sequences may part), and
//   - teacher-forced (the reference tokens fed back), at every step whose margin is at least
//     kDecisiveMargin (a bf16 error that large in two logits would be a bug, not rounding).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "runtime/cuda_random_weights.h"
#include "runtime/engine.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/unit/runtime/tiny_model.h"

#ifndef MP_TESTDATA_DIR
#error "MP_TESTDATA_DIR must point at tests/testdata"
#endif

namespace mp {
namespace {

// A step whose fp32 top-1 / top-2 logit gap is at least this must pick the same token in bf16.
constexpr double kDecisiveMargin = 0.2;

std::string TestdataDir() {
  const char* env = std::getenv("MP_TESTDATA_DIR");  // set by the GPU bundle's run script
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(MP_TESTDATA_DIR);
}

struct Fixture {
  ModelConfig config;
  ModelWeights weights;
  std::vector<int32_t> input_ids;
  Tensor logits;  // [T, vocab] f32, from transformers
  std::vector<int32_t> greedy_ids;
};

absl::StatusOr<Fixture> LoadFixture(const std::string& name) {
  const std::string dir = TestdataDir() + "/" + name;
  Fixture f;
  MP_ASSIGN_OR_RETURN(f.config, LoadModelConfig(dir + "/config.json"));
  WeightLoadOptions options;
  options.layers = {0, f.config.num_hidden_layers};
  MP_ASSIGN_OR_RETURN(f.weights, LoadModelWeights(dir, f.config, options));
  MP_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> expected,
                      SafetensorsFile::Open(dir + "/expected.safetensors"));
  MP_ASSIGN_OR_RETURN(Tensor ids, expected->Get("input_ids"));
  MP_ASSIGN_OR_RETURN(Tensor logits, expected->Get("logits"));
  MP_ASSIGN_OR_RETURN(Tensor greedy, expected->Get("greedy_ids"));
  f.input_ids.assign(ids.data_as<int32_t>(), ids.data_as<int32_t>() + ids.numel());
  f.greedy_ids.assign(greedy.data_as<int32_t>(), greedy.data_as<int32_t>() + greedy.numel());
  f.logits = Tensor::Host(logits.shape(), DType::kF32);
  std::memcpy(f.logits.data(), logits.data(), logits.nbytes());
  return f;
}

// Logits [rows, vocab] of `ids` (teacher-forced: every position) through `engine`.
absl::StatusOr<Tensor> PromptLogits(Engine& engine, const std::vector<int32_t>& ids) {
  GenerationOptions options;
  options.max_new_tokens = 0;
  options.return_prompt_logits = true;
  MP_ASSIGN_OR_RETURN(GenerationResult r, engine.Generate(ids, options));
  return r.prompt_logits;
}

int32_t Argmax(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

double TopTwoMargin(const float* row, int64_t n) {
  std::vector<float> v(row, row + n);
  std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<float>());
  return n > 1 ? v[0] - v[1] : INFINITY;
}

// Row-wise max |a - b| / max |b| (the hf_fixture_test measure) and the relative Frobenius error.
struct LogitError {
  double worst_row = 0, fro = 0;
};
LogitError Compare(const Tensor& got, const Tensor& want) {
  const int64_t rows = want.dim(0), vocab = want.dim(1);
  LogitError e;
  double err2 = 0, ref2 = 0;
  for (int64_t r = 0; r < rows; ++r) {
    e.worst_row = std::max(e.worst_row,
                           testing::RowRelativeError(got.data_as<float>() + r * vocab,
                                                     want.data_as<float>() + r * vocab, vocab));
  }
  for (int64_t i = 0; i < rows * vocab; ++i) {
    const double d = got.data_as<float>()[i] - want.data_as<float>()[i];
    err2 += d * d;
    ref2 += static_cast<double>(want.data_as<float>()[i]) * want.data_as<float>()[i];
  }
  e.fro = std::sqrt(err2 / ref2);
  return e;
}

// The greedy rule of the file comment. `reference_logits` holds the reference's teacher-forced
// logits [T + G - 1, vocab] over prompt + reference tokens, `teacher_forced` ours over the same
// ids. Steps are judged by the reference's top-2 margin at that row.
void ExpectGreedyAgreement(const std::vector<int32_t>& got_free_running,
                           const std::vector<int32_t>& reference_tokens,
                           const Tensor& reference_logits, const Tensor& teacher_forced,
                           int64_t prompt_len, int64_t min_decisive, const std::string& what) {
  const int64_t vocab = reference_logits.dim(1);
  const int64_t steps = static_cast<int64_t>(reference_tokens.size());
  ASSERT_EQ(static_cast<int64_t>(got_free_running.size()), steps) << what;
  int64_t free_checked = 0, forced_checked = 0;
  bool free_running = true;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t row = prompt_len - 1 + s;
    const float* ref = reference_logits.data_as<float>() + row * vocab;
    const double margin = TopTwoMargin(ref, vocab);
    if (margin < kDecisiveMargin) {
      free_running = false;  // a near-tie: the sequences may part from here on
      continue;
    }
    ASSERT_EQ(Argmax(ref, vocab), reference_tokens[s]) << what << ": reference step " << s;
    if (free_running) {
      EXPECT_EQ(got_free_running[s], reference_tokens[s])
          << what << ": free-running step " << s << " (reference margin " << margin << ")";
      free_running = got_free_running[s] == reference_tokens[s];
      ++free_checked;
    }
    const float* ours = teacher_forced.data_as<float>() + row * vocab;
    EXPECT_EQ(Argmax(ours, vocab), reference_tokens[s])
        << what << ": teacher-forced step " << s << " (reference margin " << margin << ")";
    ++forced_checked;
  }
  EXPECT_GE(forced_checked, min_decisive) << what << ": too few decisive steps to judge";
  std::printf("[ stats    ] %s: greedy tokens identical free-running for %lld steps, "
              "teacher-forced at %lld of %lld steps\n",
              what.c_str(), static_cast<long long>(free_checked),
              static_cast<long long>(forced_checked), static_cast<long long>(steps));
}

class CudaFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    gpu_ = testing::SharedCudaBackend();
    ASSERT_NE(gpu_, nullptr);
    absl::StatusOr<Fixture> f = LoadFixture(GetParam());
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = *std::move(f);
    // The fp32 reference over prompt + transformers' greedy tokens (the CPU engine matches
    // transformers to 1e-4: hf_fixture_test).
    teacher_ids_ = fixture_.input_ids;
    teacher_ids_.insert(teacher_ids_.end(), fixture_.greedy_ids.begin(),
                        fixture_.greedy_ids.end() - 1);
    MP_ASSERT_OK_AND_ASSIGN(auto cpu, Engine::Create(fixture_.config, fixture_.weights,
                                                     NewCpuBackend(), {.chunk_size = 512}));
    MP_ASSERT_OK_AND_ASSIGN(reference_, PromptLogits(*cpu, teacher_ids_));
  }

  std::unique_ptr<Engine> MakeEngine(int64_t chunk) {
    absl::StatusOr<std::unique_ptr<Engine>> e =
        Engine::Create(fixture_.config, fixture_.weights, gpu_, {.chunk_size = chunk});
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *std::move(e) : nullptr;
  }

  // Two stages [0, 1) and [1, layers) on the GPU.
  std::unique_ptr<Engine> MakeSplitEngine(int64_t chunk) {
    std::vector<std::unique_ptr<StageExecutor>> chain;
    const int64_t layers = fixture_.config.num_hidden_layers;
    for (LayerRange r : {LayerRange{0, 1}, LayerRange{1, layers}}) {
      StageExecutorOptions o;
      o.kv_cache.max_tokens = 256;
      auto ex = StageExecutor::Create(
          fixture_.config, testing::SliceWeights(fixture_.weights, fixture_.config, r), gpu_, o);
      EXPECT_TRUE(ex.ok()) << ex.status();
      if (!ex.ok()) return nullptr;
      chain.push_back(*std::move(ex));
    }
    auto e = Engine::Create(std::move(chain), {.chunk_size = chunk});
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *std::move(e) : nullptr;
  }

  // Runs the fixture through `engine`: prompt logits against transformers, greedy tokens by the
  // rule of the file comment.
  void CheckAgainstTransformers(Engine& engine, const std::string& what) {
    GenerationOptions options;
    options.max_new_tokens = static_cast<int64_t>(fixture_.greedy_ids.size());
    options.return_prompt_logits = true;
    MP_ASSERT_OK_AND_ASSIGN(GenerationResult result, engine.Generate(fixture_.input_ids, options));
    const LogitError e = Compare(result.prompt_logits, fixture_.logits);
    std::printf("[ stats    ] %s: logits vs transformers: worst row %.3e, Frobenius %.3e\n",
                what.c_str(), e.worst_row, e.fro);
    EXPECT_LE(e.fro, 5e-2) << what;
    EXPECT_LE(e.worst_row, 0.15) << what;
    MP_ASSERT_OK_AND_ASSIGN(Tensor forced, PromptLogits(engine, teacher_ids_));
    // fp32 margins of the fixtures: 5 (tiny_qwen2) and 8 (tiny_llama) of the 16 steps are
    // decisive.
    ExpectGreedyAgreement(result.token_ids, fixture_.greedy_ids, reference_, forced,
                          static_cast<int64_t>(fixture_.input_ids.size()), /*min_decisive=*/4,
                          what);
  }

  std::shared_ptr<CudaBackend> gpu_;
  Fixture fixture_;
  std::vector<int32_t> teacher_ids_;
  Tensor reference_;  // fp32 logits over teacher_ids_
};

TEST_P(CudaFixtureTest, OneExecutorMatchesTransformers) {
  auto engine = MakeEngine(512);
  ASSERT_NE(engine, nullptr);
  CheckAgainstTransformers(*engine, GetParam() + " chunk 512");
  // head_dim 64 and block size 64: every attention call took the sm_90a kernel.
  EXPECT_GT(gpu_->stats().prefill_attention_calls, 0);
}

TEST_P(CudaFixtureTest, ChunkedAndSplitMatchesTransformers) {
  auto engine = MakeSplitEngine(7);
  ASSERT_NE(engine, nullptr);
  CheckAgainstTransformers(*engine, GetParam() + " split, chunk 7");
}

// Chunking changes only the rounding (other GEMM shapes, other attention tiles): against the
// unchunked CUDA run the logits stay within bf16 noise and greedy decoding agrees by the rule of
// the file comment, with the unchunked CUDA run as the reference.
TEST_P(CudaFixtureTest, ChunkSizeAndLayerSplitDoNotChangeTheResult) {
  GenerationOptions options;
  options.max_new_tokens = 40;  // more steps than the fixture's 16: more decisive ones
  options.return_prompt_logits = true;
  auto whole = MakeEngine(512);
  ASSERT_NE(whole, nullptr);
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult want, whole->Generate(fixture_.input_ids, options));
  std::vector<int32_t> teacher = fixture_.input_ids;
  teacher.insert(teacher.end(), want.token_ids.begin(), want.token_ids.end() - 1);
  MP_ASSERT_OK_AND_ASSIGN(Tensor want_forced, PromptLogits(*whole, teacher));
  for (int64_t chunk : {1, 7, 64}) {
    for (bool split : {false, true}) {
      const std::string what =
          absl::StrCat(GetParam(), " chunk ", chunk, split ? " split" : "", " vs chunk 512");
      SCOPED_TRACE(what);
      auto engine = split ? MakeSplitEngine(chunk) : MakeEngine(chunk);
      ASSERT_NE(engine, nullptr);
      MP_ASSERT_OK_AND_ASSIGN(GenerationResult got, engine->Generate(fixture_.input_ids, options));
      const LogitError e = Compare(got.prompt_logits, want.prompt_logits);
      std::printf("[ stats    ] %s: worst row %.3e, Frobenius %.3e\n", what.c_str(), e.worst_row,
                  e.fro);
      EXPECT_LE(e.fro, 2.5e-2);
      EXPECT_LE(e.worst_row, 6e-2);
      MP_ASSERT_OK_AND_ASSIGN(Tensor forced, PromptLogits(*engine, teacher));
      ExpectGreedyAgreement(got.token_ids, want.token_ids, want_forced, forced,
                            static_cast<int64_t>(fixture_.input_ids.size()),
                            /*min_decisive=*/4, what);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, CudaFixtureTest, ::testing::Values("tiny_qwen2", "tiny_llama"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// A small model with the Qwen2.5-7B-1M layer layout (head_dim 128, 7 query heads per KV head,
// QKV bias, theta 1e7) and seeded random weights: generated on the GPU vs the same values on
// the host through the fp32 CPU engine.
ModelConfig MiniQwen1MConfig() {
  ModelConfig c = Qwen25_7BInstruct1MConfig();
  c.vocab_size = 2048;
  c.hidden_size = 1792;
  c.intermediate_size = 4736;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 14;
  c.num_key_value_heads = 2;
  c.head_dim = 128;
  c.max_position_embeddings = 4096;
  c.dual_chunk.reset();
  return c;
}

// Seeded random weights of every layer of `config`, generated on the GPU.
absl::StatusOr<ModelWeights> DeviceWeights(CudaBackend& gpu, const ModelConfig& config,
                                           uint64_t seed) {
  WeightLoadOptions load;
  load.layers = {0, config.num_hidden_layers};
  return RandomModelWeightsOnDevice(gpu, config, load, seed);
}

TEST(CudaEngineTest, QwenShapedModelWithDeviceRandomWeightsMatchesTheCpuEngine) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  const ModelConfig config = MiniQwen1MConfig();
  WeightLoadOptions load;
  load.layers = {0, config.num_hidden_layers};
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights host, RandomModelWeights(config, load, 77));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights device, RandomModelWeightsOnDevice(*gpu, config, load, 77));
  MP_ASSERT_OK_AND_ASSIGN(auto cpu_engine,
                          Engine::Create(config, host, NewCpuBackend(), {.chunk_size = 256}));
  MP_ASSERT_OK_AND_ASSIGN(auto gpu_engine, Engine::Create(config, device, gpu, {.chunk_size = 256}));
  const std::vector<int32_t> prompt = testing::RandomIds(700, config.vocab_size, 5);
  MP_ASSERT_OK_AND_ASSIGN(Tensor want, PromptLogits(*cpu_engine, prompt));
  MP_ASSERT_OK_AND_ASSIGN(Tensor got, PromptLogits(*gpu_engine, prompt));
  const LogitError e = Compare(got, want);
  std::printf("[ stats    ] mini Qwen 1M: logits vs fp32 CPU: worst row %.3e, Frobenius %.3e\n",
              e.worst_row, e.fro);
  // Rounding every op's output to bf16 on the CPU gives 1.0e-2 and 1.5e-2 here.
  EXPECT_LE(e.fro, 3e-2);
  EXPECT_LE(e.worst_row, 6e-2);
}

TEST(CudaEngineTest, ActivationMemoryIsBoundedByTheChunkNotThePrompt) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  const ModelConfig config = MiniQwen1MConfig();
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights device, DeviceWeights(*gpu, config, 3));
  MP_ASSERT_OK_AND_ASSIGN(auto engine, Engine::Create(config, device, gpu, {.chunk_size = 128},
                                                      {.block_size = 64, .max_tokens = 4096}));
  CudaMemoryPool& pool = gpu->memory_pool();
  // A first request allocates the chunk scratch and the logits row once.
  MP_ASSERT_OK(engine->Generate(testing::RandomIds(200, config.vocab_size, 8),
                                {.max_new_tokens = 1})
                   .status());
  std::vector<int64_t> growth, scratch;
  for (int64_t len : {512, 4000}) {
    MP_ASSERT_OK(gpu->Synchronize());
    const int64_t base = pool.stats().bytes_in_use;
    pool.ResetPeak();
    GenerationOptions options;
    options.max_new_tokens = 1;
    MP_ASSERT_OK(engine->Generate(testing::RandomIds(len, config.vocab_size, 9), options).status());
    growth.push_back(pool.stats().peak_bytes_in_use - base);
    scratch.push_back(engine->executors()[0]->scratch_bytes());
  }
  // With the scratch in place, a request only adds its block table and per-op staging of host
  // ids/positions (a few 512-byte units); the 8x longer prompt needs no more than the short one.
  std::printf("[ stats    ] peak growth: %lld bytes (512 tokens), %lld bytes (4000 tokens)\n",
              static_cast<long long>(growth[0]), static_cast<long long>(growth[1]));
  EXPECT_LE(growth[1], growth[0] + 1024);
  EXPECT_LE(growth[1], int64_t{64} << 10);
  EXPECT_EQ(scratch[1], scratch[0]);
  std::printf("[ stats    ] scratch %lld bytes for chunks of 128 tokens\n",
              static_cast<long long>(scratch[1]));
}

TEST(CudaEngineTest, SeededSamplingIsReproducibleAndTinyTopPIsGreedy) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  const ModelConfig config = MiniQwen1MConfig();
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights device, DeviceWeights(*gpu, config, 4));
  MP_ASSERT_OK_AND_ASSIGN(auto engine, Engine::Create(config, device, gpu, {.chunk_size = 64}));
  const std::vector<int32_t> prompt = testing::RandomIds(100, config.vocab_size, 2);
  GenerationOptions sampled{.max_new_tokens = 12, .temperature = 1.5f, .top_p = 0.95f, .seed = 7};
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult a, engine->Generate(prompt, sampled));
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult b, engine->Generate(prompt, sampled));
  EXPECT_EQ(a.token_ids, b.token_ids);
  sampled.seed = 8;
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult c, engine->Generate(prompt, sampled));
  EXPECT_NE(a.token_ids, c.token_ids);
  GenerationOptions greedy{.max_new_tokens = 12};
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult g, engine->Generate(prompt, greedy));
  GenerationOptions nucleus{.max_new_tokens = 12, .temperature = 1.0f, .top_p = 1e-6f, .seed = 3};
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult n, engine->Generate(prompt, nucleus));
  EXPECT_EQ(g.token_ids, n.token_ids);
}

}  // namespace
}  // namespace mp
