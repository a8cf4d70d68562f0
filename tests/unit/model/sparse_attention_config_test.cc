// sparse_attention_config.json reader, writer, TP slicing and the sparse prefill settings.
#include "model/sparse_attention_config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/model/test_util.h"

namespace mp {
namespace {

using Json = nlohmann::json;
using testing::ScratchDir;
using testing::TinyQwen2Config;
using testing::WriteBytes;

// A valid file for `layers` x `heads` with distinct budgets per head.
Json ValidConfig(int64_t layers, int64_t heads) {
  Json root = Json::array();
  for (int64_t l = 0; l < layers; ++l) {
    Json entry = Json::object();
    for (int64_t h = 0; h < heads; ++h) {
      entry[std::to_string(h)] = Json::array(
          {"vertical_and_slash", 1000 + 10 * l + h, 6096 + 2048 * h, 0.5 + 0.01 * (l + h)});
    }
    root.push_back(entry);
  }
  return root;
}

TEST(SparseAttentionConfigTest, ParsesEveryHeadInIndexOrder) {
  Json j = ValidConfig(3, 4);
  // Key order in the file does not matter: write layer 1 with its heads reversed.
  Json reversed = Json::object();
  for (int h = 3; h >= 0; --h) reversed[std::to_string(h)] = j[1][std::to_string(h)];
  j[1] = reversed;
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig c, ParseSparseAttentionConfig(j.dump(), 3, 4));
  ASSERT_EQ(c.num_layers(), 3);
  ASSERT_EQ(c.num_heads(), 4);
  for (int64_t l = 0; l < 3; ++l) {
    for (int64_t h = 0; h < 4; ++h) {
      EXPECT_EQ(c.layers[l][h].vertical_size, 1000 + 10 * l + h);
      EXPECT_EQ(c.layers[l][h].slash_size, 6096 + 2048 * h);
      EXPECT_DOUBLE_EQ(c.layers[l][h].score, 0.5 + 0.01 * (l + h));
    }
  }
}

TEST(SparseAttentionConfigTest, VerticalThirtyRunsAsOneHundredThirty) {
  SparseHeadConfig h{30, 800, 0.99};
  EXPECT_EQ(h.effective_vertical_size(), 130);
  EXPECT_EQ(h.effective_slash_size(), 800);
  for (int64_t v : {1, 29, 31, 100, 130, 1000}) {
    EXPECT_EQ((SparseHeadConfig{v, 100, 0.0}).effective_vertical_size(), v) << v;
  }
}

TEST(SparseAttentionConfigTest, RoundTripsThroughJson) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> budget(1, 1 << 20);
  std::uniform_real_distribution<double> score(0.0, 1.0);
  for (int trial = 0; trial < 20; ++trial) {
    SparseAttentionConfig c;
    const int64_t layers = 1 + trial % 5;
    const int64_t heads = 1 + (trial * 7) % 13;
    c.layers.resize(layers);
    for (auto& layer : c.layers) {
      for (int64_t h = 0; h < heads; ++h) layer.push_back({budget(rng), budget(rng), score(rng)});
    }
    MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig back,
                            ParseSparseAttentionConfig(SparseAttentionConfigToJson(c), layers,
                                                       heads));
    EXPECT_EQ(back, c);
  }
}

TEST(SparseAttentionConfigTest, WritesAndLoadsFromAModelDirectory) {
  const std::string dir = ScratchDir("sparse_cfg_dir");
  const ModelConfig model = TinyQwen2Config();  // 4 layers x 4 heads
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig c,
                          ParseSparseAttentionConfig(ValidConfig(4, 4).dump(), model));
  const std::string file = dir + "/" + kSparseAttentionConfigFileName;
  MP_ASSERT_OK(WriteSparseAttentionConfig(c, file));
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig from_dir, LoadSparseAttentionConfig(dir, model));
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig from_file,
                          LoadSparseAttentionConfig(file, model));
  EXPECT_EQ(from_dir, c);
  EXPECT_EQ(from_file, c);
  EXPECT_FALSE(std::filesystem::exists(file + ".tmp"));
  EXPECT_STATUS(LoadSparseAttentionConfig(dir + "/nope.json", model), absl::StatusCode::kNotFound,
                "nope.json");
  WriteBytes(file, ValidConfig(3, 4).dump());
  EXPECT_STATUS(LoadSparseAttentionConfig(dir, model), absl::StatusCode::kInvalidArgument,
                kSparseAttentionConfigFileName, "3 layers", "num_hidden_layers = 4");
}

TEST(SparseAttentionConfigTest, RejectsBadFilesWithClearErrors) {
  struct Case {
    std::string name;
    std::string text;
    absl::StatusCode code;
    std::vector<std::string> words;
  };
  auto with = [](auto edit) {
    Json j = ValidConfig(2, 3);
    edit(j);
    return j.dump();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  const std::vector<Case> cases = {
      {"not json", "[{\"0\": ", kInvalid, {"not valid JSON"}},
      {"top level object", "{}", kInvalid, {"one object per layer"}},
      {"too few layers", ValidConfig(1, 3).dump(), kInvalid, {"1 layers", "num_hidden_layers = 2"}},
      {"too many layers", ValidConfig(3, 3).dump(), kInvalid, {"3 layers"}},
      {"layer not object", with([](Json& j) { j[1] = Json::array(); }), kInvalid,
       {"layer 1", "expected an object"}},
      {"too few heads", ValidConfig(2, 2).dump(), kInvalid,
       {"layer 0", "2 heads", "num_attention_heads = 3"}},
      {"too many heads", ValidConfig(2, 4).dump(), kInvalid, {"4 heads"}},
      {"head out of range", with([](Json& j) {
         j[1].erase("2");
         j[1]["3"] = j[1]["0"];
       }),
       kInvalid, {"layer 1", "key \"3\"", "[0, 3)"}},
      {"leading zero", with([](Json& j) {
         j[0].erase("1");
         j[0]["01"] = j[0]["0"];
       }),
       kInvalid, {"key \"01\""}},
      {"not a number key", with([](Json& j) {
         j[0].erase("1");
         j[0]["one"] = j[0]["0"];
       }),
       kInvalid, {"key \"one\""}},
      {"value not list", with([](Json& j) { j[0]["1"] = 5; }), kInvalid,
       {"layer 0 head \"1\"", "[pattern, vertical_size, slash_size, score]"}},
      {"value too short", with([](Json& j) { j[0]["1"].erase(3); }), kInvalid,
       {"layer 0 head \"1\""}},
      {"pattern not string", with([](Json& j) { j[1]["0"][0] = 1; }), kInvalid,
       {"layer 1 head \"0\"", "pattern must be a string"}},
      {"pattern unsupported", with([](Json& j) { j[1]["2"][0] = "block_sparse"; }),
       absl::StatusCode::kUnimplemented,
       {"layer 1 head \"2\"", "\"block_sparse\"", "vertical_and_slash"}},
      {"vertical zero", with([](Json& j) { j[0]["2"][1] = 0; }), kInvalid,
       {"layer 0 head \"2\"", "vertical_size must be positive, got 0"}},
      {"vertical negative", with([](Json& j) { j[0]["2"][1] = -5; }), kInvalid,
       {"vertical_size must be positive, got -5"}},
      {"vertical fractional", with([](Json& j) { j[0]["2"][1] = 10.5; }), kInvalid,
       {"vertical_size must be an integer"}},
      {"slash zero", with([](Json& j) { j[1]["1"][2] = 0; }), kInvalid,
       {"layer 1 head \"1\"", "slash_size must be positive"}},
      {"slash too large", with([](Json& j) { j[1]["1"][2] = int64_t{1} << 31; }), kInvalid,
       {"slash_size", "exceeds the limit 2147483647"}},
      {"slash huge", with([](Json& j) { j[1]["1"][2] = uint64_t{1} << 63; }), kInvalid,
       {"slash_size", "exceeds the limit"}},
      {"score string", with([](Json& j) { j[1]["1"][3] = "high"; }), kInvalid,
       {"score must be a finite number"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<SparseAttentionConfig> r = ParseSparseAttentionConfig(c.text, 2, 3);
    EXPECT_EQ(r.status().code(), c.code) << r.status();
    for (const std::string& w : c.words) {
      EXPECT_NE(std::string(r.status().message()).find(w), std::string::npos)
          << "'" << w << "' not in: " << r.status();
    }
  }
  EXPECT_STATUS(ParseSparseAttentionConfig("[]", 0, 3), absl::StatusCode::kInvalidArgument,
                "must be positive");
}

TEST(SparseAttentionConfigTest, SlicesHeadsPerTensorParallelRank) {
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig c,
                          ParseSparseAttentionConfig(ValidConfig(3, 8).dump(), 3, 8));
  for (int64_t world : {1, 2, 4, 8}) {
    std::vector<std::vector<SparseHeadConfig>> joined(3);
    for (int64_t rank = 0; rank < world; ++rank) {
      MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig part, SliceSparseAttentionHeads(c, rank, world));
      ASSERT_EQ(part.num_layers(), 3);
      ASSERT_EQ(part.num_heads(), 8 / world);
      for (int64_t l = 0; l < 3; ++l) {
        joined[l].insert(joined[l].end(), part.layers[l].begin(), part.layers[l].end());
      }
    }
    EXPECT_EQ(joined, c.layers) << "world " << world;
  }
  EXPECT_STATUS(SliceSparseAttentionHeads(c, 0, 3), absl::StatusCode::kInvalidArgument,
                "does not divide");
  EXPECT_STATUS(SliceSparseAttentionHeads(c, 2, 2), absl::StatusCode::kInvalidArgument,
                "rank 2");
  EXPECT_STATUS(SliceSparseAttentionHeads(c, -1, 2), absl::StatusCode::kInvalidArgument,
                "rank -1");
}

TEST(SparsePrefillSettingsTest, FollowsVllmDefaultsAndOverrides) {
  ModelConfig model = TinyQwen2Config();
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig heads,
                          ParseSparseAttentionConfig(ValidConfig(4, 4).dump(), model));

  // A DCA model with a head config: enabled, threshold 32768, last_q 64.
  MP_ASSERT_OK_AND_ASSIGN(SparsePrefillSettings s, ResolveSparsePrefillSettings(model, heads));
  EXPECT_TRUE(s.enabled);
  EXPECT_EQ(s.threshold, 32768);
  EXPECT_EQ(s.last_q, 64);
  EXPECT_FALSE(s.UseSparsePrefill(32768));  // prompts <= threshold are exactly dense
  EXPECT_TRUE(s.UseSparsePrefill(32769));

  // No head config: disabled.
  MP_ASSERT_OK_AND_ASSIGN(s, ResolveSparsePrefillSettings(model, std::nullopt));
  EXPECT_FALSE(s.enabled);
  EXPECT_FALSE(s.UseSparsePrefill(1 << 20));

  // config.json's sparse_attention_* keys.
  model.dual_chunk->sparse_attention_enabled_given = true;
  model.dual_chunk->sparse_attention_enabled = false;
  model.dual_chunk->sparse_attention_threshold = 4096;
  model.dual_chunk->sparse_attention_last_q = 32;
  MP_ASSERT_OK_AND_ASSIGN(s, ResolveSparsePrefillSettings(model, heads));
  EXPECT_FALSE(s.enabled);
  EXPECT_EQ(s.threshold, 4096);
  EXPECT_EQ(s.last_q, 32);
  EXPECT_FALSE(s.UseSparsePrefill(100000));

  // Overrides win (small models need a lower threshold).
  SparsePrefillOverrides o;
  o.enabled = true;
  o.threshold = 1000;
  o.last_q = 16;
  MP_ASSERT_OK_AND_ASSIGN(s, ResolveSparsePrefillSettings(model, heads, o));
  EXPECT_TRUE(s.enabled);
  EXPECT_EQ(s.threshold, 1000);
  EXPECT_EQ(s.last_q, 16);
  EXPECT_FALSE(s.UseSparsePrefill(1000));
  EXPECT_TRUE(s.UseSparsePrefill(1001));
  ASSERT_TRUE(s.heads.has_value());
  EXPECT_EQ(*s.heads, heads);

  // A model without dual_chunk_attention_config: off by default, on when asked for.
  ModelConfig plain = TinyQwen2Config();
  plain.dual_chunk.reset();
  MP_ASSERT_OK_AND_ASSIGN(s, ResolveSparsePrefillSettings(plain, heads));
  EXPECT_FALSE(s.enabled);
  EXPECT_EQ(s.threshold, 32768);
  SparsePrefillOverrides on;
  on.enabled = true;
  MP_ASSERT_OK_AND_ASSIGN(s, ResolveSparsePrefillSettings(plain, heads, on));
  EXPECT_TRUE(s.enabled);

  // Errors.
  EXPECT_STATUS(ResolveSparsePrefillSettings(plain, std::nullopt, on),
                absl::StatusCode::kFailedPrecondition, "sparse_attention_config.json");
  SparsePrefillOverrides bad;
  bad.threshold = -1;
  EXPECT_STATUS(ResolveSparsePrefillSettings(model, heads, bad),
                absl::StatusCode::kInvalidArgument, "sparse_attention_threshold", "-1");
  bad = {};
  bad.last_q = 65;
  EXPECT_STATUS(ResolveSparsePrefillSettings(model, heads, bad),
                absl::StatusCode::kInvalidArgument, "sparse_attention_last_q", "[1, 64]", "65");
  bad.last_q = 0;
  EXPECT_STATUS(ResolveSparsePrefillSettings(model, heads, bad),
                absl::StatusCode::kInvalidArgument, "sparse_attention_last_q");
  MP_ASSERT_OK_AND_ASSIGN(SparseAttentionConfig wrong,
                          ParseSparseAttentionConfig(ValidConfig(4, 2).dump(), 4, 2));
  EXPECT_STATUS(ResolveSparsePrefillSettings(model, wrong), absl::StatusCode::kInvalidArgument,
                "4 layers x 2 heads", "4 x 4");
}

TEST(SparsePrefillSettingsTest, LoadsTheFileFromTheModelDirectoryWhenPresent) {
  const std::string dir = ScratchDir("sparse_settings");
  const ModelConfig model = TinyQwen2Config();
  MP_ASSERT_OK_AND_ASSIGN(SparsePrefillSettings s, LoadSparsePrefillSettings(dir, model));
  EXPECT_FALSE(s.enabled);
  EXPECT_FALSE(s.heads.has_value());
  WriteBytes(dir + "/" + kSparseAttentionConfigFileName, ValidConfig(4, 4).dump());
  MP_ASSERT_OK_AND_ASSIGN(s, LoadSparsePrefillSettings(dir, model));
  EXPECT_TRUE(s.enabled);
  ASSERT_TRUE(s.heads.has_value());
  EXPECT_EQ(s.heads->layers[2][3].vertical_size, 1023);
  WriteBytes(dir + "/" + kSparseAttentionConfigFileName, "[1, 2]");
  EXPECT_STATUS(LoadSparsePrefillSettings(dir, model), absl::StatusCode::kInvalidArgument,
                kSparseAttentionConfigFileName);
}

}  // namespace
}  // namespace mp
