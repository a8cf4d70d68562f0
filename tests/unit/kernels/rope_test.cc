// RopeNeox against a double reference of the transformers (Llama/Qwen2) rotary embedding, and the
// relative-position property that attention relies on.
#include "kernels/cpu/rope.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"

namespace mp::cpu {
namespace {

using testing::RandomUniform;

// transformers computes inv_freq and the angle pos * inv_freq in fp32; those two roundings are
// part of the definition (they move the angle by up to 0.016 rad at position 262143), so the
// reference reproduces them. Everything after (cos, sin, the rotation) is double.
float InvFreqFp32(double theta, int64_t i, int64_t head_dim) {
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
  return 1.0f / std::pow(static_cast<float>(theta), exponent);
}

std::vector<double> RopeReference(const std::vector<float>& x, const std::vector<int32_t>& pos,
                                  int64_t heads, int64_t head_dim, double theta) {
  const int64_t n = static_cast<int64_t>(pos.size());
  const int64_t half = head_dim / 2;
  std::vector<double> y(x.size());
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t base = (t * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(pos[t]) * InvFreqFp32(theta, i, head_dim);
        const double c = std::cos(double{angle});
        const double s = std::sin(double{angle});
        const double x1 = x[base + i];
        const double x2 = x[base + half + i];
        y[base + i] = x1 * c - x2 * s;  // rotate_half: (-x2, x1)
        y[base + half + i] = x2 * c + x1 * s;
      }
    }
  }
  return y;
}

struct RopeCase {
  int64_t heads;
  int64_t head_dim;
  double theta;
};

class RopeTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeTest, MatchesReferenceAtArbitraryPositions) {
  // Tolerance: fp32 cos/sin and two products per output: 1e-6 * (|x1| + |x2|).
  const RopeCase c = GetParam();
  std::vector<int32_t> pos = {0, 1, 7, 262143, 131072, 5, 1048575, 3, 262142, 8191, 2, 999999};
  const std::vector<float> extra = RandomUniform(20, 7, 0.0f, 2000000.0f);
  for (float p : extra) pos.push_back(static_cast<int32_t>(p));
  const int64_t n = static_cast<int64_t>(pos.size());
  std::vector<float> x = RandomUniform(n * c.heads * c.head_dim, 8);
  const std::vector<double> ref = RopeReference(x, pos, c.heads, c.head_dim, c.theta);
  const std::vector<float> x0 = x;
  RopeNeox(x.data(), pos.data(), n, c.heads, c.head_dim, c.theta);
  const int64_t half = c.head_dim / 2;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < c.heads; ++h) {
      const int64_t base = (t * c.heads + h) * c.head_dim;
      for (int64_t i = 0; i < c.head_dim; ++i) {
        const int64_t pair = i < half ? i : i - half;
        const double mag = std::abs(x0[base + pair]) + std::abs(x0[base + half + pair]);
        ASSERT_NEAR(x[base + i], ref[base + i], 1e-6 * mag)
            << "pos " << pos[t] << " head " << h << " dim " << i;
      }
    }
  }
}

TEST_P(RopeTest, PositionZeroIsIdentity) {
  const RopeCase c = GetParam();
  const int64_t n = 3;
  std::vector<int32_t> pos(n, 0);
  std::vector<float> x = RandomUniform(n * c.heads * c.head_dim, 9);
  const std::vector<float> x0 = x;
  RopeNeox(x.data(), pos.data(), n, c.heads, c.head_dim, c.theta);
  EXPECT_EQ(x, x0);
}

// q.k after rotating q to position pq and k to position pk depends only on pq - pk. With fp32
// angles, each angle carries a rounding error of up to |angle| * 2^-24 <= pos * 2^-24, so the
// tolerance is |q| |k| (2 max_pos 2^-24 + 1e-6): 2.4e-4 relative for positions below 2048 and
// 0.03 near 262143 (still far below the O(1) change a wrong rotation makes).
TEST_P(RopeTest, DotProductDependsOnlyOnRelativePosition) {
  const RopeCase c = GetParam();
  const std::vector<float> q = RandomUniform(c.head_dim, 11);
  const std::vector<float> k = RandomUniform(c.head_dim, 12);
  double norm_q = 0.0, norm_k = 0.0;
  for (int64_t i = 0; i < c.head_dim; ++i) {
    norm_q += double{q[i]} * q[i];
    norm_k += double{k[i]} * k[i];
  }
  const double norms = std::sqrt(norm_q * norm_k);
  auto rotated_dot = [&](int32_t pq, int32_t pk) {
    std::vector<float> qr = q, kr = k;
    RopeNeox(qr.data(), &pq, 1, 1, c.head_dim, c.theta);
    RopeNeox(kr.data(), &pk, 1, 1, c.head_dim, c.theta);
    double dot = 0.0;
    for (int64_t i = 0; i < c.head_dim; ++i) dot += double{qr[i]} * kr[i];
    return dot;
  };
  for (int32_t delta : {0, 1, 5, -3, 100, 1000, -1000}) {
    const double want = delta >= 0 ? rotated_dot(delta, 0) : rotated_dot(0, -delta);
    for (int32_t base : {1, 17, 1000}) {
      const int32_t pq = base + std::max(delta, 0) + 7, pk = pq - delta;
      const double tol = norms * (2.0 * std::max(pq, pk) * std::ldexp(1.0, -24) + 1e-6);
      EXPECT_NEAR(rotated_dot(pq, pk), want, tol) << "pq " << pq << " pk " << pk;
    }
    const int32_t pq = 262143, pk = pq - delta;
    const double tol = norms * (2.0 * std::max(pq, pk) * std::ldexp(1.0, -24) + 1e-6);
    EXPECT_NEAR(rotated_dot(pq, pk), want, tol) << "pq " << pq << " pk " << pk;
  }
  // And it does depend on the distance: a different delta gives a different dot product.
  EXPECT_GT(std::abs(rotated_dot(10, 0) - rotated_dot(11, 0)), 1e-3 * norms);
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeTest,
                         ::testing::Values(RopeCase{3, 64, 10000.0}, RopeCase{2, 128, 1000000.0},
                                           RopeCase{1, 128, 10000000.0}, RopeCase{4, 64, 100000.0},
                                           RopeCase{1, 2, 10000.0}));

}  // namespace
}  // namespace mp::cpu
