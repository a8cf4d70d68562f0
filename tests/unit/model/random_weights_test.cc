#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "tests/unit/model/test_util.h"

namespace mp {
namespace {

using testing::TensorBytes;

std::vector<const Tensor*> AllTensors(const ModelWeights& w) {
  std::vector<const Tensor*> out;
  for (const Tensor* t : {&w.embed_tokens, &w.final_norm, &w.lm_head}) {
    if (t->defined()) out.push_back(t);
  }
  for (const LayerWeights& l : w.layer) {
    for (const Tensor* t :
         {&l.input_norm, &l.q_proj, &l.k_proj, &l.v_proj, &l.q_bias, &l.k_bias, &l.v_bias,
          &l.o_proj, &l.o_bias, &l.post_attention_norm, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      if (t->defined()) out.push_back(t);
    }
  }
  return out;
}

std::vector<double> AsDoubles(const Tensor& t) {
  EXPECT_EQ(t.dtype(), DType::kF32);
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = t.data_as<float>()[i];
  return v;
}

struct Moments {
  double mean = 0, std = 0, max_abs = 0;
  double within_1 = 0, within_2 = 0;  // fraction within 1 and 2 standard deviations
};

Moments MomentsOf(const std::vector<double>& v, double center, double sigma) {
  Moments m;
  for (double x : v) m.mean += x;
  m.mean /= static_cast<double>(v.size());
  for (double x : v) {
    m.std += (x - m.mean) * (x - m.mean);
    m.max_abs = std::max(m.max_abs, std::fabs(x - center));
    m.within_1 += std::fabs(x - center) < sigma;
    m.within_2 += std::fabs(x - center) < 2 * sigma;
  }
  m.std = std::sqrt(m.std / static_cast<double>(v.size()));
  m.within_1 /= static_cast<double>(v.size());
  m.within_2 /= static_cast<double>(v.size());
  return m;
}

double Correlation(const std::vector<double>& a, const std::vector<double>& b, size_t n) {
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) ma += a[i], mb += b[i];
  ma /= static_cast<double>(n);
  mb /= static_cast<double>(n);
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return sab / std::sqrt(saa * sbb);
}

TEST(RandomWeightsTest, SameSeedSameBytesOtherSeedOtherBytes) {
  const ModelConfig config = testing::TinyQwen2Config();
  const WeightLoadOptions all{{0, 4}, true, true};
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights a, RandomModelWeights(config, all, 123, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights b, RandomModelWeights(config, all, 123, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights c, RandomModelWeights(config, all, 124, DType::kBF16));
  const auto ta = AllTensors(a), tb = AllTensors(b), tc = AllTensors(c);
  ASSERT_EQ(ta.size(), tb.size());
  ASSERT_EQ(ta.size(), tc.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    EXPECT_EQ(ta[i]->dtype(), DType::kBF16);
    EXPECT_EQ(TensorBytes(*ta[i]), TensorBytes(*tb[i]));
    EXPECT_NE(TensorBytes(*ta[i]), TensorBytes(*tc[i]));
  }
}

TEST(RandomWeightsTest, AStageEqualsTheSameLayersOfTheWholeModel) {
  const ModelConfig config = testing::TinyQwen2Config();
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights whole,
                          RandomModelWeights(config, {{0, 4}, true, true}, 77, DType::kF32));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights stage,
                          RandomModelWeights(config, {{1, 3}, false, true}, 77, DType::kF32));
  EXPECT_FALSE(stage.has_embedding);
  EXPECT_FALSE(stage.embed_tokens.defined());
  ASSERT_EQ(stage.layer.size(), 2u);
  for (size_t k = 0; k < 2; ++k) {
    const LayerWeights& s = stage.layer[k];
    const LayerWeights& w = whole.layer[k + 1];
    EXPECT_EQ(TensorBytes(s.q_proj), TensorBytes(w.q_proj));
    EXPECT_EQ(TensorBytes(s.v_bias), TensorBytes(w.v_bias));
    EXPECT_EQ(TensorBytes(s.down_proj), TensorBytes(w.down_proj));
    EXPECT_EQ(TensorBytes(s.post_attention_norm), TensorBytes(w.post_attention_norm));
  }
  EXPECT_EQ(TensorBytes(stage.lm_head), TensorBytes(whole.lm_head));
  EXPECT_EQ(TensorBytes(stage.final_norm), TensorBytes(whole.final_norm));
}

TEST(RandomWeightsTest, ValuesLookNormalWithTheDocumentedScales) {
  ModelConfig config = testing::TinyQwen2Config();
  config.hidden_size = 512;
  config.num_attention_heads = 8;
  config.num_key_value_heads = 8;
  config.head_dim = 64;
  config.intermediate_size = 1024;
  config.num_hidden_layers = 2;
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights w,
                          RandomModelWeights(config, {{0, 2}, false, false}, 5, DType::kF32));
  // Matrices: N(0, 0.02^2), bounded (a sum of four uniforms) at 3.47 sigma.
  const std::vector<double> gate = AsDoubles(w.layer[0].gate_proj);  // 524288 values
  const Moments g = MomentsOf(gate, 0.0, 0.02);
  EXPECT_NEAR(g.mean, 0.0, 2e-4);
  EXPECT_NEAR(g.std, 0.02, 2e-4);
  EXPECT_LE(g.max_abs, 3.47 * 0.02);
  EXPECT_GT(g.max_abs, 3.0 * 0.02);
  EXPECT_NEAR(g.within_1, 0.6827, 0.02);
  EXPECT_NEAR(g.within_2, 0.9545, 0.01);
  // Neighbouring elements, and different tensors, are uncorrelated.
  std::vector<double> shifted(gate.begin() + 1, gate.end());
  EXPECT_LT(std::fabs(Correlation(gate, shifted, shifted.size())), 0.01);
  const std::vector<double> up = AsDoubles(w.layer[0].up_proj);
  const std::vector<double> gate1 = AsDoubles(w.layer[1].gate_proj);
  EXPECT_LT(std::fabs(Correlation(gate, up, gate.size())), 0.01);
  EXPECT_LT(std::fabs(Correlation(gate, gate1, gate.size())), 0.01);
  // Biases: small, centred. Norm weights: around 1.
  std::vector<double> biases, norms;
  for (const LayerWeights& l : w.layer) {
    for (const Tensor* t : {&l.q_bias, &l.k_bias, &l.v_bias}) {
      for (double x : AsDoubles(*t)) biases.push_back(x);
    }
    for (const Tensor* t : {&l.input_norm, &l.post_attention_norm}) {
      for (double x : AsDoubles(*t)) norms.push_back(x);
    }
  }
  const Moments b = MomentsOf(biases, 0.0, 0.01);
  EXPECT_NEAR(b.mean, 0.0, 1.5e-3);
  EXPECT_NEAR(b.std, 0.01, 1e-3);
  const Moments n = MomentsOf(norms, 1.0, 0.05);
  EXPECT_NEAR(n.mean, 1.0, 8e-3);
  EXPECT_NEAR(n.std, 0.05, 5e-3);
  EXPECT_LE(n.max_abs, 3.47 * 0.05);
}

// Reference rounding of a float to the nearest value with `mantissa_bits` explicit bits and a
// smallest normal exponent `min_exp` (subnormals below), ties to even. Works in double.
double RoundToFormat(double x, int mantissa_bits, int min_exp) {
  if (x == 0) return x;
  int exp = std::ilogb(x);
  if (exp < min_exp) exp = min_exp;
  const double ulp = std::ldexp(1.0, exp - mantissa_bits);
  return std::nearbyint(x / ulp) * ulp;  // default rounding mode: to nearest, ties to even
}

double DecodeBF16(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

double DecodeF16(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  const double v = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
  return sign ? -v : v;
}

TEST(RandomWeightsTest, HalfPrecisionValuesAreTheF32ValuesRoundedToNearestEven) {
  const ModelConfig config = testing::TinyLlamaConfig(true);
  const WeightLoadOptions all{{0, 3}, true, true};
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights f32, RandomModelWeights(config, all, 31, DType::kF32));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights bf16, RandomModelWeights(config, all, 31, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights f16, RandomModelWeights(config, all, 31, DType::kF16));
  const auto tf = AllTensors(f32), tb = AllTensors(bf16), th = AllTensors(f16);
  ASSERT_EQ(tf.size(), tb.size());
  ASSERT_EQ(tf.size(), th.size());
  int64_t checked = 0, f16_subnormal = 0;
  for (size_t i = 0; i < tf.size(); ++i) {
    ASSERT_EQ(tb[i]->dtype(), DType::kBF16);
    ASSERT_EQ(th[i]->dtype(), DType::kF16);
    ASSERT_EQ(tf[i]->shape(), th[i]->shape());
    for (int64_t k = 0; k < tf[i]->numel(); ++k) {
      const double x = tf[i]->data_as<float>()[k];
      ASSERT_EQ(DecodeBF16(tb[i]->data_as<uint16_t>()[k]), RoundToFormat(x, 7, -126)) << x;
      ASSERT_EQ(DecodeF16(th[i]->data_as<uint16_t>()[k]), RoundToFormat(x, 10, -14)) << x;
      f16_subnormal += std::fabs(x) < std::ldexp(1.0, -14);
      ++checked;
    }
  }
  // Every parameter was checked; the tied head is visited a second time.
  EXPECT_EQ(checked, config.NumParameters() + config.vocab_size * config.hidden_size);
  EXPECT_GT(f16_subnormal, 0);  // the subnormal path was exercised
}

TEST(RandomWeightsTest, TiedHeadAndStageFlags) {
  const ModelConfig config = testing::TinyLlamaConfig();
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights last, RandomModelWeights(config, {{2, 3}, false, true}, 4));
  EXPECT_FALSE(last.has_embedding);
  EXPECT_TRUE(last.has_head);
  EXPECT_EQ(last.layers.begin, 2);
  EXPECT_EQ(last.layers.end, 3);
  ASSERT_TRUE(last.lm_head.defined());
  EXPECT_EQ(last.lm_head.data(), last.embed_tokens.data());
  EXPECT_EQ(last.lm_head.shape(), (std::vector<int64_t>{80, 48}));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights first, RandomModelWeights(config, {{0, 1}, true, false}, 4));
  EXPECT_EQ(TensorBytes(first.embed_tokens), TensorBytes(last.lm_head));
  EXPECT_FALSE(first.lm_head.defined());
  EXPECT_FALSE(first.final_norm.defined());
  EXPECT_FALSE(first.layer[0].q_bias.defined());  // Llama without attention_bias
}

TEST(RandomWeightsTest, RejectsNonFloatDTypesAndBadShardCounts) {
  const ModelConfig config = testing::TinyQwen2Config();
  for (DType dtype : {DType::kI32, DType::kI64, DType::kU8}) {
    EXPECT_STATUS(RandomModelWeights(config, {{0, 4}, true, true}, 1, dtype),
                  absl::StatusCode::kInvalidArgument, DTypeName(dtype));
  }
  const std::string dir = testing::ScratchDir("bad_shards");
  EXPECT_STATUS(WriteRandomModelDir(dir, config, 1, {DType::kBF16, 0}),
                absl::StatusCode::kInvalidArgument, "num_shards");
  EXPECT_STATUS(WriteRandomModelDir(dir, config, 1, {DType::kBF16, 5}),
                absl::StatusCode::kInvalidArgument, "num_shards", "4");
}

}  // namespace
}  // namespace mp
