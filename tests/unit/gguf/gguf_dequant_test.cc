#include "model/gguf_dequant.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "tests/unit/gguf/gguf_test_util.h"
#include "tests/unit/gguf/gguf_test_writer.h"

namespace mp {
namespace {

// Bitwise equality, except that any NaN equals any NaN (payloads may differ between decoders).
bool SameFloat(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

// binary16 decoded arithmetically: (-1)^s * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024.
float HalfReference(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 31) {
    v = m == 0 ? INFINITY : NAN;
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), -24);
  } else {
    v = std::ldexp(static_cast<double>(1024 + m), e - 25);
  }
  return static_cast<float>(s ? -v : v);
}

// bfloat16 decoded arithmetically: 8 exponent bits (bias 127), 7 mantissa bits.
float BFloat16Reference(uint16_t h) {
  const int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
  double v;
  if (e == 255) {
    v = m == 0 ? INFINITY : NAN;
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), -133);
  } else {
    v = std::ldexp(static_cast<double>(128 + m), e - 134);
  }
  return static_cast<float>(s ? -v : v);
}

TEST(GgufDequantTest, HalfToFloatEveryPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    ASSERT_TRUE(SameFloat(got, HalfReference(static_cast<uint16_t>(h))))
        << "half 0x" << std::hex << h << " -> " << got;
  }
  EXPECT_TRUE(std::signbit(HalfToFloat(0x8000)));
}

TEST(GgufDequantTest, BFloat16ToFloatEveryPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = BFloat16ToFloat(static_cast<uint16_t>(h));
    ASSERT_TRUE(SameFloat(got, BFloat16Reference(static_cast<uint16_t>(h))))
        << "bf16 0x" << std::hex << h << " -> " << got;
  }
}

std::vector<uint8_t> Half(uint16_t bits) {
  return {static_cast<uint8_t>(bits), static_cast<uint8_t>(bits >> 8)};
}

// Known answers for one block of each quantized layout: element j of the first half comes from the
// low nibble of byte j, element j + 16 from its high nibble.
TEST(GgufDequantTest, BlockLayoutsKnownAnswers) {
  {
    std::vector<uint8_t> block = Half(0x3800);  // d = 0.5
    for (int j = 0; j < 32; ++j)
      block.push_back(static_cast<uint8_t>(static_cast<int8_t>(j * 8 - 128)));
    std::vector<float> out(32);
    MP_ASSERT_OK(DequantizeToF32(GgmlType::kQ8_0, block, out));
    for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], (j * 8 - 128) * 0.5f) << j;
  }
  {
    std::vector<uint8_t> block = Half(0xC000);  // d = -2
    for (int j = 0; j < 16; ++j) block.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
    std::vector<float> out(32);
    MP_ASSERT_OK(DequantizeToF32(GgmlType::kQ4_0, block, out));
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(out[j], (j - 8) * -2.0f) << j;
      EXPECT_EQ(out[j + 16], (15 - j - 8) * -2.0f) << j;
    }
  }
  {
    std::vector<uint8_t> block = Half(0x3400);    // d = 0.25
    const std::vector<uint8_t> m = Half(0xBC00);  // m = -1
    block.insert(block.end(), m.begin(), m.end());
    for (int j = 0; j < 16; ++j) block.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
    std::vector<float> out(32);
    MP_ASSERT_OK(DequantizeToF32(GgmlType::kQ4_1, block, out));
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(out[j], j * 0.25f - 1.0f) << j;
      EXPECT_EQ(out[j + 16], (15 - j) * 0.25f - 1.0f) << j;
    }
  }
}

// ggml's formulas evaluated independently in double (exact for these inputs) on random blocks.
TEST(GgufDequantTest, RandomBlocksMatchFormulas) {
  std::mt19937 rng(3);
  auto finite_half = [&] {
    uint16_t h;
    do h = static_cast<uint16_t>(rng());
    while (((h >> 10) & 31) == 31);
    return h;
  };
  const int blocks = 200;
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    const GgmlTypeTraits* traits = GgmlTypeInfo(type);
    std::vector<uint8_t> data(blocks * traits->type_size);
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    for (int b = 0; b < blocks; ++b) {
      uint8_t* p = data.data() + b * traits->type_size;
      const uint16_t d = finite_half(), m = finite_half();
      std::memcpy(p, &d, 2);
      if (type == GgmlType::kQ4_1) std::memcpy(p + 2, &m, 2);
    }
    std::vector<float> out(blocks * 32);
    MP_ASSERT_OK(DequantizeToF32(type, data, out));
    for (int b = 0; b < blocks; ++b) {
      const uint8_t* p = data.data() + b * traits->type_size;
      uint16_t dh, mh;
      std::memcpy(&dh, p, 2);
      std::memcpy(&mh, p + 2, 2);
      const double d = HalfReference(dh), m = HalfReference(mh);
      for (int j = 0; j < 32; ++j) {
        double want;
        if (type == GgmlType::kQ8_0) {
          want = static_cast<int8_t>(p[2 + j]) * d;
        } else {
          const uint8_t byte = p[(type == GgmlType::kQ4_1 ? 4 : 2) + j % 16];
          const int q = j < 16 ? byte & 15 : byte >> 4;
          want = type == GgmlType::kQ4_0 ? (q - 8) * d : q * d + m;
        }
        ASSERT_EQ(out[b * 32 + j], static_cast<float>(want))
            << GgmlTypeName(type) << " block " << b << " element " << j;
      }
    }
  }
}

TEST(GgufDequantTest, Errors) {
  std::vector<float> out(32);
  std::vector<uint8_t> data(34);
  GGUF_EXPECT_ERROR(DequantizeToF32(GgmlType::kQ8_0, std::span(data).first(33), out),
                    absl::StatusCode::kInvalidArgument, "expected 34 bytes of input, got 33");
  std::vector<float> odd(31);
  GGUF_EXPECT_ERROR(DequantizeToF32(GgmlType::kQ8_0, data, odd), absl::StatusCode::kInvalidArgument,
                    "not a multiple of the block size 32");
  GGUF_EXPECT_ERROR(DequantizeToF32(GgmlType::kQ5_0, data, out), absl::StatusCode::kUnimplemented,
                    "Q5_0");
  GGUF_EXPECT_ERROR(DequantizeToF32(static_cast<GgmlType>(77), data, out),
                    absl::StatusCode::kUnimplemented, "type 77");
  EXPECT_TRUE(CanDequantize(GgmlType::kQ4_1));
  EXPECT_FALSE(CanDequantize(GgmlType::kQ4_K));
}

TEST(GgufDequantTest, DequantizeTensorShapesAndNamesErrors) {
  testing::GgufBuilder b;
  std::vector<uint8_t> f16;
  for (int i = 0; i < 6; ++i) {
    const std::vector<uint8_t> h = Half(static_cast<uint16_t>(0x3C00 + i));  // 1 + i/1024
    f16.insert(f16.end(), h.begin(), h.end());
  }
  b.AddTensor("w", 1, {3, 2}, f16);
  b.AddTensor("k", 12, {256}, std::vector<uint8_t>(144, 0));  // Q4_K
  MP_ASSERT_OK_AND_ASSIGN(auto file, GgufFile::FromBytes(b.Build(), "t.gguf"));
  MP_ASSERT_OK_AND_ASSIGN(Tensor t, DequantizeTensor(*file, *file->FindTensor("w")));
  EXPECT_EQ(t.shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.dtype(), DType::kF32);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t.data_as<float>()[i], 1.0f + i / 1024.0f);
  GGUF_EXPECT_ERROR(DequantizeTensor(*file, *file->FindTensor("k")),
                    absl::StatusCode::kUnimplemented, "t.gguf: tensor 'k': cannot dequantize");
}

}  // namespace
}  // namespace mp
