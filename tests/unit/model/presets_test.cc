// The compiled-in model presets parse and describe the published Qwen2.5-1M architectures.
#include "model/presets.h"

#include <gtest/gtest.h>

#include <string>

#include "common/status_matchers.h"
#include "model/config.h"
#include "tests/unit/model/test_util.h"

namespace mp {
namespace {

void ExpectSameArchitecture(const ModelConfig& a, const ModelConfig& b) {
  testing::ExpectSameShapeAndTokens(a, b);
  ASSERT_TRUE(a.dual_chunk.has_value());
  ASSERT_TRUE(b.dual_chunk.has_value());
  EXPECT_EQ(a.dual_chunk->chunk_size, b.dual_chunk->chunk_size);
  EXPECT_EQ(a.dual_chunk->local_size, b.dual_chunk->local_size);
  EXPECT_EQ(a.dual_chunk->original_max_position_embeddings,
            b.dual_chunk->original_max_position_embeddings);
  EXPECT_EQ(a.NumParameters(), b.NumParameters());
}

TEST(ModelPresetsTest, ListsTheQwen1MArchitectures) {
  EXPECT_EQ(ModelPresetNames(),
            (std::vector<std::string>{"Qwen2.5-7B-Instruct-1M", "Qwen2.5-14B-Instruct-1M"}));
}

TEST(ModelPresetsTest, PresetsEqualThePublishedConstants) {
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c7, LoadModelPreset("Qwen2.5-7B-Instruct-1M"));
  ExpectSameArchitecture(c7, Qwen25_7BInstruct1MConfig());
  EXPECT_EQ(c7.NumParameters(), int64_t{7615616512});
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c14, LoadModelPreset("qwen2.5-14b-instruct-1m"));
  ExpectSameArchitecture(c14, Qwen25_14BInstruct1MConfig());
  EXPECT_EQ(c14.NumParameters(), int64_t{14770033664});
}

TEST(ModelPresetsTest, UnknownNameListsThePresets) {
  absl::StatusOr<ModelConfig> c = LoadModelPreset("Qwen2.5-3B");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("Qwen2.5-3B"), absl::string_view::npos);
  EXPECT_NE(c.status().message().find("Qwen2.5-7B-Instruct-1M"), absl::string_view::npos);
}

}  // namespace
}  // namespace mp
