#include "model/weights.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "tests/unit/model/test_util.h"

namespace mp {
namespace {

using absl::StatusCode;
using testing::TensorBytes;

// Every tensor of a stage, by Hugging Face name, written out by hand (not via StageWeightSlots).
std::map<std::string, const Tensor*> NamedTensors(const ModelConfig& c, const ModelWeights& w) {
  std::map<std::string, const Tensor*> out;
  if (w.has_embedding) out["model.embed_tokens.weight"] = &w.embed_tokens;
  for (size_t k = 0; k < w.layer.size(); ++k) {
    const LayerWeights& l = w.layer[k];
    const std::string p = "model.layers." + std::to_string(w.layers.begin + k) + ".";
    out[p + "input_layernorm.weight"] = &l.input_norm;
    out[p + "self_attn.q_proj.weight"] = &l.q_proj;
    out[p + "self_attn.k_proj.weight"] = &l.k_proj;
    out[p + "self_attn.v_proj.weight"] = &l.v_proj;
    out[p + "self_attn.o_proj.weight"] = &l.o_proj;
    if (c.attention_bias) {
      out[p + "self_attn.q_proj.bias"] = &l.q_bias;
      out[p + "self_attn.k_proj.bias"] = &l.k_bias;
      out[p + "self_attn.v_proj.bias"] = &l.v_bias;
    }
    if (c.architecture == Architecture::kLlama && c.attention_bias) {
      out[p + "self_attn.o_proj.bias"] = &l.o_bias;
    }
    out[p + "post_attention_layernorm.weight"] = &l.post_attention_norm;
    out[p + "mlp.gate_proj.weight"] = &l.gate_proj;
    out[p + "mlp.up_proj.weight"] = &l.up_proj;
    out[p + "mlp.down_proj.weight"] = &l.down_proj;
  }
  if (w.has_head) {
    out["model.norm.weight"] = &w.final_norm;
    if (!c.tie_word_embeddings) out["lm_head.weight"] = &w.lm_head;
  }
  return out;
}

void ExpectSameWeights(const ModelConfig& c, const ModelWeights& a, const ModelWeights& b) {
  EXPECT_EQ(a.layers.begin, b.layers.begin);
  EXPECT_EQ(a.layers.end, b.layers.end);
  const auto ta = NamedTensors(c, a);
  const auto tb = NamedTensors(c, b);
  ASSERT_EQ(ta.size(), tb.size());
  for (const auto& [name, t] : ta) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(t->defined());
    ASSERT_TRUE(tb.at(name)->defined());
    EXPECT_EQ(t->dtype(), tb.at(name)->dtype());
    EXPECT_EQ(t->shape(), tb.at(name)->shape());
    EXPECT_EQ(TensorBytes(*t), TensorBytes(*tb.at(name)));
  }
}

std::vector<ModelConfig> TestConfigs() {
  return {testing::TinyQwen2Config(), testing::TinyLlamaConfig(false),
          testing::TinyLlamaConfig(true)};
}

TEST(WeightsTest, LoadsWhatWriteRandomModelDirWrote) {
  int index = 0;
  for (const ModelConfig& config : TestConfigs()) {
    for (DType dtype : {DType::kBF16, DType::kF32, DType::kF16}) {
      SCOPED_TRACE(ModelConfigToJson(config) + DTypeName(dtype));
      const std::string dir = testing::ScratchDir("roundtrip" + std::to_string(index++));
      MP_ASSERT_OK(WriteRandomModelDir(dir, config, 42, {dtype, 1}));
      ASSERT_TRUE(std::filesystem::exists(dir + "/model.safetensors"));
      ASSERT_FALSE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
      MP_ASSERT_OK_AND_ASSIGN(ModelConfig read_config, LoadModelConfig(dir));
      EXPECT_EQ(ModelConfigToJson(read_config), ModelConfigToJson(config));

      WeightLoadOptions all{{0, config.num_hidden_layers}, true, true};
      MP_ASSERT_OK_AND_ASSIGN(ModelWeights loaded, LoadModelWeights(dir, config, all));
      MP_ASSERT_OK_AND_ASSIGN(ModelWeights expected, RandomModelWeights(config, all, 42, dtype));
      EXPECT_TRUE(loaded.has_embedding);
      EXPECT_TRUE(loaded.has_head);
      ASSERT_EQ(loaded.layer.size(), static_cast<size_t>(config.num_hidden_layers));
      ExpectSameWeights(config, loaded, expected);
      EXPECT_EQ(loaded.layer[0].q_bias.defined(), config.attention_bias);
      EXPECT_EQ(loaded.layer[0].o_bias.defined(), config.o_proj_bias());
      EXPECT_EQ(loaded.lm_head.shape(),
                (std::vector<int64_t>{config.vocab_size, config.hidden_size}));
      if (config.tie_word_embeddings) {
        EXPECT_EQ(loaded.lm_head.data(), loaded.embed_tokens.data());
      } else {
        EXPECT_NE(TensorBytes(loaded.lm_head), TensorBytes(loaded.embed_tokens));
      }

      // The file holds exactly the tensors of the HF layout, and their sizes add up to the
      // config's parameter count.
      MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file,
                              SafetensorsFile::Open(dir + "/model.safetensors"));
      std::set<std::string> expected_names;
      for (const auto& [name, t] : NamedTensors(config, expected)) expected_names.insert(name);
      const std::vector<std::string> names = file->TensorNames();
      EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), expected_names);
      int64_t params = 0;
      for (const std::string& name : names) {
        MP_ASSERT_OK_AND_ASSIGN(Tensor t, file->Get(name));
        EXPECT_EQ(t.dtype(), dtype);
        params += t.numel();
      }
      EXPECT_EQ(params, config.NumParameters());
      EXPECT_EQ(file->metadata().at("format"), "pt");
    }
  }
}

TEST(WeightsTest, ShardedDirectoryEqualsSingleFile) {
  const ModelConfig config = testing::TinyQwen2Config();
  const std::string single = testing::ScratchDir("single");
  const std::string sharded = testing::ScratchDir("sharded");
  MP_ASSERT_OK(WriteRandomModelDir(single, config, 9, {DType::kBF16, 1}));
  MP_ASSERT_OK(WriteRandomModelDir(sharded, config, 9, {DType::kBF16, 3}));
  ASSERT_FALSE(std::filesystem::exists(sharded + "/model.safetensors"));
  for (const char* shard : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors"}) {
    EXPECT_TRUE(std::filesystem::exists(sharded + "/" + shard)) << shard;
  }
  // The index lists every tensor once, in an existing shard, and the total size.
  const nlohmann::json index =
      nlohmann::json::parse(testing::ReadBytes(sharded + "/model.safetensors.index.json"));
  uint64_t total = 0;
  size_t listed = 0;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> f,
                            SafetensorsFile::Open(sharded + "/" + shard.get<std::string>()));
    MP_ASSERT_OK_AND_ASSIGN(Tensor t, f->Get(name));
    total += t.nbytes();
    ++listed;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(total, static_cast<uint64_t>(config.NumParameters()) * 2);

  WeightLoadOptions all{{0, 4}, true, true};
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights a, LoadModelWeights(single, config, all));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights b, LoadModelWeights(sharded, config, all));
  EXPECT_EQ(listed, NamedTensors(config, a).size());
  ExpectSameWeights(config, a, b);
}

TEST(WeightsTest, LayerSliceLoadsExactlyTheAskedTensors) {
  const ModelConfig config = testing::TinyQwen2Config();  // 4 layers
  const std::string dir = testing::ScratchDir("slices");
  MP_ASSERT_OK(WriteRandomModelDir(dir, config, 5, {DType::kF32, 4}));  // one layer per shard
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights full, LoadModelWeights(dir, config, {{0, 4}, true, true}));

  // A middle stage needs only shard 3 (layer 2): the others may be gone.
  const std::string middle = testing::ScratchDir("slices_middle");
  for (const char* f :
       {"config.json", "model.safetensors.index.json", "model-00003-of-00004.safetensors"}) {
    std::filesystem::copy_file(dir + "/" + f, middle + "/" + f);
  }
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights mid,
                          LoadModelWeights(middle, config, {{2, 3}, false, false}));
  EXPECT_FALSE(mid.has_embedding);
  EXPECT_FALSE(mid.has_head);
  EXPECT_FALSE(mid.embed_tokens.defined());
  EXPECT_FALSE(mid.final_norm.defined());
  EXPECT_FALSE(mid.lm_head.defined());
  ASSERT_EQ(mid.layer.size(), 1u);
  EXPECT_EQ(mid.layers.begin, 2);
  EXPECT_EQ(mid.layers.end, 3);
  ModelWeights full_layer2 = full;
  full_layer2.layers = {2, 3};
  full_layer2.layer = {full.layer[2]};
  full_layer2.has_embedding = full_layer2.has_head = false;
  ExpectSameWeights(config, mid, full_layer2);
  // Asking the reduced directory for another layer names the missing shard.
  EXPECT_STATUS(LoadModelWeights(middle, config, {{1, 3}, false, false}), StatusCode::kNotFound,
                "model-00002-of-00004.safetensors");

  // First stage: embedding + layers [0, 2), no head.
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights first, LoadModelWeights(dir, config, {{0, 2}, true, false}));
  EXPECT_TRUE(first.embed_tokens.defined());
  EXPECT_EQ(TensorBytes(first.embed_tokens), TensorBytes(full.embed_tokens));
  EXPECT_FALSE(first.final_norm.defined());
  EXPECT_FALSE(first.lm_head.defined());
  ASSERT_EQ(first.layer.size(), 2u);
  EXPECT_EQ(TensorBytes(first.layer[1].down_proj), TensorBytes(full.layer[1].down_proj));

  // Last stage: layers [2, 4) + norm + head, no embedding.
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights last, LoadModelWeights(dir, config, {{2, 4}, false, true}));
  EXPECT_FALSE(last.embed_tokens.defined());
  EXPECT_EQ(TensorBytes(last.final_norm), TensorBytes(full.final_norm));
  EXPECT_EQ(TensorBytes(last.lm_head), TensorBytes(full.lm_head));
  EXPECT_EQ(TensorBytes(last.layer[0].q_bias), TensorBytes(full.layer[2].q_bias));
}

TEST(WeightsTest, TiedHeadOnALastStageAliasesTheEmbedding) {
  const ModelConfig config = testing::TinyLlamaConfig();  // tied, 3 layers
  const std::string dir = testing::ScratchDir("tied");
  MP_ASSERT_OK(WriteRandomModelDir(dir, config, 8, {DType::kBF16, 3}));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights last, LoadModelWeights(dir, config, {{2, 3}, false, true}));
  EXPECT_FALSE(last.has_embedding);
  ASSERT_TRUE(last.lm_head.defined());
  EXPECT_EQ(last.lm_head.data(), last.embed_tokens.data());
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights full, LoadModelWeights(dir, config, {{0, 3}, true, true}));
  EXPECT_EQ(TensorBytes(last.lm_head), TensorBytes(full.embed_tokens));
}

TEST(WeightsTest, ShapeAndDTypeMismatchesNameTensorFileAndShapes) {
  const ModelConfig written = testing::TinyQwen2Config();
  const std::string dir = testing::ScratchDir("mismatch");
  MP_ASSERT_OK(WriteRandomModelDir(dir, written, 1, {DType::kBF16, 1}));
  const std::string file = dir + "/model.safetensors";
  ModelConfig wider = written;
  wider.intermediate_size = 128;
  EXPECT_STATUS(LoadModelWeights(dir, wider, {{0, 4}, true, true}), StatusCode::kInvalidArgument,
                "model.layers.0.mlp.gate_proj.weight", file, "[96, 64]", "[128, 64]");
  ModelConfig more_kv = written;
  more_kv.num_key_value_heads = 4;
  EXPECT_STATUS(LoadModelWeights(dir, more_kv, {{1, 2}, false, false}),
                StatusCode::kInvalidArgument, "model.layers.1.self_attn.k_proj.weight", "[32, 64]",
                "[64, 64]");
  ModelConfig bigger_vocab = written;
  bigger_vocab.vocab_size = 100;
  EXPECT_STATUS(LoadModelWeights(dir, bigger_vocab, {{3, 4}, false, true}),
                StatusCode::kInvalidArgument, "lm_head.weight", "[96, 64]", "[100, 64]");
  // The same directory loads fine with layer-only options that avoid the vocab.
  MP_EXPECT_OK(LoadModelWeights(dir, bigger_vocab, {{0, 4}, false, false}));

  // An I32 tensor where a weight belongs.
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights w,
                          RandomModelWeights(written, {{0, 4}, true, true}, 1, DType::kF32));
  std::vector<SafetensorsEntry> entries;
  for (const auto& [name, t] : NamedTensors(written, w)) {
    Tensor stored = *t;
    if (name == "model.layers.3.self_attn.q_proj.weight") {
      stored = Tensor::Wrap(t->data(), t->shape(), DType::kI32, DeviceKind::kCpu, t->owner());
    }
    entries.push_back({name, stored});
  }
  const std::string bad_dtype = testing::ScratchDir("bad_dtype");
  MP_ASSERT_OK(WriteSafetensors(bad_dtype + "/model.safetensors", entries));
  EXPECT_STATUS(LoadModelWeights(bad_dtype, written, {{0, 4}, true, true}),
                StatusCode::kInvalidArgument, "model.layers.3.self_attn.q_proj.weight", "I32",
                bad_dtype + "/model.safetensors");
  MP_EXPECT_OK(LoadModelWeights(bad_dtype, written, {{0, 3}, true, true}));
}

TEST(WeightsTest, MissingTensorsAndFiles) {
  const ModelConfig config = testing::TinyQwen2Config();
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights w,
                          RandomModelWeights(config, {{0, 4}, true, true}, 2, DType::kBF16));
  auto write_without = [&](const std::string& dir, const std::string& skip) {
    std::vector<SafetensorsEntry> entries;
    for (const auto& [name, t] : NamedTensors(config, w)) {
      if (name != skip) entries.push_back({name, *t});
    }
    return WriteSafetensors(dir + "/model.safetensors", entries);
  };
  const std::string no_k = testing::ScratchDir("no_k");
  MP_ASSERT_OK(write_without(no_k, "model.layers.1.self_attn.k_proj.bias"));
  EXPECT_STATUS(LoadModelWeights(no_k, config, {{0, 4}, true, true}), StatusCode::kNotFound,
                "model.layers.1.self_attn.k_proj.bias", no_k + "/model.safetensors");
  MP_EXPECT_OK(LoadModelWeights(no_k, config, {{2, 4}, true, true}));

  const std::string no_head = testing::ScratchDir("no_head");
  MP_ASSERT_OK(write_without(no_head, "lm_head.weight"));
  EXPECT_STATUS(LoadModelWeights(no_head, config, {{0, 4}, true, true}), StatusCode::kNotFound,
                "lm_head.weight");
  MP_EXPECT_OK(LoadModelWeights(no_head, config, {{0, 4}, true, false}));

  const std::string empty = testing::ScratchDir("no_files");
  EXPECT_STATUS(LoadModelWeights(empty, config, {{0, 4}, true, true}), StatusCode::kNotFound, empty,
                "model.safetensors");
}

TEST(WeightsTest, BadLayerRanges) {
  const ModelConfig config = testing::TinyQwen2Config();
  const std::string dir = testing::ScratchDir("ranges");
  MP_ASSERT_OK(WriteRandomModelDir(dir, config, 3));
  for (LayerRange r : {LayerRange{-1, 2}, LayerRange{2, 2}, LayerRange{3, 1}, LayerRange{0, 5},
                       LayerRange{4, 5}}) {
    SCOPED_TRACE(std::to_string(r.begin) + "," + std::to_string(r.end));
    EXPECT_STATUS(LoadModelWeights(dir, config, {r, true, true}), StatusCode::kInvalidArgument,
                  "layer range", "num_hidden_layers = 4");
    EXPECT_STATUS(RandomModelWeights(config, {r, true, true}, 1), StatusCode::kInvalidArgument,
                  "layer range");
  }
}

TEST(WeightsTest, BadIndexFiles) {
  const ModelConfig config = testing::TinyQwen2Config();
  const std::string dir = testing::ScratchDir("index");
  MP_ASSERT_OK(WriteRandomModelDir(dir, config, 4, {DType::kBF16, 2}));
  const std::string index_path = dir + "/model.safetensors.index.json";
  const nlohmann::json good = nlohmann::json::parse(testing::ReadBytes(index_path));
  WeightLoadOptions all{{0, 4}, true, true};
  MP_ASSERT_OK(LoadModelWeights(dir, config, all));

  nlohmann::json j = good;
  j["weight_map"].erase("model.layers.3.mlp.up_proj.weight");
  testing::WriteBytes(index_path, j.dump());
  EXPECT_STATUS(LoadModelWeights(dir, config, all), StatusCode::kNotFound,
                "model.layers.3.mlp.up_proj.weight", "weight_map", index_path);

  j = good;
  j["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors";
  testing::WriteBytes(index_path, j.dump());
  EXPECT_STATUS(LoadModelWeights(dir, config, all), StatusCode::kInvalidArgument,
                "model.norm.weight", "../elsewhere.safetensors", index_path);

  j = good;
  j["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors";
  testing::WriteBytes(index_path, j.dump());
  EXPECT_STATUS(LoadModelWeights(dir, config, all), StatusCode::kNotFound,
                "model-00009-of-00009.safetensors");

  j = good;
  j["weight_map"]["model.norm.weight"] = 3;
  testing::WriteBytes(index_path, j.dump());
  EXPECT_STATUS(LoadModelWeights(dir, config, all), StatusCode::kInvalidArgument,
                "model.norm.weight", index_path);

  testing::WriteBytes(index_path, "{\"weight_map\": [");
  EXPECT_STATUS(LoadModelWeights(dir, config, all), StatusCode::kInvalidArgument, "not valid JSON",
                index_path);
  testing::WriteBytes(index_path, "{\"metadata\": {}}");
  EXPECT_STATUS(LoadModelWeights(dir, config, all), StatusCode::kInvalidArgument, "weight_map",
                index_path);
}

// The fixtures under tests/testdata were written by Hugging Face transformers (f32, Qwen2 with an
// lm_head, Llama with a tied head).
TEST(WeightsTest, LoadsTransformersWrittenFixtures) {
  for (const char* name : {"tiny_qwen2", "tiny_llama"}) {
    SCOPED_TRACE(name);
    const std::string dir = std::string(MP_TESTDATA_DIR) + "/" + name;
    MP_ASSERT_OK_AND_ASSIGN(ModelConfig config, LoadModelConfig(dir));
    WeightLoadOptions all{{0, config.num_hidden_layers}, true, true};
    MP_ASSERT_OK_AND_ASSIGN(ModelWeights w, LoadModelWeights(dir, config, all));
    int64_t params = 0;
    for (const auto& [tensor_name, t] : NamedTensors(config, w)) {
      EXPECT_EQ(t->dtype(), DType::kF32) << tensor_name;
      params += t->numel();
    }
    EXPECT_EQ(params, config.NumParameters());
    // Same count from the file itself: every tensor in it is one the stage uses.
    MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file,
                            SafetensorsFile::Open(dir + "/model.safetensors"));
    int64_t in_file = 0;
    for (const std::string& n : file->TensorNames()) {
      MP_ASSERT_OK_AND_ASSIGN(Tensor t, file->Get(n));
      in_file += t.numel();
    }
    EXPECT_EQ(in_file, params);
    if (config.tie_word_embeddings) {
      EXPECT_EQ(w.lm_head.data(), w.embed_tokens.data());
    }
    // Norm weights were randomized around 1 by the fixture script.
    double mean = 0;
    const Tensor& norm = w.layer[0].input_norm;
    for (int64_t i = 0; i < norm.numel(); ++i) mean += norm.data_as<float>()[i];
    mean /= static_cast<double>(norm.numel());
    EXPECT_NEAR(mean, 1.0, 0.1);
  }
}

}  // namespace
}  // namespace mp
