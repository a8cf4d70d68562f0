// Engine: greedy generation against the reference model, chunking and layer-split invariance,
// callbacks, stop tokens, seeded sampling, input validation and KV release on every exit.
#include "runtime/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/status_matchers.h"
#include "tests/unit/runtime/tiny_model.h"

namespace mp {
namespace {

using ::absl::StatusCode;
using testing::RandomIds;
using testing::RowRelativeError;
using testing::TinyConfig;
using testing::TinyWeights;

class EngineTest : public ::testing::Test {
 protected:
  std::unique_ptr<Engine> Make(EngineOptions options = {.chunk_size = 16},
                               KvCacheOptions kv = {.block_size = 16}) {
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        Engine::Create(config_, weights_, backend_, options, kv);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? *std::move(engine) : nullptr;
  }

  // Two executors [0, 1) and [1, 2) with their own KV budgets (tokens).
  std::unique_ptr<Engine> MakeSplit(int64_t kv_tokens_first, int64_t kv_tokens_second,
                                    EngineOptions options = {.chunk_size = 16}) {
    std::vector<std::unique_ptr<StageExecutor>> chain;
    for (auto [range, tokens] : {std::pair{LayerRange{0, 1}, kv_tokens_first},
                                 std::pair{LayerRange{1, 2}, kv_tokens_second}}) {
      StageExecutorOptions o;
      o.kv_cache = {.block_size = 16, .max_tokens = tokens};
      auto ex = StageExecutor::Create(config_, testing::SliceWeights(weights_, config_, range),
                                      backend_, o);
      EXPECT_TRUE(ex.ok()) << ex.status();
      if (!ex.ok()) return nullptr;
      chain.push_back(*std::move(ex));
    }
    auto engine = Engine::Create(std::move(chain), options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? *std::move(engine) : nullptr;
  }

  static int64_t BlocksInUse(const Engine& engine) {
    int64_t total = 0;
    for (const auto& ex : engine.executors()) total += ex->kv_cache().stats().blocks_in_use;
    return total;
  }

  ModelConfig config_ = TinyConfig({});  // Qwen2-like, 2 layers, vocab 256, context 512
  ModelWeights weights_ = TinyWeights(config_, 77);
  std::shared_ptr<Backend> backend_ = NewCpuBackend();
  std::vector<int32_t> prompt_ = RandomIds(30, config_.vocab_size, 1);
};

TEST_F(EngineTest, GreedyGenerationAndPromptLogitsMatchTheReference) {
  auto engine = Make();
  GenerationOptions options{.max_new_tokens = 8, .return_prompt_logits = true};
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult result, engine->Generate(prompt_, options));
  EXPECT_EQ(result.token_ids, testing::ReferenceGreedy(config_, weights_, prompt_, 8));
  EXPECT_EQ(result.stop_reason, StopReason::kMaxNewTokens);

  ASSERT_EQ(result.prompt_logits.shape(), (std::vector<int64_t>{30, config_.vocab_size}));
  const std::vector<double> expected = testing::ReferenceLogits(config_, weights_, prompt_);
  for (int64_t r = 0; r < 30; ++r) {
    EXPECT_LE(RowRelativeError(result.prompt_logits.data_as<float>() + r * config_.vocab_size,
                               expected.data() + r * config_.vocab_size, config_.vocab_size),
              1e-4)
        << "row " << r;
  }
  EXPECT_GT(result.timings.prefill_seconds, 0.0);
  EXPECT_GE(result.timings.ttft_seconds, result.timings.prefill_seconds);
  EXPECT_GT(result.timings.decode_seconds, 0.0);
  EXPECT_EQ(BlocksInUse(*engine), 0);
}

TEST_F(EngineTest, ChunkSizeAndLayerSplitDoNotChangeTheResult) {
  GenerationOptions options{.max_new_tokens = 6, .return_prompt_logits = true};
  auto reference_engine = Make({.chunk_size = 512});
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult want, reference_engine->Generate(prompt_, options));
  const int64_t vocab = config_.vocab_size;
  auto check = [&](Engine& engine) {
    MP_ASSERT_OK_AND_ASSIGN(GenerationResult got, engine.Generate(prompt_, options));
    EXPECT_EQ(got.token_ids, want.token_ids);
    for (int64_t r = 0; r < 30; ++r) {
      ASSERT_LE(RowRelativeError(got.prompt_logits.data_as<float>() + r * vocab,
                                 want.prompt_logits.data_as<float>() + r * vocab, vocab),
                1e-5)
          << "row " << r;
    }
  };
  for (int64_t chunk : {1, 7, 30}) {
    SCOPED_TRACE(::testing::Message() << "chunk " << chunk);
    auto engine = Make({.chunk_size = chunk});
    check(*engine);
  }
  SCOPED_TRACE("split [0, 1) + [1, 2)");
  auto split = MakeSplit(64, 64, {.chunk_size = 7});
  check(*split);
  EXPECT_EQ(BlocksInUse(*split), 0);
}

TEST_F(EngineTest, ReportsPrefillProgressAndStreamsTokens) {
  auto engine = Make({.chunk_size = 7});
  std::vector<std::pair<int64_t, int64_t>> progress;
  std::vector<int32_t> streamed;
  GenerationCallbacks callbacks;
  callbacks.on_prefill_progress = [&](int64_t done, int64_t total) {
    progress.emplace_back(done, total);
  };
  callbacks.on_token = [&](int32_t id) {
    streamed.push_back(id);
    return true;
  };
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult result,
                          engine->Generate(prompt_, {.max_new_tokens = 5}, callbacks));
  EXPECT_EQ(progress, (std::vector<std::pair<int64_t, int64_t>>{
                          {7, 30}, {14, 30}, {21, 30}, {28, 30}, {30, 30}}));
  EXPECT_EQ(streamed, result.token_ids);
  EXPECT_EQ(result.token_ids.size(), 5u);
}

TEST_F(EngineTest, CallbackCanStopGeneration) {
  auto engine = Make();
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult full, engine->Generate(prompt_, {.max_new_tokens = 8}));
  int calls = 0;
  GenerationCallbacks callbacks;
  callbacks.on_token = [&](int32_t) { return ++calls < 3; };
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult stopped,
                          engine->Generate(prompt_, {.max_new_tokens = 8}, callbacks));
  EXPECT_EQ(stopped.stop_reason, StopReason::kCallback);
  EXPECT_EQ(stopped.token_ids,
            std::vector<int32_t>(full.token_ids.begin(), full.token_ids.begin() + 3));
  EXPECT_EQ(BlocksInUse(*engine), 0);
}

TEST_F(EngineTest, StopsAtAStopTokenAndIncludesIt) {
  auto engine = Make();
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult full, engine->Generate(prompt_, {.max_new_tokens = 8}));
  const int32_t stop = full.token_ids[3];
  const size_t first =
      std::find(full.token_ids.begin(), full.token_ids.end(), stop) - full.token_ids.begin();
  MP_ASSERT_OK_AND_ASSIGN(
      GenerationResult stopped,
      engine->Generate(prompt_, {.max_new_tokens = 8, .stop_token_ids = {9999, stop}}));
  EXPECT_EQ(stopped.stop_reason, StopReason::kStopToken);
  EXPECT_EQ(stopped.token_ids,
            std::vector<int32_t>(full.token_ids.begin(), full.token_ids.begin() + first + 1));
}

TEST_F(EngineTest, SamplingIsSeededAndTinyTopPIsGreedy) {
  auto engine = Make();
  auto run = [&](GenerationOptions o) {
    absl::StatusOr<GenerationResult> r = engine->Generate(prompt_, o);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->token_ids : std::vector<int32_t>();
  };
  GenerationOptions sampled{.max_new_tokens = 12, .temperature = 1.5f, .top_p = 0.95f, .seed = 42};
  const std::vector<int32_t> a = run(sampled);
  EXPECT_EQ(run(sampled), a);
  bool any_differs = false;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    sampled.seed = seed;
    any_differs = any_differs || run(sampled) != a;
  }
  EXPECT_TRUE(any_differs) << "different seeds always gave the same tokens";
  const std::vector<int32_t> greedy = run({.max_new_tokens = 12});
  EXPECT_EQ(run({.max_new_tokens = 12, .temperature = 1.0f, .top_p = 1e-6f, .seed = 5}), greedy);
  EXPECT_NE(a, greedy);
}

TEST_F(EngineTest, PrefillOnly) {
  auto engine = Make();
  std::vector<int32_t> streamed;
  GenerationCallbacks callbacks;
  callbacks.on_token = [&](int32_t id) {
    streamed.push_back(id);
    return true;
  };
  MP_ASSERT_OK_AND_ASSIGN(
      GenerationResult r,
      engine->Generate(prompt_, {.max_new_tokens = 0, .return_prompt_logits = true}, callbacks));
  EXPECT_TRUE(r.token_ids.empty());
  EXPECT_TRUE(streamed.empty());
  EXPECT_EQ(r.prompt_logits.dim(0), 30);
  EXPECT_EQ(BlocksInUse(*engine), 0);
}

TEST_F(EngineTest, RejectsBadRequests) {
  auto engine = Make({.chunk_size = 16, .max_context = 40});
  EXPECT_EQ(engine->max_context(), 40);
  MP_EXPECT_ERROR(engine->Generate({}, {}), StatusCode::kInvalidArgument, "prompt is empty");
  std::vector<int32_t> bad = prompt_;
  bad[17] = 256;
  MP_EXPECT_ERROR(engine->Generate(bad, {}), StatusCode::kInvalidArgument,
                  "prompt token 256 at position 17 is outside the vocabulary [0, 256)");
  bad[17] = -3;
  MP_EXPECT_ERROR(engine->Generate(bad, {}), StatusCode::kInvalidArgument,
                  "token -3 at position 17");
  MP_EXPECT_ERROR(engine->Generate(prompt_, {.max_new_tokens = 11}), StatusCode::kInvalidArgument,
                  "prompt of 30 tokens + max_new_tokens 11 exceeds the maximum context of 40");
  MP_EXPECT_OK(engine->Generate(prompt_, {.max_new_tokens = 10}));
  MP_EXPECT_ERROR(engine->Generate(prompt_, {.max_new_tokens = -1}), StatusCode::kInvalidArgument,
                  "max_new_tokens must be >= 0");
  MP_EXPECT_ERROR(engine->Generate(prompt_, {.max_new_tokens = 2, .temperature = -1.0f}),
                  StatusCode::kInvalidArgument, "temperature");
  MP_EXPECT_ERROR(engine->Generate(prompt_, {.max_new_tokens = 2, .top_p = 0.0f}),
                  StatusCode::kInvalidArgument, "top_p");
  MP_EXPECT_ERROR(engine->Generate(prompt_, {.max_new_tokens = 2, .top_p = 1.5f}),
                  StatusCode::kInvalidArgument, "top_p");
  EXPECT_EQ(BlocksInUse(*engine), 0);

  // The default maximum context is the model's max_position_embeddings (512).
  auto defaults = Make();
  EXPECT_EQ(defaults->max_context(), 512);
  MP_EXPECT_ERROR(defaults->Generate(prompt_, {.max_new_tokens = 483}),
                  StatusCode::kInvalidArgument, "maximum context of 512");
}

TEST_F(EngineTest, ReleasesKvWhenAStageCannotFitTheRequest) {
  // The first stage fits the request, the second does not: the first one's reservation must be
  // given back.
  auto engine = MakeSplit(64, 32);
  MP_EXPECT_ERROR(engine->Generate(prompt_, {.max_new_tokens = 8}), StatusCode::kResourceExhausted,
                  "only 32 tokens fit");
  EXPECT_EQ(BlocksInUse(*engine), 0);
  EXPECT_EQ(engine->executors()[0]->kv_cache().stats().num_sequences, 0);
  MP_ASSERT_OK_AND_ASSIGN(GenerationResult r, engine->Generate(prompt_, {.max_new_tokens = 3}));
  EXPECT_EQ(r.token_ids.size(), 3u);
  EXPECT_EQ(BlocksInUse(*engine), 0);
}

TEST_F(EngineTest, CreateValidatesTheChain) {
  MP_EXPECT_ERROR(Engine::Create(std::vector<std::unique_ptr<StageExecutor>>(), {}),
                  StatusCode::kInvalidArgument, "no stage executors");
  auto make = [&](LayerRange r) {
    StageExecutorOptions o;
    o.kv_cache.max_tokens = 64;
    return *StageExecutor::Create(config_, testing::SliceWeights(weights_, config_, r), backend_,
                                  o);
  };
  {
    std::vector<std::unique_ptr<StageExecutor>> chain;
    chain.push_back(make({0, 1}));
    MP_EXPECT_ERROR(Engine::Create(std::move(chain), {}), StatusCode::kInvalidArgument,
                    "end at layer 1 of 2");
  }
  {
    std::vector<std::unique_ptr<StageExecutor>> chain;
    chain.push_back(make({1, 2}));
    MP_EXPECT_ERROR(Engine::Create(std::move(chain), {}), StatusCode::kInvalidArgument,
                    "needs one starting at layer 0");
  }
  {
    std::vector<std::unique_ptr<StageExecutor>> chain;
    chain.push_back(make({0, 1}));
    chain.push_back(make({1, 2}));
    MP_EXPECT_ERROR(Engine::Create(std::move(chain), {.chunk_size = 0}),
                    StatusCode::kInvalidArgument, "chunk_size must be positive");
  }
  MP_EXPECT_ERROR(
      Engine::Create(config_, testing::SliceWeights(weights_, config_, {0, 1}), backend_, {}),
      StatusCode::kInvalidArgument, "the engine needs all 2");
}

}  // namespace
}  // namespace mp
