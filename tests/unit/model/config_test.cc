#include "model/config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/model/test_util.h"

namespace mp {
namespace {

using Json = nlohmann::json;

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  testing::ExpectSameShapeAndTokens(a, b);
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  ASSERT_EQ(a.dual_chunk.has_value(), b.dual_chunk.has_value());
  if (a.dual_chunk.has_value()) {
    const DualChunkConfig& x = *a.dual_chunk;
    const DualChunkConfig& y = *b.dual_chunk;
    EXPECT_EQ(x.chunk_size, y.chunk_size);
    EXPECT_EQ(x.local_size, y.local_size);
    EXPECT_EQ(x.original_max_position_embeddings, y.original_max_position_embeddings);
    EXPECT_EQ(x.sparse_attention_enabled, y.sparse_attention_enabled);
    EXPECT_EQ(x.sparse_attention_enabled_given, y.sparse_attention_enabled_given);
    EXPECT_EQ(x.sparse_attention_threshold, y.sparse_attention_threshold);
    EXPECT_EQ(x.sparse_attention_last_q, y.sparse_attention_last_q);
  }
}

// config.json of Qwen/Qwen2.5-7B-Instruct-1M as published (sliding_window present but off).
constexpr const char* kQwen7B1MJson = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 1010000,
  "max_window_layers": 28,
  "model_type": "qwen2",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 152064,
  "dual_chunk_attention_config": {
    "chunk_size": 262144,
    "local_size": 8192,
    "original_max_position_embeddings": 262144
  }
})";

TEST(ModelConfigTest, ParsesPublishedQwen7B1MConfig) {
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(kQwen7B1MJson));
  EXPECT_EQ(c.architecture, Architecture::kQwen2);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_TRUE(c.attention_bias);
  ASSERT_TRUE(c.dual_chunk.has_value());
  EXPECT_EQ(c.dual_chunk->chunk_len(), 262144 - 8192);
  EXPECT_FALSE(c.dual_chunk->sparse_attention_enabled);
  EXPECT_FALSE(c.dual_chunk->sparse_attention_enabled_given);
  EXPECT_EQ(c.dual_chunk->sparse_attention_threshold, 32768);
  EXPECT_EQ(c.dual_chunk->sparse_attention_last_q, 64);
  ExpectSameConfig(c, Qwen25_7BInstruct1MConfig());
}

TEST(ModelConfigTest, PublishedConfigsHaveThePublishedParameterCounts) {
  // Model cards: Qwen2.5-7B 7.61B, Qwen2.5-14B 14.7B parameters (exact counts of the HF
  // checkpoints).
  EXPECT_EQ(Qwen25_7BInstruct1MConfig().NumParameters(), int64_t{7615616512});
  EXPECT_EQ(Qwen25_14BInstruct1MConfig().NumParameters(), int64_t{14770033664});
  ModelConfig c14 = Qwen25_14BInstruct1MConfig();
  EXPECT_EQ(c14.num_hidden_layers, 48);
  EXPECT_EQ(c14.q_dim(), 5120);
  EXPECT_EQ(c14.kv_dim(), 1024);
  EXPECT_EQ(c14.vocab_size, 152064);
  EXPECT_EQ(c14.eos_token_ids, std::vector<int64_t>{151645});
  ASSERT_TRUE(c14.dual_chunk.has_value());
  EXPECT_EQ(c14.dual_chunk->local_size, 8192);
}

TEST(ModelConfigTest, SlidingWindowIgnoredUnlessUsed) {
  Json j = Json::parse(kQwen7B1MJson);
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 28;  // no layer index reaches 28: still full attention everywhere
  MP_EXPECT_OK(ParseModelConfig(j.dump()));
  j["max_window_layers"] = 4;
  EXPECT_STATUS(ParseModelConfig(j.dump()), absl::StatusCode::kUnimplemented, "use_sliding_window");
  j["sliding_window"] = nullptr;
  MP_EXPECT_OK(ParseModelConfig(j.dump()));
}

TEST(ModelConfigTest, Qwen2AlwaysHasQkvBias) {
  Json j = Json::parse(kQwen7B1MJson);
  j["attention_bias"] = false;
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(j.dump()));
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias());
}

Json LlamaJson() {
  return Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1000,
    "hidden_size": 256, "intermediate_size": 640, "num_hidden_layers": 5,
    "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05, "rope_theta": 100000.0, "rope_scaling": null,
    "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "torch_dtype": "bfloat16"})");
}

TEST(ModelConfigTest, ParsesLlama) {
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(LlamaJson().dump()));
  EXPECT_EQ(c.architecture, Architecture::kLlama);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.q_dim(), 256);
  EXPECT_EQ(c.kv_dim(), 64);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_FALSE(c.dual_chunk.has_value());
  // Independent count: embedding (tied head) + 5 layers + final norm.
  const int64_t layer = 2 * 256 + 256 * 256 + 2 * 256 * 64 + 256 * 256 + 3 * 256 * 640;
  EXPECT_EQ(c.NumParameters(), 1000 * 256 + 5 * layer + 256);
}

TEST(ModelConfigTest, LlamaOptionsAndNewerSpellings) {
  Json j = LlamaJson();
  j["attention_bias"] = true;
  j["head_dim"] = 64;  // explicit: 8 * 64 = 512 != hidden 256
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_theta", 500000.0}, {"rope_type", "default"}};
  j["eos_token_id"] = {2, 7, 9};
  j.erase("torch_dtype");
  j["dtype"] = "float32";
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(j.dump()));
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.o_proj_bias());
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.q_dim(), 512);
  EXPECT_EQ(c.kv_dim(), 128);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2, 7, 9}));
  EXPECT_EQ(c.torch_dtype, "float32");
}

TEST(ModelConfigTest, ArchitectureFromModelTypeOrFirstSupportedEntry) {
  Json j = LlamaJson();
  j.erase("architectures");
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(j.dump()));
  EXPECT_EQ(c.architecture, Architecture::kLlama);
  j = Json::parse(kQwen7B1MJson);
  j["architectures"] = {"SomethingElse", "Qwen2ForCausalLM"};
  MP_ASSERT_OK_AND_ASSIGN(c, ParseModelConfig(j.dump()));
  EXPECT_EQ(c.architecture, Architecture::kQwen2);
}

TEST(ModelConfigTest, DualChunkBlockOnLlamaWithSparseKnobs) {
  Json j = LlamaJson();
  j["dual_chunk_attention_config"] = {{"chunk_size", 8192},
                                      {"local_size", 1024},
                                      {"original_max_position_embeddings", 8192},
                                      {"sparse_attention_enabled", true},
                                      {"sparse_attention_threshold", 4096},
                                      {"sparse_attention_last_q", 32}};
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(j.dump()));
  ASSERT_TRUE(c.dual_chunk.has_value());
  EXPECT_EQ(c.dual_chunk->chunk_size, 8192);
  EXPECT_EQ(c.dual_chunk->local_size, 1024);
  EXPECT_EQ(c.dual_chunk->chunk_len(), 7168);
  EXPECT_EQ(c.dual_chunk->original_max_position_embeddings, 8192);
  EXPECT_TRUE(c.dual_chunk->sparse_attention_enabled);
  EXPECT_TRUE(c.dual_chunk->sparse_attention_enabled_given);
  EXPECT_EQ(c.dual_chunk->sparse_attention_threshold, 4096);
  EXPECT_EQ(c.dual_chunk->sparse_attention_last_q, 32);
  j["dual_chunk_attention_config"]["sparse_attention_enabled"] = false;
  MP_ASSERT_OK_AND_ASSIGN(c, ParseModelConfig(j.dump()));
  EXPECT_FALSE(c.dual_chunk->sparse_attention_enabled);
  EXPECT_TRUE(c.dual_chunk->sparse_attention_enabled_given);
}

ModelConfig RandomConfig(std::mt19937_64& rng) {
  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  ModelConfig c;
  c.architecture = pick(0, 1) ? Architecture::kQwen2 : Architecture::kLlama;
  c.model_type = c.architecture == Architecture::kQwen2 ? "qwen2" : "llama";
  c.num_key_value_heads = pick(1, 8);
  c.num_attention_heads = c.num_key_value_heads * pick(1, 6);
  c.head_dim = 2 * pick(1, 80);
  c.hidden_size = pick(0, 1) ? c.num_attention_heads * c.head_dim : pick(1, 5000);
  c.intermediate_size = pick(1, 30000);
  c.num_hidden_layers = pick(1, 100);
  c.vocab_size = pick(16, 200000);
  c.max_position_embeddings = pick(1, 2000000);
  c.rms_norm_eps = std::pow(10.0, -std::uniform_real_distribution<double>(3, 8)(rng));
  c.rope_theta = std::uniform_real_distribution<double>(100, 1e8)(rng);
  c.attention_bias = c.architecture == Architecture::kQwen2 || pick(0, 1);
  c.tie_word_embeddings = pick(0, 1);
  for (int64_t i = pick(0, 3); i > 0; --i) c.eos_token_ids.push_back(pick(0, c.vocab_size - 1));
  if (pick(0, 1)) c.bos_token_id = pick(0, c.vocab_size - 1);
  const char* dtypes[] = {"", "bfloat16", "float16", "float32"};
  c.torch_dtype = dtypes[pick(0, 3)];
  if (pick(0, 1)) {
    DualChunkConfig d;
    d.local_size = pick(0, 5000);
    d.chunk_size = d.local_size + 64 * pick(1, 5000);
    d.original_max_position_embeddings = pick(1, 1000000);
    d.sparse_attention_enabled_given = pick(0, 1);
    d.sparse_attention_enabled = d.sparse_attention_enabled_given && pick(0, 1);
    d.sparse_attention_threshold = pick(1, 100000);
    d.sparse_attention_last_q = pick(1, 256);
    c.dual_chunk = d;
  }
  return c;
}

TEST(ModelConfigTest, JsonRoundTripOfRandomConfigs) {
  std::mt19937_64 rng(20250127);
  for (int i = 0; i < 300; ++i) {
    ModelConfig c = RandomConfig(rng);
    const std::string text = ModelConfigToJson(c);
    MP_ASSERT_OK_AND_ASSIGN(ModelConfig back, ParseModelConfig(text));
    SCOPED_TRACE(text);
    ExpectSameConfig(c, back);
    EXPECT_EQ(c.NumParameters(), back.NumParameters());
  }
  for (const ModelConfig& c : {Qwen25_7BInstruct1MConfig(), Qwen25_14BInstruct1MConfig()}) {
    MP_ASSERT_OK_AND_ASSIGN(ModelConfig back, ParseModelConfig(ModelConfigToJson(c)));
    ExpectSameConfig(c, back);
  }
}

struct ErrorCase {
  const char* label;
  std::function<void(Json&)> mutate;
  absl::StatusCode code;
  std::vector<std::string> must_mention;
};

TEST(ModelConfigTest, EveryBadFieldIsNamed) {
  using absl::StatusCode;
  const StatusCode kInvalid = StatusCode::kInvalidArgument;
  const StatusCode kUnimplemented = StatusCode::kUnimplemented;
  auto set = [](const char* key, Json value) { return [key, value](Json& j) { j[key] = value; }; };
  auto erase = [](const char* key) { return [key](Json& j) { j.erase(key); }; };
  auto dca = [](Json block) {
    return [block](Json& j) { j["dual_chunk_attention_config"] = block; };
  };
  const Json good_dca = {
      {"chunk_size", 1088}, {"local_size", 64}, {"original_max_position_embeddings", 1024}};
  auto dca_with = [&](const char* key, Json value) {
    Json block = good_dca;
    if (value.is_discarded()) {
      block.erase(key);
    } else {
      block[key] = value;
    }
    return dca(block);
  };
  const Json kErase = Json(Json::value_t::discarded);
  const std::vector<ErrorCase> cases = {
      {"missing hidden_size", erase("hidden_size"), kInvalid, {"hidden_size", "missing"}},
      {"negative hidden_size", set("hidden_size", -256), kInvalid, {"hidden_size", "-256"}},
      {"string hidden_size", set("hidden_size", "big"), kInvalid, {"hidden_size", "integer"}},
      {"fractional hidden_size", set("hidden_size", 255.5), kInvalid, {"hidden_size"}},
      {"zero vocab", set("vocab_size", 0), kInvalid, {"vocab_size", "positive"}},
      {"zero intermediate", set("intermediate_size", 0), kInvalid, {"intermediate_size"}},
      {"zero layers", set("num_hidden_layers", 0), kInvalid, {"num_hidden_layers"}},
      {"zero heads", set("num_attention_heads", 0), kInvalid, {"num_attention_heads"}},
      {"zero max positions",
       set("max_position_embeddings", 0),
       kInvalid,
       {"max_position_embeddings"}},
      {"kv heads do not divide",
       set("num_key_value_heads", 3),
       kInvalid,
       {"num_key_value_heads", "3", "8"}},
      {"heads do not divide hidden",
       set("num_attention_heads", 6),
       kInvalid,
       {"num_attention_heads", "hidden_size", "256"}},
      {"odd explicit head_dim", set("head_dim", 33), kInvalid, {"head_dim", "33", "even"}},
      {"odd implied head_dim",
       [](Json& j) {
         j["hidden_size"] = 72;
         j["num_key_value_heads"] = 8;
       },
       kInvalid,
       {"head_dim", "9"}},
      {"unknown architecture",
       set("architectures", Json::array({"MistralForCausalLM"})),
       kInvalid,
       {"MistralForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"}},
      {"architectures not a list",
       set("architectures", "LlamaForCausalLM"),
       kInvalid,
       {"architectures"}},
      {"no architecture at all",
       [](Json& j) {
         j.erase("architectures");
         j.erase("model_type");
       },
       kInvalid,
       {"architectures", "Qwen2ForCausalLM"}},
      {"unknown model_type only",
       [](Json& j) {
         j.erase("architectures");
         j["model_type"] = "gpt2";
       },
       kInvalid,
       {"model_type", "gpt2", "LlamaForCausalLM"}},
      {"model_type mismatch", set("model_type", "qwen2"), kInvalid, {"model_type", "qwen2"}},
      {"rope_scaling",
       set("rope_scaling", {{"type", "linear"}, {"factor", 4.0}}),
       kUnimplemented,
       {"rope_scaling", "linear"}},
      {"rope_parameters yarn",
       set("rope_parameters", {{"rope_type", "yarn"}, {"rope_theta", 1e4}, {"factor", 4.0}}),
       kUnimplemented,
       {"rope_parameters.rope_type", "yarn"}},
      {"rope_parameters not an object", set("rope_parameters", 5), kInvalid, {"rope_parameters"}},
      {"rope theta disagreement",
       set("rope_parameters", {{"rope_theta", 1e6}}),
       kInvalid,
       {"rope_parameters.rope_theta", "rope_theta"}},
      {"negative rope_theta", set("rope_theta", -1.0), kInvalid, {"rope_theta"}},
      {"zero rms_norm_eps", set("rms_norm_eps", 0.0), kInvalid, {"rms_norm_eps"}},
      {"eos list with a string", set("eos_token_id", {2, "x"}), kInvalid, {"eos_token_id[1]"}},
      {"eos outside vocab", set("eos_token_id", 1000), kInvalid, {"eos_token_id", "1000"}},
      {"negative bos", set("bos_token_id", -1), kInvalid, {"bos_token_id"}},
      {"gelu", set("hidden_act", "gelu"), kUnimplemented, {"hidden_act", "gelu"}},
      {"mlp_bias", set("mlp_bias", true), kUnimplemented, {"mlp_bias"}},
      {"attention_bias not bool",
       set("attention_bias", "yes"),
       kInvalid,
       {"attention_bias", "boolean"}},
      {"tie not bool", set("tie_word_embeddings", 1), kInvalid, {"tie_word_embeddings"}},
      {"torch_dtype not string", set("torch_dtype", 16), kInvalid, {"torch_dtype"}},
      {"sliding layer type",
       set("layer_types", {"full_attention", "sliding_attention"}),
       kUnimplemented,
       {"layer_types[1]", "sliding_attention"}},
      {"dca not an object", dca(Json::array({1, 2})), kInvalid, {"dual_chunk_attention_config"}},
      {"dca no chunk",
       dca_with("local_size", 1088),
       kInvalid,
       {"dual_chunk_attention_config.local_size", "positive"}},
      {"dca chunk not multiple of 64",
       dca_with("local_size", 40),
       kInvalid,
       {"dual_chunk_attention_config", "1048", "multiple of 64"}},
      {"dca missing chunk_size",
       dca_with("chunk_size", kErase),
       kInvalid,
       {"dual_chunk_attention_config.chunk_size", "missing"}},
      {"dca missing local_size",
       dca_with("local_size", kErase),
       kInvalid,
       {"dual_chunk_attention_config.local_size", "missing"}},
      {"dca negative local_size",
       dca_with("local_size", -64),
       kInvalid,
       {"dual_chunk_attention_config.local_size"}},
      {"dca missing L0",
       dca_with("original_max_position_embeddings", kErase),
       kInvalid,
       {"dual_chunk_attention_config.original_max_position_embeddings"}},
      {"dca zero threshold",
       dca_with("sparse_attention_threshold", 0),
       kInvalid,
       {"dual_chunk_attention_config.sparse_attention_threshold"}},
      {"dca zero last_q",
       dca_with("sparse_attention_last_q", 0),
       kInvalid,
       {"dual_chunk_attention_config.sparse_attention_last_q"}},
      {"dca enabled not bool",
       dca_with("sparse_attention_enabled", "on"),
       kInvalid,
       {"dual_chunk_attention_config.sparse_attention_enabled"}},
  };
  // The base config and the good DCA block parse.
  MP_ASSERT_OK(ParseModelConfig(LlamaJson().dump()));
  {
    Json j = LlamaJson();
    dca(good_dca)(j);
    MP_ASSERT_OK(ParseModelConfig(j.dump()));
  }
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(c.label);
    Json j = LlamaJson();
    c.mutate(j);
    absl::StatusOr<ModelConfig> parsed = ParseModelConfig(j.dump());
    ASSERT_FALSE(parsed.ok());
    EXPECT_EQ(parsed.status().code(), c.code) << parsed.status();
    const std::string message(parsed.status().message());
    EXPECT_EQ(message.rfind("config.json: ", 0), 0u) << message;
    for (const std::string& word : c.must_mention) {
      EXPECT_NE(message.find(word), std::string::npos) << "'" << word << "' not in: " << message;
    }
  }
}

TEST(ModelConfigTest, Qwen2SlidingWindowErrorIsUnimplemented) {
  Json j = Json::parse(kQwen7B1MJson);
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 0;
  EXPECT_STATUS(ParseModelConfig(j.dump()), absl::StatusCode::kUnimplemented, "32768");
}

TEST(ModelConfigTest, RejectsNonJsonAndNonObjects) {
  EXPECT_STATUS(ParseModelConfig("{\"hidden_size\": 3"), absl::StatusCode::kInvalidArgument,
                "not valid JSON");
  EXPECT_STATUS(ParseModelConfig(""), absl::StatusCode::kInvalidArgument, "not valid JSON");
  EXPECT_STATUS(ParseModelConfig("[1, 2, 3]"), absl::StatusCode::kInvalidArgument, "JSON object");
  EXPECT_STATUS(ParseModelConfig("\"qwen2\""), absl::StatusCode::kInvalidArgument, "JSON object");
}

TEST(ModelConfigTest, LoadModelConfigFromFileAndDirectory) {
  const std::string dir = testing::ScratchDir("load_config");
  testing::WriteBytes(dir + "/config.json", kQwen7B1MJson);
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig a, LoadModelConfig(dir + "/config.json"));
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig b, LoadModelConfig(dir));
  ExpectSameConfig(a, Qwen25_7BInstruct1MConfig());
  ExpectSameConfig(b, Qwen25_7BInstruct1MConfig());

  EXPECT_STATUS(LoadModelConfig(dir + "/missing.json"), absl::StatusCode::kNotFound,
                dir + "/missing.json");
  const std::string empty_dir = testing::ScratchDir("load_config_empty");
  EXPECT_STATUS(LoadModelConfig(empty_dir), absl::StatusCode::kNotFound,
                empty_dir + "/config.json");

  Json bad = Json::parse(kQwen7B1MJson);
  bad["num_key_value_heads"] = 5;
  testing::WriteBytes(dir + "/bad.json", bad.dump());
  absl::StatusOr<ModelConfig> parsed = LoadModelConfig(dir + "/bad.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(parsed.status().message()).rfind(dir + "/bad.json: ", 0), 0u)
      << parsed.status();
  EXPECT_NE(parsed.status().message().find("num_key_value_heads"), absl::string_view::npos);
}

// The fixtures under tests/testdata were written by Hugging Face transformers 5 (rope_parameters,
// "dtype", layer_types, tied Llama head).
TEST(ModelConfigTest, ParsesTransformersWrittenFixtures) {
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig q, LoadModelConfig(MP_TESTDATA_DIR "/tiny_qwen2"));
  EXPECT_EQ(q.architecture, Architecture::kQwen2);
  EXPECT_EQ(q.vocab_size, 512);
  EXPECT_EQ(q.hidden_size, 256);
  EXPECT_EQ(q.num_hidden_layers, 3);
  EXPECT_EQ(q.num_attention_heads, 4);
  EXPECT_EQ(q.num_key_value_heads, 2);
  EXPECT_EQ(q.head_dim, 64);
  EXPECT_EQ(q.rope_theta, 1e6);
  EXPECT_TRUE(q.attention_bias);
  EXPECT_FALSE(q.tie_word_embeddings);
  EXPECT_EQ(q.torch_dtype, "float32");
  EXPECT_EQ(q.eos_token_ids, std::vector<int64_t>{2});
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig l, LoadModelConfig(MP_TESTDATA_DIR "/tiny_llama"));
  EXPECT_EQ(l.architecture, Architecture::kLlama);
  EXPECT_EQ(l.rope_theta, 1e4);
  EXPECT_FALSE(l.attention_bias);
  EXPECT_TRUE(l.tie_word_embeddings);
  EXPECT_EQ(l.head_dim, 64);
  EXPECT_EQ(l.bos_token_id, 1);
}

TEST(DualChunkSettingsTest, DefaultLocalSizeFollowsTheQwenRatioWithAlignedChunks) {
  EXPECT_EQ(DefaultDcaLocalSize(262144), 8192);  // Qwen2.5-1M
  EXPECT_EQ(DefaultDcaLocalSize(8192), 256);     // SmolLM2-135M
  EXPECT_EQ(DefaultDcaLocalSize(32768), 1024);
  for (int64_t s = 64; s < 20000; s += 37) {
    const int64_t w = DefaultDcaLocalSize(s);
    ASSERT_EQ((s - w) % 64, 0) << "S " << s;
    ASSERT_GE(w, s / 32) << "S " << s;
    ASSERT_LT(w, s / 32 + 64) << "S " << s;
  }
}

TEST(DualChunkSettingsTest, ValidateNamesTheFieldAndTheLimit) {
  DualChunkConfig d;
  d.chunk_size = 8192;
  d.local_size = 256;
  d.original_max_position_embeddings = 8192;
  EXPECT_TRUE(ValidateDualChunkConfig(d).ok());
  auto expect_error = [](DualChunkConfig bad, const std::string& text) {
    const absl::Status status = ValidateDualChunkConfig(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(status.message().find(text), std::string::npos) << status;
  };
  DualChunkConfig bad = d;
  bad.local_size = 200;
  expect_error(bad, "gives chunk length 7992, which must be a multiple of 64");
  bad = d;
  bad.local_size = 8192;
  expect_error(bad, "dual_chunk_attention_config.local_size' = 8192 leaves no chunk");
  bad = d;
  bad.local_size = -64;
  expect_error(bad, "dual_chunk_attention_config.local_size' must be >= 0");
  bad = d;
  bad.chunk_size = int64_t{1} << 31;
  expect_error(bad, "chunk_size' = 2147483648 must be in [1, 2147483647]");
  bad = d;
  bad.original_max_position_embeddings = 0;
  expect_error(bad, "original_max_position_embeddings' must be positive");
}

TEST(DualChunkSettingsTest, OverrideEnablesDcaOnAnyRopeModel) {
  ModelConfig smol = testing::TinyLlamaConfig();
  smol.max_position_embeddings = 8192;
  smol.dual_chunk.reset();

  ModelConfig c = smol;
  EXPECT_TRUE(ApplyDualChunkOverride({}, &c).ok());
  EXPECT_FALSE(c.dual_chunk.has_value());

  DualChunkOverride on;
  on.enable = true;
  ASSERT_TRUE(ApplyDualChunkOverride(on, &c).ok());
  ASSERT_TRUE(c.dual_chunk.has_value());
  EXPECT_EQ(c.dual_chunk->chunk_size, 8192);
  EXPECT_EQ(c.dual_chunk->local_size, 256);
  EXPECT_EQ(c.dual_chunk->chunk_len(), 7936);
  EXPECT_EQ(c.dual_chunk->original_max_position_embeddings, 8192);
  EXPECT_FALSE(c.dual_chunk->sparse_attention_enabled);

  c = smol;
  DualChunkOverride sized;
  sized.chunk_size = 4096;  // a value alone turns DCA on
  sized.local_size = 512;
  ASSERT_TRUE(ApplyDualChunkOverride(sized, &c).ok());
  EXPECT_EQ(c.dual_chunk->chunk_len(), 3584);
  EXPECT_EQ(c.dual_chunk->original_max_position_embeddings, 8192);  // the training length

  c = smol;
  DualChunkOverride bad;
  bad.local_size = 100;
  const absl::Status status = ApplyDualChunkOverride(bad, &c);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("multiple of 64"), std::string::npos) << status;
  EXPECT_FALSE(c.dual_chunk.has_value()) << "a failed override changes nothing";
}

TEST(DualChunkSettingsTest, OverrideAdjustsOrDisablesTheConfigBlock) {
  const ModelConfig qwen = Qwen25_7BInstruct1MConfig();
  ModelConfig c = qwen;
  DualChunkOverride l0;
  l0.original_max_position_embeddings = 131072;
  ASSERT_TRUE(ApplyDualChunkOverride(l0, &c).ok());
  EXPECT_EQ(c.dual_chunk->chunk_size, 262144);
  EXPECT_EQ(c.dual_chunk->local_size, 8192);
  EXPECT_EQ(c.dual_chunk->original_max_position_embeddings, 131072);

  c = qwen;
  DualChunkOverride chunk;
  chunk.chunk_size = 65536;  // the local size follows the default ratio unless given
  ASSERT_TRUE(ApplyDualChunkOverride(chunk, &c).ok());
  EXPECT_EQ(c.dual_chunk->local_size, 2048);
  EXPECT_EQ(c.dual_chunk->original_max_position_embeddings, 262144);

  c = qwen;
  DualChunkOverride off;
  off.disable = true;
  ASSERT_TRUE(ApplyDualChunkOverride(off, &c).ok());
  EXPECT_FALSE(c.dual_chunk.has_value());

  c = qwen;
  off.local_size = 1024;
  const absl::Status status = ApplyDualChunkOverride(off, &c);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("both disabled and configured"), std::string::npos) << status;
  EXPECT_TRUE(c.dual_chunk.has_value());
}

}  // namespace
}  // namespace mp
