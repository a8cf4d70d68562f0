// Random inputs and tolerance helpers shared by the CPU kernel tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace mp::cpu::testing {

// `count` floats uniform in [lo, hi), deterministic for a seed.
inline std::vector<float> RandomUniform(int64_t count, uint64_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(count));
  for (float& x : v) x = dist(rng);
  return v;
}

// `count` floats from N(0, stddev^2).
inline std::vector<float> RandomNormal(int64_t count, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(count));
  for (float& x : v) x = dist(rng);
  return v;
}

// |got - want| <= abs_tol + rel_tol * |want|.
inline bool Near(double got, double want, double abs_tol, double rel_tol) {
  return std::abs(got - want) <= abs_tol + rel_tol * std::abs(want);
}

}  // namespace mp::cpu::testing
