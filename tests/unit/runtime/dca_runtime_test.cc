// Dual chunk attention through the stage executor and the engine on tiny random models, against
// the naive double-precision DCA reference of tiny_model.h (relative distances from
// qwen1m-spec.md §2.2, the YaRN temperature of §2.7), over lengths spanning 4 DCA chunks:
// all-row logits for every prefill chunking, cached K/V invariance, decode vs prefill, layer
// slices, plain-RoPE equality below the chunk length, greedy generation, and config checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/status_matchers.h"
#include "runtime/engine.h"
#include "runtime/stage_executor.h"
#include "tests/unit/runtime/executor_test_util.h"
#include "tests/unit/runtime/tiny_model.h"

namespace mp {
namespace {

using ::absl::StatusCode;
using testing::ExecutorOptions;
using testing::ExpectRowsNear;
using testing::HostIds;
using testing::RandomIds;
using testing::ReferenceLogits;
using testing::RowRelativeError;
using testing::RunPrompt;
using testing::TinyConfig;
using testing::TinyModelSpec;
using testing::TinyWeights;
using testing::ToVector;

// chunk_size 80, local_size 16: C = 64 (a multiple of 64, as the runtime requires), S = 80.
// L0 = 96, so the temperature is active beyond 96 tokens.
constexpr int64_t kChunkSize = 80, kLocalSize = 16, kC = kChunkSize - kLocalSize, kL0 = 96;
constexpr int64_t kBlock = 16;

ModelConfig DcaConfig(TinyModelSpec spec, int64_t l0 = kL0) {
  ModelConfig c = TinyConfig(spec);
  DualChunkConfig d;
  d.chunk_size = kChunkSize;
  d.local_size = kLocalSize;
  d.original_max_position_embeddings = l0;
  c.dual_chunk = d;
  return c;
}

// The K and V rows [0, len) of `seq` in layer `layer` of `ex`'s cache, in sequence order.
std::vector<float> CachedKv(const StageExecutor& ex, uint64_t seq, int64_t layer, int64_t len) {
  absl::StatusOr<KvLayerView> view = ex.kv_cache().LayerView(seq, layer);
  EXPECT_TRUE(view.ok()) << view.status();
  if (!view.ok()) return {};
  const std::vector<float> k = ToVector(ex.backend(), view->k);
  const std::vector<float> v = ToVector(ex.backend(), view->v);
  const int32_t* table = view->block_table.data_as<const int32_t>();
  const int64_t kv_heads = view->k.dim(1), bs = view->block_size, d = view->k.dim(3);
  std::vector<float> rows;
  for (const std::vector<float>* pool : {&k, &v}) {
    for (int64_t t = 0; t < len; ++t) {
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t at = ((table[t / bs] * kv_heads + h) * bs + t % bs) * d;
        rows.insert(rows.end(), pool->begin() + at, pool->begin() + at + d);
      }
    }
  }
  return rows;
}

struct ModelCase {
  std::string name;
  TinyModelSpec spec;
};

void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

class DcaExecutorReferenceTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(DcaExecutorReferenceTest, AllRowLogitsMatchTheReferenceForEveryChunking) {
  // §9.2 and §9.4 at the model level: 200 tokens = 3 whole DCA chunks + 8, temperature m(200)
  // on every chunk; engine chunks of 1, 7, C - 1, C, C + 1 and the whole prompt.
  const ModelConfig config = DcaConfig(GetParam().spec);
  const ModelWeights weights = TinyWeights(config, 41);
  const int64_t L = 3 * kC + 8, vocab = config.vocab_size;
  const std::vector<int32_t> ids = RandomIds(L, vocab, 42);
  const std::vector<double> want = ReferenceLogits(config, weights, ids);

  // The reference is not plain RoPE: DCA changes the rows at and past C.
  ModelConfig plain = config;
  plain.dual_chunk.reset();
  const std::vector<double> rope = ReferenceLogits(plain, weights, ids);
  double past_c = 0.0;
  for (int64_t r = kC; r < L; ++r) {
    std::vector<float> row(rope.begin() + r * vocab, rope.begin() + (r + 1) * vocab);
    past_c = std::max(past_c, RowRelativeError(row.data(), want.data() + r * vocab, vocab));
  }
  EXPECT_GT(past_c, 1e-3) << "the test should exercise DCA";

  for (int64_t chunk : {L, int64_t{1}, int64_t{7}, kC - 1, kC, kC + 1}) {
    MP_ASSERT_OK_AND_ASSIGN(
        auto ex, StageExecutor::Create(config, weights, NewCpuBackend(), ExecutorOptions()));
    MP_ASSERT_OK_AND_ASSIGN(std::vector<float> got, RunPrompt({ex.get()}, 1, ids, chunk, L));
    ExpectRowsNear(got, want, vocab, 1e-4, "chunk " + std::to_string(chunk));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, DcaExecutorReferenceTest,
    ::testing::Values(ModelCase{"qwen2_gqa", {.layers = 2, .max_position_embeddings = 1024}},
                      ModelCase{"llama_tied_mha",
                                {.architecture = Architecture::kLlama,
                                 .layers = 2,
                                 .kv_heads = 4,
                                 .tie_word_embeddings = true,
                                 .max_position_embeddings = 1024}},
                      ModelCase{"qwen2_mqa_theta_1e6",
                                {.layers = 2,
                                 .heads = 8,
                                 .kv_heads = 1,
                                 .head_dim = 8,
                                 .rope_theta = 1e6,
                                 .max_position_embeddings = 1024}}),
    [](const ::testing::TestParamInfo<ModelCase>& info) { return info.param.name; });

class DcaExecutorTest : public ::testing::Test {
 protected:
  ModelConfig config_ = DcaConfig({.layers = 3, .max_position_embeddings = 1024});
  ModelWeights weights_ = TinyWeights(config_, 51);
  std::shared_ptr<Backend> backend_ = NewCpuBackend();

  std::unique_ptr<StageExecutor> Make(LayerRange layers = {0, 3},
                                      StageExecutorOptions options = ExecutorOptions()) {
    return testing::MakeExecutor(config_, weights_, backend_, layers, options);
  }
};

TEST_F(DcaExecutorTest, CachedKvIsInvariantToChunking) {
  // §9.4: the cache holds the same K (rotated by p mod C) and V whatever the chunking.
  const int64_t L = 3 * kC + 5;
  const std::vector<int32_t> ids = RandomIds(L, config_.vocab_size, 52);
  auto whole = Make();
  MP_ASSERT_OK(RunPrompt({whole.get()}, 1, ids, L, L).status());
  for (int64_t chunk : {int64_t{7}, kC, kC + 1}) {
    auto ex = Make();
    MP_ASSERT_OK(RunPrompt({ex.get()}, 1, ids, chunk, L).status());
    for (int64_t layer = 0; layer < 3; ++layer) {
      const std::vector<float> want = CachedKv(*whole, 1, layer, L);
      const std::vector<float> got = CachedKv(*ex, 1, layer, L);
      ASSERT_EQ(got.size(), want.size());
      double scale = 0, diff = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        scale = std::max(scale, static_cast<double>(std::abs(want[i])));
        diff = std::max(diff, static_cast<double>(std::abs(got[i] - want[i])));
      }
      EXPECT_LE(diff, 1e-5 * scale) << "chunk " << chunk << " layer " << layer;
    }
  }
}

TEST_F(DcaExecutorTest, DecodeEqualsTheLastRowOfPrefill) {
  // §9.5: prefill L - 1 tokens and decode token L - 1, both at the temperature of length L, equal
  // the last row of a one-shot prefill of L tokens; and the reference agrees.
  for (int64_t L : {kC, kC + 1, 2 * kC, 2 * kC + 1, 3 * kC + 3}) {
    SCOPED_TRACE(::testing::Message() << "L = " << L);
    const std::vector<int32_t> ids = RandomIds(L, config_.vocab_size, 60 + L);
    auto full = Make();
    MP_ASSERT_OK_AND_ASSIGN(Tensor one_shot,
                            full->RunChunk(1, 0, HostIds(ids), LogitsMode::kLastRow, L));
    const std::vector<float> want = ToVector(*backend_, one_shot);
    auto ex = Make();
    MP_ASSERT_OK(
        ex->RunChunk(1, 0, HostIds(std::span(ids).first(L - 1)), LogitsMode::kNone, L).status());
    MP_ASSERT_OK_AND_ASSIGN(Tensor step, ex->RunChunk(1, L - 1, HostIds(std::span(ids).last(1)),
                                                      LogitsMode::kLastRow, L));
    ExpectRowsNear(ToVector(*backend_, step), want, config_.vocab_size, 1e-5, "decode");
    const std::vector<double> ref = ReferenceLogits(config_, weights_, ids);
    ExpectRowsNear(want, std::vector<double>(ref.end() - config_.vocab_size, ref.end()),
                   config_.vocab_size, 1e-4, "reference");
  }
}

TEST_F(DcaExecutorTest, LayerSlicesEqualOneExecutor) {
  const int64_t L = 2 * kC + 30;
  const std::vector<int32_t> ids = RandomIds(L, config_.vocab_size, 70);
  auto whole = Make();
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> want, RunPrompt({whole.get()}, 1, ids, 50, L));
  auto first = Make({0, 1}), second = Make({1, 3});
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> got,
                          RunPrompt({first.get(), second.get()}, 1, ids, 50, L));
  ExpectRowsNear(got, want, config_.vocab_size, 1e-6, "split at layer 1");
}

TEST_F(DcaExecutorTest, BelowTheChunkLengthDcaIsPlainRope) {
  // §9.1: with L <= C and m = 1 a DCA model gives exactly the logits of the same model without
  // DCA, in prefill and in decode.
  ModelConfig plain_config = config_;
  plain_config.dual_chunk.reset();
  MP_ASSERT_OK_AND_ASSIGN(
      auto plain, StageExecutor::Create(plain_config, weights_, backend_, ExecutorOptions()));
  auto dca = Make();
  const std::vector<int32_t> ids = RandomIds(kC, config_.vocab_size, 80);
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> want, RunPrompt({plain.get()}, 1, ids, 20, kC));
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> got, RunPrompt({dca.get()}, 1, ids, 20, kC));
  EXPECT_EQ(got, want);
}

TEST_F(DcaExecutorTest, TemperatureBelowTheChunkLength) {
  // L0 below L <= C: only the intra region, but m > 1 scales the logits (the DCA op runs).
  config_ = DcaConfig({.layers = 3, .max_position_embeddings = 1024}, /*l0=*/20);
  const int64_t L = kC - 4;
  const std::vector<int32_t> ids = RandomIds(L, config_.vocab_size, 81);
  auto ex = Make();
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> got, RunPrompt({ex.get()}, 1, ids, 9, L));
  ExpectRowsNear(got, ReferenceLogits(config_, weights_, ids), config_.vocab_size, 1e-4, "m > 1");
  ModelConfig no_temperature = config_;
  no_temperature.dual_chunk->original_max_position_embeddings = 1 << 20;
  const std::vector<double> without = ReferenceLogits(no_temperature, weights_, ids);
  EXPECT_GT(RowRelativeError(&got[(L - 1) * config_.vocab_size],
                             &without[(L - 1) * config_.vocab_size], config_.vocab_size),
            1e-3)
      << "the temperature should change the logits";
}

TEST_F(DcaExecutorTest, RejectsBadSettings) {
  ModelConfig c = config_;
  c.dual_chunk->local_size = 32;  // C = 48: not a multiple of 64
  MP_EXPECT_ERROR(StageExecutor::Create(c, weights_, backend_, ExecutorOptions()),
                  StatusCode::kInvalidArgument, "gives chunk length 48, which must be a multiple");
  MP_EXPECT_ERROR(StageExecutor::Create(config_, weights_, backend_, ExecutorOptions(1024, 48)),
                  StatusCode::kInvalidArgument,
                  "block_size 48 must divide the dual chunk attention chunk length 64");
  auto ex = Make();
  const std::vector<int32_t> ids = RandomIds(4, config_.vocab_size, 90);
  MP_EXPECT_ERROR(ex->RunChunk(1, 0, HostIds(ids), LogitsMode::kLastRow, -1),
                  StatusCode::kInvalidArgument, "prompt_len must be >= 0");
}

// ---- engine ---------------------------------------------------------------------------------

int64_t BlocksInUse(const Engine& engine) {
  int64_t total = 0;
  for (const auto& ex : engine.executors()) total += ex->kv_cache().stats().blocks_in_use;
  return total;
}

TEST(DcaEngineTest, GreedyGenerationAcrossFourDcaChunksMatchesTheReference) {
  // A 180-token prompt (3 DCA chunks) prefilled in chunks of 37 that do not align with C, then
  // 20 greedy tokens that cross into the 4th chunk at 192; prompt logits and tokens against the
  // reference (prompt at m(180), each decode step at m of its length).
  const ModelConfig config = DcaConfig({.layers = 2, .max_position_embeddings = 1024});
  const ModelWeights weights = TinyWeights(config, 91);
  const std::vector<int32_t> prompt = RandomIds(180, config.vocab_size, 92);
  MP_ASSERT_OK_AND_ASSIGN(auto engine, Engine::Create(config, weights, NewCpuBackend(),
                                                      {.chunk_size = 37}, {.block_size = kBlock}));
  GenerationOptions options{.max_new_tokens = 20, .return_prompt_logits = true};
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult result, engine->Generate(prompt, options));
  EXPECT_EQ(result.token_ids, testing::ReferenceGreedy(config, weights, prompt, 20));
  const int64_t vocab = config.vocab_size;
  const std::vector<double> want = ReferenceLogits(config, weights, prompt);
  ASSERT_EQ(result.prompt_logits.numel(), static_cast<int64_t>(want.size()));
  std::vector<float> got(result.prompt_logits.data_as<float>(),
                         result.prompt_logits.data_as<float>() + result.prompt_logits.numel());
  ExpectRowsNear(got, want, vocab, 1e-4, "prompt logits");
  EXPECT_EQ(BlocksInUse(*engine), 0);
}

TEST(DcaEngineTest, ChunkSizeAndLayerSplitDoNotChangeTheResult) {
  const ModelConfig config = DcaConfig({.layers = 2, .max_position_embeddings = 1024});
  const ModelWeights weights = TinyWeights(config, 93);
  std::shared_ptr<Backend> backend = NewCpuBackend();
  const std::vector<int32_t> prompt = RandomIds(2 * kC + 11, config.vocab_size, 94);
  GenerationOptions options{.max_new_tokens = 6, .return_prompt_logits = true};
  MP_ASSERT_OK_AND_ASSIGN(auto one, Engine::Create(config, weights, backend, {.chunk_size = 1024},
                                                   {.block_size = kBlock}));
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult want, one->Generate(prompt, options));
  std::vector<std::unique_ptr<StageExecutor>> chain;
  for (LayerRange range : {LayerRange{0, 1}, LayerRange{1, 2}}) {
    MP_ASSERT_OK_AND_ASSIGN(
        auto ex, StageExecutor::Create(config, testing::SliceWeights(weights, config, range),
                                       backend, ExecutorOptions()));
    chain.push_back(std::move(ex));
  }
  MP_ASSERT_OK_AND_ASSIGN(auto split, Engine::Create(std::move(chain), {.chunk_size = 5}));
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult got, split->Generate(prompt, options));
  EXPECT_EQ(got.token_ids, want.token_ids);
  const int64_t vocab = config.vocab_size;
  std::vector<float> a(got.prompt_logits.data_as<float>(),
                       got.prompt_logits.data_as<float>() + got.prompt_logits.numel());
  std::vector<float> b(want.prompt_logits.data_as<float>(),
                       want.prompt_logits.data_as<float>() + want.prompt_logits.numel());
  ExpectRowsNear(a, b, vocab, 1e-5, "prompt logits");
}

}  // namespace
}  // namespace mp
