#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace mp::cpu {

int32_t SampleGreedy(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

int32_t SampleTopP(const float* logits, int64_t vocab, float temperature, float top_p,
                   double uniform) {
  if (temperature <= 0.0f || vocab <= 1) return SampleGreedy(logits, vocab);
  const int32_t argmax = SampleGreedy(logits, vocab);
  // Unnormalized probabilities exp((l - max) / T), in double.
  const double max_logit = logits[argmax];
  const double inv_t = 1.0 / static_cast<double>(temperature);
  std::vector<double> weight(static_cast<size_t>(vocab));
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    weight[i] = std::exp((static_cast<double>(logits[i]) - max_logit) * inv_t);
    total += weight[i];
  }
  // Tokens by decreasing probability, the lower index first among equals.
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return weight[a] != weight[b] ? weight[a] > weight[b] : a < b;
  });
  // The nucleus: the shortest prefix whose probability reaches top_p (at least one token).
  double kept = 0.0;
  int64_t count = 0;
  if (top_p >= 1.0f) {
    kept = total;
    count = vocab;
  } else {
    const double target = static_cast<double>(top_p) * total;
    while (count < vocab) {
      kept += weight[order[count]];
      ++count;
      if (kept >= target) break;
    }
  }
  // Inverse CDF over the nucleus, in the same order.
  const double u = std::clamp(uniform, 0.0, 1.0) * kept;
  double cumulative = 0.0;
  for (int64_t r = 0; r < count; ++r) {
    cumulative += weight[order[r]];
    if (u < cumulative) return order[r];
  }
  return order[count - 1];  // u rounded onto the upper end
}

}  // namespace mp::cpu
