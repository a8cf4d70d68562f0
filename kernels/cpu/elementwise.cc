#include "kernels/cpu/elementwise.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace mp::cpu {
namespace {

// Sixteen fp32 lanes as a GCC/Clang generic vector. Lane-wise compares and selects compile to
// vector instructions on every target (plain loops with float compares stay scalar: the compares
// may trap, so the compiler keeps the branches). On x86-64 the hot loops are cloned for AVX-512
// and AVX2 and picked at load time; elsewhere the vectors lower to the baseline ISA.
using F16 = float __attribute__((vector_size(64)));
using I16 = int32_t __attribute__((vector_size(64)));
using F8 = float __attribute__((vector_size(32)));
using F4 = float __attribute__((vector_size(16)));
using D8 = double __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // F16 by value only in always-inline helpers
#define MP_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MP_VECTOR_CLONES
#endif
#define MP_INLINE inline __attribute__((always_inline))

MP_INLINE F16 Splat(float v) { return F16{} + v; }

MP_INLINE F16 Load(const float* p) {
  F16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

MP_INLINE void Store(float* p, const F16& v) { std::memcpy(p, &v, sizeof(v)); }

// Loads x[0, count) (count < kLanes) padded with `fill`.
MP_INLINE F16 LoadPartial(const float* x, int64_t count, float fill) {
  F16 v = Splat(fill);
  for (int64_t t = 0; t < count; ++t) v[t] = x[t];
  return v;
}

MP_INLINE void StorePartial(float* x, int64_t count, const F16& v) {
  for (int64_t t = 0; t < count; ++t) x[t] = v[t];
}

// exp(x) lane-wise. Cody-Waite reduction x = n ln2 + r with |r| <= ln2/2, the degree-7 Taylor
// polynomial of exp(r) (truncation error < 6e-9) and an exponent-field scale 2^n. Max relative
// error about 1e-7 on [-87, 88]; below -87 the result is 0 (exp(-inf) = 0), above 88 it is +inf.
MP_INLINE F16 Exp(const F16& x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // 9 significant bits: n * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to integer
  const F16 lo = Splat(-87.0f);
  const F16 hi = Splat(88.0f);
  F16 xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const F16 n = (xc * kLog2e + kRound) - kRound;
  const F16 r = (xc - n * kLn2Hi) - n * kLn2Lo;
  F16 p = Splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const I16 bits = (__builtin_convertvector(n, I16) + 127) << 23;
  F16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  F16 y = p * scale;
  y = x < lo ? F16{} : y;
  y = x > hi ? Splat(std::numeric_limits<float>::infinity()) : y;
  return y;
}

MP_INLINE F16 Silu(const F16& g) { return g / (1.0f + Exp(-g)); }

// Splits v into its low and high halves (memcpy compiles to lane extracts).
template <typename Half, typename Full>
MP_INLINE void Halves(const Full& v, Half& lo, Half& hi) {
  std::memcpy(&lo, &v, sizeof(Half));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
}

// Tree reductions: 4 dependent steps instead of 16.
MP_INLINE float HorizontalSum(const F16& v) {
  F8 a, b;
  Halves(v, a, b);
  const F8 s8 = a + b;
  F4 c, d;
  Halves(s8, c, d);
  const F4 s4 = c + d;
  return (s4[0] + s4[1]) + (s4[2] + s4[3]);
}

MP_INLINE float HorizontalMax(const F16& v) {
  F8 a, b;
  Halves(v, a, b);
  const F8 m8 = a > b ? a : b;
  F4 c, d;
  Halves(m8, c, d);
  const F4 m4 = c > d ? c : d;
  const float x = m4[0] > m4[1] ? m4[0] : m4[1];
  const float y = m4[2] > m4[3] ? m4[2] : m4[3];
  return x > y ? x : y;
}

}  // namespace

void Embedding(const int32_t* ids, int64_t n, const float* table, int64_t hidden, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out + i * hidden, table + static_cast<int64_t>(ids[i]) * hidden,
                static_cast<size_t>(hidden) * sizeof(float));
  }
}

MP_VECTOR_CLONES void RmsNorm(const float* x, const float* w, int64_t n, int64_t d, float eps,
                              float* y) {
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * d;
    float* yi = y + i * d;
    // The sum of squares is accumulated in double (eight lanes), so the variance is the fp32
    // rounding of the exact mean for any d; the scaling is fp32, as in transformers.
    D8 acc = D8{};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
      F8 v;
      std::memcpy(&v, xi + j, sizeof(v));
      const D8 vd = __builtin_convertvector(v, D8);
      acc += vd * vd;
    }
    double sum_sq =
        ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; j < d; ++j) sum_sq += static_cast<double>(xi[j]) * xi[j];
    const float variance = static_cast<float>(sum_sq / static_cast<double>(d));
    const float inv_rms = 1.0f / std::sqrt(variance + eps);
    for (int64_t c = 0; c < d; ++c) yi[c] = w[c] * (xi[c] * inv_rms);
  }
}

MP_VECTOR_CLONES void AddInPlace(float* x, const float* y, int64_t count) {
  for (int64_t i = 0; i < count; ++i) x[i] += y[i];
}

MP_VECTOR_CLONES void SiluMul(const float* gate_up, int64_t n, int64_t inter, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* gate = gate_up + i * 2 * inter;
    const float* up = gate + inter;
    float* o = out + i * inter;
    // For g < -88, exp(-g) is inf and silu(g) = -0.
    int64_t j = 0;
    for (; j + kLanes <= inter; j += kLanes) Store(o + j, Silu(Load(gate + j)) * Load(up + j));
    if (j < inter) {
      const int64_t rest = inter - j;
      StorePartial(o + j, rest,
                   Silu(LoadPartial(gate + j, rest, 0.0f)) * LoadPartial(up + j, rest, 0.0f));
    }
  }
}

MP_VECTOR_CLONES void ExpInPlace(float* x, int64_t count) {
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) Store(x + i, Exp(Load(x + i)));
  if (i < count) StorePartial(x + i, count - i, Exp(LoadPartial(x + i, count - i, 0.0f)));
}

MP_VECTOR_CLONES void OnlineSoftmaxStep(float* s, int64_t rows, int64_t cols, float* row_max,
                                        float* row_sum, float* acc, int64_t acc_cols) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t full = cols - cols % kLanes;
  const int64_t rest = cols - full;
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * cols;
    F16 vmax = Splat(ninf);
    for (int64_t c = 0; c < full; c += kLanes) {
      const F16 v = Load(sr + c);
      vmax = v > vmax ? v : vmax;
    }
    if (rest > 0) {
      const F16 v = LoadPartial(sr + full, rest, ninf);
      vmax = v > vmax ? v : vmax;
    }
    const float m_old = row_max[r];
    const float block_max = HorizontalMax(vmax);
    const float m_new = block_max > m_old ? block_max : m_old;
    if (m_new == ninf) {  // nothing visible to this row yet
      std::memset(sr, 0, static_cast<size_t>(cols) * sizeof(float));
      continue;
    }
    const F16 shift = Splat(m_new);
    F16 vsum = F16{};
    for (int64_t c = 0; c < full; c += kLanes) {
      const F16 e = Exp(Load(sr + c) - shift);
      Store(sr + c, e);
      vsum += e;
    }
    if (rest > 0) {
      const F16 e = Exp(LoadPartial(sr + full, rest, ninf) - shift);  // padding: exp(-inf) = 0
      StorePartial(sr + full, rest, e);
      vsum += e;
    }
    const float sum = HorizontalSum(vsum);
    if (m_new != m_old) {
      const float alpha = std::exp(m_old - m_new);  // 0 when m_old = -inf
      row_sum[r] *= alpha;
      float* ar = acc + r * acc_cols;
      for (int64_t c = 0; c < acc_cols; ++c) ar[c] *= alpha;
      row_max[r] = m_new;
    }
    row_sum[r] += sum;
  }
}

}  // namespace mp::cpu

#undef MP_INLINE
#undef MP_VECTOR_CLONES
