// CudaBackend::VerticalSlashAttention and the stage executor's sparse prefill on the GPU:
//   * full budgets: the CUDA op equals the CPU backend's op (the fp32 reference procedure) on the
//     same bf16-exact inputs, over runs crossing DCA chunk boundaries (YaRN temperature > 1), and
//     without DCA; the call is counted in stats().sparse_prefill_calls;
//   * small budgets change the result (finite, different from DcaAttention);
//   * argument errors are INVALID_ARGUMENT naming the field;
//   * the executor on the GPU: prompts at or below the threshold give bit-identical logits to the
//     dense executor, longer prompts run the sparse op (counted) and with full budgets give the
//     dense logits up to bf16 rounding.
// Needs an sm_90 GPU (label gpu); fails without one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/status_matchers.h"
#include "kernels/cuda/vertical_slash_prefill.h"
#include "model/sparse_attention_config.h"
#include "runtime/backend.h"
#include "runtime/cuda_backend.h"
#include "runtime/stage_executor.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/unit/runtime/tiny_model.h"

namespace mp {
namespace {

using ::absl::StatusCode;
using testing::Bf16Input;
using testing::ExpectBf16Close;
using testing::MakePagedCache;
using testing::PagedCache;
using testing::RandomBf16Input;
using testing::ToDevice;

// A cache for keys [0, len): the blocks they need plus two unused ones.
PagedCache MakeCache(CudaBackend& gpu, int64_t len, int64_t kv_heads, int64_t block_size,
                     int64_t head_dim, uint64_t seed) {
  const int64_t used = (len + block_size - 1) / block_size;
  return MakePagedCache(gpu, used + 2, kv_heads, block_size, head_dim, used, seed);
}

struct OpCase {
  int64_t n, q_heads, kv_heads, head_dim, query_begin, chunk_size, local_size;
  float temperature;
};

class CudaSparseOpTest : public ::testing::TestWithParam<OpCase> {};

TEST_P(CudaSparseOpTest, FullBudgetMatchesTheCpuBackend) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  const OpCase c = GetParam();
  const int64_t len = c.query_begin + c.n;
  const PagedCache cache = MakeCache(*gpu, len, c.kv_heads, 64, c.head_dim, 11 + c.query_begin);
  Bf16Input q = RandomBf16Input({c.n, c.q_heads, c.head_dim}, 12 + c.n);
  std::unique_ptr<Backend> cpu = NewCpuBackend();
  const std::vector<int64_t> budgets(2 * c.q_heads, len + 1);
  VerticalSlashAttentionParams p;
  p.q = &q.f32;
  p.kv = cache.Cpu();
  p.query_begin = c.query_begin;
  p.chunk_size = c.chunk_size;
  p.chunk_len = c.chunk_size - c.local_size;
  p.rope_theta = 10000.0;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  p.temperature = c.temperature;
  p.budgets = budgets;
  Tensor want = Tensor::Host({c.n, c.q_heads, c.head_dim}, DType::kF32);
  Tensor want_lse = Tensor::Host({c.q_heads, c.n}, DType::kF32);
  p.out = &want;
  p.lse = &want_lse;
  std::vector<int64_t> cpu_keys(static_cast<size_t>(c.q_heads), 0);
  p.index_keys = cpu_keys;
  MP_ASSERT_OK(cpu->VerticalSlashAttention(p));

  MP_ASSERT_OK_AND_ASSIGN(Tensor dq, ToDevice(*gpu, q.bf16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, gpu->Allocate({c.n, c.q_heads, c.head_dim}, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor lse, gpu->Allocate({c.q_heads, c.n}, DType::kF32));
  VerticalSlashAttentionParams g = p;
  g.q = &dq;
  g.kv = cache.Gpu();
  g.out = &out;
  g.lse = &lse;
  std::vector<int64_t> gpu_keys(static_cast<size_t>(c.q_heads), 0);
  g.index_keys = gpu_keys;
  const int64_t before = gpu->stats().sparse_prefill_calls;
  MP_ASSERT_OK(gpu->VerticalSlashAttention(g));
  EXPECT_EQ(gpu->stats().sparse_prefill_calls, before + 1);
  // Full budgets select every key on both sides: the same index, the same key count.
  EXPECT_EQ(gpu_keys, cpu_keys) << "index keys (full budget)";
  EXPECT_GE(cpu_keys[0], c.n * c.query_begin + c.n * (c.n + 1) / 2) << "every causal key";
  MP_ASSERT_OK_AND_ASSIGN(Tensor got, gpu->ToHostF32(out));
  ExpectBf16Close(got, want, 1e-2, 3e-2, "sparse attention out (full budget)");
  MP_ASSERT_OK_AND_ASSIGN(Tensor got_lse, gpu->ToHostF32(lse));
  for (int64_t i = 0; i < want_lse.numel(); ++i) {
    ASSERT_NEAR(got_lse.data_as<float>()[i], want_lse.data_as<float>()[i], 2e-2) << "lse " << i;
  }

  // Small budgets: a different, finite result (the selection is tested against the CPU in
  // tests/gpu/vertical_slash_*_test.cc).
  if (c.chunk_size > 0 && len > 400) {
    const std::vector<int64_t> small(2 * c.q_heads, 100);
    g.budgets = small;
    std::vector<int64_t> small_keys(static_cast<size_t>(c.q_heads), 0);
    g.index_keys = small_keys;
    MP_ASSERT_OK(gpu->VerticalSlashAttention(g));
    // The CPU's selection from fp32 scores may differ from the GPU's on near ties: counts agree
    // within a few percent, and stay below the full budget's.
    std::vector<int64_t> cpu_small(static_cast<size_t>(c.q_heads), 0);
    p.budgets = small;
    p.index_keys = cpu_small;
    MP_ASSERT_OK(cpu->VerticalSlashAttention(p));
    for (int64_t h = 0; h < c.q_heads; ++h) {
      EXPECT_NEAR(double(small_keys[h]), double(cpu_small[h]), 0.05 * double(cpu_small[h]))
          << "index keys of head " << h << " (small budgets)";
      EXPECT_LT(small_keys[h], gpu_keys[h]) << "head " << h;
    }
    MP_ASSERT_OK_AND_ASSIGN(Tensor sparse, gpu->ToHostF32(out));
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < sparse.numel(); ++i) {
      ASSERT_TRUE(std::isfinite(sparse.data_as<float>()[i])) << i;
      diff =
          std::max(diff, double(std::fabs(sparse.data_as<float>()[i] - got.data_as<float>()[i])));
      scale = std::max(scale, double(std::fabs(got.data_as<float>()[i])));
    }
    EXPECT_GT(diff, 1e-2 * scale) << "small budgets must drop keys";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaSparseOpTest,
    ::testing::Values(OpCase{300, 28, 4, 128, 100, 256, 64, 1.0f},  // C = 192: chunks 0-2
                      OpCase{257, 9, 3, 64, 500, 256, 64, 1.2f},    // chunks 2-3, YaRN
                      OpCase{600, 8, 2, 128, 0, 256, 64, 1.1f},     // one shot, 4 chunks
                      OpCase{200, 4, 2, 64, 77, 0, 0, 1.0f}),       // no DCA
    [](const ::testing::TestParamInfo<OpCase>& info) {
      const OpCase& c = info.param;
      return "n" + std::to_string(c.n) + "_h" + std::to_string(c.q_heads) + "x" +
             std::to_string(c.kv_heads) + "_d" + std::to_string(c.head_dim) + "_q" +
             std::to_string(c.query_begin) + "_S" + std::to_string(c.chunk_size);
    });

// A sparse selection attends a subset of the keys the dense DCA op attends: per query
// lse_sparse <= lse_dense up to rounding (recall <= 1), for runs of many DCA pieces (each with
// its own selection; more pieces than one selection or index launch takes) and small budgets.
struct PiecesCase {
  int64_t n, q_heads, kv_heads, head_dim, query_begin;
  float stddev;   // of q and k: larger logits
  float outlier;  // > 0: outlier channels of this size in q and k (AddOutlierChannels)
};

class CudaSparseRecallBoundTest : public ::testing::TestWithParam<PiecesCase> {};

TEST_P(CudaSparseRecallBoundTest, SparseLseNeverExceedsDenseDca) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  const PiecesCase c = GetParam();
  const int64_t len = c.query_begin + c.n, chunk_size = 256, local = 64;  // C = 192
  const int64_t used = (len + 63) / 64;
  const PagedCache cache = MakePagedCache(*gpu, used + 2, c.kv_heads, 64, c.head_dim, used,
                                          31 + c.n, c.stddev, c.outlier);
  Bf16Input q = RandomBf16Input({c.n, c.q_heads, c.head_dim}, 32 + c.n, c.stddev);
  if (c.outlier > 0.0f) AddOutlierChannels(&q, c.head_dim, c.outlier, 33 + c.n);
  MP_ASSERT_OK_AND_ASSIGN(Tensor dq, ToDevice(*gpu, q.bf16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, gpu->Allocate({c.n, c.q_heads, c.head_dim}, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor lse_dense, gpu->Allocate({c.q_heads, c.n}, DType::kF32));
  MP_ASSERT_OK_AND_ASSIGN(Tensor lse_sparse, gpu->Allocate({c.q_heads, c.n}, DType::kF32));
  // The fields both ops share.
  auto fill = [&](auto& params, Tensor* lse) {
    params.q = &dq;
    params.kv = cache.Gpu();
    params.query_begin = c.query_begin;
    params.chunk_size = chunk_size;
    params.chunk_len = chunk_size - local;
    params.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    params.temperature = 1.3f;
    params.out = &out;
    params.lse = lse;
  };
  DcaAttentionParams d;
  fill(d, &lse_dense);
  MP_ASSERT_OK(gpu->DcaAttention(d));
  std::vector<int64_t> budgets;
  for (int64_t h = 0; h < c.q_heads; ++h) budgets.insert(budgets.end(), {40 + 10 * h, 120 + 8 * h});
  VerticalSlashAttentionParams p;
  fill(p, &lse_sparse);
  // Full budgets first: the same keys as the dense op, so the same lse up to rounding.
  const std::vector<int64_t> full(2 * c.q_heads, len + 1);
  p.budgets = full;
  MP_ASSERT_OK(gpu->VerticalSlashAttention(p));
  {
    MP_ASSERT_OK_AND_ASSIGN(Tensor dense_host, gpu->ToHostF32(lse_dense));
    MP_ASSERT_OK_AND_ASSIGN(Tensor full_host, gpu->ToHostF32(lse_sparse));
    double worst = 0.0;
    int64_t at = 0;
    for (int64_t i = 0; i < dense_host.numel(); ++i) {
      const double d = std::fabs(double(full_host.data_as<float>()[i]) -
                                 double(dense_host.data_as<float>()[i]));
      if (d > worst) {
        worst = d;
        at = i;
      }
    }
    EXPECT_LE(worst, 0.01) << "full budgets, head " << at / c.n << " query "
                           << c.query_begin + at % c.n << ": lse "
                           << full_host.data_as<float>()[at] << " sparse, "
                           << dense_host.data_as<float>()[at] << " dense";
  }
  p.budgets = budgets;
  MP_ASSERT_OK(gpu->VerticalSlashAttention(p));
  MP_ASSERT_OK_AND_ASSIGN(Tensor dense_host, gpu->ToHostF32(lse_dense));
  MP_ASSERT_OK_AND_ASSIGN(Tensor sparse_host, gpu->ToHostF32(lse_sparse));
  double worst = 0.0, mean = 0.0;
  int64_t worst_at = 0;
  for (int64_t i = 0; i < dense_host.numel(); ++i) {
    const double r = std::exp(double(sparse_host.data_as<float>()[i]) -
                              double(dense_host.data_as<float>()[i]));
    ASSERT_TRUE(std::isfinite(r)) << i;
    mean += r / dense_host.numel();
    if (r > worst) {
      worst = r;
      worst_at = i;
    }
  }
  EXPECT_LE(worst, 1.01) << "head " << worst_at / c.n << " query " << c.query_begin + worst_at % c.n
                         << ": the sparse op attends more than every key";
  EXPECT_LT(mean, 0.98) << "the budgets keep every key: the bound tests nothing";
}

INSTANTIATE_TEST_SUITE_P(
    Pieces, CudaSparseRecallBoundTest,
    ::testing::Values(PiecesCase{1000, 9, 3, 64, 1500, 1.0f, 0.0f},   // 6 pieces, SmolLM2 heads
                      PiecesCase{1000, 9, 3, 64, 1500, 3.0f, 0.0f},   // larger logits
                      PiecesCase{1000, 9, 3, 64, 1500, 1.0f, 6.0f},   // outlier channels
                      PiecesCase{700, 28, 4, 128, 3000, 1.0f, 0.0f},  // 5 pieces, 7B heads
                      PiecesCase{700, 28, 4, 128, 3000, 1.0f, 5.0f},
                      PiecesCase{150, 28, 4, 128, 5000, 2.0f, 0.0f}),
    [](const ::testing::TestParamInfo<PiecesCase>& info) {
      const PiecesCase& c = info.param;
      return "n" + std::to_string(c.n) + "_h" + std::to_string(c.q_heads) + "_d" +
             std::to_string(c.head_dim) + "_q" + std::to_string(c.query_begin) + "_s" +
             std::to_string(static_cast<int>(c.stddev)) + "_o" +
             std::to_string(static_cast<int>(c.outlier));
    });

// ReserveVerticalSlashWorkspace on a fresh backend: it holds the largest run of every budget
// set (cuda::VerticalSlashPrefillMaxWorkspaceBytes, itself checked against every run on the
// host in vertical_slash_attention_test), every chunk of a prompt within it runs without growing
// it, and bad or impossible requests are errors.
TEST(CudaSparseReservationTest, HoldsTheLargestRunAndChunksWithinItDoNotGrowIt) {
  absl::StatusOr<std::unique_ptr<CudaBackend>> owned = CudaBackend::Create();
  ASSERT_TRUE(owned.ok()) << owned.status();
  CudaBackend& gpu = **owned;
  const int64_t q_heads = 4, kv_heads = 2, hd = 64, chunk = 200, keys = 900;
  std::mt19937_64 rng(17);
  std::uniform_int_distribution<int64_t> budget(1, 300);
  std::vector<std::vector<int64_t>> sets(2, std::vector<int64_t>(2 * q_heads));
  for (auto& set : sets) {
    for (int64_t& b : set) b = budget(rng);
  }
  VerticalSlashReservation r;
  r.max_queries = chunk;
  r.max_keys = keys;
  r.q_heads = q_heads;
  r.kv_heads = kv_heads;
  r.head_dim = hd;
  r.chunk_size = 320;
  r.chunk_len = 256;
  r.last_q = 64;
  for (const auto& set : sets) r.budgets.emplace_back(set);
  int64_t want = 0;
  for (const auto& set : sets) {
    cuda::VerticalSlashPrefillArgs a;
    a.q_heads = q_heads;
    a.kv.kv_heads = kv_heads;
    a.kv.head_dim = hd;
    a.chunk_size = 320;
    a.chunk_len = 256;
    a.budgets = set.data();
    want = std::max(want, cuda::VerticalSlashPrefillMaxWorkspaceBytes(a, chunk, keys));
  }
  ASSERT_GT(want, 0);
  EXPECT_EQ(gpu.stats().sparse_workspace_bytes, 0);
  MP_ASSERT_OK_AND_ASSIGN(const int64_t held, gpu.ReserveVerticalSlashWorkspace(r));
  EXPECT_EQ(held, want);
  EXPECT_EQ(gpu.stats().sparse_workspace_bytes, want);

  const PagedCache cache = MakeCache(gpu, keys, kv_heads, 64, hd, 5);
  for (int64_t begin = 0; begin < keys; begin += chunk) {
    const int64_t n = std::min(chunk, keys - begin);
    Bf16Input q = RandomBf16Input({n, q_heads, hd}, 40 + begin);
    MP_ASSERT_OK_AND_ASSIGN(Tensor dq, ToDevice(gpu, q.bf16));
    MP_ASSERT_OK_AND_ASSIGN(Tensor out, gpu.Allocate({n, q_heads, hd}, DType::kBF16));
    for (const auto& set : sets) {
      VerticalSlashAttentionParams p;
      p.q = &dq;
      p.kv = cache.Gpu();
      p.query_begin = begin;
      p.chunk_size = 320;
      p.chunk_len = 256;
      p.scale = 0.125f;
      p.budgets = set;
      p.out = &out;
      MP_ASSERT_OK(gpu.VerticalSlashAttention(p));
      EXPECT_EQ(gpu.stats().sparse_workspace_bytes, want) << "chunk at " << begin;
    }
  }
  MP_ASSERT_OK(gpu.Synchronize());

  VerticalSlashReservation bad = r;
  bad.budgets = {std::span<const int64_t>(sets[0]).subspan(0, 3)};
  MP_EXPECT_ERROR(gpu.ReserveVerticalSlashWorkspace(bad).status(), StatusCode::kInvalidArgument,
                  "expected 2 * q_heads");
  bad = r;
  bad.head_dim = 96;
  MP_EXPECT_ERROR(gpu.ReserveVerticalSlashWorkspace(bad).status(), StatusCode::kInvalidArgument,
                  "head_dim 96");
  bad = r;
  bad.max_queries = 0;
  MP_EXPECT_ERROR(gpu.ReserveVerticalSlashWorkspace(bad).status(), StatusCode::kInvalidArgument,
                  "max_queries");
  // Terabytes: 64 heads with budgets of 2^30 keys each over 2^30 keys.
  VerticalSlashReservation huge;
  huge.max_queries = 32768;
  huge.max_keys = (int64_t{1} << 30) - 32768;
  huge.q_heads = 64;
  huge.kv_heads = 8;
  huge.head_dim = 128;
  const std::vector<int64_t> big(2 * 64, int64_t{1} << 30);
  huge.budgets = {big};
  MP_EXPECT_ERROR(gpu.ReserveVerticalSlashWorkspace(huge).status(),
                  StatusCode::kResourceExhausted, "does not fit");
  EXPECT_EQ(gpu.stats().sparse_workspace_bytes, 0) << "a failed reservation holds nothing";
}

TEST(CudaSparseOpErrorsTest, RejectsBadArguments) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  const PagedCache cache = MakeCache(*gpu, 128, 2, 64, 64, 3);
  Bf16Input q = RandomBf16Input({128, 4, 64}, 4);
  MP_ASSERT_OK_AND_ASSIGN(Tensor dq, ToDevice(*gpu, q.bf16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, gpu->Allocate({128, 4, 64}, DType::kBF16));
  const std::vector<int64_t> budgets(8, 200);
  VerticalSlashAttentionParams good;
  good.q = &dq;
  good.kv = cache.Gpu();
  good.chunk_size = 128;
  good.chunk_len = 64;
  good.scale = 0.125f;
  good.budgets = budgets;
  good.out = &out;
  MP_EXPECT_OK(gpu->VerticalSlashAttention(good));
  VerticalSlashAttentionParams p = good;
  const std::vector<int64_t> few(7, 200);
  p.budgets = few;
  MP_EXPECT_ERROR(gpu->VerticalSlashAttention(p), StatusCode::kInvalidArgument,
                  "budgets hold 7 values");
  p = good;
  p.out = &dq;
  MP_EXPECT_ERROR(gpu->VerticalSlashAttention(p), StatusCode::kInvalidArgument, "overlap");
  p = good;
  p.q = &q.f32;  // a host f32 tensor
  MP_EXPECT_ERROR(gpu->VerticalSlashAttention(p), StatusCode::kInvalidArgument, "q");
  // head_dim 96 is not a sparse kernel shape.
  const PagedCache cache96 = MakeCache(*gpu, 128, 2, 64, 96, 5);
  Bf16Input q96 = RandomBf16Input({128, 4, 96}, 6);
  MP_ASSERT_OK_AND_ASSIGN(Tensor dq96, ToDevice(*gpu, q96.bf16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor out96, gpu->Allocate({128, 4, 96}, DType::kBF16));
  p = good;
  p.q = &dq96;
  p.kv = cache96.Gpu();
  p.out = &out96;
  MP_EXPECT_ERROR(gpu->VerticalSlashAttention(p), StatusCode::kInvalidArgument,
                  "head_dim 96 is not supported");
}

// ---- the executor ----------------------------------------------------------------------------

std::shared_ptr<const SparsePrefillSettings> Settings(int64_t layers, int64_t heads, int64_t budget,
                                                      int64_t threshold) {
  auto s = std::make_shared<SparsePrefillSettings>();
  s->enabled = true;
  s->threshold = threshold;
  SparseAttentionConfig c;
  for (int64_t l = 0; l < layers; ++l) {
    c.layers.emplace_back(heads, SparseHeadConfig{budget, budget, 0.5});
  }
  s->heads = c;
  return s;
}

Tensor RunPrompt(StageExecutor& ex, const std::vector<int32_t>& ids, int64_t chunk) {
  const int64_t L = static_cast<int64_t>(ids.size());
  std::vector<float> all;
  int64_t vocab = 0;
  for (int64_t s = 0; s < L; s += chunk) {
    const int64_t n = std::min(chunk, L - s);
    absl::StatusOr<Tensor> out =
        ex.RunChunk(1, s, testing::HostIds(std::span<const int32_t>(ids).subspan(s, n)),
                    LogitsMode::kAllRows, L);
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return Tensor();
    absl::StatusOr<Tensor> host = ex.backend().ToHostF32(*out);
    vocab = host->dim(1);
    all.insert(all.end(), host->data_as<float>(), host->data_as<float>() + host->numel());
  }
  Tensor t = Tensor::Host({L, vocab}, DType::kF32);
  std::copy(all.begin(), all.end(), t.data_as<float>());
  return t;
}

TEST(CudaSparseExecutorTest, ThresholdGateAndFullBudgetOnTheGpu) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  ModelConfig config = testing::TinyConfig({.layers = 2,
                                            .hidden = 256,
                                            .heads = 4,
                                            .kv_heads = 2,
                                            .head_dim = 64,
                                            .inter = 256,
                                            .max_position_embeddings = 4096});
  DualChunkConfig d;
  d.chunk_size = 256;
  d.local_size = 64;  // C = 192
  d.original_max_position_embeddings = 400;
  config.dual_chunk = d;
  const ModelWeights weights = testing::TinyWeights(config, 21, /*bf16_exact=*/true);
  StageExecutorOptions options;
  options.kv_cache.block_size = 64;
  options.kv_cache.max_tokens = 2048;
  MP_ASSERT_OK_AND_ASSIGN(auto dense, StageExecutor::Create(config, weights, gpu, options));

  // At the threshold: bit-identical to dense.
  const std::vector<int32_t> short_ids = testing::RandomIds(300, config.vocab_size, 22);
  options.sparse = Settings(2, 4, 100, 300);
  MP_ASSERT_OK_AND_ASSIGN(auto gated, StageExecutor::Create(config, weights, gpu, options));
  int64_t calls = gpu->stats().sparse_prefill_calls;
  testing::ExpectBitwiseEqual(RunPrompt(*gated, short_ids, 128), RunPrompt(*dense, short_ids, 128),
                              "prompt at the threshold");
  EXPECT_EQ(gpu->stats().sparse_prefill_calls, calls);
  MP_ASSERT_OK(dense->Release(1));

  // Above: sparse in every prompt chunk and layer; full budgets reproduce the dense logits.
  const std::vector<int32_t> ids = testing::RandomIds(600, config.vocab_size, 23);
  options.sparse = Settings(2, 4, 4096, 599);
  MP_ASSERT_OK_AND_ASSIGN(auto full, StageExecutor::Create(config, weights, gpu, options));
  calls = gpu->stats().sparse_prefill_calls;
  const Tensor got = RunPrompt(*full, ids, 200);
  EXPECT_EQ(gpu->stats().sparse_prefill_calls, calls + 3 * 2);
  const Tensor want = RunPrompt(*dense, ids, 200);
  ExpectBf16Close(got, want, 3e-2, 6e-2, "full-budget sparse prefill logits vs dense");
}

}  // namespace
}  // namespace mp
