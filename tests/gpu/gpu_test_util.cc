#include "tests/gpu/gpu_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>

#include "common/status.h"

namespace mp::testing {

std::shared_ptr<CudaBackend> SharedCudaBackend() {
  static std::once_flag once;
  static std::shared_ptr<CudaBackend>* backend = nullptr;
  static absl::Status* error = nullptr;
  std::call_once(once, [] {
    absl::StatusOr<std::unique_ptr<CudaBackend>> b = CudaBackend::Create();
    if (b.ok()) {
      backend = new std::shared_ptr<CudaBackend>(*std::move(b));
    } else {
      error = new absl::Status(b.status());
    }
  });
  if (backend == nullptr) {
    ADD_FAILURE() << "this test needs an sm_90 GPU (H100/H200): " << *error;
    return nullptr;
  }
  return *backend;
}

uint16_t Bf16Bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float Bf16Value(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

float RoundToBf16(float f) { return Bf16Value(Bf16Bits(f)); }

Tensor HostBf16(const Tensor& f32) {
  Tensor out = Tensor::Host(f32.shape(), DType::kBF16);
  const float* src = f32.data_as<const float>();
  uint16_t* dst = out.data_as<uint16_t>();
  for (int64_t i = 0; i < f32.numel(); ++i) dst[i] = Bf16Bits(src[i]);
  return out;
}

void AddOutlierChannels(Bf16Input* x, int64_t head_dim, float size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> magnitude(static_cast<int>(size / 2), static_cast<int>(size));
  float* v = x->f32.data_as<float>();
  const int64_t channels[2] = {2, head_dim / 4 + 5};
  for (int64_t row = 0; row < x->f32.numel() / head_dim; ++row) {
    for (const int64_t c : channels) {
      for (const int64_t i : {c, c + head_dim / 2}) {
        v[row * head_dim + i] = static_cast<float>(magnitude(rng) * (rng() % 2 ? 1 : -1));
      }
    }
  }
  x->bf16 = HostBf16(x->f32);
}

Bf16Input RandomBf16Input(std::vector<int64_t> shape, uint64_t seed, float stddev, float mean) {
  Bf16Input in;
  in.f32 = Tensor::Host(shape, DType::kF32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(mean, stddev);
  float* p = in.f32.data_as<float>();
  for (int64_t i = 0; i < in.f32.numel(); ++i) p[i] = RoundToBf16(normal(rng));
  in.bf16 = HostBf16(in.f32);
  return in;
}

absl::StatusOr<Tensor> ToDevice(CudaBackend& backend, const Tensor& host) {
  MP_ASSIGN_OR_RETURN(Tensor t, backend.Allocate(host.shape(), host.dtype()));
  MP_RETURN_IF_ERROR(backend.CopyFromHost(host, t));
  return t;
}

void ExpectBf16Close(const Tensor& got, const Tensor& want, double fro_tol, double elem_tol,
                     const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), DType::kF32) << what;
  ASSERT_EQ(want.dtype(), DType::kF32) << what;
  const float* g = got.data_as<const float>();
  const float* w = want.data_as<const float>();
  const int64_t n = want.numel();
  double err2 = 0, ref2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_TRUE(std::isfinite(g[i])) << what << ": element " << i << " is " << g[i];
    err2 += (static_cast<double>(g[i]) - w[i]) * (static_cast<double>(g[i]) - w[i]);
    ref2 += static_cast<double>(w[i]) * w[i];
  }
  const double rms = n > 0 ? std::sqrt(ref2 / static_cast<double>(n)) : 0.0;
  const double fro = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  EXPECT_LE(fro, fro_tol) << what << ": relative Frobenius error";
  int64_t worst = -1;
  double worst_ratio = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double bound = elem_tol * (std::fabs(w[i]) + rms);
    const double diff = std::fabs(static_cast<double>(g[i]) - w[i]);
    const double ratio = bound > 0 ? diff / bound : (diff > 0 ? INFINITY : 0.0);
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  EXPECT_LE(worst_ratio, 1.0) << what << ": element " << worst << " is " << g[worst]
                              << ", want " << w[worst] << " (tolerance " << elem_tol
                              << " x (|want| + rms " << rms << "))";
  std::printf("[ stats    ] %s: relative Frobenius error %.2e, worst element at %.2f of its "
              "tolerance\n",
              what.c_str(), fro, worst_ratio);
}

void ExpectBitwiseEqual(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const size_t elem = DTypeSize(got.dtype());
  const auto* a = static_cast<const unsigned char*>(got.data());
  const auto* b = static_cast<const unsigned char*>(want.data());
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (std::memcmp(a + i * elem, b + i * elem, elem) != 0) {
      ADD_FAILURE() << what << ": element " << i << " differs";
      return;
    }
  }
}

PagedCache MakePagedCache(CudaBackend& gpu, int64_t num_blocks, int64_t kv_heads,
                          int64_t block_size, int64_t head_dim, int64_t table_len, uint64_t seed,
                          float key_stddev, float outlier) {
  PagedCache c;
  c.block_size = block_size;
  Bf16Input k = RandomBf16Input({num_blocks, kv_heads, block_size, head_dim}, seed, key_stddev);
  if (outlier > 0.0f) AddOutlierChannels(&k, head_dim, outlier, seed + 2);
  Bf16Input v = RandomBf16Input({num_blocks, kv_heads, block_size, head_dim}, seed + 1);
  c.cpu_k = k.f32;
  c.cpu_v = v.f32;
  c.gpu_k = *ToDevice(gpu, k.bf16);
  c.gpu_v = *ToDevice(gpu, v.bf16);
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(static_cast<uint32_t>(seed)));
  c.cpu_table = Tensor::Host({table_len}, DType::kI32);
  std::copy(perm.begin(), perm.begin() + table_len, c.cpu_table.data_as<int32_t>());
  c.gpu_table = *ToDevice(gpu, c.cpu_table);
  return c;
}

}  // namespace mp::testing
