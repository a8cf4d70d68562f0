#include "model/gguf_convert.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/gguf_dequant.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/unit/gguf/gguf_test_util.h"
#include "tests/unit/gguf/gguf_test_writer.h"

namespace mp {
namespace {

using ::mp::testing::GgufBuilder;
namespace fs = std::filesystem;

// ggml type numbers.
constexpr uint32_t kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ8_0 = 8, kBF16 = 30;

constexpr int64_t kHidden = 32, kHeads = 4, kKvHeads = 2, kHeadDim = 8, kInter = 64, kLayers = 2;

// ---- a tiny llama GGUF ----------------------------------------------------------------------

// GPT-2's byte -> character table, written out independently of the converter.
std::string ByteChar(int b) {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int next = 256;
    for (int i = 0; i < 256; ++i) {
      const bool printable = (i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174);
      const int cp = printable ? i : next++;
      std::string s;
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      t[i] = s;
    }
    return t;
  }();
  return table[b];
}

struct TinySpec {
  std::string arch = "llama";
  std::string tokenizer_model = "gpt2";
  std::string pre = "smollm";
  bool with_output = false;
  bool add_bos = false;
  std::map<std::string, uint32_t> type_override;  // GGUF name -> ggml type
  std::map<std::string, std::vector<uint64_t>> dims_override;
  std::vector<std::string> skip_tensors;
  std::vector<std::string> extra_tensors;  // F32 [kHidden]
  std::vector<std::string> skip_keys;
  std::function<void(GgufBuilder&)> extra_keys;
  std::vector<std::string> extra_merges;
  std::vector<int32_t> token_types;  // replaces the token types when set
};

std::vector<std::string> TinyTokens() {
  std::vector<std::string> t = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  for (int b = 0; b < 256; ++b) t.push_back(ByteChar(b));
  for (const char* s :
       {"\xC4\xA0t", "he", "\xC4\xA0the", "<tool>", "h\xC3\xA9llo w\xC3\xB6rld", "<ctl x>"}) {
    t.push_back(s);
  }
  return t;
}
constexpr int64_t kVocab = 3 + 256 + 6;

std::vector<int32_t> TinyTokenTypes() {
  std::vector<int32_t> t(kVocab, 1);
  t[0] = t[1] = t[2] = 3;
  t[kVocab - 3] = 4;  // <tool>: user defined
  t[kVocab - 1] = 3;  // "<ctl x>": control, but not written in the byte alphabet
  return t;
}

std::vector<std::string> TinyMerges() { return {"\xC4\xA0 t", "h e", "\xC4\xA0t he"}; }

// Random bytes of `type` for `numel` values, with finite f16 / bf16 values and scales.
std::vector<uint8_t> RandomData(std::mt19937_64& rng, uint32_t type, int64_t numel) {
  auto finite_half = [&] {
    uint16_t h;
    do h = static_cast<uint16_t>(rng());
    while (((h >> 10) & 31) == 31 || ((h >> 10) & 31) < 5);
    return h;
  };
  std::vector<uint8_t> out;
  auto put16 = [&](uint16_t v) {
    out.push_back(static_cast<uint8_t>(v));
    out.push_back(static_cast<uint8_t>(v >> 8));
  };
  std::normal_distribution<float> normal;
  switch (type) {
    case kF32:
      for (int64_t i = 0; i < numel; ++i) {
        const float v = normal(rng);
        uint8_t b[4];
        std::memcpy(b, &v, 4);
        out.insert(out.end(), b, b + 4);
      }
      break;
    case kF16:
      for (int64_t i = 0; i < numel; ++i) put16(finite_half());
      break;
    case kBF16:
      for (int64_t i = 0; i < numel; ++i) {
        put16(static_cast<uint16_t>(std::bit_cast<uint32_t>(normal(rng)) >> 16));
      }
      break;
    default: {
      const int64_t block_bytes = type == kQ8_0 ? 34 : type == kQ4_1 ? 20 : type == kQ5_0 ? 22 : 18;
      const int scales = type == kQ4_1 ? 2 : 1;
      for (int64_t b = 0; b < numel / 32; ++b) {
        for (int s = 0; s < scales; ++s) put16(finite_half());
        for (int64_t k = 2 * scales; k < block_bytes; ++k)
          out.push_back(static_cast<uint8_t>(rng()));
      }
    }
  }
  return out;
}

struct TensorDef {
  std::string name;
  std::vector<uint64_t> dims;  // GGUF order
  uint32_t type;
};

std::vector<TensorDef> TinyTensors(const TinySpec& spec) {
  std::vector<TensorDef> t = {{"token_embd.weight", {kHidden, kVocab}, kQ8_0},
                              {"output_norm.weight", {kHidden}, kF32}};
  if (spec.with_output) t.push_back({"output.weight", {kHidden, kVocab}, kQ4_0});
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    t.push_back({p + "attn_norm.weight", {kHidden}, kF32});
    t.push_back({p + "ffn_norm.weight", {kHidden}, kF32});
    t.push_back({p + "attn_q.weight", {kHidden, kHeads * kHeadDim}, kF16});
    t.push_back({p + "attn_k.weight", {kHidden, kKvHeads * kHeadDim}, kQ4_1});
    t.push_back({p + "attn_v.weight", {kHidden, kKvHeads * kHeadDim}, kQ4_0});
    t.push_back({p + "attn_output.weight", {kHeads * kHeadDim, kHidden}, kBF16});
    t.push_back({p + "ffn_gate.weight", {kHidden, kInter}, kF32});
    t.push_back({p + "ffn_up.weight", {kHidden, kInter}, kQ4_1});
    t.push_back({p + "ffn_down.weight", {kInter, kHidden}, kQ8_0});
  }
  for (const std::string& name : spec.extra_tensors) t.push_back({name, {kHidden}, kF32});
  std::vector<TensorDef> out;
  for (TensorDef& d : t) {
    if (std::find(spec.skip_tensors.begin(), spec.skip_tensors.end(), d.name) !=
        spec.skip_tensors.end()) {
      continue;
    }
    if (auto it = spec.type_override.find(d.name); it != spec.type_override.end()) {
      d.type = it->second;
    }
    if (auto it = spec.dims_override.find(d.name); it != spec.dims_override.end()) {
      d.dims = it->second;
    }
    out.push_back(d);
  }
  return out;
}

std::vector<uint8_t> TinyLlama(const TinySpec& spec) {
  GgufBuilder b;
  auto skip = [&](const std::string& key) {
    return std::find(spec.skip_keys.begin(), spec.skip_keys.end(), key) != spec.skip_keys.end();
  };
  const std::string a = spec.arch;
  if (!skip("general.architecture")) b.AddString("general.architecture", a);
  if (!skip(a + ".block_count")) b.AddU32(a + ".block_count", kLayers);
  b.AddU32(a + ".context_length", 8192);
  b.AddU32(a + ".embedding_length", kHidden);
  b.AddU32(a + ".feed_forward_length", kInter);
  b.AddU32(a + ".attention.head_count", kHeads);
  b.AddU32(a + ".attention.head_count_kv", kKvHeads);
  b.AddF32(a + ".rope.freq_base", 100000.0f);
  b.AddF32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  if (!skip(a + ".rope.dimension_count")) b.AddU32(a + ".rope.dimension_count", kHeadDim);
  b.AddU32(a + ".vocab_size", kVocab);
  b.AddString("tokenizer.ggml.model", spec.tokenizer_model);
  b.AddString("tokenizer.ggml.pre", spec.pre);
  b.AddStringArray("tokenizer.ggml.tokens", TinyTokens());
  b.AddI32Array("tokenizer.ggml.token_type",
                spec.token_types.empty() ? TinyTokenTypes() : spec.token_types);
  std::vector<std::string> merges = TinyMerges();
  merges.insert(merges.end(), spec.extra_merges.begin(), spec.extra_merges.end());
  b.AddStringArray("tokenizer.ggml.merges", merges);
  b.AddU32("tokenizer.ggml.bos_token_id", 1);
  b.AddU32("tokenizer.ggml.eos_token_id", 2);
  b.AddU32("tokenizer.ggml.unknown_token_id", 0);
  b.AddU32("tokenizer.ggml.padding_token_id", 2);
  b.AddBool("tokenizer.ggml.add_bos_token", spec.add_bos);
  b.AddString("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}");
  if (spec.extra_keys) spec.extra_keys(b);
  std::mt19937_64 rng(99);
  for (const TensorDef& t : TinyTensors(spec)) {
    int64_t numel = 1;
    for (uint64_t d : t.dims) numel *= static_cast<int64_t>(d);
    b.AddTensor(t.name, t.type, t.dims, RandomData(rng, t.type, numel));
  }
  return b.Build();
}

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("gguf_convert_test_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string WriteFile(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  return path.string();
}

nlohmann::json ReadJson(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return nlohmann::json::parse(s.str());
}

// llama.cpp's converter permutes HF rows as w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2):
// GGUF row (h, i, s) is HF row (h, s, i). Written here as that reshape, to check the inverse.
std::vector<float> LlamaCppPermute(const std::vector<float>& hf, int64_t n_head, int64_t rows,
                                   int64_t cols) {
  const int64_t half = rows / n_head / 2;
  std::vector<float> out(hf.size());
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t s = 0; s < 2; ++s) {
      for (int64_t i = 0; i < half; ++i) {
        const int64_t hf_row = (h * 2 + s) * half + i;    // index in [n_head, 2, half]
        const int64_t gguf_row = (h * half + i) * 2 + s;  // index in [n_head, half, 2]
        std::copy_n(hf.begin() + hf_row * cols, cols, out.begin() + gguf_row * cols);
      }
    }
  }
  return out;
}

// ---- tests ----------------------------------------------------------------------------------

TEST(GgufConvertTest, HfTensorNames) {
  const std::map<std::string, std::string> expected = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
      {"blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"},
      {"blk.12.ffn_norm.weight", "model.layers.12.post_attention_layernorm.weight"},
      {"blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight"},
      {"blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight"},
      {"blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"},
      {"blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"},
      {"blk.29.ffn_gate.weight", "model.layers.29.mlp.gate_proj.weight"},
      {"blk.29.ffn_up.weight", "model.layers.29.mlp.up_proj.weight"},
      {"blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight"},
  };
  for (const auto& [gguf, hf] : expected) {
    MP_ASSERT_OK_AND_ASSIGN(std::string got, HfTensorName(gguf));
    EXPECT_EQ(got, hf);
  }
  for (const char* bad : {"blk.01.attn_q.weight", "blk.x.attn_q.weight", "blk.0.attn_q.bias",
                          "blk..attn_q.weight", "rope_freqs.weight", "blk.0", "output"}) {
    GGUF_EXPECT_ERROR(HfTensorName(bad), absl::StatusCode::kInvalidArgument,
                      "has no Hugging Face Llama equivalent");
  }
}

TEST(GgufConvertTest, UnpermuteKnownAnswer) {
  // One head of dimension 4, one column: GGUF rows hold the pairs (x0, x2), (x1, x3) adjacent.
  const std::vector<float> gguf = {10, 12, 11, 13};
  std::vector<float> hf(4);
  UnpermuteQkRows(gguf.data(), hf.data(), 4, 1, 1);
  EXPECT_EQ(hf, (std::vector<float>{10, 11, 12, 13}));
}

TEST(GgufConvertTest, UnpermuteInvertsLlamaCppPermutation) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (int64_t n_head : {1, 3, 9}) {
    for (int64_t head_dim : {2, 8, 64}) {
      const int64_t rows = n_head * head_dim, cols = 7;
      std::vector<float> hf(rows * cols);
      for (float& v : hf) v = normal(rng);
      const std::vector<float> gguf = LlamaCppPermute(hf, n_head, rows, cols);
      std::vector<float> back(hf.size());
      UnpermuteQkRows(gguf.data(), back.data(), rows, cols, n_head);
      EXPECT_EQ(back, hf) << n_head << " heads of " << head_dim;
    }
  }
}

// The reason for the permutation: llama.cpp's RoPE (ggml mode 0) rotates adjacent pairs
// (x[2i], x[2i+1]); Hugging Face's rotates (x[i], x[i + d/2]), both by angle pos * theta^(-2i/d).
// With the rows unpermuted, HF attention scores q_m . k_n equal llama.cpp's for every head pair.
TEST(GgufConvertTest, UnpermutedRowsGiveTheSameRopeScores) {
  std::mt19937 rng(11);
  std::normal_distribution<double> normal;
  const int64_t d = 16, heads = 3, kv_heads = 1, cols = 24;
  const double theta = 10000.0;
  auto random_matrix = [&](int64_t rows) {
    std::vector<float> m(rows * cols);
    for (float& v : m) v = static_cast<float>(normal(rng));
    return m;
  };
  const std::vector<float> wq_gguf = random_matrix(heads * d),
                           wk_gguf = random_matrix(kv_heads * d);
  std::vector<float> wq_hf(wq_gguf.size()), wk_hf(wk_gguf.size());
  UnpermuteQkRows(wq_gguf.data(), wq_hf.data(), heads * d, cols, heads);
  UnpermuteQkRows(wk_gguf.data(), wk_hf.data(), kv_heads * d, cols, kv_heads);
  std::vector<double> xm(cols), xn(cols);
  for (double& v : xm) v = normal(rng);
  for (double& v : xn) v = normal(rng);
  const int m = 37, n = 5;

  auto project = [&](const std::vector<float>& w, int64_t head, const std::vector<double>& x) {
    std::vector<double> out(d, 0.0);
    for (int64_t r = 0; r < d; ++r) {
      for (int64_t c = 0; c < cols; ++c) out[r] += w[(head * d + r) * cols + c] * x[c];
    }
    return out;
  };
  auto rope_adjacent = [&](std::vector<double> v, int pos) {
    for (int64_t i = 0; i < d / 2; ++i) {
      const double a = pos * std::pow(theta, -2.0 * i / d);
      const double x0 = v[2 * i], x1 = v[2 * i + 1];
      v[2 * i] = x0 * std::cos(a) - x1 * std::sin(a);
      v[2 * i + 1] = x0 * std::sin(a) + x1 * std::cos(a);
    }
    return v;
  };
  auto rope_halves = [&](std::vector<double> v, int pos) {
    for (int64_t i = 0; i < d / 2; ++i) {
      const double a = pos * std::pow(theta, -2.0 * i / d);
      const double x0 = v[i], x1 = v[i + d / 2];
      v[i] = x0 * std::cos(a) - x1 * std::sin(a);
      v[i + d / 2] = x0 * std::sin(a) + x1 * std::cos(a);
    }
    return v;
  };
  auto dot = [](const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
  };
  double max_wrong = 0;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t kh = h / (heads / kv_heads);
    const double llama_cpp =
        dot(rope_adjacent(project(wq_gguf, h, xm), m), rope_adjacent(project(wk_gguf, kh, xn), n));
    const double hf =
        dot(rope_halves(project(wq_hf, h, xm), m), rope_halves(project(wk_hf, kh, xn), n));
    EXPECT_NEAR(hf, llama_cpp, 1e-9 * (1 + std::abs(llama_cpp))) << "head " << h;
    // Without the unpermutation the scores differ: the test can tell.
    const double unpermuted =
        dot(rope_halves(project(wq_gguf, h, xm), m), rope_halves(project(wk_gguf, kh, xn), n));
    max_wrong = std::max(max_wrong, std::abs(unpermuted - llama_cpp));
  }
  EXPECT_GT(max_wrong, 1e-3);
}

TEST(GgufConvertTest, ConvertsTinyLlama) {
  TempDir tmp;
  TinySpec spec;
  const std::vector<uint8_t> bytes = TinyLlama(spec);
  const std::string gguf_path = WriteFile(tmp.path() / "tiny.gguf", bytes);
  const fs::path out = tmp.path() / "out" / "model";
  MP_ASSERT_OK(ConvertGgufToHf(gguf_path, out.string()));

  for (const char* name : {"config.json", "model.safetensors", "tokenizer.json",
                           "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_TRUE(fs::exists(out / name)) << name;
  }
  for (const auto& entry : fs::directory_iterator(out)) {
    EXPECT_NE(entry.path().extension(), ".tmp") << entry.path();
  }

  // config.json
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig((out / "config.json").string()));
  EXPECT_EQ(c.architecture, Architecture::kLlama);
  EXPECT_EQ(c.hidden_size, kHidden);
  EXPECT_EQ(c.intermediate_size, kInter);
  EXPECT_EQ(c.num_hidden_layers, kLayers);
  EXPECT_EQ(c.num_attention_heads, kHeads);
  EXPECT_EQ(c.num_key_value_heads, kKvHeads);
  EXPECT_EQ(c.head_dim, kHeadDim);
  EXPECT_EQ(c.vocab_size, kVocab);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);  // the f32 1e-5 written as the decimal it came from
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
  const nlohmann::json config = ReadJson(out / "config.json");
  EXPECT_EQ(config["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(config["torch_dtype"], "float32");

  // model.safetensors: every tensor, F32, HF name and shape, values = dequantized GGUF values
  // with Q and K rows put back in HF order.
  MP_ASSERT_OK_AND_ASSIGN(auto gguf, GgufFile::Open(gguf_path));
  MP_ASSERT_OK_AND_ASSIGN(auto st, SafetensorsFile::Open((out / "model.safetensors").string()));
  EXPECT_EQ(st->TensorNames().size(), gguf->tensors().size());
  EXPECT_FALSE(st->Has("lm_head.weight"));
  for (const GgufTensorInfo& info : gguf->tensors()) {
    MP_ASSERT_OK_AND_ASSIGN(std::string hf_name, HfTensorName(info.name));
    SCOPED_TRACE(hf_name);
    MP_ASSERT_OK_AND_ASSIGN(Tensor got, st->Get(hf_name));
    EXPECT_EQ(got.dtype(), DType::kF32);
    ASSERT_EQ(got.shape(), info.shape());
    MP_ASSERT_OK_AND_ASSIGN(Tensor deq, DequantizeTensor(*gguf, info));
    std::vector<float> want(deq.data_as<float>(), deq.data_as<float>() + deq.numel());
    const std::vector<float> have(got.data_as<float>(), got.data_as<float>() + got.numel());
    const bool is_q = info.name.find("attn_q") != std::string::npos;
    const bool is_k = info.name.find("attn_k") != std::string::npos;
    if (is_q || is_k) {
      // have (HF) permuted the llama.cpp way must give back the GGUF rows.
      const std::vector<float> repermuted =
          LlamaCppPermute(have, is_q ? kHeads : kKvHeads, got.dim(0), got.dim(1));
      EXPECT_EQ(repermuted, want);
      EXPECT_NE(have, want);
    } else {
      EXPECT_EQ(have, want);
    }
  }

  // tokenizer.json
  const nlohmann::json tok = ReadJson(out / "tokenizer.json");
  EXPECT_EQ(tok["normalizer"], nullptr);
  EXPECT_EQ(tok["post_processor"], nullptr);
  EXPECT_EQ(tok["pre_tokenizer"], nlohmann::json::parse(R"({
      "type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
         "use_regex": true}]})"));
  EXPECT_EQ(tok["decoder"]["type"], "ByteLevel");
  const nlohmann::json& model = tok["model"];
  EXPECT_EQ(model["type"], "BPE");
  EXPECT_EQ(model["byte_fallback"], false);
  const std::vector<std::string> tokens = TinyTokens();
  ASSERT_EQ(model["vocab"].size(), tokens.size());
  for (int64_t id = 0; id < kVocab - 2; ++id) EXPECT_EQ(model["vocab"][tokens[id]], id);
  // Tokens outside the byte alphabet are respelled byte by byte.
  EXPECT_EQ(model["vocab"]["h\xC3\x83\xC2\xA9llo\xC4\xA0w\xC3\x83\xC2\xB6rld"], kVocab - 2);
  EXPECT_EQ(model["vocab"]["<ctl\xC4\xA0x>"], kVocab - 1);
  EXPECT_EQ(model["merges"], nlohmann::json(TinyMerges()));
  const nlohmann::json expected_added = nlohmann::json::parse(R"([
    {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 1, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 2, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 262, "content": "<tool>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": false}])");
  EXPECT_EQ(tok["added_tokens"], expected_added);

  // tokenizer_config.json and generation_config.json
  const nlohmann::json tc = ReadJson(out / "tokenizer_config.json");
  EXPECT_EQ(tc["chat_template"], "{% for m in messages %}{{ m['content'] }}{% endfor %}");
  EXPECT_EQ(tc["bos_token"], "<|im_start|>");
  EXPECT_EQ(tc["eos_token"], "<|im_end|>");
  EXPECT_EQ(tc["pad_token"], "<|im_end|>");
  EXPECT_EQ(tc["unk_token"], "<|endoftext|>");
  EXPECT_EQ(tc["add_bos_token"], false);
  EXPECT_EQ(tc["model_max_length"], 8192);
  EXPECT_EQ(tc["added_tokens_decoder"]["262"]["content"], "<tool>");
  const nlohmann::json gc = ReadJson(out / "generation_config.json");
  EXPECT_EQ(gc, nlohmann::json::parse(R"({"bos_token_id": 1, "eos_token_id": 2,
                                          "pad_token_id": 2})"));

  // Converting again over the same directory works and gives the same files.
  const std::string first = ReadJson(out / "tokenizer.json").dump();
  MP_ASSERT_OK(ConvertGgufToHf(gguf_path, out.string()));
  EXPECT_EQ(ReadJson(out / "tokenizer.json").dump(), first);
}

TEST(GgufConvertTest, OutputWeightUnties) {
  TempDir tmp;
  TinySpec spec;
  spec.with_output = true;
  spec.pre = "gpt2";
  spec.add_bos = true;
  const std::string path = WriteFile(tmp.path() / "t.gguf", TinyLlama(spec));
  MP_ASSERT_OK(ConvertGgufToHf(path, (tmp.path() / "out").string()));
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig((tmp.path() / "out").string()));
  EXPECT_FALSE(c.tie_word_embeddings);
  MP_ASSERT_OK_AND_ASSIGN(
      auto st, SafetensorsFile::Open((tmp.path() / "out" / "model.safetensors").string()));
  MP_ASSERT_OK_AND_ASSIGN(Tensor head, st->Get("lm_head.weight"));
  EXPECT_EQ(head.shape(), (std::vector<int64_t>{kVocab, kHidden}));
  const nlohmann::json tok = ReadJson(tmp.path() / "out" / "tokenizer.json");
  EXPECT_EQ(tok["pre_tokenizer"],
            nlohmann::json::parse(
                R"({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
          "use_regex": true})"));
  EXPECT_EQ(tok["post_processor"]["type"], "TemplateProcessing");
  EXPECT_EQ(tok["post_processor"]["single"][0]["SpecialToken"]["id"], "<|im_start|>");
  EXPECT_EQ(tok["post_processor"]["special_tokens"]["<|im_start|>"]["ids"],
            nlohmann::json::array({1}));
}

struct BadCase {
  std::string label;
  std::function<void(TinySpec&)> change;
  absl::StatusCode code;
  std::string message;
};

TEST(GgufConvertTest, RejectsWhatItCannotConvert) {
  const std::vector<BadCase> cases = {
      {"arch", [](TinySpec& s) { s.arch = "qwen2"; }, absl::StatusCode::kInvalidArgument,
       "general.architecture is 'qwen2'"},
      {"no arch", [](TinySpec& s) { s.skip_keys = {"general.architecture"}; },
       absl::StatusCode::kNotFound, "'general.architecture' is missing"},
      {"no layers", [](TinySpec& s) { s.skip_keys = {"llama.block_count"}; },
       absl::StatusCode::kNotFound, "'llama.block_count' is missing"},
      {"bad shape",
       [](TinySpec& s) {
         s.dims_override["blk.1.attn_q.weight"] = {kHidden, 3 * kHeadDim};
       },
       absl::StatusCode::kInvalidArgument,
       "tensor 'blk.1.attn_q.weight' has shape [24, 32], expected [32, 32]"},
      {"bias", [](TinySpec& s) { s.extra_tensors = {"blk.0.attn_q.bias"}; },
       absl::StatusCode::kInvalidArgument, "'blk.0.attn_q.bias' has no Hugging Face"},
      {"extra layer", [](TinySpec& s) { s.extra_tensors = {"blk.2.attn_norm.weight"}; },
       absl::StatusCode::kInvalidArgument, "does not belong to a model of 2 layers"},
      {"missing", [](TinySpec& s) { s.skip_tensors = {"blk.1.ffn_up.weight"}; },
       absl::StatusCode::kInvalidArgument, "has no tensor for model.layers.1.mlp.up_proj.weight"},
      {"no embedding", [](TinySpec& s) { s.skip_tensors = {"token_embd.weight"}; },
       absl::StatusCode::kInvalidArgument, "no tensor 'token_embd.weight'"},
      {"Q5_0", [](TinySpec& s) { s.type_override["blk.0.ffn_up.weight"] = kQ5_0; },
       absl::StatusCode::kUnimplemented, "'blk.0.ffn_up.weight' has ggml type Q5_0"},
      {"rope freqs", [](TinySpec& s) { s.extra_tensors = {"rope_freqs.weight"}; },
       absl::StatusCode::kUnimplemented, "rope_freqs.weight"},
      {"partial rope",
       [](TinySpec& s) {
         s.skip_keys = {"llama.rope.dimension_count"};
         s.extra_keys = [](GgufBuilder& b) { b.AddU32("llama.rope.dimension_count", 4); };
       },
       absl::StatusCode::kUnimplemented, "partial RoPE"},
      {"rope scaling",
       [](TinySpec& s) {
         s.extra_keys = [](GgufBuilder& b) { b.AddString("llama.rope.scaling.type", "yarn"); };
       },
       absl::StatusCode::kUnimplemented, "llama.rope.scaling.type 'yarn'"},
      {"sentencepiece", [](TinySpec& s) { s.tokenizer_model = "llama"; },
       absl::StatusCode::kUnimplemented, "tokenizer.ggml.model is 'llama'"},
      {"pre", [](TinySpec& s) { s.pre = "qwen2"; }, absl::StatusCode::kUnimplemented,
       "tokenizer.ggml.pre 'qwen2' is not supported"},
      {"merge", [](TinySpec& s) { s.extra_merges = {"q z"}; }, absl::StatusCode::kInvalidArgument,
       "merge 3 (\"q z\") uses \"qz\""},
      {"merge format", [](TinySpec& s) { s.extra_merges = {"abc"}; },
       absl::StatusCode::kInvalidArgument, "merge 3 is not two tokens"},
      {"token types",
       [](TinySpec& s) {
         s.token_types = {1, 1, 1};
       },
       absl::StatusCode::kInvalidArgument, "token_type has 3 entries"},
  };
  for (const BadCase& bad : cases) {
    SCOPED_TRACE(bad.label);
    TempDir tmp;
    TinySpec spec;
    bad.change(spec);
    const std::string path = WriteFile(tmp.path() / "bad.gguf", TinyLlama(spec));
    const fs::path out = tmp.path() / "out";
    const absl::Status status = ConvertGgufToHf(path, out.string());
    GGUF_EXPECT_ERROR(status, bad.code, bad.message);
    EXPECT_NE(std::string(status.message()).find("bad.gguf"), std::string::npos) << status;
    EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  }
}

TEST(GgufConvertTest, RejectsInvalidUtf8AndBadPaths) {
  TempDir tmp;
  {
    GgufBuilder b;
    b.AddString("tokenizer.ggml.model", "gpt2");
    b.AddString("tokenizer.ggml.pre", "smollm");
    b.AddStringArray("tokenizer.ggml.tokens", {"a", "\xFF\xFE"});
    b.AddStringArray("tokenizer.ggml.merges", {});
    MP_ASSERT_OK_AND_ASSIGN(auto f, GgufFile::FromBytes(b.Build(), "utf8.gguf"));
    GGUF_EXPECT_ERROR(TokenizerJsonFromGguf(*f), absl::StatusCode::kInvalidArgument,
                      "utf8.gguf: token 1 is not valid UTF-8");
  }
  {
    GgufBuilder b;
    b.AddString("tokenizer.ggml.model", "gpt2");
    b.AddString("tokenizer.ggml.pre", "gpt2");
    b.AddStringArray("tokenizer.ggml.tokens", {"a", "b", "a"});
    b.AddStringArray("tokenizer.ggml.merges", {});
    MP_ASSERT_OK_AND_ASSIGN(auto f, GgufFile::FromBytes(b.Build(), "dup.gguf"));
    GGUF_EXPECT_ERROR(TokenizerJsonFromGguf(*f), absl::StatusCode::kInvalidArgument,
                      "dup.gguf: token 2 (\"a\") repeats token 0");
  }
  GGUF_EXPECT_ERROR(
      ConvertGgufToHf((tmp.path() / "absent.gguf").string(), (tmp.path() / "o").string()),
      absl::StatusCode::kNotFound, "absent.gguf");
  // An output "directory" that is a file.
  const std::string path = WriteFile(tmp.path() / "t.gguf", TinyLlama(TinySpec()));
  WriteFile(tmp.path() / "taken", {1, 2, 3});
  const absl::Status status = ConvertGgufToHf(path, (tmp.path() / "taken").string());
  EXPECT_FALSE(status.ok());
  EXPECT_NE(std::string(status.message()).find("taken"), std::string::npos) << status;
}

}  // namespace
}  // namespace mp
