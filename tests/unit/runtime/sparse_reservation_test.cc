// The sparse prefill workspace set aside when a stage is set up (StageExecutor::
// ReserveSparseWorkspace, Engine::Create): what the executor asks its backend for (the longest
// chunk, the longest prompt its KV cache and the maximum context allow, the model's geometry and
// DCA, the effective budgets of exactly its layers), when it asks nothing (dense prefill, or no
// prompt that long runs sparse), and how a backend's refusal reaches the caller.
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "common/status_matchers.h"
#include "runtime/backend.h"
#include "runtime/engine.h"
#include "runtime/stage_executor.h"
#include "tests/unit/runtime/forwarding_backend.h"
#include "tests/unit/runtime/sparse_test_util.h"
#include "tests/unit/runtime/tiny_model.h"

namespace mp {
namespace {

using ::absl::StatusCode;
using testing::EffectiveBudgets;
using testing::HeadConfig;
using testing::Settings;
using testing::SliceWeights;
using testing::TinyConfig;
using testing::TinyWeights;

// Records each reservation (budget sets copied) and answers with `answer`.
class ReservingBackend final : public ForwardingBackend {
 public:
  explicit ReservingBackend(absl::StatusOr<int64_t> answer)
      : ForwardingBackend("reserving"), answer_(std::move(answer)) {}

  struct Seen {
    VerticalSlashReservation r;
    std::vector<std::vector<int64_t>> budgets;
  };
  std::vector<Seen> seen;

  absl::StatusOr<int64_t> ReserveVerticalSlashWorkspace(
      const VerticalSlashReservation& r) override {
    Seen s{r, {}};
    for (std::span<const int64_t> set : r.budgets) s.budgets.emplace_back(set.begin(), set.end());
    s.r.budgets.clear();
    seen.push_back(std::move(s));
    return answer_;
  }

 private:
  absl::StatusOr<int64_t> answer_;
};

constexpr int64_t kKvTokens = 2048;  // the KV cache of every executor here (block size 16)

ModelConfig DcaConfig() { return testing::TinyDcaConfig(3); }

std::unique_ptr<StageExecutor> Make(const ModelConfig& config, const ModelWeights& weights,
                                    std::shared_ptr<Backend> backend,
                                    std::shared_ptr<const SparsePrefillSettings> sparse) {
  StageExecutorOptions o;
  o.kv_cache.block_size = 16;
  o.kv_cache.max_tokens = kKvTokens;
  o.sparse = std::move(sparse);
  absl::StatusOr<std::unique_ptr<StageExecutor>> ex =
      StageExecutor::Create(config, weights, std::move(backend), o);
  EXPECT_TRUE(ex.ok()) << ex.status();
  return ex.ok() ? *std::move(ex) : nullptr;
}

TEST(SparseReservationTest, AsksForTheLongestChunkOverTheLongestPromptWithItsLayersBudgets) {
  const ModelConfig config = DcaConfig();
  const ModelWeights weights = TinyWeights(config, 3);
  const SparseAttentionConfig heads = HeadConfig(3, 4, 40, 100);
  // A stage over layers [1, 3): the budget sets of layers 1 and 2, in order.
  auto backend = std::make_shared<ReservingBackend>(int64_t{12345});
  auto ex = Make(config, SliceWeights(weights, config, {1, 3}), backend, Settings(heads, 100));
  ASSERT_NE(ex, nullptr);
  MP_ASSERT_OK_AND_ASSIGN(const int64_t held, ex->ReserveSparseWorkspace(200, 600));
  EXPECT_EQ(held, 12345);
  ASSERT_EQ(backend->seen.size(), 1u);
  const ReservingBackend::Seen& s = backend->seen[0];
  EXPECT_EQ(s.r.max_queries, 200);
  EXPECT_EQ(s.r.max_keys, 600);
  EXPECT_EQ(s.r.q_heads, 4);
  EXPECT_EQ(s.r.kv_heads, 2);
  EXPECT_EQ(s.r.head_dim, 16);
  EXPECT_EQ(s.r.chunk_size, 320);
  EXPECT_EQ(s.r.chunk_len, 256);
  EXPECT_EQ(s.r.last_q, 64);
  ASSERT_EQ(s.budgets.size(), 2u);
  EXPECT_EQ(s.budgets[0], EffectiveBudgets(heads, 1));
  EXPECT_EQ(s.budgets[1], EffectiveBudgets(heads, 2));
  EXPECT_EQ(s.budgets[0][0], 130) << "vertical_size 30 runs as 130";

  // The longest prompt is the KV cache's capacity when no maximum context is given or when it
  // is larger.
  MP_ASSERT_OK(ex->ReserveSparseWorkspace(64).status());
  MP_ASSERT_OK(ex->ReserveSparseWorkspace(64, 1 << 20).status());
  ASSERT_EQ(backend->seen.size(), 3u);
  EXPECT_EQ(backend->seen[1].r.max_keys, kKvTokens);
  EXPECT_EQ(backend->seen[2].r.max_keys, kKvTokens);
  EXPECT_EQ(backend->seen[1].r.max_queries, 64);
}

TEST(SparseReservationTest, WithoutDcaTheGeometryHasNoChunks) {
  const ModelConfig config =
      TinyConfig({.layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16});
  auto backend = std::make_shared<ReservingBackend>(int64_t{1});
  auto ex = Make(config, TinyWeights(config, 4), backend, Settings(HeadConfig(2, 4, 40, 100), 10));
  ASSERT_NE(ex, nullptr);
  MP_ASSERT_OK(ex->ReserveSparseWorkspace(128, 512).status());
  ASSERT_EQ(backend->seen.size(), 1u);
  EXPECT_EQ(backend->seen[0].r.chunk_size, 0);
  EXPECT_EQ(backend->seen[0].r.chunk_len, 0);
  EXPECT_EQ(backend->seen[0].budgets.size(), 2u);
}

TEST(SparseReservationTest, AsksNothingWhenNoPromptThatLongRunsSparse) {
  const ModelConfig config = DcaConfig();
  const ModelWeights weights = TinyWeights(config, 5);
  const SparseAttentionConfig heads = HeadConfig(3, 4, 40, 100);
  auto backend = std::make_shared<ReservingBackend>(int64_t{99});
  // Dense prefill.
  auto dense = Make(config, weights, backend, nullptr);
  EXPECT_EQ(*dense->ReserveSparseWorkspace(256, 1000), 0);
  // Prompts of up to 600 tokens with threshold 600: never sparse; 601 would be.
  auto sparse = Make(config, weights, backend, Settings(heads, 600));
  EXPECT_EQ(*sparse->ReserveSparseWorkspace(256, 600), 0);
  EXPECT_TRUE(backend->seen.empty());
  EXPECT_EQ(*sparse->ReserveSparseWorkspace(256, 601), 99);
  EXPECT_EQ(backend->seen.size(), 1u);
  // Switched off.
  auto off_settings = std::make_shared<SparsePrefillSettings>(*Settings(heads, 10));
  off_settings->enabled = false;
  auto off = Make(config, weights, backend, off_settings);
  EXPECT_EQ(*off->ReserveSparseWorkspace(256, 1000), 0);
  EXPECT_EQ(backend->seen.size(), 1u);
  // A backend that needs no workspace (the Backend default, as the CPU backend) holds 0.
  auto plain = std::make_shared<ForwardingBackend>("plain");
  auto ex = Make(config, weights, plain, Settings(heads, 10));
  EXPECT_EQ(*ex->ReserveSparseWorkspace(256, 1000), 0);
}

TEST(SparseReservationTest, RefusalsAndBadArgumentsAreErrorsNamingTheStage) {
  const ModelConfig config = DcaConfig();
  const ModelWeights weights = TinyWeights(config, 6);
  auto refusing =
      std::make_shared<ReservingBackend>(absl::ResourceExhaustedError("no room for 7 GiB"));
  auto ex = Make(config, weights, refusing, Settings(HeadConfig(3, 4, 40, 100), 10));
  MP_EXPECT_ERROR(ex->ReserveSparseWorkspace(256, 1000).status(), StatusCode::kResourceExhausted,
                  "layers [0, 3)");
  MP_EXPECT_ERROR(ex->ReserveSparseWorkspace(256, 1000).status(), StatusCode::kResourceExhausted,
                  "no room for 7 GiB");
  MP_EXPECT_ERROR(ex->ReserveSparseWorkspace(0, 1000).status(), StatusCode::kInvalidArgument,
                  "max_chunk must be positive");
  MP_EXPECT_ERROR(ex->ReserveSparseWorkspace(64, -1).status(), StatusCode::kInvalidArgument,
                  "max_context >= 0");
}

TEST(SparseReservationTest, TheEngineReservesForItsChunkAndMaximumContextAndFailsWhenRefused) {
  const ModelConfig config = DcaConfig();
  const ModelWeights weights = TinyWeights(config, 7);
  const SparseAttentionConfig heads = HeadConfig(3, 4, 40, 100);
  EngineOptions options;
  options.chunk_size = 192;
  options.max_context = 1500;
  for (bool refuse : {false, true}) {
    auto backend = refuse ? std::make_shared<ReservingBackend>(
                                absl::ResourceExhaustedError("the workspace does not fit"))
                          : std::make_shared<ReservingBackend>(int64_t{4096});
    std::vector<std::unique_ptr<StageExecutor>> chain;
    chain.push_back(Make(config, SliceWeights(weights, config, {0, 1}), backend,
                         Settings(heads, 1000)));
    chain.push_back(Make(config, SliceWeights(weights, config, {1, 3}), backend,
                         Settings(heads, 1000)));
    absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(std::move(chain), options);
    if (refuse) {
      MP_EXPECT_ERROR(engine.status(), StatusCode::kResourceExhausted,
                      "the workspace does not fit");
      continue;
    }
    MP_ASSERT_OK(engine.status());
    ASSERT_EQ(backend->seen.size(), 2u);  // one per executor, each with its own layers
    for (const ReservingBackend::Seen& s : backend->seen) {
      EXPECT_EQ(s.r.max_queries, 192);
      EXPECT_EQ(s.r.max_keys, 1500);
    }
    EXPECT_EQ(backend->seen[0].budgets.size(), 1u);
    EXPECT_EQ(backend->seen[1].budgets.size(), 2u);
    EXPECT_EQ(backend->seen[1].budgets[1], EffectiveBudgets(heads, 2));
  }
}

}  // namespace
}  // namespace mp
