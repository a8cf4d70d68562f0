// Layer assignment: contiguous slices balanced by cost, bounded by each stage's memory, with
// the KV budget every stage can hold.
#include "coordinator/layer_assignment.h"

#include <gtest/gtest.h>

#include "common/status_matchers.h"
#include "model/config.h"

namespace mp {
namespace {

ModelConfig Small(int layers) {
  ModelConfig c;
  c.vocab_size = 1000;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.tie_word_embeddings = true;
  return c;
}

std::vector<int64_t> Sizes(const Assignment& a) {
  std::vector<int64_t> out;
  for (const StageAssignment& s : a.stages) out.push_back(s.layers.end - s.layers.begin);
  return out;
}

TEST(LayerAssignmentTest, EqualWorkersGetEqualSlices) {
  AssignmentOptions o;
  o.kv_tokens = 8192;
  MP_ASSERT_OK_AND_ASSIGN(Assignment two, AssignLayers(Small(30), {1ull << 32, 1ull << 32}, o));
  EXPECT_EQ(Sizes(two), (std::vector<int64_t>{15, 15}));
  EXPECT_EQ(two.stages[0].layers.begin, 0);
  EXPECT_EQ(two.stages[1].layers.end, 30);
  EXPECT_EQ(two.kv_tokens, 8192);
  MP_ASSERT_OK_AND_ASSIGN(Assignment three, AssignLayers(Small(30), {0, 0, 0}, o));
  EXPECT_EQ(Sizes(three), (std::vector<int64_t>{10, 10, 10}));
  MP_ASSERT_OK_AND_ASSIGN(Assignment uneven, AssignLayers(Small(3), {0, 0}, o));
  EXPECT_EQ(uneven.stages[0].layers.end, uneven.stages[1].layers.begin);
  EXPECT_EQ(uneven.stages[0].layers.end - uneven.stages[0].layers.begin +
                uneven.stages[1].layers.end - uneven.stages[1].layers.begin,
            3);
}

TEST(LayerAssignmentTest, SmallMemoryTakesFewerLayers) {
  AssignmentOptions o;
  o.chunk_tokens = 256;
  o.min_kv_tokens = 4096;
  const ModelConfig c = Small(30);
  // Stage 0 can hold about 8 layers with 4096 tokens of KV; stage 1 everything.
  MP_ASSERT_OK_AND_ASSIGN(Assignment roomy, AssignLayers(c, {1ull << 34, 1ull << 34}, o));
  const StageAssignment& s = roomy.stages[0];
  const int64_t per_layer = s.weight_bytes / 15;  // roughly: embedding included
  const uint64_t tight =
      static_cast<uint64_t>(8 * (per_layer + s.kv_bytes_per_token / 15 * 4096) + s.reserve_bytes);
  MP_ASSERT_OK_AND_ASSIGN(Assignment a, AssignLayers(c, {tight, 1ull << 34}, o));
  EXPECT_LT(a.stages[0].layers.end, 15);
  EXPECT_GE(a.stages[0].kv_tokens_fit, 4096);
  EXPECT_GE(a.kv_tokens, 4096);
  EXPECT_EQ(a.stages[1].layers.end, 30);
}

TEST(LayerAssignmentTest, KvBudgetIsTheSmallestStagesCapped) {
  AssignmentOptions o;
  o.chunk_tokens = 128;
  const ModelConfig c = Small(4);
  MP_ASSERT_OK_AND_ASSIGN(Assignment a, AssignLayers(c, {64ull << 20, 256ull << 20}, o));
  EXPECT_EQ(a.kv_tokens, std::min(a.stages[0].kv_tokens_fit, a.stages[1].kv_tokens_fit));
  o.kv_tokens = 1000;
  MP_ASSERT_OK_AND_ASSIGN(Assignment capped, AssignLayers(c, {64ull << 20, 256ull << 20}, o));
  EXPECT_EQ(capped.kv_tokens, 1000);
}

TEST(LayerAssignmentTest, SparseWorkspaceOfItsLargestLayerCountsInAStagesMemory) {
  AssignmentOptions o;
  o.chunk_tokens = 128;
  const ModelConfig c = Small(6);
  const std::vector<uint64_t> memory = {64ull << 20, 64ull << 20};
  MP_ASSERT_OK_AND_ASSIGN(Assignment plain, AssignLayers(c, memory, o));
  ASSERT_EQ(Sizes(plain), (std::vector<int64_t>{3, 3}));
  // Layers 0-2 need at most 3 MiB, layers 3-5 at most 5 MiB (layer 4).
  o.sparse_workspace_per_layer = {1 << 20, 3 << 20, 2 << 20, 1 << 20, 5 << 20, 4 << 20};
  MP_ASSERT_OK_AND_ASSIGN(Assignment sparse, AssignLayers(c, memory, o));
  ASSERT_EQ(Sizes(sparse), (std::vector<int64_t>{3, 3}));
  const int64_t extra[2] = {3 << 20, 5 << 20};
  for (int s = 0; s < 2; ++s) {
    const StageAssignment& a = plain.stages[s];
    const StageAssignment& b = sparse.stages[s];
    EXPECT_EQ(b.reserve_bytes, a.reserve_bytes + extra[s]) << "stage " << s;
    EXPECT_EQ(b.kv_tokens_fit, (static_cast<int64_t>(memory[s]) - b.weight_bytes -
                                b.reserve_bytes) / b.kv_bytes_per_token)
        << "stage " << s;
    EXPECT_LT(b.kv_tokens_fit, a.kv_tokens_fit) << "stage " << s;
  }
  EXPECT_EQ(sparse.kv_tokens, std::min(sparse.stages[0].kv_tokens_fit,
                                       sparse.stages[1].kv_tokens_fit));
  // A workspace larger than a stage's memory leaves no split.
  o.sparse_workspace_per_layer.assign(6, int64_t{1} << 30);
  MP_EXPECT_ERROR(AssignLayers(c, memory, o), absl::StatusCode::kFailedPrecondition,
                  "no split of 6 layers over 2 stages");
}

TEST(LayerAssignmentTest, Qwen14BAtOneMillionTokensNeedsTwoGpus) {
  // bf16 weights and KV; 48 layers x 8 KV heads x 128 dims: 192 KiB of KV per token.
  const ModelConfig c = Qwen25_14BInstruct1MConfig();
  AssignmentOptions o;
  o.chunk_tokens = 32768;
  o.weight_bytes_per_element = 2;
  o.kv_bytes_per_element = 2;
  o.min_kv_tokens = 1010000;
  const uint64_t h200 = 139ull << 30;
  MP_EXPECT_ERROR(AssignLayers(c, {h200}, o), absl::StatusCode::kFailedPrecondition,
                  "no split of 48 layers over 1 stages");
  MP_ASSERT_OK_AND_ASSIGN(Assignment a, AssignLayers(c, {h200, h200}, o));
  EXPECT_EQ(Sizes(a), (std::vector<int64_t>{24, 24}));
  EXPECT_GE(a.kv_tokens, 1010000);
  EXPECT_EQ(a.stages[0].kv_bytes_per_token, 24 * 2 * 8 * 128 * 2);
}

TEST(LayerAssignmentTest, Errors) {
  AssignmentOptions o;
  o.kv_tokens = 100;
  MP_EXPECT_ERROR(AssignLayers(Small(2), {0, 0, 0}, o), absl::StatusCode::kFailedPrecondition,
                  "3 stages for a model of 2 layers");
  MP_EXPECT_ERROR(AssignLayers(Small(2), {}, o), absl::StatusCode::kFailedPrecondition,
                  "no stages");
  o.kv_tokens = 0;
  MP_EXPECT_ERROR(AssignLayers(Small(2), {0, 1ull << 30}, o), absl::StatusCode::kInvalidArgument,
                  "kv-tokens must be set");
  o.min_kv_tokens = 1000000;
  MP_EXPECT_ERROR(AssignLayers(Small(2), {1 << 20, 1 << 20}, o),
                  absl::StatusCode::kFailedPrecondition, "leaves room for 1000000 tokens");
}

}  // namespace
}  // namespace mp
