// Helpers of the vertical-slash GPU tests: the fp32 host copy of a paged bf16 cache for the CPU
// reference (kernels/cpu/vertical_slash_*), the same cache on the device, selection lists and
// indices on both sides in the CPU layout, and a dense softmax in double over an explicit key
// set (the oracle of the sparse kernel, qwen1m-spec.md §9.8).
#pragma once

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/vertical_slash_index.h"
#include "kernels/cpu/vertical_slash_select.h"
#include "kernels/cuda/vertical_slash_estimate.h"
#include "kernels/cuda/vertical_slash_index.h"
#include "tests/gpu/kernel_test_util.h"

namespace mp::cuda::testing {

inline std::vector<float> ToFloat(const std::vector<__nv_bfloat16>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = __bfloat162float(x[i]);
  return out;
}

inline std::vector<__nv_bfloat16> RandomBf16(size_t n, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<__nv_bfloat16> out(n);
  for (auto& x : out) x = __float2bfloat16(normal(rng));
  return out;
}

inline float RoundBf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

// A paged cache (MakePagedCache: random K/V of one sequence, NaN elsewhere, shuffled blocks) on
// the host in fp32 and on the device in bf16.
struct TestCache {
  PagedCache bf16;
  std::vector<float> k, v;  // fp32 copies, same layout
  std::unique_ptr<DeviceBuffer<__nv_bfloat16>> dk, dv;
  std::unique_ptr<DeviceBuffer<int32_t>> dtable;

  TestCache(int64_t len, int64_t kv_heads, int64_t head_dim, int64_t block_size, uint64_t seed,
            float key_std = 1.0f)
      : bf16(MakePagedCache({{0, len}}, kv_heads, head_dim, block_size, key_std, seed)),
        k(ToFloat(bf16.k)),
        v(ToFloat(bf16.v)),
        dk(std::make_unique<DeviceBuffer<__nv_bfloat16>>(bf16.k.size())),
        dv(std::make_unique<DeviceBuffer<__nv_bfloat16>>(bf16.v.size())),
        dtable(std::make_unique<DeviceBuffer<int32_t>>(bf16.tables.size())) {
    EXPECT_EQ(dk->Upload(bf16.k), cudaSuccess);
    EXPECT_EQ(dv->Upload(bf16.v), cudaSuccess);
    EXPECT_EQ(dtable->Upload(bf16.tables), cudaSuccess);
  }
  cpu::PagedKvView Cpu() const {
    cpu::PagedKvView view;
    view.k = k.data();
    view.v = v.data();
    view.block_table = bf16.tables.data();
    view.block_size = bf16.block_size;
    view.kv_heads = bf16.kv_heads;
    view.head_dim = bf16.head_dim;
    return view;
  }
  VerticalSlashKv Gpu() const {
    VerticalSlashKv kv;
    kv.k = dk->get();
    kv.v = dv->get();
    kv.block_table = dtable->get();
    kv.num_blocks = bf16.num_blocks;
    kv.block_size = bf16.block_size;
    kv.kv_heads = bf16.kv_heads;
    kv.head_dim = bf16.head_dim;
    return kv;
  }
  // Key j (sequence position) of kv head h as fp32.
  const float* K(int64_t j, int64_t h) const { return &k[bf16.Offset(0, j, h)]; }
  const float* V(int64_t j, int64_t h) const { return &v[bf16.Offset(0, j, h)]; }
};

// One DCA part's lists for all heads in the CPU layout.
struct HostLists {
  int64_t heads = 0, cap = 0;
  std::vector<int32_t> vertical, vertical_count, slash, slash_count;
  HostLists() = default;
  HostLists(int64_t h, int64_t c)
      : heads(h), cap(c), vertical(h * c), vertical_count(h), slash(h * c), slash_count(h) {}
  cpu::VerticalSlashLists Lists() {
    return {vertical.data(), vertical_count.data(), slash.data(), slash_count.data(), cap, cap};
  }
  cpu::VerticalSlashListsView View() const {
    return {vertical.data(), vertical_count.data(), slash.data(), slash_count.data(), cap, cap};
  }
};

struct DeviceLists {
  int64_t heads = 0, cap = 0;
  std::unique_ptr<DeviceBuffer<int32_t>> vertical, vertical_count, slash, slash_count;
  DeviceLists(int64_t h, int64_t c)
      : heads(h),
        cap(c),
        vertical(std::make_unique<DeviceBuffer<int32_t>>(h * c)),
        vertical_count(std::make_unique<DeviceBuffer<int32_t>>(h)),
        slash(std::make_unique<DeviceBuffer<int32_t>>(h * c)),
        slash_count(std::make_unique<DeviceBuffer<int32_t>>(h)) {
    EXPECT_EQ(vertical->Poison(), cudaSuccess);
    EXPECT_EQ(slash->Poison(), cudaSuccess);
    EXPECT_EQ(vertical_count->Poison(), cudaSuccess);
    EXPECT_EQ(slash_count->Poison(), cudaSuccess);
  }
  VerticalSlashListsDev Dev() const {
    return {vertical->get(), vertical_count->get(), slash->get(), slash_count->get(), cap, cap};
  }
  void Upload(const HostLists& l) {
    EXPECT_EQ(vertical->Upload(l.vertical), cudaSuccess);
    EXPECT_EQ(vertical_count->Upload(l.vertical_count), cudaSuccess);
    EXPECT_EQ(slash->Upload(l.slash), cudaSuccess);
    EXPECT_EQ(slash_count->Upload(l.slash_count), cudaSuccess);
  }
};

// Downloads device lists (any VerticalSlashListsDev with uniform capacity).
inline HostLists DownloadLists(const VerticalSlashListsDev& d, int64_t heads) {
  HostLists l(heads, d.vertical_capacity);
  EXPECT_EQ(cudaMemcpy(l.vertical.data(), d.vertical, l.vertical.size() * 4, cudaMemcpyDefault),
            cudaSuccess);
  EXPECT_EQ(cudaMemcpy(l.slash.data(), d.slash, l.slash.size() * 4, cudaMemcpyDefault),
            cudaSuccess);
  EXPECT_EQ(cudaMemcpy(l.vertical_count.data(), d.vertical_count, heads * 4, cudaMemcpyDefault),
            cudaSuccess);
  EXPECT_EQ(cudaMemcpy(l.slash_count.data(), d.slash_count, heads * 4, cudaMemcpyDefault),
            cudaSuccess);
  return l;
}

inline void ExpectSameLists(const HostLists& got, const HostLists& want, const std::string& what) {
  ASSERT_EQ(got.cap, want.cap) << what;
  EXPECT_EQ(got.vertical_count, want.vertical_count) << what << ": vertical counts";
  EXPECT_EQ(got.slash_count, want.slash_count) << what << ": slash counts";
  EXPECT_EQ(got.vertical, want.vertical) << what << ": vertical lists (padding included)";
  EXPECT_EQ(got.slash, want.slash) << what << ": slash lists (padding included)";
}

// One part's index in the CPU layout.
struct HostIndex {
  int64_t heads = 0, row_blocks = 0, max_blocks = 0, max_columns = 0;
  std::vector<int32_t> block_count, block_offset, column_count, column_index;
  HostIndex() = default;
  HostIndex(int64_t h, int64_t rb, int64_t mb, int64_t mc)
      : heads(h),
        row_blocks(rb),
        max_blocks(mb),
        max_columns(mc),
        block_count(h * rb),
        block_offset(std::max<int64_t>(1, h * rb * mb)),
        column_count(h * rb),
        column_index(std::max<int64_t>(1, h * rb * mc)) {}
  cpu::VerticalSlashIndex Index() {
    return {block_count.data(),  block_offset.data(), column_count.data(),
            column_index.data(), max_blocks,          max_columns};
  }
};

struct DeviceIndex {
  std::unique_ptr<DeviceBuffer<int32_t>> block_count, block_offset, column_count, column_index;
  int64_t max_blocks = 0, max_columns = 0;
  explicit DeviceIndex(const HostIndex& h)
      : block_count(std::make_unique<DeviceBuffer<int32_t>>(h.block_count.size())),
        block_offset(std::make_unique<DeviceBuffer<int32_t>>(h.block_offset.size())),
        column_count(std::make_unique<DeviceBuffer<int32_t>>(h.column_count.size())),
        column_index(std::make_unique<DeviceBuffer<int32_t>>(h.column_index.size())),
        max_blocks(h.max_blocks),
        max_columns(h.max_columns) {}
  void Upload(const HostIndex& h) {
    EXPECT_EQ(block_count->Upload(h.block_count), cudaSuccess);
    EXPECT_EQ(block_offset->Upload(h.block_offset), cudaSuccess);
    EXPECT_EQ(column_count->Upload(h.column_count), cudaSuccess);
    EXPECT_EQ(column_index->Upload(h.column_index), cudaSuccess);
  }
  VerticalSlashIndexDev Dev() const {
    return {block_count->get(),  block_offset->get(), column_count->get(),
            column_index->get(), max_blocks,          max_columns};
  }
};

// In the CPU (uniform) layout with d's max_blocks / max_columns, also from the per-head layout
// (d.heads); there every head's capacity must fit in the uniform one.
inline HostIndex DownloadIndex(const VerticalSlashIndexDev& d, int64_t heads, int64_t row_blocks) {
  HostIndex h(heads, row_blocks, d.max_blocks, d.max_columns);
  auto get = [](std::vector<int32_t>* dst, const int32_t* src) {
    EXPECT_EQ(cudaMemcpy(dst->data(), src, dst->size() * 4, cudaMemcpyDefault), cudaSuccess);
  };
  get(&h.block_count, d.block_count);
  get(&h.column_count, d.column_count);
  if (d.heads == nullptr) {
    if (heads * row_blocks * d.max_blocks > 0) get(&h.block_offset, d.block_offset);
    if (heads * row_blocks * d.max_columns > 0) get(&h.column_index, d.column_index);
    return h;
  }
  std::vector<VerticalSlashHeadSpan> spans(static_cast<size_t>(heads));
  EXPECT_EQ(cudaMemcpy(spans.data(), d.heads, spans.size() * sizeof(VerticalSlashHeadSpan),
                       cudaMemcpyDefault),
            cudaSuccess);
  for (int64_t x = 0; x < heads; ++x) {
    const VerticalSlashHeadSpan& s = spans[x];
    EXPECT_LE(s.max_blocks, d.max_blocks) << "head " << x;
    EXPECT_LE(s.max_columns, d.max_columns) << "head " << x;
    if (s.max_blocks > d.max_blocks || s.max_columns > d.max_columns) return h;
    for (int64_t m = 0; m < row_blocks; ++m) {
      const int64_t rb = x * row_blocks + m;
      if (s.max_blocks > 0) {
        EXPECT_EQ(cudaMemcpy(h.block_offset.data() + rb * d.max_blocks,
                             d.block_offset + s.block_base + m * s.max_blocks,
                             size_t(s.max_blocks) * 4, cudaMemcpyDefault),
                  cudaSuccess);
      }
      if (s.max_columns > 0) {
        EXPECT_EQ(cudaMemcpy(h.column_index.data() + rb * d.max_columns,
                             d.column_index + s.column_base + m * s.max_columns,
                             size_t(s.max_columns) * 4, cudaMemcpyDefault),
                  cudaSuccess);
      }
    }
  }
  return h;
}

// Equal counts, and equal entries below the counts (entries past them are unspecified).
inline void ExpectSameIndex(const HostIndex& got, const HostIndex& want, const std::string& what) {
  ASSERT_EQ(got.block_count, want.block_count) << what << ": block counts";
  ASSERT_EQ(got.column_count, want.column_count) << what << ": column counts";
  int64_t blocks = 0, columns = 0;
  for (int64_t rb = 0; rb < want.heads * want.row_blocks; ++rb) {
    for (int64_t b = 0; b < want.block_count[rb]; ++b, ++blocks) {
      ASSERT_EQ(got.block_offset[rb * got.max_blocks + b],
                want.block_offset[rb * want.max_blocks + b])
          << what << ": row block " << rb << " block " << b;
    }
    for (int64_t c = 0; c < want.column_count[rb]; ++c, ++columns) {
      ASSERT_EQ(got.column_index[rb * got.max_columns + c],
                want.column_index[rb * want.max_columns + c])
          << what << ": row block " << rb << " column " << c;
    }
  }
  std::printf("[ stats    ] %s: %lld blocks, %lld columns equal\n", what.c_str(),
              static_cast<long long>(blocks), static_cast<long long>(columns));
}

// The query q (fp32, head_dim values) rotated by RoPE position `pos` (CPU reference RoPE) and
// rounded to bf16, as the kernels use it.
inline std::vector<double> RotatedQuery(const float* q, int64_t head_dim, int32_t pos,
                                        double theta) {
  std::vector<float> r(q, q + head_dim);
  cpu::RopeNeox(r.data(), &pos, 1, 1, head_dim, theta);
  std::vector<double> out(head_dim);
  for (int64_t x = 0; x < head_dim; ++x) out[x] = RoundBf16(r[x]);
  return out;
}

}  // namespace mp::cuda::testing
