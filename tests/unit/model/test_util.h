// Helpers shared by the model tests: scratch directories, raw file bytes, tensor comparison, config
// comparison and small model configs.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <random>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "model/config.h"
#include "runtime/tensor.h"

namespace mp::testing {

// Expects `status` to fail with `code` and a message containing every one of `words`.
inline void ExpectStatus(const absl::Status& status, absl::StatusCode code,
                         std::initializer_list<std::string> words) {
  EXPECT_EQ(status.code(), code) << status;
  const std::string message(status.message());
  for (const std::string& word : words) {
    EXPECT_NE(message.find(word), std::string::npos) << "'" << word << "' not in: " << message;
  }
}

// EXPECT_STATUS(expr, code, "word", ...): expr is an absl::Status or absl::StatusOr<T>.
#define EXPECT_STATUS(expr, code, ...)                                                \
  do {                                                                                \
    SCOPED_TRACE(#expr);                                                              \
    ::mp::testing::ExpectStatus(::mp::testing::GetStatus(expr), code, {__VA_ARGS__}); \
  } while (false)

// Removes the scratch directories of this process when it exits.
class ScratchDirRegistry {
 public:
  ~ScratchDirRegistry() {
    std::error_code ec;
    for (const std::string& dir : dirs_) std::filesystem::remove_all(dir, ec);
  }
  void Add(std::string dir) { dirs_.push_back(std::move(dir)); }

 private:
  std::vector<std::string> dirs_;
};

// A fresh, empty directory under the test temp dir, unique to this process and `name`; removed
// when the process exits.
inline std::string ScratchDir(const std::string& name) {
  static ScratchDirRegistry registry;
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                                    ("mp_model_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  registry.Add(dir.string());
  return dir.string();
}

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::string TensorBytes(const Tensor& t) {
  return std::string(static_cast<const char*>(t.data()), t.nbytes());
}

// A host tensor of `shape` filled with random bytes (any bit pattern, NaNs included).
inline Tensor RandomBytesTensor(std::vector<int64_t> shape, DType dtype, std::mt19937_64& rng) {
  Tensor t = Tensor::Host(std::move(shape), dtype);
  auto* p = static_cast<unsigned char*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(rng());
  return t;
}

// Expects a and b to agree on the architecture, the shapes, the norm epsilon, RoPE theta, the
// bias and tying flags and the special tokens.
inline void ExpectSameShapeAndTokens(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
}

// A small Qwen2-shaped config (bias, untied head, DCA block).
inline ModelConfig TinyQwen2Config() {
  ModelConfig c;
  c.architecture = Architecture::kQwen2;
  c.model_type = "qwen2";
  c.vocab_size = 96;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.attention_bias = true;
  c.tie_word_embeddings = false;
  c.eos_token_ids = {2};
  c.bos_token_id = 1;
  DualChunkConfig dca;
  dca.chunk_size = 96;
  dca.local_size = 32;
  dca.original_max_position_embeddings = 96;
  c.dual_chunk = dca;
  return c;
}

// A small Llama-shaped config (tied head, explicit head_dim that does not divide hidden).
inline ModelConfig TinyLlamaConfig(bool attention_bias = false) {
  ModelConfig c;
  c.architecture = Architecture::kLlama;
  c.model_type = "llama";
  c.vocab_size = 80;
  c.hidden_size = 48;
  c.intermediate_size = 72;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 3;
  c.head_dim = 10;
  c.max_position_embeddings = 2048;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.attention_bias = attention_bias;
  c.tie_word_embeddings = true;
  c.eos_token_ids = {2, 3};
  return c;
}

}  // namespace mp::testing
