// StageExecutor on tiny random models: logits against the naive double-precision reference, and
// invariance under chunking, layer slicing, sequence interleaving and prefill vs decode.
#include "runtime/stage_executor.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/status_matchers.h"
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

struct ModelCase {
  std::string name;
  TinyModelSpec spec;
};

class ExecutorReferenceTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(ExecutorReferenceTest, AllRowLogitsMatchTheReference) {
  const ModelConfig config = TinyConfig(GetParam().spec);
  const ModelWeights weights = TinyWeights(config, 11);
  MP_ASSERT_OK_AND_ASSIGN(
      auto ex, StageExecutor::Create(config, weights, NewCpuBackend(), ExecutorOptions()));
  EXPECT_TRUE(ex->is_first());
  EXPECT_TRUE(ex->is_last());
  const std::vector<int32_t> ids = RandomIds(37, config.vocab_size, 5);
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> logits, RunPrompt({ex.get()}, 1, ids, 37));
  const std::vector<double> expected = ReferenceLogits(config, weights, ids);
  ASSERT_EQ(logits.size(), expected.size());
  const int64_t vocab = config.vocab_size;
  for (size_t r = 0; r < ids.size(); ++r) {
    EXPECT_LE(RowRelativeError(&logits[r * vocab], &expected[r * vocab], vocab), 1e-4)
        << "row " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, ExecutorReferenceTest,
    ::testing::Values(
        ModelCase{"qwen2_gqa", {}},
        ModelCase{
            "llama_tied_mha",
            {.architecture = Architecture::kLlama, .kv_heads = 4, .tie_word_embeddings = true}},
        ModelCase{"llama_with_biases",
                  {.architecture = Architecture::kLlama, .llama_attention_bias = true}},
        ModelCase{"qwen2_mqa_3_layers",
                  {.layers = 3, .heads = 8, .kv_heads = 1, .head_dim = 8, .rope_theta = 1e6}}),
    [](const ::testing::TestParamInfo<ModelCase>& info) { return info.param.name; });

class StageExecutorTest : public ::testing::Test {
 protected:
  ModelConfig config_ = TinyConfig({.layers = 3});
  ModelWeights weights_ = TinyWeights(config_, 21);
  std::shared_ptr<Backend> backend_ = NewCpuBackend();

  std::unique_ptr<StageExecutor> Make(LayerRange layers = {0, 3},
                                      StageExecutorOptions options = ExecutorOptions()) {
    return testing::MakeExecutor(config_, weights_, backend_, layers, options);
  }
};

TEST_F(StageExecutorTest, ChunkSizeDoesNotChangeLogits) {
  const std::vector<int32_t> ids = RandomIds(100, config_.vocab_size, 8);
  auto whole_ex = Make();
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> whole, RunPrompt({whole_ex.get()}, 1, ids, 100));
  for (int64_t chunk : {1, 7, 64}) {
    SCOPED_TRACE(::testing::Message() << "chunk " << chunk);
    auto ex = Make();
    MP_ASSERT_OK_AND_ASSIGN(std::vector<float> chunked, RunPrompt({ex.get()}, 1, ids, chunk));
    ExpectRowsNear(chunked, whole, config_.vocab_size, 1e-5);
    EXPECT_EQ(ex->kv_cache().Length(1), 100);
  }
}

TEST_F(StageExecutorTest, LayerSlicesEqualOneExecutor) {
  const std::vector<int32_t> ids = RandomIds(45, config_.vocab_size, 9);
  auto whole_ex = Make();
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> whole, RunPrompt({whole_ex.get()}, 1, ids, 16));
  for (int64_t k : {1, 2}) {
    SCOPED_TRACE(::testing::Message() << "split at layer " << k);
    auto first = Make({0, k});
    auto second = Make({k, 3});
    EXPECT_TRUE(first->is_first());
    EXPECT_FALSE(first->is_last());
    EXPECT_FALSE(second->is_first());
    EXPECT_TRUE(second->is_last());
    MP_ASSERT_OK_AND_ASSIGN(std::vector<float> split,
                            RunPrompt({first.get(), second.get()}, 1, ids, 16));
    ExpectRowsNear(split, whole, config_.vocab_size, 1e-6);
  }
  auto a = Make({0, 1}), b = Make({1, 2}), c = Make({2, 3});
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> three,
                          RunPrompt({a.get(), b.get(), c.get()}, 1, ids, 16));
  ExpectRowsNear(three, whole, config_.vocab_size, 1e-6);
}

TEST_F(StageExecutorTest, HiddenStatesOfAFirstStageHaveTheModelWidth) {
  auto first = Make({0, 1});
  const std::vector<int32_t> ids = RandomIds(5, config_.vocab_size, 1);
  MP_ASSERT_OK_AND_ASSIGN(Tensor hidden, first->RunChunk(1, 0, HostIds(ids)));
  EXPECT_EQ(hidden.shape(), (std::vector<int64_t>{5, config_.hidden_size}));
}

TEST_F(StageExecutorTest, InterleavedSequencesEqualEachAlone) {
  const std::vector<int32_t> a = RandomIds(50, config_.vocab_size, 30);
  const std::vector<int32_t> b = RandomIds(41, config_.vocab_size, 31);
  auto alone_a = Make(), alone_b = Make();
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> want_a, RunPrompt({alone_a.get()}, 1, a, 50));
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> want_b, RunPrompt({alone_b.get()}, 1, b, 41));

  auto ex = Make({0, 3}, ExecutorOptions(128, 8));
  std::vector<float> got_a, got_b;
  const int64_t chunk = 6;
  for (int64_t s = 0; s < 50; s += chunk) {
    for (auto [seq, ids, got] :
         {std::tuple{uint64_t{100}, &a, &got_a}, std::tuple{uint64_t{200}, &b, &got_b}}) {
      const int64_t len = static_cast<int64_t>(ids->size());
      if (s >= len) continue;
      const int64_t n = std::min(chunk, len - s);
      MP_ASSERT_OK_AND_ASSIGN(
          Tensor logits,
          ex->RunChunk(seq, s, HostIds(std::span(*ids).subspan(s, n)), LogitsMode::kAllRows));
      std::vector<float> rows = ToVector(*backend_, logits);
      got->insert(got->end(), rows.begin(), rows.end());
    }
  }
  ExpectRowsNear(got_a, want_a, config_.vocab_size, 1e-5);
  ExpectRowsNear(got_b, want_b, config_.vocab_size, 1e-5);
  MP_ASSERT_OK(ex->Release(100));
  MP_ASSERT_OK(ex->Release(200));
  EXPECT_EQ(ex->kv_cache().stats().blocks_in_use, 0);
}

TEST_F(StageExecutorTest, DecodeStepEqualsLastRowOfPrefill) {
  const std::vector<int32_t> ids = RandomIds(30, config_.vocab_size, 12);
  auto full = Make();
  MP_ASSERT_OK_AND_ASSIGN(Tensor one_shot, full->RunChunk(1, 0, HostIds(ids)));
  ASSERT_EQ(one_shot.shape(), (std::vector<int64_t>{1, config_.vocab_size}));
  const std::vector<float> want = ToVector(*backend_, one_shot);

  auto ex = Make();
  MP_ASSERT_OK(ex->RunChunk(1, 0, HostIds(std::span(ids).first(29)), LogitsMode::kNone).status());
  MP_ASSERT_OK_AND_ASSIGN(Tensor step, ex->RunChunk(1, 29, HostIds(std::span(ids).last(1))));
  ASSERT_EQ(step.shape(), (std::vector<int64_t>{1, config_.vocab_size}));
  ExpectRowsNear(ToVector(*backend_, step), want, config_.vocab_size, 1e-5);
}

TEST_F(StageExecutorTest, LogitsModes) {
  const std::vector<int32_t> ids = RandomIds(9, config_.vocab_size, 2);
  auto all_ex = Make();
  MP_ASSERT_OK_AND_ASSIGN(Tensor all, all_ex->RunChunk(1, 0, HostIds(ids), LogitsMode::kAllRows));
  ASSERT_EQ(all.shape(), (std::vector<int64_t>{9, config_.vocab_size}));
  const std::vector<float> all_rows = ToVector(*backend_, all);

  auto last_ex = Make();
  MP_ASSERT_OK_AND_ASSIGN(Tensor last, last_ex->RunChunk(1, 0, HostIds(ids)));
  const std::vector<float> last_row = ToVector(*backend_, last);
  ExpectRowsNear(last_row, std::vector<float>(all_rows.end() - config_.vocab_size, all_rows.end()),
                 config_.vocab_size, 1e-6);

  auto none_ex = Make();
  MP_ASSERT_OK_AND_ASSIGN(Tensor none, none_ex->RunChunk(1, 0, HostIds(ids), LogitsMode::kNone));
  EXPECT_FALSE(none.defined());
  EXPECT_EQ(none_ex->kv_cache().Length(1), 9);
}

TEST_F(StageExecutorTest, ScratchIsBoundedByTheChunkNotTheSequence) {
  auto ex = Make({0, 3}, ExecutorOptions(2048));
  const std::vector<int32_t> ids = RandomIds(700, config_.vocab_size, 4);
  MP_ASSERT_OK(ex->RunChunk(1, 0, HostIds(std::span(ids).first(7)), LogitsMode::kAllRows).status());
  const int64_t after_one_chunk = ex->scratch_bytes();
  EXPECT_GT(after_one_chunk, 0);
  for (int64_t s = 7; s + 7 <= 700; s += 7) {
    MP_ASSERT_OK(
        ex->RunChunk(1, s, HostIds(std::span(ids).subspan(s, 7)), LogitsMode::kAllRows).status());
  }
  EXPECT_EQ(ex->scratch_bytes(), after_one_chunk);
  EXPECT_EQ(ex->kv_cache().Length(1), 700);
  // Smaller chunks reuse the buffers of bigger ones.
  MP_ASSERT_OK(ex->RunChunk(2, 0, HostIds(std::span(ids).first(3))).status());
  EXPECT_EQ(ex->scratch_bytes(), after_one_chunk);
}

TEST_F(StageExecutorTest, Bf16WeightsGiveTheSameLogitsAsTheirF32Values) {
  const ModelWeights exact = TinyWeights(config_, 5, /*bf16_exact=*/true);
  MP_ASSERT_OK_AND_ASSIGN(auto f32,
                          StageExecutor::Create(config_, exact, backend_, ExecutorOptions()));
  MP_ASSERT_OK_AND_ASSIGN(auto bf16, StageExecutor::Create(config_, testing::ToBf16(exact),
                                                           backend_, ExecutorOptions()));
  const std::vector<int32_t> ids = RandomIds(20, config_.vocab_size, 6);
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> a, RunPrompt({f32.get()}, 1, ids, 20));
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> b, RunPrompt({bf16.get()}, 1, ids, 20));
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST_F(StageExecutorTest, RejectsBadChunks) {
  auto ex = Make();
  const std::vector<int32_t> ids = RandomIds(8, config_.vocab_size, 3);
  MP_EXPECT_ERROR(ex->RunChunk(1, 0, Tensor::Host({4, config_.hidden_size}, DType::kF32)),
                  StatusCode::kInvalidArgument, "takes token ids [n] i32");
  MP_EXPECT_ERROR(ex->RunChunk(1, 0, Tensor::Host({4}, DType::kI64)), StatusCode::kInvalidArgument,
                  "takes token ids [n] i32");
  MP_EXPECT_ERROR(ex->RunChunk(1, 0, Tensor()), StatusCode::kInvalidArgument, "undefined");
  MP_EXPECT_ERROR(ex->RunChunk(1, 0, Tensor::Host({0}, DType::kI32)), StatusCode::kInvalidArgument,
                  "empty");
  MP_EXPECT_ERROR(ex->RunChunk(1, -1, HostIds(ids)), StatusCode::kInvalidArgument,
                  "start must be >= 0");
  MP_EXPECT_ERROR(ex->RunChunk(1, 3, HostIds(ids)), StatusCode::kFailedPrecondition,
                  "sequence 1 has 0 tokens cached, but the chunk starts at position 3");
  std::vector<int32_t> bad = ids;
  bad[5] = static_cast<int32_t>(config_.vocab_size);
  MP_EXPECT_ERROR(ex->RunChunk(1, 0, HostIds(bad)), StatusCode::kInvalidArgument,
                  "token id 256 at position 5");
  EXPECT_FALSE(ex->kv_cache().Contains(1));  // the failed first chunk left nothing behind
  EXPECT_EQ(ex->kv_cache().stats().blocks_in_use, 0);
  MP_ASSERT_OK(ex->RunChunk(1, 0, HostIds(ids)).status());
  MP_EXPECT_ERROR(ex->RunChunk(1, 0, HostIds(ids)), StatusCode::kFailedPrecondition,
                  "has 8 tokens cached");
  MP_EXPECT_ERROR(ex->RunChunk(1, 8, HostIds(bad)), StatusCode::kInvalidArgument,
                  "token id 256 at position 5");
  EXPECT_EQ(ex->kv_cache().Length(1), 8);  // an existing sequence keeps what it had

  auto later = Make({1, 3});
  MP_EXPECT_ERROR(later->RunChunk(1, 0, HostIds(ids)), StatusCode::kInvalidArgument,
                  "takes hidden states [n, 64] f32");
  MP_EXPECT_ERROR(later->RunChunk(1, 0, Tensor::Host({3, 63}, DType::kF32)),
                  StatusCode::kInvalidArgument, "got [3, 63] f32");
}

TEST_F(StageExecutorTest, FullCacheIsResourceExhausted) {
  auto ex = Make({0, 3}, ExecutorOptions(32, 16));
  const std::vector<int32_t> ids = RandomIds(40, config_.vocab_size, 3);
  MP_ASSERT_OK(ex->RunChunk(1, 0, HostIds(std::span(ids).first(30))).status());
  MP_EXPECT_ERROR(ex->RunChunk(1, 30, HostIds(std::span(ids).subspan(30, 10))),
                  StatusCode::kResourceExhausted, "only 32 tokens fit");
  EXPECT_EQ(ex->kv_cache().Length(1), 30);
  MP_EXPECT_OK(ex->RunChunk(1, 30, HostIds(std::span(ids).subspan(30, 2))).status());
}

TEST_F(StageExecutorTest, CreateNamesMissingOrMisshapenWeights) {
  auto create = [&](const ModelWeights& w) {
    return StageExecutor::Create(config_, w, backend_, ExecutorOptions());
  };
  ModelWeights w = weights_;
  w.layer[1].q_proj = Tensor();
  MP_EXPECT_ERROR(create(w), StatusCode::kInvalidArgument,
                  "model.layers.1.self_attn.q_proj.weight is missing (expected [64, 64])");
  w = weights_;
  w.layer[2].down_proj = Tensor::Host({64, 127}, DType::kF32);
  MP_EXPECT_ERROR(create(w), StatusCode::kInvalidArgument,
                  "model.layers.2.mlp.down_proj.weight has shape [64, 127] f32, expected "
                  "[64, 128]");
  w = weights_;
  w.layer[0].k_bias = Tensor();
  MP_EXPECT_ERROR(create(w), StatusCode::kInvalidArgument, "model.layers.0.self_attn.k_proj.bias");
  w = weights_;
  w.layer[0].up_proj = Tensor::Host({128, 64}, DType::kBF16);
  MP_EXPECT_ERROR(create(w), StatusCode::kInvalidArgument, "differ in dtype");
  w = weights_;
  w.lm_head = Tensor();
  MP_EXPECT_ERROR(create(w), StatusCode::kInvalidArgument, "lm_head.weight is missing");
  w = weights_;
  w.embed_tokens = Tensor::Host({255, 64}, DType::kF32);
  MP_EXPECT_ERROR(create(w), StatusCode::kInvalidArgument, "model.embed_tokens.weight has shape");
  w = weights_;
  w.final_norm = Tensor::Host({64}, DType::kI32);
  MP_EXPECT_ERROR(create(w), StatusCode::kInvalidArgument, "model.norm.weight");
  w = weights_;
  w.layer.pop_back();
  MP_EXPECT_ERROR(create(w), StatusCode::kInvalidArgument, "weights hold 2 layers");
  w = weights_;
  w.layers = {0, 4};
  MP_EXPECT_ERROR(create(w), StatusCode::kInvalidArgument, "layer range [0, 4)");
  MP_EXPECT_ERROR(StageExecutor::Create(config_, weights_, nullptr, ExecutorOptions()),
                  StatusCode::kInvalidArgument, "no backend");
  ModelConfig odd = config_;
  odd.num_key_value_heads = 3;
  MP_EXPECT_ERROR(StageExecutor::Create(odd, weights_, backend_, ExecutorOptions()),
                  StatusCode::kInvalidArgument, "multiple of num_key_value_heads");
}

TEST_F(StageExecutorTest, TiedHeadOnALaterStageUsesTheEmbedding) {
  config_ =
      TinyConfig({.architecture = Architecture::kLlama, .layers = 3, .tie_word_embeddings = true});
  weights_ = TinyWeights(config_, 4);
  const std::vector<int32_t> ids = RandomIds(12, config_.vocab_size, 3);
  auto whole_ex = Make();
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> whole, RunPrompt({whole_ex.get()}, 1, ids, 12));
  ModelWeights tail = testing::SliceWeights(weights_, config_, {1, 3});
  tail.lm_head = Tensor();  // tied: the head comes from the embedding
  MP_ASSERT_OK_AND_ASSIGN(auto second,
                          StageExecutor::Create(config_, tail, backend_, ExecutorOptions()));
  auto first = Make({0, 1});
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> split,
                          RunPrompt({first.get(), second.get()}, 1, ids, 5));
  ExpectRowsNear(split, whole, config_.vocab_size, 1e-5);
}

TEST_F(StageExecutorTest, MlpRowBlocksBoundTheIntermediateAndKeepTheResult) {
  const std::vector<int32_t> ids = RandomIds(100, config_.vocab_size, 12);
  auto whole_ex = Make();
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> whole, RunPrompt({whole_ex.get()}, 1, ids, 50));
  StageExecutorOptions o = ExecutorOptions();
  o.mlp_block_rows = 7;  // 50-row chunks: blocks of 7, 7, ..., 1
  auto blocked = Make({0, 3}, o);
  MP_ASSERT_OK_AND_ASSIGN(std::vector<float> rows, RunPrompt({blocked.get()}, 1, ids, 50));
  ExpectRowsNear(rows, whole, config_.vocab_size, 1e-5);
  // The [rows, 2 * inter] and [rows, inter] buffers shrink from 50 rows to 7.
  const int64_t saved = (50 - 7) * 3 * config_.intermediate_size * 4;
  EXPECT_EQ(whole_ex->scratch_bytes() - blocked->scratch_bytes(), saved);
  o.mlp_block_rows = -1;
  MP_EXPECT_ERROR(StageExecutor::Create(config_, weights_, backend_, o),
                  StatusCode::kInvalidArgument, "mlp_block_rows");
}

}  // namespace
}  // namespace mp
