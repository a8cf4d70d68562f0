// The recall measurement of the sparsity refinement on the GPU (runtime/sparse_recall_meter.h,
// the stage executor's recall probe over CudaBackend::VerticalSlashAttention and DcaAttention):
//   * the probe leaves the logits bitwise unchanged;
//   * full budgets measure recall 1 (up to bf16 rounding of two kernels) for every query;
//   * small and medium budgets measure the recall of the CPU backend (the fp32 reference, same
//     bf16-exact weights) up to bf16 rounding, and the medium budgets never measure less.
// Needs an sm_90 GPU (label gpu); fails without one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/status_matchers.h"
#include "model/sparse_refinement.h"
#include "runtime/backend.h"
#include "runtime/cuda_backend.h"
#include "runtime/sparse_recall_meter.h"
#include "runtime/sparse_recall_probe.h"
#include "runtime/stage_executor.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/unit/runtime/tiny_model.h"

namespace mp {
namespace {

ModelConfig Config() {
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
  return config;
}

BudgetSets Sets(const std::vector<std::pair<int64_t, int64_t>>& levels) {
  BudgetSets sets(2);
  for (auto& layer : sets) {
    for (const auto& [v, s] : levels) layer.emplace_back(4, SparseHeadConfig{v, s, 0.0});
  }
  return sets;
}

TEST(CudaSparseRecallTest, ProbeLeavesLogitsUnchanged) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  const ModelConfig config = Config();
  const ModelWeights weights = testing::TinyWeights(config, 31, /*bf16_exact=*/true);
  StageExecutorOptions options;
  options.kv_cache.max_tokens = 2048;
  MP_ASSERT_OK_AND_ASSIGN(auto plain, StageExecutor::Create(config, weights, gpu, options));
  auto probe = std::make_shared<SparseRecallProbe>(*SparseRecallProbe::Create(2, 4));
  for (int64_t l = 0; l < 2; ++l) {
    MP_ASSERT_OK(probe->SetBudgetSets(
        l, {std::vector<int64_t>(8, 4096), {130, 100, 130, 100, 200, 150, 300, 300}}));
  }
  options.recall_probe = probe;
  MP_ASSERT_OK_AND_ASSIGN(auto probed, StageExecutor::Create(config, weights, gpu, options));
  const std::vector<int32_t> ids = testing::RandomIds(600, config.vocab_size, 32);
  for (int64_t s = 0; s < 600; s += 200) {
    const Tensor x = testing::HostIds(std::span<const int32_t>(ids).subspan(s, 200));
    MP_ASSERT_OK_AND_ASSIGN(Tensor a, plain->RunChunk(1, s, x, LogitsMode::kAllRows, 600));
    MP_ASSERT_OK_AND_ASSIGN(Tensor want, gpu->ToHostF32(a));
    MP_ASSERT_OK_AND_ASSIGN(Tensor b, probed->RunChunk(1, s, x, LogitsMode::kAllRows, 600));
    MP_ASSERT_OK_AND_ASSIGN(Tensor got, gpu->ToHostF32(b));
    testing::ExpectBitwiseEqual(got, want, "logits with the recall probe");
  }
  for (int64_t l = 0; l < 2; ++l) {
    for (int64_t h = 0; h < 4; ++h) {
      EXPECT_EQ(probe->Summary(l, 0, h).count, 600);
      EXPECT_NEAR(probe->Summary(l, 0, h).mean, 1.0, 2e-3) << l << "/" << h;
    }
  }
}

TEST(CudaSparseRecallTest, MeterMatchesTheCpuBackend) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  const ModelConfig config = Config();
  const ModelWeights weights = testing::TinyWeights(config, 41, /*bf16_exact=*/true);
  const std::vector<std::vector<int32_t>> docs = {testing::RandomIds(700, config.vocab_size, 42),
                                                  testing::RandomIds(450, config.vocab_size, 43)};
  SparseRecallMeterOptions o;
  o.chunk_size = 256;
  MP_ASSERT_OK_AND_ASSIGN(auto on_gpu, SparseRecallMeter::Create(config, weights, gpu, docs, o));
  MP_ASSERT_OK_AND_ASSIGN(auto on_cpu,
                          SparseRecallMeter::Create(config, weights, NewCpuBackend(), docs, o));
  const BudgetSets sets = Sets({{4096, 4096}, {30, 100}, {300, 300}});
  MP_ASSERT_OK_AND_ASSIGN(ModelRecall got, on_gpu->Measure(sets));
  MP_ASSERT_OK_AND_ASSIGN(ModelRecall want, on_cpu->Measure(sets));
  for (int64_t l = 0; l < 2; ++l) {
    for (int64_t h = 0; h < 4; ++h) {
      SCOPED_TRACE(::testing::Message() << "layer " << l << " head " << h);
      EXPECT_NEAR(got[l][0][h].mean, 1.0, 2e-3);
      EXPECT_LT(want[l][1][h].mean, 0.99) << "(130, 100) must drop mass";
      EXPECT_NEAR(got[l][1][h].mean, want[l][1][h].mean, 2e-2);
      EXPECT_NEAR(got[l][2][h].mean, want[l][2][h].mean, 2e-2);
      EXPECT_NEAR(got[l][1][h].p05, want[l][1][h].p05, 5e-2);
      EXPECT_GE(got[l][2][h].mean, got[l][1][h].mean - 1e-3);
    }
  }
}

}  // namespace
}  // namespace mp
