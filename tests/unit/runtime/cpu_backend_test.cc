// CpuBackend: every op against a naive reference on random inputs, weight conversion, and the
// shape/dtype checks that must reject bad inputs before any work.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/status_matchers.h"
#include "runtime/backend.h"
#include "tests/unit/runtime/forwarding_backend.h"

namespace mp {
namespace {

using ::absl::StatusCode;

Tensor RandomF32(std::vector<int64_t> shape, std::mt19937_64& rng, double stddev = 1.0) {
  Tensor t = Tensor::Host(std::move(shape), DType::kF32);
  std::normal_distribution<double> normal(0.0, stddev);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = static_cast<float>(normal(rng));
  return t;
}

Tensor I32(std::vector<int32_t> values) {
  Tensor t = Tensor::Host({static_cast<int64_t>(values.size())}, DType::kI32);
  std::memcpy(t.data(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

void ExpectNear(const Tensor& actual, const std::vector<double>& expected, double tol) {
  ASSERT_EQ(actual.numel(), static_cast<int64_t>(expected.size()));
  for (size_t i = 0; i < expected.size(); ++i) {
    const float got = actual.data_as<const float>()[i];
    if (std::isinf(expected[i])) {
      ASSERT_EQ(got, expected[i]) << "element " << i;
    } else {
      ASSERT_NEAR(got, expected[i], tol) << "element " << i;
    }
  }
}

// The softmax of `logits` (over the keys first, first + 1, ...) in double: adds
// sum_j p_j v[j, kh] to out[hd] (v: [len, kv_heads, hd]) and returns the LSE.
double SoftmaxOverValues(const std::vector<double>& logits, int64_t first, const Tensor& v,
                         int64_t kv_heads, int64_t kh, int64_t hd, double* out) {
  double m = -INFINITY;
  for (double x : logits) m = std::max(m, x);
  double sum = 0;
  for (double x : logits) sum += std::exp(x - m);
  for (size_t j = 0; j < logits.size(); ++j) {
    const double pj = std::exp(logits[j] - m) / sum;
    const int64_t key = first + static_cast<int64_t>(j);
    for (int64_t e = 0; e < hd; ++e) {
      out[e] += pj * v.data_as<float>()[(key * kv_heads + kh) * hd + e];
    }
  }
  return m + std::log(sum);
}

class CpuBackendTest : public ::testing::Test {
 protected:
  // A zeroed paged K/V cache [num_blocks, kv_heads, bs, hd] of the backend under `table`.
  void MakeKvCache(int64_t num_blocks, int64_t kv_heads, int64_t bs, int64_t hd,
                   const std::vector<int32_t>& table, KvLayerView* kv) {
    MP_ASSERT_OK_AND_ASSIGN(Tensor kc,
                            backend_->Allocate({num_blocks, kv_heads, bs, hd}, DType::kF32));
    MP_ASSERT_OK_AND_ASSIGN(Tensor vc,
                            backend_->Allocate({num_blocks, kv_heads, bs, hd}, DType::kF32));
    *kv = KvLayerView{kc, vc, I32(table), bs};
  }

  // Random q [n, q_heads, hd] (from rng_) and zeroed out [n, q_heads, hd] and lse [q_heads, n].
  void MakeAttentionIo(int64_t n, int64_t q_heads, int64_t hd, Tensor* q, Tensor* out,
                       Tensor* lse) {
    *q = RandomF32({n, q_heads, hd}, rng_);
    MP_ASSERT_OK_AND_ASSIGN(*out, backend_->Allocate({n, q_heads, hd}, DType::kF32));
    MP_ASSERT_OK_AND_ASSIGN(*lse, backend_->Allocate({q_heads, n}, DType::kF32));
  }

  std::unique_ptr<Backend> backend_ = NewCpuBackend();
  std::mt19937_64 rng_{1234};
};

TEST_F(CpuBackendTest, Describes) {
  EXPECT_EQ(backend_->device(), DeviceKind::kCpu);
  EXPECT_EQ(backend_->compute_dtype(), DType::kF32);
  EXPECT_EQ(backend_->name(), "cpu");
}

TEST_F(CpuBackendTest, AllocateZeroFillsAndRejectsBadShapes) {
  MP_ASSERT_OK_AND_ASSIGN(Tensor t, backend_->Allocate({3, 5}, DType::kF32));
  EXPECT_EQ(t.shape(), (std::vector<int64_t>{3, 5}));
  for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(t.data_as<float>()[i], 0.0f);
  MP_EXPECT_ERROR(backend_->Allocate({-1, 4}, DType::kF32), StatusCode::kInvalidArgument,
                  "negative");
  MP_EXPECT_ERROR(backend_->Allocate({int64_t{1} << 40, int64_t{1} << 30}, DType::kF32),
                  StatusCode::kResourceExhausted, "too large");
}

TEST_F(CpuBackendTest, UploadWeightAliasesF32) {
  Tensor w = RandomF32({4, 8}, rng_);
  MP_ASSERT_OK_AND_ASSIGN(Tensor up, backend_->UploadWeight(w));
  EXPECT_EQ(up.data(), w.data());
  EXPECT_EQ(up.shape(), w.shape());
}

TEST_F(CpuBackendTest, UploadWeightConvertsBf16) {
  Tensor w = Tensor::Host({7, 9}, DType::kBF16);
  std::vector<float> expected(63);
  std::uniform_int_distribution<uint32_t> top_bits(0, 0xffff);
  for (int i = 0; i < 63; ++i) {
    uint32_t bits = top_bits(rng_);
    if ((bits & 0x7f80u) == 0x7f80u) bits &= ~0x0100u;  // keep it finite
    const uint32_t f32_bits = bits << 16;
    std::memcpy(&expected[i], &f32_bits, sizeof(f32_bits));
    w.data_as<uint16_t>()[i] = static_cast<uint16_t>(bits);
  }
  MP_ASSERT_OK_AND_ASSIGN(Tensor up, backend_->UploadWeight(w));
  ASSERT_EQ(up.dtype(), DType::kF32);
  ASSERT_EQ(up.shape(), w.shape());
  for (int i = 0; i < 63; ++i) EXPECT_EQ(up.data_as<float>()[i], expected[i]) << i;
}

TEST_F(CpuBackendTest, UploadWeightConvertsEveryF16Value) {
  Tensor w = Tensor::Host({65536}, DType::kF16);
  for (uint32_t i = 0; i < 65536; ++i) w.data_as<uint16_t>()[i] = static_cast<uint16_t>(i);
  MP_ASSERT_OK_AND_ASSIGN(Tensor up, backend_->UploadWeight(w));
  for (uint32_t i = 0; i < 65536; ++i) {
    const int sign = (i >> 15) != 0 ? -1 : 1;
    const int exponent = static_cast<int>((i >> 10) & 31);
    const int mantissa = static_cast<int>(i & 1023);
    const float got = up.data_as<float>()[i];
    if (exponent == 31) {
      if (mantissa == 0) {
        EXPECT_TRUE(std::isinf(got) && std::signbit(got) == (sign < 0)) << i;
      } else {
        EXPECT_TRUE(std::isnan(got)) << i;
      }
      continue;
    }
    const double value = exponent == 0 ? std::ldexp(mantissa, -24)
                                       : std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
    ASSERT_EQ(got, static_cast<float>(sign * value)) << "f16 bits " << i;
    EXPECT_EQ(std::signbit(got), sign < 0) << i;
  }
}

TEST_F(CpuBackendTest, UploadWeightRejectsIntegers) {
  MP_EXPECT_ERROR(backend_->UploadWeight(Tensor::Host({4}, DType::kI32)),
                  StatusCode::kInvalidArgument, "f32, f16 or bf16");
  MP_EXPECT_ERROR(backend_->UploadWeight(Tensor()), StatusCode::kInvalidArgument, "host tensor");
}

TEST_F(CpuBackendTest, CopiesAndConverts) {
  Tensor src = RandomF32({3, 4}, rng_);
  MP_ASSERT_OK_AND_ASSIGN(Tensor dev, backend_->Allocate({3, 4}, DType::kF32));
  MP_ASSERT_OK(backend_->CopyFromHost(src, dev));
  MP_ASSERT_OK_AND_ASSIGN(Tensor other, backend_->Allocate({12}, DType::kF32));
  MP_ASSERT_OK(backend_->Copy(dev, other));
  Tensor back = Tensor::Host({3, 4}, DType::kF32);
  MP_ASSERT_OK(backend_->CopyToHost(other, back));
  EXPECT_EQ(std::memcmp(back.data(), src.data(), src.nbytes()), 0);
  MP_ASSERT_OK_AND_ASSIGN(Tensor f32, backend_->ToHostF32(dev));
  EXPECT_NE(f32.data(), dev.data());
  EXPECT_EQ(std::memcmp(f32.data(), src.data(), src.nbytes()), 0);

  MP_ASSERT_OK_AND_ASSIGN(Tensor small, backend_->Allocate({11}, DType::kF32));
  MP_EXPECT_ERROR(backend_->Copy(dev, small), StatusCode::kInvalidArgument, "element count");
  MP_EXPECT_ERROR(backend_->Copy(dev, dev), StatusCode::kInvalidArgument, "overlap");
  Tensor ints = Tensor::Host({12}, DType::kI32);
  MP_EXPECT_ERROR(backend_->CopyToHost(dev, ints), StatusCode::kInvalidArgument, "dtype");
}

TEST_F(CpuBackendTest, EmbeddingMatchesTableRows) {
  Tensor table = RandomF32({10, 6}, rng_);
  Tensor ids = I32({3, 0, 9, 3});
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, backend_->Allocate({4, 6}, DType::kF32));
  MP_ASSERT_OK(backend_->Embedding(ids, table, out));
  std::vector<double> expected;
  for (int id : {3, 0, 9, 3}) {
    for (int j = 0; j < 6; ++j) expected.push_back(table.data_as<float>()[id * 6 + j]);
  }
  ExpectNear(out, expected, 0.0);
}

TEST_F(CpuBackendTest, EmbeddingRejectsIdsOutsideTheVocabulary) {
  Tensor table = RandomF32({10, 6}, rng_);
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, backend_->Allocate({3, 6}, DType::kF32));
  MP_EXPECT_ERROR(backend_->Embedding(I32({1, 10, 2}), table, out), StatusCode::kInvalidArgument,
                  "token id 10 at position 1");
  MP_EXPECT_ERROR(backend_->Embedding(I32({1, 2, -1}), table, out), StatusCode::kInvalidArgument,
                  "token id -1 at position 2");
  MP_EXPECT_ERROR(backend_->Embedding(I32({1, 2}), table, out), StatusCode::kInvalidArgument,
                  "out has shape [3, 6]");
  Tensor float_ids = Tensor::Host({3}, DType::kF32);
  MP_EXPECT_ERROR(backend_->Embedding(float_ids, table, out), StatusCode::kInvalidArgument,
                  "ids has shape [3] f32");
}

TEST_F(CpuBackendTest, RmsNormMatchesReference) {
  const int64_t n = 5, d = 48;
  Tensor x = RandomF32({n, d}, rng_);
  Tensor w = RandomF32({d}, rng_);
  MP_ASSERT_OK_AND_ASSIGN(Tensor y, backend_->Allocate({n, d}, DType::kF32));
  MP_ASSERT_OK(backend_->RmsNorm(x, w, 1e-5f, y));
  std::vector<double> expected;
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += std::pow(x.data_as<float>()[i * d + j], 2);
    for (int64_t j = 0; j < d; ++j) {
      expected.push_back(x.data_as<float>()[i * d + j] / std::sqrt(ss / d + 1e-5) *
                         w.data_as<float>()[j]);
    }
  }
  ExpectNear(y, expected, 1e-5);
  // In place gives the same.
  MP_ASSERT_OK(backend_->RmsNorm(x, w, 1e-5f, x));
  ExpectNear(x, expected, 1e-5);

  MP_EXPECT_ERROR(backend_->RmsNorm(x, RandomF32({d + 1}, rng_), 1e-5f, y),
                  StatusCode::kInvalidArgument, "weight has shape [49] f32 on cpu, expected [48]");
}

TEST_F(CpuBackendTest, LinearMatchesReference) {
  const int64_t n = 7, in = 33, out = 21;
  Tensor x = RandomF32({n, in}, rng_);
  Tensor w = RandomF32({out, in}, rng_);
  Tensor b = RandomF32({out}, rng_);
  for (bool with_bias : {false, true}) {
    MP_ASSERT_OK_AND_ASSIGN(Tensor y, backend_->Allocate({n, out}, DType::kF32));
    MP_ASSERT_OK(backend_->Linear(x, w, with_bias ? &b : nullptr, y));
    std::vector<double> expected;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t o = 0; o < out; ++o) {
        double s = with_bias ? b.data_as<float>()[o] : 0.0;
        for (int64_t k = 0; k < in; ++k) {
          s += static_cast<double>(x.data_as<float>()[i * in + k]) * w.data_as<float>()[o * in + k];
        }
        expected.push_back(s);
      }
    }
    ExpectNear(y, expected, 1e-4);
  }
  MP_ASSERT_OK_AND_ASSIGN(Tensor y, backend_->Allocate({n, out}, DType::kF32));
  MP_EXPECT_ERROR(backend_->Linear(x, RandomF32({out, in + 1}, rng_), nullptr, y),
                  StatusCode::kInvalidArgument, "w has shape [21, 34]");
  Tensor short_bias = RandomF32({out - 1}, rng_);
  MP_EXPECT_ERROR(backend_->Linear(x, w, &short_bias, y), StatusCode::kInvalidArgument,
                  "bias has shape [20]");
  MP_ASSERT_OK_AND_ASSIGN(Tensor wrong_y, backend_->Allocate({n, out + 1}, DType::kF32));
  MP_EXPECT_ERROR(backend_->Linear(x, w, nullptr, wrong_y), StatusCode::kInvalidArgument,
                  "expected [7, 21] f32");
  Tensor square_w = RandomF32({in, in}, rng_);
  MP_EXPECT_ERROR(backend_->Linear(x, square_w, nullptr, x), StatusCode::kInvalidArgument,
                  "overlap");
}

TEST_F(CpuBackendTest, RopeMatchesReference) {
  const int64_t n = 6, heads = 3, hd = 8;
  const double theta = 10000.0;
  Tensor x = RandomF32({n, heads, hd}, rng_);
  Tensor original = Tensor::Host({n, heads, hd}, DType::kF32);
  std::memcpy(original.data(), x.data(), x.nbytes());
  std::vector<int32_t> pos = {0, 5, 17, 100, 3, 4000};
  MP_ASSERT_OK(backend_->Rope(x, I32(pos), theta));
  std::vector<double> expected(n * heads * hd);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* v = original.data_as<float>() + (t * heads + h) * hd;
      for (int64_t i = 0; i < hd / 2; ++i) {
        const double a = pos[t] * std::pow(theta, -2.0 * i / hd);
        expected[(t * heads + h) * hd + i] = v[i] * std::cos(a) - v[i + hd / 2] * std::sin(a);
        expected[(t * heads + h) * hd + i + hd / 2] =
            v[i + hd / 2] * std::cos(a) + v[i] * std::sin(a);
      }
    }
  }
  ExpectNear(x, expected, 2e-3);  // fp32 angles at position 4000

  Tensor odd = RandomF32({2, 1, 7}, rng_);
  MP_EXPECT_ERROR(backend_->Rope(odd, I32({0, 1}), theta), StatusCode::kInvalidArgument,
                  "head_dim must be even");
  MP_EXPECT_ERROR(backend_->Rope(x, I32({0, 1}), theta), StatusCode::kInvalidArgument,
                  "positions has shape [2]");
}

TEST_F(CpuBackendTest, SiluMulAndAddMatchReference) {
  const int64_t n = 4, inter = 10;
  Tensor gu = RandomF32({n, 2 * inter}, rng_);
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, backend_->Allocate({n, inter}, DType::kF32));
  MP_ASSERT_OK(backend_->SiluMul(gu, out));
  std::vector<double> expected;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < inter; ++j) {
      const double g = gu.data_as<float>()[i * 2 * inter + j];
      const double u = gu.data_as<float>()[i * 2 * inter + inter + j];
      expected.push_back(g / (1.0 + std::exp(-g)) * u);
    }
  }
  ExpectNear(out, expected, 1e-5);
  MP_ASSERT_OK_AND_ASSIGN(Tensor wrong, backend_->Allocate({n, inter + 1}, DType::kF32));
  MP_EXPECT_ERROR(backend_->SiluMul(gu, wrong), StatusCode::kInvalidArgument, "out has shape");

  Tensor a = RandomF32({3, 5}, rng_), b = RandomF32({3, 5}, rng_);
  std::vector<double> sum;
  for (int i = 0; i < 15; ++i) sum.push_back(a.data_as<float>()[i] + b.data_as<float>()[i]);
  MP_ASSERT_OK(backend_->Add(a, b));
  ExpectNear(a, sum, 1e-6);
  Tensor c = RandomF32({5, 3}, rng_);
  MP_EXPECT_ERROR(backend_->Add(a, c), StatusCode::kInvalidArgument, "y has shape [5, 3]");
}

// Writes K/V of `len` tokens in two pieces into a cache with a scrambled block table, then runs
// attention of the last `n` positions and compares with attention over contiguous K/V.
TEST_F(CpuBackendTest, PagedAttentionMatchesDenseReference) {
  const int64_t kv_heads = 2, q_heads = 6, hd = 8, bs = 4, num_blocks = 9, len = 23;
  const std::vector<int32_t> table = {7, 2, 8, 0, 5, 1};  // 6 blocks cover 24 tokens
  KvLayerView kv;
  MakeKvCache(num_blocks, kv_heads, bs, hd, table, &kv);
  ASSERT_FALSE(HasFatalFailure());
  Tensor k = RandomF32({len, kv_heads, hd}, rng_);
  Tensor v = RandomF32({len, kv_heads, hd}, rng_);
  MP_ASSERT_OK(backend_->WriteKv(k.Slice(0, 9), v.Slice(0, 9), 0, kv));
  MP_ASSERT_OK(backend_->WriteKv(k.Slice(9, len), v.Slice(9, len), 9, kv));
  // The cache holds token t at block table[t / bs], row t % bs.
  for (int64_t t = 0; t < len; ++t) {
    for (int64_t h = 0; h < kv_heads; ++h) {
      const float* cached =
          kv.k.data_as<float>() + ((table[t / bs] * kv_heads + h) * bs + t % bs) * hd;
      ASSERT_EQ(std::memcmp(cached, k.data_as<float>() + (t * kv_heads + h) * hd, hd * 4), 0);
    }
  }

  for (const auto& [n, key_begin, causal] : std::vector<std::tuple<int64_t, int64_t, bool>>{
           {5, 0, true}, {1, 0, true}, {4, 6, false}, {23, 3, true}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n << " key_begin=" << key_begin);
    Tensor q, out, lse;
    MakeAttentionIo(n, q_heads, hd, &q, &out, &lse);
    ASSERT_FALSE(HasFatalFailure());
    AttentionParams p;
    p.q = &q;
    p.kv = kv;
    p.key_begin = key_begin;
    p.key_end = len;
    p.causal = causal;
    p.scale = 0.3f;
    p.out = &out;
    p.lse = &lse;
    MP_ASSERT_OK(backend_->Attention(p));
    std::vector<double> expected(n * q_heads * hd, 0.0), expected_lse(q_heads * n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t h = 0; h < q_heads; ++h) {
        const int64_t kh = h / (q_heads / kv_heads);
        const int64_t last = causal ? len - n + i : len - 1;
        std::vector<double> s;
        for (int64_t j = key_begin; j <= last; ++j) {
          double d = 0;
          for (int64_t e = 0; e < hd; ++e) {
            d += static_cast<double>(q.data_as<float>()[(i * q_heads + h) * hd + e]) *
                 k.data_as<float>()[(j * kv_heads + kh) * hd + e];
          }
          s.push_back(0.3 * d);
        }
        expected_lse[h * n + i] =
            SoftmaxOverValues(s, key_begin, v, kv_heads, kh, hd, &expected[(i * q_heads + h) * hd]);
      }
    }
    ExpectNear(out, expected, 1e-5);
    ExpectNear(lse, expected_lse, 1e-4);
  }
}

TEST_F(CpuBackendTest, KvOpsRejectBadGeometry) {
  const int64_t kv_heads = 2, hd = 8, bs = 4;
  MP_ASSERT_OK_AND_ASSIGN(Tensor kc, backend_->Allocate({3, kv_heads, bs, hd}, DType::kF32));
  MP_ASSERT_OK_AND_ASSIGN(Tensor vc, backend_->Allocate({3, kv_heads, bs, hd}, DType::kF32));
  Tensor k = RandomF32({5, kv_heads, hd}, rng_);
  Tensor v = RandomF32({5, kv_heads, hd}, rng_);

  KvLayerView short_table{kc, vc, I32({0}), bs};
  MP_EXPECT_ERROR(backend_->WriteKv(k, v, 0, short_table), StatusCode::kInvalidArgument,
                  "block table has 1 blocks but positions up to 5 need 2");
  KvLayerView bad_block{kc, vc, I32({0, 3}), bs};
  MP_EXPECT_ERROR(backend_->WriteKv(k, v, 0, bad_block), StatusCode::kInvalidArgument,
                  "entry 1 is block 3, outside [0, 3)");
  KvLayerView wrong_bs{kc, vc, I32({0, 1, 2}), 8};
  MP_EXPECT_ERROR(backend_->WriteKv(k, v, 0, wrong_bs), StatusCode::kInvalidArgument,
                  "K cache has shape [3, 2, 4, 8]");
  KvLayerView good{kc, vc, I32({0, 1}), bs};
  Tensor v_short = RandomF32({4, kv_heads, hd}, rng_);
  MP_EXPECT_ERROR(backend_->WriteKv(k, v_short, 0, good), StatusCode::kInvalidArgument,
                  "v has shape [4, 2, 8]");
  MP_EXPECT_ERROR(backend_->WriteKv(k, v, -1, good), StatusCode::kInvalidArgument, "start");

  Tensor q = RandomF32({2, 3, hd}, rng_);  // 3 query heads over 2 kv heads
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, backend_->Allocate({2, 3, hd}, DType::kF32));
  AttentionParams p;
  p.q = &q;
  p.kv = good;
  p.key_end = 5;
  p.out = &out;
  MP_EXPECT_ERROR(backend_->Attention(p), StatusCode::kInvalidArgument,
                  "not a multiple of the cache's 2 kv heads");
  Tensor q4 = RandomF32({2, 4, hd}, rng_);
  p.q = &q4;
  MP_EXPECT_ERROR(backend_->Attention(p), StatusCode::kInvalidArgument, "out has shape [2, 3, 8]");
  MP_ASSERT_OK_AND_ASSIGN(Tensor out4, backend_->Allocate({2, 4, hd}, DType::kF32));
  p.out = &out4;
  p.key_end = 9;
  MP_EXPECT_ERROR(backend_->Attention(p), StatusCode::kInvalidArgument, "positions up to 9");
  p.key_begin = 6;
  p.key_end = 5;
  MP_EXPECT_ERROR(backend_->Attention(p), StatusCode::kInvalidArgument, "key range [6, 5)");
  p.key_begin = 0;
  Tensor wrong_lse = Tensor::Host({2, 4}, DType::kF32);
  p.lse = &wrong_lse;
  MP_EXPECT_ERROR(backend_->Attention(p), StatusCode::kInvalidArgument, "lse has shape [2, 4]");
  p.lse = nullptr;
  MP_EXPECT_OK(backend_->Attention(p));
  p.q = nullptr;
  MP_EXPECT_ERROR(backend_->Attention(p), StatusCode::kInvalidArgument, "q and out");
}

// Dual chunk attention through the backend: K written rotated by j mod C with Rope + WriteKv,
// then DcaAttention over a run crossing two chunk boundaries, against dense attention in double
// with the relative distances of qwen1m-spec.md §2.2 on the un-rotated q and k.
TEST_F(CpuBackendTest, DcaAttentionMatchesTheRelativeDistanceReference) {
  const int64_t kv_heads = 2, q_heads = 4, hd = 8, bs = 4, S = 12, W = 4, C = S - W, len = 27;
  const double theta = 10000.0;
  const float scale = 0.35f, m = 1.1f;
  const int64_t num_blocks = 8;
  const std::vector<int32_t> table = {5, 0, 7, 2, 6, 1, 3};  // 7 blocks cover 28 tokens
  KvLayerView kv;
  MakeKvCache(num_blocks, kv_heads, bs, hd, table, &kv);
  ASSERT_FALSE(HasFatalFailure());
  Tensor k = RandomF32({len, kv_heads, hd}, rng_);
  Tensor v = RandomF32({len, kv_heads, hd}, rng_);
  Tensor k_rot = Tensor::Host({len, kv_heads, hd}, DType::kF32);
  std::memcpy(k_rot.data(), k.data(), k.nbytes());
  std::vector<int32_t> key_pos(len);
  for (int64_t j = 0; j < len; ++j) key_pos[j] = static_cast<int32_t>(j % C);
  MP_ASSERT_OK(backend_->Rope(k_rot, I32(key_pos), theta));
  MP_ASSERT_OK(backend_->WriteKv(k_rot, v, 0, kv));

  auto distance = [&](int64_t p, int64_t j) -> int64_t {
    if (j / C == p / C) return p - j;
    if (j / C == p / C - 1) return std::min(p % C + C, S) - j % C;
    return std::min(2 * C - 1, S) - j % C;
  };
  for (const auto& [query_begin, n] :
       std::vector<std::pair<int64_t, int64_t>>{{0, len}, {5, 14}, {26, 1}, {16, 1}}) {
    SCOPED_TRACE(::testing::Message() << "query_begin=" << query_begin << " n=" << n);
    Tensor q, out, lse;
    MakeAttentionIo(n, q_heads, hd, &q, &out, &lse);
    ASSERT_FALSE(HasFatalFailure());
    DcaAttentionParams p;
    p.q = &q;
    p.kv = kv;
    p.query_begin = query_begin;
    p.chunk_size = S;
    p.chunk_len = C;
    p.rope_theta = theta;
    p.scale = scale;
    p.temperature = m;
    p.out = &out;
    p.lse = &lse;
    MP_ASSERT_OK(backend_->DcaAttention(p));
    std::vector<double> expected(n * q_heads * hd, 0.0), expected_lse(q_heads * n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = query_begin + i;
      for (int64_t h = 0; h < q_heads; ++h) {
        const int64_t kh = h / (q_heads / kv_heads);
        const float* qv = q.data_as<float>() + (i * q_heads + h) * hd;
        std::vector<double> s;
        for (int64_t j = 0; j <= pos; ++j) {
          const float* kv_row = k.data_as<float>() + (j * kv_heads + kh) * hd;
          double d = 0;
          for (int64_t e = 0; e < hd / 2; ++e) {
            const double a = distance(pos, j) * std::pow(theta, -2.0 * e / hd);
            const double x1 = qv[e], x2 = qv[e + hd / 2];
            d += (x1 * std::cos(a) - x2 * std::sin(a)) * kv_row[e] +
                 (x2 * std::cos(a) + x1 * std::sin(a)) * kv_row[e + hd / 2];
          }
          s.push_back(double{scale} * m * m * d);
        }
        expected_lse[h * n + i] =
            SoftmaxOverValues(s, 0, v, kv_heads, kh, hd, &expected[(i * q_heads + h) * hd]);
      }
    }
    ExpectNear(out, expected, 1e-5);
    ExpectNear(lse, expected_lse, 1e-4);
  }
}

TEST_F(CpuBackendTest, DcaAttentionRejectsBadInput) {
  const int64_t kv_heads = 2, hd = 8, bs = 4;
  MP_ASSERT_OK_AND_ASSIGN(Tensor kc, backend_->Allocate({3, kv_heads, bs, hd}, DType::kF32));
  MP_ASSERT_OK_AND_ASSIGN(Tensor vc, backend_->Allocate({3, kv_heads, bs, hd}, DType::kF32));
  Tensor q = RandomF32({2, 4, hd}, rng_);
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, backend_->Allocate({2, 4, hd}, DType::kF32));
  DcaAttentionParams good;
  good.q = &q;
  good.kv = KvLayerView{kc, vc, I32({0, 1}), bs};
  good.query_begin = 3;
  good.chunk_size = 12;
  good.chunk_len = 8;
  good.scale = 0.3f;
  good.temperature = 1.0f;
  good.out = &out;
  MP_EXPECT_OK(backend_->DcaAttention(good));

  DcaAttentionParams p = good;
  p.chunk_len = 0;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument, "chunk_len (0)");
  p = good;
  p.chunk_size = 7;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument,
                  "0 < chunk_len <= chunk_size");
  p = good;
  p.chunk_len = 6;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument,
                  "block size 4 must divide the DCA chunk length 6");
  p = good;
  p.query_begin = 7;  // keys up to 9 need 3 blocks
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument, "positions up to 9");
  p = good;
  p.query_begin = -1;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument, "query_begin");
  p = good;
  p.temperature = 0.0f;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument, "temperature");
  p = good;
  p.rope_theta = -1.0;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument, "rope_theta");
  p = good;
  Tensor q3 = RandomF32({2, 3, hd}, rng_);
  MP_ASSERT_OK_AND_ASSIGN(Tensor out3, backend_->Allocate({2, 3, hd}, DType::kF32));
  p.q = &q3;
  p.out = &out3;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument,
                  "not a multiple of the cache's 2 kv heads");
  p = good;
  MP_ASSERT_OK_AND_ASSIGN(Tensor out_bad, backend_->Allocate({2, 4, hd + 1}, DType::kF32));
  p.out = &out_bad;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument, "out has shape");
  p = good;
  Tensor wrong_lse = Tensor::Host({2, 4}, DType::kF32);
  p.lse = &wrong_lse;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument, "lse has shape [2, 4]");
  p = good;
  p.out = &q;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument, "must not overlap");
  p = good;
  p.q = nullptr;
  MP_EXPECT_ERROR(backend_->DcaAttention(p), StatusCode::kInvalidArgument, "q and out");
}

// A backend that implements only the pure virtual ops (by forwarding to the CPU backend) gets
// the default DcaAttention, which says it is not implemented.
TEST(BackendDefaultsTest, DcaAttentionIsUnimplementedUnlessOverridden) {
  ForwardingBackend backend("minimal");
  MP_EXPECT_ERROR(backend.DcaAttention(DcaAttentionParams{}), StatusCode::kUnimplemented,
                  "not implemented on the minimal backend");
}

}  // namespace
}  // namespace mp
