// SampleGreedy and SampleTopP: ties, the sampled distribution against the softmax (a uniform grid
// and a chi-square test on pseudo-random uniforms), the nucleus cut and determinism.
#include "kernels/cpu/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"

namespace mp::cpu {
namespace {

using testing::RandomUniform;

TEST(SampleGreedyTest, ReturnsTheArgmax) {
  std::vector<float> logits = RandomUniform(1000, 1, -10.0f, 10.0f);
  logits[613] = 11.0f;
  EXPECT_EQ(SampleGreedy(logits.data(), 1000), 613);
  logits[0] = 12.0f;
  EXPECT_EQ(SampleGreedy(logits.data(), 1000), 0);
  logits[999] = 13.0f;
  EXPECT_EQ(SampleGreedy(logits.data(), 1000), 999);
  const std::vector<float> negative = {-5.0f, -3.0f, -4.0f};
  EXPECT_EQ(SampleGreedy(negative.data(), 3), 1);
  const float single = -1.0f;
  EXPECT_EQ(SampleGreedy(&single, 1), 0);
}

TEST(SampleGreedyTest, TiesGoToTheLowestIndex) {
  std::vector<float> logits = RandomUniform(50, 2, -1.0f, 1.0f);
  logits[17] = 3.0f;
  logits[5] = 3.0f;
  logits[40] = 3.0f;
  EXPECT_EQ(SampleGreedy(logits.data(), 50), 5);
  const std::vector<float> equal(9, 0.5f);
  EXPECT_EQ(SampleGreedy(equal.data(), 9), 0);
}

TEST(SampleTopPTest, NonPositiveTemperatureIsGreedy) {
  std::vector<float> logits = RandomUniform(100, 3, -2.0f, 2.0f);
  logits[42] = 5.0f;
  for (double u : {0.0, 0.3, 0.999}) {
    EXPECT_EQ(SampleTopP(logits.data(), 100, 0.0f, 1.0f, u), 42);
    EXPECT_EQ(SampleTopP(logits.data(), 100, -1.0f, 0.5f, u), 42);
  }
}

// softmax(logits / temperature) in double.
std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  const double m = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    p[i] = std::exp((logits[i] - m) / temperature);
    sum += p[i];
  }
  for (double& x : p) x /= sum;
  return p;
}

// Tokens of the smallest top set whose probability reaches top_p, renormalized; others 0.
std::vector<double> Nucleus(const std::vector<double>& p, double top_p) {
  std::vector<size_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  std::vector<double> q(p.size(), 0.0);
  double kept = 0.0;
  for (size_t r = 0; r < order.size() && (r == 0 || kept < top_p); ++r) {
    q[order[r]] = p[order[r]];
    kept += p[order[r]];
  }
  for (double& x : q) x /= kept;
  return q;
}

// Samples at N evenly spaced uniforms (k + 0.5) / N: an inverse CDF puts N p_i +- 1 of them on
// token i, whatever the order in which it lays the tokens out.
void ExpectGridCounts(const std::vector<float>& logits, float temperature, float top_p,
                      const std::vector<double>& want_p) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  const int64_t n = 100000;
  std::vector<int64_t> counts(vocab, 0);
  for (int64_t k = 0; k < n; ++k) {
    const int32_t t = SampleTopP(logits.data(), vocab, temperature, top_p, (k + 0.5) / n);
    ASSERT_GE(t, 0);
    ASSERT_LT(t, vocab);
    ++counts[t];
  }
  for (int64_t i = 0; i < vocab; ++i) {
    EXPECT_NEAR(static_cast<double>(counts[i]), n * want_p[i], 2.0)
        << "token " << i << " (T=" << temperature << ", top_p=" << top_p << ")";
  }
}

TEST(SampleTopPTest, FullNucleusFollowsTheSoftmax) {
  const std::vector<float> logits = RandomUniform(8, 4, -2.0f, 2.0f);
  for (float temperature : {1.0f, 0.5f, 2.0f}) {
    ExpectGridCounts(logits, temperature, 1.0f, Softmax(logits, temperature));
  }
}

TEST(SampleTopPTest, ChiSquareOnPseudoRandomUniforms) {
  // 200000 draws over 8 tokens at T = 1, top_p = 1; the chi-square statistic with 7 degrees of
  // freedom exceeds 24.32 with probability 0.001 (the seed is fixed, so the test is stable).
  const std::vector<float> logits = RandomUniform(8, 5, -2.0f, 2.0f);
  const std::vector<double> p = Softmax(logits, 1.0);
  std::mt19937_64 rng(6);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const int64_t n = 200000;
  std::vector<int64_t> counts(8, 0);
  for (int64_t k = 0; k < n; ++k) ++counts[SampleTopP(logits.data(), 8, 1.0f, 1.0f, uniform(rng))];
  double chi2 = 0.0;
  for (int i = 0; i < 8; ++i) {
    const double expected = n * p[i];
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  EXPECT_LT(chi2, 24.32);
}

TEST(SampleTopPTest, NucleusCutsTheTail) {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.5f, 0.0f, 1.9f, -3.0f, 0.7f};
  const std::vector<double> p = Softmax(logits, 1.0);
  for (float top_p : {0.3f, 0.6f, 0.9f}) {
    const std::vector<double> q = Nucleus(p, top_p);
    ExpectGridCounts(logits, 1.0f, top_p, q);
    int64_t kept = 0;
    for (double x : q) kept += x > 0.0 ? 1 : 0;
    EXPECT_LT(kept, 8) << "top_p " << top_p << " must drop some tokens";
  }
}

TEST(SampleTopPTest, TinyTopPIsTheArgmax) {
  std::vector<float> logits = RandomUniform(500, 7, -1.0f, 1.0f);
  logits[321] = 1.5f;
  for (double u : {0.0, 0.25, 0.5, 0.75, 0.999999}) {
    EXPECT_EQ(SampleTopP(logits.data(), 500, 1.0f, 1e-6f, u), 321);
    EXPECT_EQ(SampleTopP(logits.data(), 500, 0.7f, 0.0f, u), 321);
  }
}

TEST(SampleTopPTest, DeterministicForAGivenUniform) {
  const std::vector<float> logits = RandomUniform(1000, 8, -3.0f, 3.0f);
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<int32_t> seen;
  for (int k = 0; k < 200; ++k) {
    const double u = uniform(rng);
    const int32_t t = SampleTopP(logits.data(), 1000, 0.8f, 0.95f, u);
    EXPECT_EQ(SampleTopP(logits.data(), 1000, 0.8f, 0.95f, u), t);
    seen.push_back(t);
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_GT(std::unique(seen.begin(), seen.end()) - seen.begin(), 20) << "not sampling at all";
}

}  // namespace
}  // namespace mp::cpu
