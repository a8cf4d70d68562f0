// The engine against Hugging Face transformers: tests/testdata/tiny_{qwen2,llama} hold a tiny
// random model (config.json, model.safetensors) and expected.safetensors with what transformers
// computed for it (input_ids [T], logits [T, vocab] at every position, greedy_ids [G]).
//
// Logits must match with a relative error of at most 1e-4 per row, defined as
// max_j |ours[j] - theirs[j]| / max_j |theirs[j]|; the greedy tokens must be identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "runtime/engine.h"
#include "tests/unit/runtime/tiny_model.h"

#ifndef MP_TESTDATA_DIR
#error "MP_TESTDATA_DIR must point at tests/testdata"
#endif

namespace mp {
namespace {

struct Fixture {
  ModelConfig config;
  ModelWeights weights;
  std::vector<int32_t> input_ids;
  Tensor logits;  // [T, vocab] f32
  std::vector<int32_t> greedy_ids;
};

std::vector<int32_t> ToIds(const Tensor& t) {
  return std::vector<int32_t>(t.data_as<int32_t>(), t.data_as<int32_t>() + t.numel());
}

absl::StatusOr<Fixture> LoadFixture(const std::string& name) {
  const std::string dir = std::string(MP_TESTDATA_DIR) + "/" + name;
  Fixture f;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir + "/config.json");
  if (!config.ok()) return config.status();
  f.config = *config;
  WeightLoadOptions options;
  options.layers = {0, f.config.num_hidden_layers};
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(dir, f.config, options);
  if (!weights.ok()) return weights.status();
  f.weights = *std::move(weights);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> expected =
      SafetensorsFile::Open(dir + "/expected.safetensors");
  if (!expected.ok()) return expected.status();
  absl::StatusOr<Tensor> ids = (*expected)->Get("input_ids");
  absl::StatusOr<Tensor> logits = (*expected)->Get("logits");
  absl::StatusOr<Tensor> greedy = (*expected)->Get("greedy_ids");
  for (const auto* s : {&ids, &logits, &greedy}) {
    if (!s->ok()) return s->status();
  }
  if (ids->dtype() != DType::kI32 || ids->rank() != 1 || greedy->dtype() != DType::kI32 ||
      logits->dtype() != DType::kF32 || logits->rank() != 2 || logits->dim(0) != ids->dim(0) ||
      logits->dim(1) != f.config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(dir,
                                                   "/expected.safetensors has unexpected "
                                                   "dtypes or shapes"));
  }
  f.input_ids = ToIds(*ids);
  f.logits = *logits;  // keeps the mapping alive through its owner
  f.greedy_ids = ToIds(*greedy);
  return f;
}

class HfFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    absl::StatusOr<Fixture> f = LoadFixture(GetParam());
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = *std::move(f);
    ASSERT_FALSE(fixture_.input_ids.empty());
    ASSERT_FALSE(fixture_.greedy_ids.empty());
  }

  void CheckEngine(Engine& engine) {
    const int64_t vocab = fixture_.config.vocab_size;
    const int64_t T = static_cast<int64_t>(fixture_.input_ids.size());
    GenerationOptions options;
    options.max_new_tokens = static_cast<int64_t>(fixture_.greedy_ids.size());
    options.return_prompt_logits = true;
    MP_ASSERT_OK_AND_ASSIGN(GenerationResult result, engine.Generate(fixture_.input_ids, options));
    ASSERT_EQ(result.prompt_logits.shape(), (std::vector<int64_t>{T, vocab}));
    double worst = 0;
    for (int64_t r = 0; r < T; ++r) {
      std::vector<float> theirs(fixture_.logits.data_as<float>() + r * vocab,
                                fixture_.logits.data_as<float>() + (r + 1) * vocab);
      const double err = testing::RowRelativeError(
          result.prompt_logits.data_as<float>() + r * vocab, theirs.data(), vocab);
      EXPECT_LE(err, 1e-4) << "row " << r;
      worst = std::max(worst, err);
    }
    RecordProperty("worst_row_relative_error", std::to_string(worst));
    EXPECT_EQ(result.token_ids, fixture_.greedy_ids);
  }

  Fixture fixture_;
};

TEST_P(HfFixtureTest, OneExecutorMatchesTransformers) {
  MP_ASSERT_OK_AND_ASSIGN(auto engine, Engine::Create(fixture_.config, fixture_.weights,
                                                      NewCpuBackend(), {.chunk_size = 512}));
  CheckEngine(*engine);
}

TEST_P(HfFixtureTest, ChunkedAndSplitMatchesTransformers) {
  std::shared_ptr<Backend> backend = NewCpuBackend();
  std::vector<std::unique_ptr<StageExecutor>> chain;
  const int64_t layers = fixture_.config.num_hidden_layers;
  for (LayerRange r : {LayerRange{0, 1}, LayerRange{1, layers}}) {
    StageExecutorOptions o;
    o.kv_cache.max_tokens = 256;
    MP_ASSERT_OK_AND_ASSIGN(
        auto ex, StageExecutor::Create(fixture_.config,
                                       testing::SliceWeights(fixture_.weights, fixture_.config, r),
                                       backend, o));
    chain.push_back(std::move(ex));
  }
  MP_ASSERT_OK_AND_ASSIGN(auto engine, Engine::Create(std::move(chain), {.chunk_size = 7}));
  CheckEngine(*engine);
}

INSTANTIATE_TEST_SUITE_P(Models, HfFixtureTest, ::testing::Values("tiny_qwen2", "tiny_llama"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace mp
