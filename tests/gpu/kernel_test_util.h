// Helpers shared by the GPU kernel tests (raw kernels, no backend): device buffers, CUDA status
// assertions, the GPU requirement, bf16 conversion and random bf16 inputs, paged KV caches on the
// host and the device, and the comparison of attention outputs with a double-precision reference.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace mp::cuda::testing {

#define MP_CUDA_ASSERT(expr)                                                         \
  do {                                                                               \
    const cudaError_t mp_err_ = (expr);                                              \
    ASSERT_EQ(mp_err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(mp_err_); \
  } while (0)

// True when the current device is an sm_90 GPU (H100/H200). Tests assert it: without such a GPU
// they fail instead of passing vacuously.
inline bool HaveSm90Gpu() {
  int dev = 0;
  int major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    return false;
  }
  return major == 9;
}

inline int NumSms() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 0;
  return sms;
}

// Device allocation freed on scope exit.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)) == cudaSuccess) {
      ptr_ = static_cast<T*>(p);
    }
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  cudaError_t Upload(const std::vector<T>& host) {
    if (ptr_ == nullptr) return cudaErrorMemoryAllocation;
    return cudaMemcpy(ptr_, host.data(), std::min(host.size(), count_) * sizeof(T),
                      cudaMemcpyHostToDevice);
  }
  cudaError_t Download(std::vector<T>* host) const {
    if (ptr_ == nullptr) return cudaErrorMemoryAllocation;
    host->resize(count_);
    return cudaMemcpy(host->data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost);
  }
  // Fills every byte with `byte` (0xFF: NaN for bf16 and float).
  cudaError_t Poison(int byte = 0xFF) {
    if (ptr_ == nullptr) return cudaErrorMemoryAllocation;
    return cudaMemset(ptr_, byte, std::max<size_t>(count_, 1) * sizeof(T));
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

inline float Bf(__nv_bfloat16 x) { return __bfloat162float(x); }

// The larger of a and b, NaN when either is NaN (std::max(a, NaN) is a, which would let a
// NaN-poisoned output that was never written pass a "max difference <= tol" check).
inline double MaxOrNaN(double a, double b) {
  return std::isnan(a) || std::isnan(b) ? std::numeric_limits<double>::quiet_NaN() : std::max(a, b);
}

// `count` bf16 values from N(0, 1), deterministic for a seed.
inline std::vector<__nv_bfloat16> RandomBf16(int64_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<__nv_bfloat16> x(static_cast<size_t>(count));
  for (auto& v : x) v = __float2bfloat16(normal(rng));
  return x;
}

// A paged bf16 KV cache [num_blocks, kv_heads, block_size, head_dim] holding random keys and
// values for the positions [key_begin, key_end) of each sequence, and NaN in every other row.
// Table entries of blocks that hold none of a sequence's keys point to an all-NaN block, and
// the pool's blocks are shuffled, so a kernel that reads a wrong row or table entry shows NaN.
struct PagedCache {
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_size = 0;
  int64_t num_blocks = 0;
  int64_t table_stride = 0;
  std::vector<__nv_bfloat16> k, v;  // [num_blocks, kv_heads, block_size, head_dim]
  std::vector<int32_t> tables;      // [num_seqs, table_stride]

  // Element offset of key `pos` of sequence `seq`, KV head `head`.
  size_t Offset(int64_t seq, int64_t pos, int64_t head) const {
    const int64_t blk = tables[seq * table_stride + pos / block_size];
    return static_cast<size_t>(((blk * kv_heads + head) * block_size + pos % block_size) *
                               head_dim);
  }
  const __nv_bfloat16* K(int64_t seq, int64_t pos, int64_t head) const {
    return &k[Offset(seq, pos, head)];
  }
  const __nv_bfloat16* V(int64_t seq, int64_t pos, int64_t head) const {
    return &v[Offset(seq, pos, head)];
  }
};

// ranges[s] = (key_begin, key_end) of sequence s (empty ranges allowed).
inline PagedCache MakePagedCache(const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                 int64_t kv_heads, int64_t head_dim, int64_t block_size,
                                 float key_std, uint64_t seed, int64_t extra_blocks = 3) {
  PagedCache c;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.block_size = block_size;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int64_t real = 0;
  for (const auto& [kb, ke] : ranges) {
    c.table_stride = std::max(c.table_stride, (ke + block_size - 1) / block_size + 1);
    if (ke > kb) real += (ke - 1) / block_size - kb / block_size + 1;
  }
  c.table_stride = std::max<int64_t>(c.table_stride, 1);
  c.num_blocks = real + 1 + extra_blocks;  // + the NaN block + unused ones
  std::vector<int32_t> perm(c.num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  const int32_t nan_block = perm[0];
  int64_t next = 1;
  c.tables.assign(ranges.size() * c.table_stride, nan_block);
  const __nv_bfloat16 nan = __float2bfloat16(std::numeric_limits<float>::quiet_NaN());
  const size_t elems = static_cast<size_t>(c.num_blocks * kv_heads * block_size * head_dim);
  c.k.assign(elems, nan);
  c.v.assign(elems, nan);
  for (size_t s = 0; s < ranges.size(); ++s) {
    const auto [kb, ke] = ranges[s];
    if (ke <= kb) continue;
    for (int64_t e = kb / block_size; e <= (ke - 1) / block_size; ++e) {
      c.tables[s * c.table_stride + e] = perm[next++];
    }
    for (int64_t pos = kb; pos < ke; ++pos) {
      for (int64_t h = 0; h < kv_heads; ++h) {
        const size_t off = c.Offset(static_cast<int64_t>(s), pos, h);
        for (int64_t x = 0; x < head_dim; ++x) {
          c.k[off + x] = __float2bfloat16(key_std * normal(rng));
          c.v[off + x] = __float2bfloat16(normal(rng));
        }
      }
    }
  }
  return c;
}

// Device copies of a PagedCache's keys, values and block tables.
struct DevicePagedCache {
  explicit DevicePagedCache(const PagedCache& c)
      : host(&c), k(c.k.size()), v(c.v.size()), tables(c.tables.size()) {}
  cudaError_t Upload() {
    cudaError_t err = k.Upload(host->k);
    if (err == cudaSuccess) err = v.Upload(host->v);
    if (err == cudaSuccess) err = tables.Upload(host->tables);
    return err;
  }

  const PagedCache* host;
  DeviceBuffer<__nv_bfloat16> k, v;  // [num_blocks, kv_heads, block_size, head_dim]
  DeviceBuffer<int32_t> tables;      // [num_seqs, table_stride]
};

// Softmax attention of one query (double, from bf16/float inputs) over the keys [lo, hi) of
// sequence `seq`, KV head `head`: accumulates the normalized output into out[head_dim] and
// returns the natural-log LSE (-inf and out = 0 when the range is empty).
inline double ReferenceAttention(const PagedCache& c, int64_t seq, int64_t head,
                                 const double* q,  // [head_dim], already rotated
                                 int64_t lo, int64_t hi, double scale, double* out) {
  const int64_t d = c.head_dim;
  std::fill(out, out + d, 0.0);
  if (hi <= lo) return -std::numeric_limits<double>::infinity();
  std::vector<double> logits(static_cast<size_t>(hi - lo));
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = lo; j < hi; ++j) {
    const __nv_bfloat16* k = c.K(seq, j, head);
    double dot = 0;
    for (int64_t x = 0; x < d; ++x) dot += q[x] * Bf(k[x]);
    logits[j - lo] = dot * scale;
    mx = std::max(mx, logits[j - lo]);
  }
  double sum = 0;
  for (int64_t j = lo; j < hi; ++j) {
    const double w = std::exp(logits[j - lo] - mx);
    sum += w;
    const __nv_bfloat16* v = c.V(seq, j, head);
    for (int64_t x = 0; x < d; ++x) out[x] += w * Bf(v[x]);
  }
  for (int64_t x = 0; x < d; ++x) out[x] /= sum;
  return mx + std::log(sum);
}

// Merges normalized partial outputs over disjoint key sets (spec §2.4): parts with LSE -inf
// contribute nothing; all empty gives (0, -inf). Returns the merged LSE; out[head_dim].
inline double MergeParts(const std::vector<std::vector<double>>& outs,
                         const std::vector<double>& lses, int64_t head_dim, double* out) {
  std::fill(out, out + head_dim, 0.0);
  double m = -std::numeric_limits<double>::infinity();
  for (double l : lses) m = std::max(m, l);
  if (std::isinf(m)) return m;
  double sum = 0;
  for (size_t i = 0; i < lses.size(); ++i) {
    if (std::isinf(lses[i])) continue;
    const double w = std::exp(lses[i] - m);
    sum += w;
    for (int64_t x = 0; x < head_dim; ++x) out[x] += w * outs[i][x];
  }
  for (int64_t x = 0; x < head_dim; ++x) out[x] /= sum;
  return m + std::log(sum);
}

// Compares attention outputs with a double-precision reference. Row r of `rows` has head_dim
// outputs at out[r * head_dim] and its LSE at lse[lse_index(r)]. Rows whose reference LSE is
// -inf (no visible key) must be exactly 0 with LSE -inf. Tolerances: relative Frobenius error
// <= 1e-2 over all rows, <= 2e-2 for every row, |dlse| <= `lse_tolerance` (default 1e-2).
template <class LseIndex>
void ExpectAttentionNear(const std::vector<double>& ref_out, const std::vector<double>& ref_lse,
                         const std::vector<__nv_bfloat16>& out, const std::vector<float>& lse,
                         int64_t rows, int64_t head_dim, LseIndex lse_index,
                         const std::string& what, double lse_tolerance = 1e-2) {
  double err2 = 0, ref2 = 0, worst_row = 0, worst_lse = 0;
  int64_t bad_rows = 0, empty_rows = 0, bad_empty = 0, non_finite = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const double want_lse = ref_lse[lse_index(r)];
    const float got_lse = lse[lse_index(r)];
    const size_t off = static_cast<size_t>(r * head_dim);
    if (std::isinf(want_lse)) {
      ++empty_rows;
      bool zero = std::isinf(got_lse) && got_lse < 0;
      for (int64_t x = 0; x < head_dim; ++x) zero &= Bf(out[off + x]) == 0.0f;
      if (!zero) ++bad_empty;
      continue;
    }
    if (!std::isfinite(got_lse)) {
      ++non_finite;
      continue;
    }
    worst_lse = std::max(worst_lse, std::fabs(got_lse - want_lse));
    double row_err2 = 0, row_ref2 = 0;
    bool finite = true;
    for (int64_t x = 0; x < head_dim; ++x) {
      const double got = Bf(out[off + x]);
      finite &= std::isfinite(got);
      const double want = ref_out[off + x];
      row_err2 += (got - want) * (got - want);
      row_ref2 += want * want;
    }
    if (!finite) {
      ++non_finite;
      continue;
    }
    err2 += row_err2;
    ref2 += row_ref2;
    const double row_rel = std::sqrt(row_err2 / std::max(row_ref2, 1e-30));
    worst_row = std::max(worst_row, row_rel);
    if (row_rel > 2e-2) ++bad_rows;
  }
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0;
  EXPECT_EQ(non_finite, 0) << what << ": rows with a non-finite output or LSE";
  EXPECT_EQ(bad_empty, 0) << what << ": rows without keys that are not (0, -inf)";
  EXPECT_LE(rel, 1e-2) << what;
  EXPECT_EQ(bad_rows, 0) << what << ": rows with relative error > 2e-2, worst " << worst_row;
  EXPECT_LE(worst_lse, lse_tolerance) << what;
  std::printf("[ stats    ] %s: rel err %.2e, worst row %.2e, worst |dlse| %.2e, %lld empty rows\n",
              what.c_str(), rel, worst_row, worst_lse, static_cast<long long>(empty_rows));
}

}  // namespace mp::cuda::testing
