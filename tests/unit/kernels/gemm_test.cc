// Linear, GemmNT and GemmNN against double loops, at odd sizes and with padded leading dims.
#include "kernels/cpu/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"

namespace mp::cpu {
namespace {

using testing::RandomUniform;

// fp32 dot products of length k: the error bound is about k * 2^-24 * sum |a_i b_i|; blocked
// BLAS sums do far better. Tolerance: 1e-5 * sum |a_i b_i| (+ 1e-6 |bias| or |beta c|).
constexpr double kRelToMagnitude = 1e-5;

struct LinearCase {
  int64_t n, in, out;
};

class LinearTest : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearTest, MatchesDoubleReferenceWithAndWithoutBias) {
  const LinearCase c = GetParam();
  const std::vector<float> x = RandomUniform(c.n * c.in, 100 + c.n);
  const std::vector<float> w = RandomUniform(c.out * c.in, 200 + c.out);
  const std::vector<float> bias = RandomUniform(c.out, 300 + c.in, -3.0f, 3.0f);
  for (bool with_bias : {false, true}) {
    std::vector<float> y(c.n * c.out, std::numeric_limits<float>::quiet_NaN());
    Linear(x.data(), w.data(), with_bias ? bias.data() : nullptr, c.n, c.in, c.out, y.data());
    for (int64_t i = 0; i < c.n; ++i) {
      for (int64_t o = 0; o < c.out; ++o) {
        double ref = with_bias ? bias[o] : 0.0;
        double magnitude = 0.0;
        for (int64_t k = 0; k < c.in; ++k) {
          const double p = double{x[i * c.in + k]} * w[o * c.in + k];
          ref += p;
          magnitude += std::abs(p);
        }
        const double tol = kRelToMagnitude * magnitude + (with_bias ? 1e-6 * std::abs(bias[o]) : 0);
        ASSERT_NEAR(y[i * c.out + o], ref, tol)
            << "bias=" << with_bias << " n=" << c.n << " in=" << c.in << " out=" << c.out << " at ("
            << i << ", " << o << ")";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, LinearTest,
                         ::testing::Values(LinearCase{1, 1, 1}, LinearCase{7, 33, 19},
                                           LinearCase{1, 576, 1536}, LinearCase{65, 129, 67},
                                           LinearCase{3, 1000, 5}, LinearCase{130, 64, 257}));

// C = alpha A op(B) + beta C with leading dims larger than the rows; padding must stay untouched.
void CheckGemm(bool transposed_b, int64_t m, int64_t n, int64_t k, float alpha, float beta) {
  const int64_t lda = k + 3, ldc = n + 5;
  const int64_t b_rows = transposed_b ? n : k, b_cols = transposed_b ? k : n;
  const int64_t ldb = b_cols + 2;
  const std::vector<float> a = RandomUniform(m * lda, 400 + m);
  const std::vector<float> b = RandomUniform(b_rows * ldb, 500 + n);
  std::vector<float> c = RandomUniform(m * ldc, 600 + k, -2.0f, 2.0f);
  const std::vector<float> c0 = c;
  if (transposed_b) {
    GemmNT(a.data(), lda, b.data(), ldb, c.data(), ldc, m, n, k, alpha, beta);
  } else {
    GemmNN(a.data(), lda, b.data(), ldb, c.data(), ldc, m, n, k, alpha, beta);
  }
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const float got = c[i * ldc + j];
      if (j >= n) {
        ASSERT_EQ(got, c0[i * ldc + j]) << "padding at (" << i << ", " << j << ") was written";
        continue;
      }
      double dot = 0.0, magnitude = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const double bv = transposed_b ? b[j * ldb + p] : b[p * ldb + j];
        dot += double{a[i * lda + p]} * bv;
        magnitude += std::abs(double{a[i * lda + p]} * bv);
      }
      const double ref = alpha * dot + double{beta} * c0[i * ldc + j];
      const double tol = kRelToMagnitude * std::abs(alpha) * magnitude +
                         1e-6 * std::abs(double{beta} * c0[i * ldc + j]);
      ASSERT_NEAR(got, ref, tol) << (transposed_b ? "NT" : "NN") << " m=" << m << " n=" << n
                                 << " k=" << k << " at (" << i << ", " << j << ")";
    }
  }
}

TEST(GemmTest, NTMatchesReference) {
  CheckGemm(true, 1, 1, 1, 1.0f, 0.0f);
  CheckGemm(true, 17, 23, 31, 0.125f, 0.0f);
  CheckGemm(true, 64, 5, 128, -1.5f, 1.0f);
  CheckGemm(true, 9, 70, 64, 0.5f, -0.75f);
}

TEST(GemmTest, NNMatchesReference) {
  CheckGemm(false, 1, 1, 1, 1.0f, 0.0f);
  CheckGemm(false, 17, 23, 31, 0.125f, 0.0f);
  CheckGemm(false, 64, 128, 5, 1.0f, 1.0f);
  CheckGemm(false, 9, 70, 64, 0.5f, -0.75f);
}

TEST(GemmTest, EmptyInnerDimensionScalesC) {
  CheckGemm(true, 4, 6, 0, 1.0f, 0.5f);
  CheckGemm(false, 4, 6, 0, 1.0f, 0.5f);
  // beta = 0 overwrites C, even NaN.
  std::vector<float> c(6, std::numeric_limits<float>::quiet_NaN());
  GemmNN(nullptr, 1, nullptr, 6, c.data(), 6, 1, 6, 0, 1.0f, 0.0f);
  for (float v : c) EXPECT_EQ(v, 0.0f);
}

TEST(GemmTest, EmptyOutputTouchesNothing) {
  std::vector<float> c = {1.0f, 2.0f};
  GemmNT(nullptr, 1, nullptr, 1, c.data(), 2, 0, 2, 3, 1.0f, 0.0f);
  GemmNN(nullptr, 1, nullptr, 1, c.data(), 2, 1, 0, 3, 1.0f, 0.0f);
  EXPECT_EQ(c, (std::vector<float>{1.0f, 2.0f}));
}

}  // namespace
}  // namespace mp::cpu
