#include "kernels/cpu/rope.h"

#include <cmath>
#include <vector>

namespace mp::cpu {

void RopeNeox(float* x, const int32_t* positions, int64_t n, int64_t heads, int64_t head_dim,
              double theta) {
  const int64_t half = head_dim / 2;
  // transformers: inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim)), every step fp32.
  std::vector<float> inv_freq(static_cast<size_t>(half));
  const float base = static_cast<float>(theta);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(base, exponent);
  }
  std::vector<float> cos_a(static_cast<size_t>(half));
  std::vector<float> sin_a(static_cast<size_t>(half));
  for (int64_t t = 0; t < n; ++t) {
    const float pos = static_cast<float>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      cos_a[i] = std::cos(angle);
      sin_a[i] = std::sin(angle);
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* x1 = x + (t * heads + h) * head_dim;
      float* x2 = x1 + half;
      for (int64_t i = 0; i < half; ++i) {
        const float a = x1[i];
        const float b = x2[i];
        x1[i] = a * cos_a[i] - b * sin_a[i];
        x2[i] = b * cos_a[i] + a * sin_a[i];
      }
    }
  }
}

}  // namespace mp::cpu
