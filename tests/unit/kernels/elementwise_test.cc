// Embedding, RMSNorm, AddInPlace, SiluMul and the vectorized exp against double references.
#include "kernels/cpu/elementwise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"

namespace mp::cpu {
namespace {

using testing::Near;
using testing::RandomNormal;
using testing::RandomUniform;

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(EmbeddingTest, CopiesTheRowsOfTheIds) {
  const int64_t vocab = 37, hidden = 19, n = 50;
  const std::vector<float> table = RandomUniform(vocab * hidden, 1);
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 11 + 3) % vocab);
  ids[0] = 0;
  ids[1] = vocab - 1;
  ids[2] = ids[3];  // repeated id
  std::vector<float> out(n * hidden, kInf);
  Embedding(ids.data(), n, table.data(), hidden, out.data());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < hidden; ++j) {
      ASSERT_EQ(out[i * hidden + j], table[ids[i] * hidden + j]) << "token " << i << " dim " << j;
    }
  }
}

// y = x / sqrt(mean(x^2) + eps) * w in double.
std::vector<double> RmsNormReference(const std::vector<float>& x, const std::vector<float>& w,
                                     int64_t n, int64_t d, double eps) {
  std::vector<double> y(n * d);
  for (int64_t i = 0; i < n; ++i) {
    double sum_sq = 0.0;
    for (int64_t j = 0; j < d; ++j) sum_sq += double{x[i * d + j]} * x[i * d + j];
    const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(d) + eps);
    for (int64_t j = 0; j < d; ++j) y[i * d + j] = x[i * d + j] * inv * w[j];
  }
  return y;
}

TEST(RmsNormTest, MatchesDoubleReference) {
  // Tolerance: a few fp32 roundings (variance, rsqrt, two products): 1e-6 relative.
  uint64_t seed = 10;
  for (int64_t d : {1, 7, 64, 576, 1001}) {
    for (float amplitude : {1e-3f, 1.0f, 1e3f}) {
      for (float eps : {1e-6f, 1e-5f}) {
        const int64_t n = 5;
        const std::vector<float> x = RandomNormal(n * d, ++seed, amplitude);
        const std::vector<float> w = RandomUniform(d, ++seed, 0.5f, 1.5f);
        std::vector<float> y(n * d);
        RmsNorm(x.data(), w.data(), n, d, eps, y.data());
        const std::vector<double> ref = RmsNormReference(x, w, n, d, eps);
        for (int64_t i = 0; i < n * d; ++i) {
          ASSERT_TRUE(Near(y[i], ref[i], 0.0, 1e-6))
              << "d=" << d << " amplitude=" << amplitude << " eps=" << eps << " at " << i << ": "
              << y[i] << " vs " << ref[i];
        }
      }
    }
  }
}

TEST(RmsNormTest, InPlaceEqualsOutOfPlace) {
  const int64_t n = 3, d = 33;
  std::vector<float> x = RandomNormal(n * d, 21);
  const std::vector<float> w = RandomUniform(d, 22);
  std::vector<float> y(n * d);
  RmsNorm(x.data(), w.data(), n, d, 1e-6f, y.data());
  RmsNorm(x.data(), w.data(), n, d, 1e-6f, x.data());
  EXPECT_EQ(x, y);
}

TEST(AddInPlaceTest, AddsElementwise) {
  for (int64_t count : {1, 15, 16, 17, 1000}) {
    std::vector<float> x = RandomUniform(count, 30 + count);
    const std::vector<float> y = RandomUniform(count, 31 + count, -10.0f, 10.0f);
    const std::vector<float> x0 = x;
    AddInPlace(x.data(), y.data(), count);
    for (int64_t i = 0; i < count; ++i) {
      // The sum of two floats rounded once to fp32.
      ASSERT_EQ(x[i], static_cast<float>(double{x0[i]} + y[i])) << "count " << count << " at " << i;
    }
  }
}

TEST(SiluMulTest, MatchesDoubleReference) {
  // Tolerance: exp to 2e-7 plus three fp32 roundings: 1e-6 relative; an absolute 1e-30 for the
  // outputs that underflow (silu(g) for g < -88 is below 1e-36).
  const int64_t n = 4;
  for (int64_t inter : {1, 5, 16, 37, 1541}) {
    std::vector<float> gate_up = RandomUniform(n * 2 * inter, 40 + inter, -20.0f, 20.0f);
    if (inter >= 5) {
      gate_up[0] = -100.0f;  // exp(-g) overflows
      gate_up[1] = 100.0f;
      gate_up[2] = -87.5f;
      gate_up[3] = 0.0f;
      gate_up[4] = 1e-8f;
    }
    std::vector<float> out(n * inter, kInf);
    SiluMul(gate_up.data(), n, inter, out.data());
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < inter; ++j) {
        const double g = gate_up[i * 2 * inter + j];
        const double u = gate_up[i * 2 * inter + inter + j];
        const double ref = g / (1.0 + std::exp(-g)) * u;
        ASSERT_TRUE(Near(out[i * inter + j], ref, 1e-30, 1e-6))
            << "inter=" << inter << " row " << i << " col " << j << " g=" << g << ": "
            << out[i * inter + j] << " vs " << ref;
      }
    }
  }
}

TEST(ExpTest, ExpInPlaceIsAccurateOverTheWholeRange) {
  // Stated accuracy: 2e-7 relative on [-87, 88].
  for (int64_t count : {1, 3, 16, 31, 4099}) {
    std::vector<float> x = RandomUniform(count, 50 + count, -87.0f, 88.0f);
    const std::vector<float> x0 = x;
    ExpInPlace(x.data(), count);
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_TRUE(Near(x[i], std::exp(double{x0[i]}), 0.0, 2e-7)) << "exp(" << x0[i] << ")";
    }
  }
  std::vector<float> small = RandomUniform(1000, 59, -1.0f, 1.0f);
  const std::vector<float> small0 = small;
  ExpInPlace(small.data(), 1000);
  for (int64_t i = 0; i < 1000; ++i) {
    ASSERT_TRUE(Near(small[i], std::exp(double{small0[i]}), 0.0, 2e-7)) << small0[i];
  }
}

TEST(ExpTest, SpecialValues) {
  std::vector<float> x = {-kInf, -1000.0f, -87.5f, 0.0f, 88.5f, 1000.0f, kInf};
  ExpInPlace(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(x[0], 0.0f);
  EXPECT_EQ(x[1], 0.0f);
  EXPECT_EQ(x[2], 0.0f);
  EXPECT_EQ(x[3], 1.0f);
  EXPECT_EQ(x[4], kInf);
  EXPECT_EQ(x[5], kInf);
  EXPECT_EQ(x[6], kInf);
}

// Double reference of OnlineSoftmaxStep for one row.
struct SoftmaxState {
  double max = -std::numeric_limits<double>::infinity();
  double sum = 0.0;
  std::vector<double> acc;
};

std::vector<double> ReferenceStep(const float* s, int64_t cols, SoftmaxState& st) {
  double m = st.max;
  for (int64_t c = 0; c < cols; ++c) m = std::max(m, double{s[c]});
  std::vector<double> p(cols, 0.0);
  if (m == -std::numeric_limits<double>::infinity()) return p;
  const double a = std::exp(st.max - m);
  double sum = 0.0;
  for (int64_t c = 0; c < cols; ++c) {
    p[c] = std::exp(double{s[c]} - m);
    sum += p[c];
  }
  st.sum = a * st.sum + sum;
  for (double& x : st.acc) x *= a;
  st.max = m;
  return p;
}

TEST(OnlineSoftmaxStepTest, MatchesDoubleReferenceOverTwoSteps) {
  // Tolerance: the fp32 difference s - m (|s| <= 10: 1e-6 relative on p), exp 2e-7, fp32 sums:
  // 2e-6 relative on p, the sums and acc.
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t cols : {1, 15, 16, 17, 100}) {
    const int64_t rows = 5, acc_cols = 7;
    std::vector<float> row_max(rows, ninf), row_sum(rows, 0.0f);
    std::vector<float> acc = RandomUniform(rows * acc_cols, 80 + cols);
    std::vector<SoftmaxState> ref(rows);
    for (int64_t r = 0; r < rows; ++r) {
      ref[r].acc.assign(acc.begin() + r * acc_cols, acc.begin() + (r + 1) * acc_cols);
    }
    for (int step = 0; step < 2; ++step) {
      // Step 1 raises the maximum of some rows (logits shifted up), so acc gets rescaled.
      std::vector<float> s =
          RandomUniform(rows * cols, 90 + cols + step, -10.0f + 4 * step, 4.0f + 4 * step);
      if (cols > 3) s[1] = ninf;  // a masked logit in row 0
      for (int64_t c = 0; c < cols; ++c) {
        s[2 * cols + c] = ninf;                 // row 2: masked in both steps
        if (step == 1) s[3 * cols + c] = ninf;  // row 3: visible, then masked
      }
      const std::vector<float> s0 = s;
      OnlineSoftmaxStep(s.data(), rows, cols, row_max.data(), row_sum.data(), acc.data(), acc_cols);
      for (int64_t r = 0; r < rows; ++r) {
        const std::vector<double> p = ReferenceStep(s0.data() + r * cols, cols, ref[r]);
        const std::string where = "cols " + std::to_string(cols) + " step " + std::to_string(step) +
                                  " row " + std::to_string(r);
        for (int64_t c = 0; c < cols; ++c) {
          ASSERT_TRUE(Near(s[r * cols + c], p[c], 0.0, 2e-6)) << where << " col " << c;
          if (s0[r * cols + c] == ninf) ASSERT_EQ(s[r * cols + c], 0.0f) << where;
        }
        EXPECT_EQ(row_max[r], static_cast<float>(ref[r].max)) << where;
        EXPECT_TRUE(Near(row_sum[r], ref[r].sum, 0.0, 2e-6)) << where;
        for (int64_t c = 0; c < acc_cols; ++c) {
          ASSERT_TRUE(Near(acc[r * acc_cols + c], ref[r].acc[c], 0.0, 2e-6)) << where;
        }
      }
    }
    EXPECT_EQ(row_max[2], ninf);  // never saw a logit
    EXPECT_EQ(row_sum[2], 0.0f);
  }
}

}  // namespace
}  // namespace mp::cpu
