// The sparse prefill workspace the coordinator counts per layer (SparseWorkspacePerLayer): none
// without sparse prefill or below its threshold, zero on the CPU, and on CUDA a positive size per
// layer that grows with the context and with the layer's budgets (zero in builds without CUDA).
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "common/status_matchers.h"
#include "coordinator/model_info.h"
#include "model/config.h"
#include "model/sparse_attention_config.h"
#include "runtime/backend_factory.h"

namespace mp {
namespace {

ModelConfig DcaModel() {
  ModelConfig c = Qwen25_7BInstruct1MConfig();
  c.num_hidden_layers = 3;
  return c;
}

// Layer l: every head at (1000 + 2048 l, 6096 + 2048 l); layer 0's head 0 at vertical 30.
std::shared_ptr<const SparsePrefillSettings> Settings(const ModelConfig& c, int64_t threshold) {
  auto s = std::make_shared<SparsePrefillSettings>();
  s->enabled = true;
  s->threshold = threshold;
  s->last_q = 64;
  SparseAttentionConfig heads;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::vector<SparseHeadConfig> row;
    for (int64_t h = 0; h < c.num_attention_heads; ++h) {
      row.push_back({l == 0 && h == 0 ? 30 : 1000 + 2048 * l, 6096 + 2048 * l, 0.5});
    }
    heads.layers.push_back(std::move(row));
  }
  s->heads = heads;
  return s;
}

TEST(SparseWorkspacePlanTest, NoneWithoutSparsePrefillOrBelowItsThreshold) {
  const ModelConfig c = DcaModel();
  MP_ASSERT_OK_AND_ASSIGN(std::vector<int64_t> none,
                          SparseWorkspacePerLayer(c, nullptr, "cuda", 32768, 1 << 20));
  EXPECT_TRUE(none.empty());
  const auto s = Settings(c, 1 << 20);
  MP_ASSERT_OK_AND_ASSIGN(std::vector<int64_t> below,
                          SparseWorkspacePerLayer(c, s.get(), "cuda", 32768, 1 << 20));
  EXPECT_TRUE(below.empty()) << "prompts of at most the threshold never run sparse";
  MP_ASSERT_OK_AND_ASSIGN(std::vector<int64_t> cpu,
                          SparseWorkspacePerLayer(c, Settings(c, 32768).get(), "cpu", 32768,
                                                  1 << 20));
  EXPECT_EQ(cpu, (std::vector<int64_t>{0, 0, 0})) << "the CPU backend needs no workspace";
  MP_EXPECT_ERROR(
      SparseWorkspacePerLayer(c, Settings(c, 32768).get(), "tpu", 32768, 1 << 20).status(),
      absl::StatusCode::kInvalidArgument, "unknown device 'tpu'");
}

TEST(SparseWorkspacePlanTest, OnCudaGrowsWithTheContextAndTheBudgets) {
  const ModelConfig c = DcaModel();
  const auto s = Settings(c, 32768);
  if (!BuildHasCuda()) {  // the size is unknown to such a build: 0, as documented
    MP_ASSERT_OK_AND_ASSIGN(std::vector<int64_t> unknown,
                            SparseWorkspacePerLayer(c, s.get(), "cuda", 32768, 1 << 20));
    EXPECT_EQ(unknown, (std::vector<int64_t>{0, 0, 0}));
    return;
  }
  MP_ASSERT_OK_AND_ASSIGN(std::vector<int64_t> at256k,
                          SparseWorkspacePerLayer(c, s.get(), "cuda", 32768, 262144));
  MP_ASSERT_OK_AND_ASSIGN(std::vector<int64_t> at1m,
                          SparseWorkspacePerLayer(c, s.get(), "cuda:1", 32768, 1 << 20));
  ASSERT_EQ(at256k.size(), 3u);
  ASSERT_EQ(at1m.size(), 3u);
  for (int l = 0; l < 3; ++l) {
    EXPECT_GT(at256k[l], 0) << l;
    EXPECT_GT(at1m[l], at256k[l]) << l;
    if (l > 0) EXPECT_GT(at1m[l], at1m[l - 1]) << "larger budgets, larger lists and index";
  }
  // A bad geometry is an error naming the layer.
  ModelConfig bad = c;
  bad.head_dim = 96;
  MP_EXPECT_ERROR(SparseWorkspacePerLayer(bad, s.get(), "cuda", 32768, 1 << 20).status(),
                  absl::StatusCode::kInvalidArgument, "sparse workspace of layer 0");
}

}  // namespace
}  // namespace mp
