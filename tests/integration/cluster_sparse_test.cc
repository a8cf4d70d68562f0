// Sparse prefill in a multi-process cluster: workers started with --sparse-config and
// --sparse-threshold (cli/sparse_flags.h) run vertical-slash sparse prefill for prompts above
// the threshold. The logits equal, bit for bit, those of the single-process stage executor with
// the same sparse settings and the chunks the cluster reports (sparse selection depends on the
// chunking), and differ from the dense executor's (the small budgets drop keys), so the flags
// reach every stage.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "model/config.h"
#include "model/sparse_attention_config.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/stage_executor.h"
#include "tests/integration/cluster_test_util.h"

namespace mp::testing {
namespace {

namespace v1 = millipede::v1;

// The prompt's last-row logits and one decode step per token but the last, through one executor
// over all layers with `sparse` (null: dense), the prompt in `chunks`.
absl::StatusOr<std::vector<std::vector<float>>> Reference(
    const ModelConfig& config, const ModelWeights& weights,
    std::shared_ptr<const SparsePrefillSettings> sparse,
    const std::vector<std::pair<uint64_t, uint64_t>>& chunks, const std::vector<int32_t>& prompt,
    const std::vector<int32_t>& tokens) {
  StageExecutorOptions options;
  options.kv_cache.max_tokens = 4096;
  options.sparse = std::move(sparse);
  MP_ASSIGN_OR_RETURN(std::unique_ptr<StageExecutor> ex,
                      StageExecutor::Create(config, weights, NewCpuBackend(), options));
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  auto run = [&](int64_t start,
                 const std::vector<int32_t>& ids) -> absl::StatusOr<std::vector<float>> {
    Tensor input = Tensor::Host({static_cast<int64_t>(ids.size())}, DType::kI32);
    std::memcpy(input.data(), ids.data(), ids.size() * sizeof(int32_t));
    MP_ASSIGN_OR_RETURN(Tensor out,
                        ex->RunChunk(1, start, input, LogitsMode::kLastRow, prompt_len));
    MP_ASSIGN_OR_RETURN(Tensor host, ex->backend().ToHostF32(out));
    return std::vector<float>(host.data_as<float>(), host.data_as<float>() + host.numel());
  };
  std::vector<std::vector<float>> out;
  std::vector<float> last;
  for (const auto& [start, end] : chunks) {
    MP_ASSIGN_OR_RETURN(last,
                        run(static_cast<int64_t>(start),
                            std::vector<int32_t>(prompt.begin() + start, prompt.begin() + end)));
  }
  out.push_back(last);
  for (size_t i = 0; i + 1 < tokens.size(); ++i) {
    MP_ASSIGN_OR_RETURN(std::vector<float> step,
                        run(prompt_len + static_cast<int64_t>(i), {tokens[i]}));
    out.push_back(std::move(step));
  }
  return out;
}

TEST(ClusterSparseTest, WorkersRunSparsePrefillFromTheirFlags) {
  const std::string dir = TestdataDir() + "/tiny_llama";
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  WeightLoadOptions load;
  load.layers = {0, config.num_hidden_layers};
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights weights, LoadModelWeights(dir, config, load));

  // Small per-head budgets (vertical 30 runs as 130), written as a file for the workers.
  SparseAttentionConfig heads;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    std::vector<SparseHeadConfig> row;
    for (int64_t h = 0; h < config.num_attention_heads; ++h) row.push_back({30, 100 + 4 * h, 0.0});
    heads.layers.push_back(std::move(row));
  }
  TempDir temp;
  const std::string file = temp.path() + "/sparse_attention_config.json";
  MP_ASSERT_OK(WriteSparseAttentionConfig(heads, file));
  auto settings = std::make_shared<SparsePrefillSettings>();
  settings->enabled = true;
  settings->threshold = 100;
  settings->last_q = 64;
  settings->heads = heads;

  ClusterOptions options;
  options.model_dir = dir;
  options.stages = 2;
  options.coordinator_args = {"--chunk-mode",     "fixed", "--max-chunk",   "128",
                              "--min-chunk",      "16",    "--chunk-align", "16",
                              "--ucx-transports", "tcp"};
  options.worker_args = {"--sparse-config", file, "--sparse-threshold", "100"};
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Cluster> cluster, Cluster::Start(options));
  MP_ASSERT_OK(cluster->WaitReady(2, absl::Seconds(60)));

  const std::vector<int32_t> prompt = RandomIds(600, config.vocab_size, 17);
  v1::GenerateRequest request = TokenRequest(prompt, 3);
  request.set_return_logits(true);
  GenerateResult result = RunGenerate(cluster->stub(), request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message() << "\n" << cluster->Logs();
  ASSERT_EQ(result.logits.size(), 3u);
  ASSERT_FALSE(result.chunks.empty());

  MP_ASSERT_OK_AND_ASSIGN(
      auto sparse, Reference(config, weights, settings, result.chunks, prompt, result.tokens));
  MP_ASSERT_OK_AND_ASSIGN(
      auto dense, Reference(config, weights, nullptr, result.chunks, prompt, result.tokens));
  for (size_t i = 0; i < sparse.size(); ++i) {
    ASSERT_EQ(result.logits[i].size(), sparse[i].size());
    EXPECT_EQ(
        std::memcmp(result.logits[i].data(), sparse[i].data(), sparse[i].size() * sizeof(float)), 0)
        << "logits of token " << i << " differ from the single-process sparse executor";
  }
  EXPECT_NE(std::memcmp(result.logits[0].data(), dense[0].data(), dense[0].size() * sizeof(float)),
            0)
      << "the first token's logits equal the dense prefill's: sparse prefill did not run";
}

}  // namespace
}  // namespace mp::testing
