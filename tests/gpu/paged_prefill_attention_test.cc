// GPU test of mp::cuda::PagedPrefillAttention against a double-precision reference computed here
// from the same bf16 inputs. Needs an sm_90 GPU (label gpu).
#include "kernels/cuda/paged_prefill_attention.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace mp::cuda {
namespace {

#define MP_CUDA_ASSERT(expr)                                              \
  do {                                                                    \
    const cudaError_t mp_err_ = (expr);                                   \
    ASSERT_EQ(mp_err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(mp_err_); \
  } while (0)

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
  cudaError_t Upload(const std::vector<T>& host) {
    return cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  cudaError_t Download(std::vector<T>* host) const {
    host->resize(count_);
    return cudaMemcpy(host->data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost);
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

struct Case {
  int64_t head_dim = 128;
  int64_t q_heads = 28;
  int64_t kv_heads = 4;
  int64_t num_queries = 0;
  int64_t key_begin = 0;
  int64_t key_end = 0;
  int64_t block_size = 64;
  bool causal = true;
  int64_t extra_blocks = 3;  // unused cache blocks (filled with NaN) mixed into the pool
  float key_std = 1.0f;      // larger values make the softmax peakier
  uint64_t seed = 1;
};

std::string Describe(const Case& c) {
  return "hd" + std::to_string(c.head_dim) + " heads " + std::to_string(c.q_heads) + "/" +
         std::to_string(c.kv_heads) + " n=" + std::to_string(c.num_queries) + " keys [" +
         std::to_string(c.key_begin) + ", " + std::to_string(c.key_end) + ") block " +
         std::to_string(c.block_size) + (c.causal ? " causal" : " non-causal");
}

bool SupportedGpu() {
  int dev = 0;
  int major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    return false;
  }
  return major == 9;
}

// Inputs on the host (bf16 and their exact float values) and the device.
struct Problem {
  Case c;
  int64_t num_blocks = 0;
  float scale = 0;
  std::vector<__nv_bfloat16> q, k_cache, v_cache;
  std::vector<int32_t> block_table;
  // Reference results (double): out [n, q_heads, d], lse [q_heads, n].
  std::vector<double> ref_out, ref_lse;
};

Problem MakeProblem(const Case& c) {
  Problem p;
  p.c = c;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  std::mt19937_64 rng(c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t d = c.head_dim;
  const int64_t needed = std::max<int64_t>(1, (c.key_end + c.block_size - 1) / c.block_size);
  p.num_blocks = needed + c.extra_blocks;

  p.q.resize(c.num_queries * c.q_heads * d);
  for (auto& x : p.q) x = __float2bfloat16(normal(rng));

  // Shuffled block table over a pool with unused blocks.
  std::vector<int32_t> perm(p.num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  p.block_table.assign(perm.begin(), perm.begin() + needed);

  // Every cache row starts as NaN; only keys [key_begin, key_end) get real values, so any read
  // of another row that reaches the result shows up as NaN.
  const __nv_bfloat16 nan = __float2bfloat16(std::numeric_limits<float>::quiet_NaN());
  const size_t cache_elems = p.num_blocks * c.kv_heads * c.block_size * d;
  p.k_cache.assign(cache_elems, nan);
  p.v_cache.assign(cache_elems, nan);
  for (int64_t pos = c.key_begin; pos < c.key_end; ++pos) {
    const int64_t blk = p.block_table[pos / c.block_size];
    const int64_t row = pos % c.block_size;
    for (int64_t h = 0; h < c.kv_heads; ++h) {
      const size_t off = ((blk * c.kv_heads + h) * c.block_size + row) * d;
      for (int64_t i = 0; i < d; ++i) {
        p.k_cache[off + i] = __float2bfloat16(c.key_std * normal(rng));
        p.v_cache[off + i] = __float2bfloat16(normal(rng));
      }
    }
  }
  return p;
}

// Double-precision attention over the bf16 inputs, threads over query heads.
void ComputeReference(Problem* p) {
  const Case& c = p->c;
  const int64_t d = c.head_dim, n = c.num_queries, group = c.q_heads / c.kv_heads;
  p->ref_out.assign(n * c.q_heads * d, 0.0);
  p->ref_lse.assign(c.q_heads * n, -std::numeric_limits<double>::infinity());
  auto key_row = [&](const std::vector<__nv_bfloat16>& cache, int64_t pos, int64_t h) {
    const int64_t blk = p->block_table[pos / c.block_size];
    return &cache[((blk * c.kv_heads + h) * c.block_size + pos % c.block_size) * d];
  };
  auto work = [&](int64_t h) {
    const int64_t kvh = h / group;
    std::vector<double> logits, q(d), o(d);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t hi =
          c.causal ? std::min(c.key_end, c.key_end - n + i + 1) : c.key_end;
      if (hi <= c.key_begin) continue;  // no visible key: out 0, lse -inf
      for (int64_t x = 0; x < d; ++x) {
        q[x] = __bfloat162float(p->q[(i * c.q_heads + h) * d + x]);
      }
      logits.resize(hi - c.key_begin);
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = c.key_begin; j < hi; ++j) {
        const __nv_bfloat16* k = key_row(p->k_cache, j, kvh);
        double dot = 0;
        for (int64_t x = 0; x < d; ++x) dot += q[x] * __bfloat162float(k[x]);
        logits[j - c.key_begin] = dot * p->scale;
        mx = std::max(mx, logits[j - c.key_begin]);
      }
      double sum = 0;
      std::fill(o.begin(), o.end(), 0.0);
      for (int64_t j = c.key_begin; j < hi; ++j) {
        const double w = std::exp(logits[j - c.key_begin] - mx);
        sum += w;
        const __nv_bfloat16* v = key_row(p->v_cache, j, kvh);
        for (int64_t x = 0; x < d; ++x) o[x] += w * __bfloat162float(v[x]);
      }
      for (int64_t x = 0; x < d; ++x) p->ref_out[(i * c.q_heads + h) * d + x] = o[x] / sum;
      p->ref_lse[h * n + i] = mx + std::log(sum);
    }
  };
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>(c.q_heads, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int64_t h = t; h < c.q_heads; h += threads) work(h);
    });
  }
  for (auto& th : pool) th.join();
}

struct GpuResult {
  std::vector<__nv_bfloat16> out;
  std::vector<float> lse;
};

// Runs the kernel with NaN-poisoned outputs.
void RunGpu(const Problem& p, GpuResult* result) {
  const Case& c = p.c;
  DeviceBuffer<__nv_bfloat16> q(p.q.size()), k(p.k_cache.size()), v(p.v_cache.size());
  DeviceBuffer<int32_t> table(p.block_table.size());
  DeviceBuffer<__nv_bfloat16> out(p.q.size());
  DeviceBuffer<float> lse(c.q_heads * c.num_queries);
  ASSERT_NE(q.get(), nullptr);
  ASSERT_NE(k.get(), nullptr);
  ASSERT_NE(v.get(), nullptr);
  MP_CUDA_ASSERT(q.Upload(p.q));
  MP_CUDA_ASSERT(k.Upload(p.k_cache));
  MP_CUDA_ASSERT(v.Upload(p.v_cache));
  MP_CUDA_ASSERT(table.Upload(p.block_table));
  MP_CUDA_ASSERT(cudaMemset(out.get(), 0xFF, p.q.size() * sizeof(__nv_bfloat16)));
  MP_CUDA_ASSERT(cudaMemset(lse.get(), 0xFF, c.q_heads * c.num_queries * sizeof(float)));

  PagedPrefillAttentionArgs a;
  a.q = q.get();
  a.k_cache = k.get();
  a.v_cache = v.get();
  a.block_table = table.get();
  a.out = out.get();
  a.lse = lse.get();
  a.num_queries = c.num_queries;
  a.q_heads = c.q_heads;
  a.kv_heads = c.kv_heads;
  a.head_dim = c.head_dim;
  a.num_blocks = p.num_blocks;
  a.block_size = c.block_size;
  a.key_begin = c.key_begin;
  a.key_end = c.key_end;
  a.causal = c.causal;
  a.scale = p.scale;
  ASSERT_EQ(PagedPrefillAttentionUnsupported(a), "");
  MP_CUDA_ASSERT(PagedPrefillAttention(a, nullptr));
  MP_CUDA_ASSERT(cudaDeviceSynchronize());
  MP_CUDA_ASSERT(out.Download(&result->out));
  MP_CUDA_ASSERT(lse.Download(&result->lse));
}

void CheckAgainstReference(const Problem& p, const GpuResult& r) {
  const Case& c = p.c;
  const int64_t d = c.head_dim, n = c.num_queries;
  double err2 = 0, ref2 = 0, worst_row = 0, worst_lse = 0;
  int64_t bad_rows = 0, empty_rows = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < c.q_heads; ++h) {
      const double ref_lse = p.ref_lse[h * n + i];
      const float got_lse = r.lse[h * n + i];
      const size_t off = (i * c.q_heads + h) * d;
      if (std::isinf(ref_lse)) {  // row with no visible key: exactly 0 and -inf
        ++empty_rows;
        bool zero = true;
        for (int64_t x = 0; x < d; ++x) zero &= __bfloat162float(r.out[off + x]) == 0.0f;
        EXPECT_TRUE(zero) << "row " << i << " head " << h << " has no keys but out != 0";
        EXPECT_TRUE(std::isinf(got_lse) && got_lse < 0)
            << "row " << i << " head " << h << " lse " << got_lse << ", want -inf";
        continue;
      }
      ASSERT_TRUE(std::isfinite(got_lse)) << "row " << i << " head " << h << " lse " << got_lse;
      worst_lse = std::max(worst_lse, std::fabs(got_lse - ref_lse));
      double row_err2 = 0, row_ref2 = 0;
      for (int64_t x = 0; x < d; ++x) {
        const double got = __bfloat162float(r.out[off + x]);
        ASSERT_TRUE(std::isfinite(got)) << "row " << i << " head " << h << " col " << x;
        const double want = p.ref_out[off + x];
        row_err2 += (got - want) * (got - want);
        row_ref2 += want * want;
      }
      err2 += row_err2;
      ref2 += row_ref2;
      const double row_rel = std::sqrt(row_err2 / std::max(row_ref2, 1e-30));
      worst_row = std::max(worst_row, row_rel);
      if (row_rel > 2e-2) ++bad_rows;
    }
  }
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0;
  EXPECT_LE(rel, 1e-2) << Describe(c);
  EXPECT_EQ(bad_rows, 0) << Describe(c) << ": rows with relative error > 2e-2, worst "
                         << worst_row;
  EXPECT_LE(worst_lse, 1e-2) << Describe(c);
  std::printf("[ stats    ] %s: rel err %.2e, worst row %.2e, worst |dlse| %.2e, %lld empty rows\n",
              Describe(c).c_str(), rel, worst_row, worst_lse,
              static_cast<long long>(empty_rows));
}

void RunCase(const Case& c) {
  ASSERT_TRUE(SupportedGpu()) << "needs an sm_90 GPU (H100/H200)";
  Problem p = MakeProblem(c);
  ComputeReference(&p);
  GpuResult r;
  RunGpu(p, &r);
  if (::testing::Test::HasFatalFailure()) return;
  CheckAgainstReference(p, r);
}

TEST(PagedPrefillAttentionTest, Gqa28x4CausalSquareHd128) {
  RunCase({.head_dim = 128, .q_heads = 28, .kv_heads = 4, .num_queries = 300, .key_begin = 0,
           .key_end = 300, .block_size = 64, .causal = true, .seed = 11});
}

TEST(PagedPrefillAttentionTest, Gqa28x4CausalChunkAfterCacheHd128) {
  RunCase({.head_dim = 128, .q_heads = 28, .kv_heads = 4, .num_queries = 200, .key_begin = 0,
           .key_end = 1000, .block_size = 128, .causal = true, .seed = 12});
}

TEST(PagedPrefillAttentionTest, Gqa4x2NonCausalUnalignedKeyBeginHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 257, .key_begin = 130,
           .key_end = 700, .block_size = 64, .causal = false, .seed = 13});
}

TEST(PagedPrefillAttentionTest, Gqa4x2CausalKeyBeginHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 190, .key_begin = 333,
           .key_end = 1111, .block_size = 192, .causal = true, .seed = 14});
}

TEST(PagedPrefillAttentionTest, SingleQueryHd128) {
  RunCase({.head_dim = 128, .q_heads = 28, .kv_heads = 4, .num_queries = 1, .key_begin = 0,
           .key_end = 999, .block_size = 64, .causal = true, .seed = 15});
}

TEST(PagedPrefillAttentionTest, SingleQueryFewKeysHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 1, .key_begin = 500,
           .key_end = 517, .block_size = 256, .causal = false, .seed = 16});
}

TEST(PagedPrefillAttentionTest, PeakySoftmaxLongKeysHd128) {
  // Logits with std 4 over 16 key tiles: the running max changes across tiles.
  RunCase({.head_dim = 128, .q_heads = 28, .kv_heads = 4, .num_queries = 260, .key_begin = 0,
           .key_end = 2000, .block_size = 64, .causal = true, .key_std = 4.0f, .seed = 17});
}

TEST(PagedPrefillAttentionTest, ManyTilesNonCausalHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 130, .key_begin = 64,
           .key_end = 4100, .block_size = 64, .causal = false, .seed = 18});
}

TEST(PagedPrefillAttentionTest, RowsWithoutKeysHd128) {
  // Row i sees keys [200, 101 + i): rows 0..99 see none.
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 300, .key_begin = 200,
           .key_end = 400, .block_size = 64, .causal = true, .seed = 19});
}

TEST(PagedPrefillAttentionTest, MoreQueriesThanKeysHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 300, .key_begin = 0,
           .key_end = 100, .block_size = 64, .causal = true, .seed = 20});
}

TEST(PagedPrefillAttentionTest, EmptyKeyRangeHd128) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 70, .key_begin = 64,
           .key_end = 64, .block_size = 64, .causal = false, .seed = 21});
}

TEST(PagedPrefillAttentionTest, Gqa4x2CausalHd64) {
  RunCase({.head_dim = 64, .q_heads = 4, .kv_heads = 2, .num_queries = 333, .key_begin = 70,
           .key_end = 900, .block_size = 64, .causal = true, .seed = 22});
}

TEST(PagedPrefillAttentionTest, Gqa28x4NonCausalHd64) {
  RunCase({.head_dim = 64, .q_heads = 28, .kv_heads = 4, .num_queries = 129, .key_begin = 0,
           .key_end = 129, .block_size = 192, .causal = false, .seed = 23});
}

TEST(PagedPrefillAttentionTest, Gqa28x4CausalChunkHd64) {
  RunCase({.head_dim = 64, .q_heads = 28, .kv_heads = 4, .num_queries = 250, .key_begin = 0,
           .key_end = 1300, .block_size = 128, .causal = true, .key_std = 3.0f, .seed = 24});
}

// Small case kept separate so a memory checker can run it alone (filter *Sanitizer*).
TEST(PagedPrefillAttentionTest, SanitizerSmallCausal) {
  RunCase({.head_dim = 128, .q_heads = 4, .kv_heads = 2, .num_queries = 150, .key_begin = 70,
           .key_end = 420, .block_size = 64, .causal = true, .seed = 25});
}

TEST(PagedPrefillAttentionTest, RepeatedRunsAreBitIdentical) {
  ASSERT_TRUE(SupportedGpu()) << "needs an sm_90 GPU (H100/H200)";
  Case c{.head_dim = 128, .q_heads = 28, .kv_heads = 4, .num_queries = 512, .key_begin = 0,
         .key_end = 1536, .block_size = 64, .causal = true, .seed = 26};
  Problem p = MakeProblem(c);
  GpuResult a, b;
  RunGpu(p, &a);
  RunGpu(p, &b);
  if (HasFatalFailure()) return;
  EXPECT_EQ(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(a.out[0])), 0);
  EXPECT_EQ(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)), 0);
}

TEST(PagedPrefillAttentionTest, RejectsUnsupportedArguments) {
  PagedPrefillAttentionArgs a;
  a.num_queries = 4;
  a.q_heads = 4;
  a.kv_heads = 2;
  a.head_dim = 96;
  a.num_blocks = 1;
  a.block_size = 64;
  a.key_end = 10;
  a.scale = 0.1f;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("head_dim 96"), std::string::npos);
  EXPECT_EQ(PagedPrefillAttention(a, nullptr), cudaErrorInvalidValue);
  a.head_dim = 128;
  a.block_size = 32;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("block_size 32"), std::string::npos);
  a.block_size = 64;
  a.q_heads = 3;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("q_heads (3)"), std::string::npos);
  a.q_heads = 4;
  a.key_begin = 11;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("key range"), std::string::npos);
  a.key_begin = 0;
  a.scale = 0.0f;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("scale"), std::string::npos);
  a.scale = 0.1f;
  EXPECT_NE(PagedPrefillAttentionUnsupported(a).find("non-null"), std::string::npos);
}

}  // namespace
}  // namespace mp::cuda
