// The real embedded default model: SmolLM2-135M-Instruct, Q4_1 GGUF, and its conversion.
// Reads the GGUF path from MILLIPEDE_SMOLLM2_GGUF and the converted directory from
// MILLIPEDE_SMOLLM2_DIR (scripts/fetch_default_model.sh prints the latter and records the
// former in it); fails when they are unset.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "model/config.h"
#include "model/gguf_convert.h"
#include "model/gguf_dequant.h"
#include "model/gguf_reader.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/unit/gguf/gguf_test_util.h"

namespace mp {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

class SmolLm2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    gguf_path_ = Env("MILLIPEDE_SMOLLM2_GGUF");
    dir_ = Env("MILLIPEDE_SMOLLM2_DIR");
    ASSERT_FALSE(gguf_path_.empty())
        << "MILLIPEDE_SMOLLM2_GGUF must name SmolLM2-135M-Instruct.Q4_1.gguf "
           "(scripts/fetch_default_model.sh)";
    ASSERT_FALSE(dir_.empty()) << "MILLIPEDE_SMOLLM2_DIR must name the converted model "
                                  "(scripts/fetch_default_model.sh)";
  }
  std::string gguf_path_, dir_;
};

TEST_F(SmolLm2Test, ReadsTheGguf) {
  MP_ASSERT_OK_AND_ASSIGN(auto f, GgufFile::Open(gguf_path_));
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->keys().size(), 33u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(*f->GetString("general.architecture"), "llama");
  EXPECT_EQ(*f->GetString("tokenizer.ggml.pre"), "smollm");
  MP_ASSERT_OK_AND_ASSIGN(auto tokens, f->GetStringArray("tokenizer.ggml.tokens"));
  ASSERT_EQ(tokens.size(), 49152u);
  EXPECT_EQ(tokens[0], "<|endoftext|>");
  EXPECT_EQ(tokens[2], "<|im_end|>");
  MP_ASSERT_OK_AND_ASSIGN(auto merges, f->GetStringArray("tokenizer.ggml.merges"));
  EXPECT_EQ(merges.size(), 48900u);
  EXPECT_EQ(merges[0], "\xC4\xA0 t");

  ASSERT_EQ(f->tensors().size(), 272u);
  std::map<std::string, int> types;
  for (const GgufTensorInfo& t : f->tensors()) ++types[GgmlTypeName(t.type)];
  EXPECT_EQ(types, (std::map<std::string, int>{{"Q4_1", 210}, {"F32", 61}, {"Q8_0", 1}}));
  const GgufTensorInfo* embd = f->FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->shape(), (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ(f->FindTensor("output.weight"), nullptr);

  // Every tensor dequantizes to finite values; norms are near 1, weights small.
  for (const GgufTensorInfo& t : f->tensors()) {
    MP_ASSERT_OK_AND_ASSIGN(Tensor x, DequantizeTensor(*f, t));
    double max_abs = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      ASSERT_TRUE(std::isfinite(x.data_as<float>()[i])) << t.name << " element " << i;
      max_abs = std::max(max_abs, std::abs(static_cast<double>(x.data_as<float>()[i])));
    }
    EXPECT_GT(max_abs, 1e-3) << t.name;
    EXPECT_LT(max_abs, 100.0) << t.name;
  }
}

TEST_F(SmolLm2Test, ConfigFromMetadata) {
  MP_ASSERT_OK_AND_ASSIGN(auto f, GgufFile::Open(gguf_path_));
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c, LlamaConfigFromGguf(*f));
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.num_hidden_layers, 30);
  EXPECT_EQ(c.num_attention_heads, 9);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
}

TEST_F(SmolLm2Test, ConvertedDirectory) {
  namespace fs = std::filesystem;
  MP_ASSERT_OK_AND_ASSIGN(auto f, GgufFile::Open(gguf_path_));
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig want, LlamaConfigFromGguf(*f));
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig got, LoadModelConfig(dir_));
  EXPECT_EQ(ModelConfigToJson(got), ModelConfigToJson(want));

  MP_ASSERT_OK_AND_ASSIGN(auto st,
                          SafetensorsFile::Open((fs::path(dir_) / "model.safetensors").string()));
  EXPECT_EQ(st->TensorNames().size(), 272u);
  for (const GgufTensorInfo& t : f->tensors()) {
    MP_ASSERT_OK_AND_ASSIGN(std::string name, HfTensorName(t.name));
    MP_ASSERT_OK_AND_ASSIGN(Tensor x, st->Get(name));
    EXPECT_EQ(x.dtype(), DType::kF32) << name;
    EXPECT_EQ(x.shape(), t.shape()) << name;
  }
  // Unpermuted tensors are the dequantized GGUF values (model.safetensors is checked in full,
  // Q/K included, by check_converted_weights.py).
  for (const char* gguf_name : {"token_embd.weight", "blk.7.attn_v.weight", "output_norm.weight",
                                "blk.29.ffn_down.weight"}) {
    const GgufTensorInfo* t = f->FindTensor(gguf_name);
    ASSERT_NE(t, nullptr);
    MP_ASSERT_OK_AND_ASSIGN(Tensor deq, DequantizeTensor(*f, *t));
    MP_ASSERT_OK_AND_ASSIGN(Tensor x, st->Get(*HfTensorName(gguf_name)));
    ASSERT_EQ(x.numel(), deq.numel());
    EXPECT_EQ(std::memcmp(x.data(), deq.data(), deq.nbytes()), 0) << gguf_name;
  }

  std::ifstream in(fs::path(dir_) / "tokenizer.json");
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json tok = nlohmann::json::parse(text.str());
  EXPECT_EQ(tok["model"]["vocab"].size(), 49152u);
  EXPECT_EQ(tok["model"]["merges"].size(), 48900u);
  EXPECT_EQ(tok["added_tokens"].size(), 17u);
  EXPECT_EQ(tok["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
}

}  // namespace
}  // namespace mp
