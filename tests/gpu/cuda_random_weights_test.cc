// Weights generated on the GPU equal the host RandomModelWeights (bf16) bit for bit, gate/up are
// adjacent halves of one allocation, and a stage executor built from them computes the same
// logits as one built from the host copy. Needs an sm_90 GPU.
#include "runtime/cuda_random_weights.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/status_matchers.h"
#include "runtime/stage_executor.h"
#include "tests/gpu/gpu_test_util.h"

namespace mp {
namespace {

ModelConfig SmallQwenConfig(bool tied) {
  ModelConfig c = Qwen25_7BInstruct1MConfig();
  c.vocab_size = 1001;
  c.hidden_size = 896;
  c.intermediate_size = 1000;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 7;
  c.num_key_value_heads = 1;
  c.head_dim = 128;
  c.tie_word_embeddings = tied;
  return c;
}

std::vector<std::pair<std::string, const Tensor*>> Named(const ModelWeights& w) {
  std::vector<std::pair<std::string, const Tensor*>> out = {{"embed", &w.embed_tokens},
                                                            {"norm", &w.final_norm},
                                                            {"lm_head", &w.lm_head}};
  for (size_t i = 0; i < w.layer.size(); ++i) {
    const LayerWeights& l = w.layer[i];
    const std::string p = "layer " + std::to_string(i) + " ";
    for (auto [name, t] : std::vector<std::pair<const char*, const Tensor*>>{
             {"input_norm", &l.input_norm}, {"q", &l.q_proj}, {"k", &l.k_proj},
             {"v", &l.v_proj}, {"q_bias", &l.q_bias}, {"k_bias", &l.k_bias},
             {"v_bias", &l.v_bias}, {"o", &l.o_proj}, {"post_norm", &l.post_attention_norm},
             {"gate", &l.gate_proj}, {"up", &l.up_proj}, {"down", &l.down_proj}}) {
      out.emplace_back(p + name, t);
    }
  }
  return out;
}

TEST(CudaRandomWeightsTest, EqualTheHostWeightsBitForBit) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    const ModelConfig config = SmallQwenConfig(tied);
    for (LayerRange range : {LayerRange{0, 3}, LayerRange{1, 3}, LayerRange{0, 1}}) {
      WeightLoadOptions options;
      options.layers = range;
      MP_ASSERT_OK_AND_ASSIGN(ModelWeights host, RandomModelWeights(config, options, 42));
      MP_ASSERT_OK_AND_ASSIGN(ModelWeights device,
                              RandomModelWeightsOnDevice(*gpu, config, options, 42));
      const auto want = Named(host), got = Named(device);
      ASSERT_EQ(want.size(), got.size());
      for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_EQ(want[i].second->defined(), got[i].second->defined()) << want[i].first;
        if (!want[i].second->defined()) continue;
        EXPECT_EQ(got[i].second->device(), DeviceKind::kCuda) << want[i].first;
        Tensor back = Tensor::Host(got[i].second->shape(), DType::kBF16);
        MP_ASSERT_OK(gpu->CopyToHost(*got[i].second, back));
        testing::ExpectBitwiseEqual(back, *want[i].second, want[i].first);
      }
      for (const LayerWeights& l : device.layer) {
        EXPECT_EQ(static_cast<const char*>(l.gate_proj.data()) + l.gate_proj.nbytes(),
                  l.up_proj.data());
      }
      if (tied && device.has_head) EXPECT_EQ(device.lm_head.data(), device.embed_tokens.data());
    }
  }
  // Another seed gives other values.
  WeightLoadOptions options;
  options.layers = {0, 1};
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights a, RandomModelWeightsOnDevice(*gpu, SmallQwenConfig(false),
                                                                     options, 1));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights b, RandomModelWeightsOnDevice(*gpu, SmallQwenConfig(false),
                                                                     options, 2));
  MP_ASSERT_OK_AND_ASSIGN(Tensor ha, gpu->ToHostF32(a.layer[0].q_proj));
  MP_ASSERT_OK_AND_ASSIGN(Tensor hb, gpu->ToHostF32(b.layer[0].q_proj));
  int same = 0;
  for (int64_t i = 0; i < ha.numel(); ++i) same += ha.data_as<float>()[i] == hb.data_as<float>()[i];
  EXPECT_LT(same, ha.numel() / 20);
}

TEST(CudaRandomWeightsTest, ExecutorUsesDeviceWeightsInPlace) {
  MP_REQUIRE_CUDA_BACKEND(gpu);
  const ModelConfig config = SmallQwenConfig(false);
  WeightLoadOptions options;
  options.layers = {0, config.num_hidden_layers};
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights host, RandomModelWeights(config, options, 9));
  MP_ASSERT_OK_AND_ASSIGN(ModelWeights device, RandomModelWeightsOnDevice(*gpu, config, options, 9));
  StageExecutorOptions o;
  o.kv_cache.max_tokens = 256;
  const int64_t in_use_before = gpu->memory_pool().stats().bytes_in_use;
  MP_ASSERT_OK_AND_ASSIGN(auto from_device, StageExecutor::Create(config, device, gpu, o));
  // Only the KV cache is new: the weights are aliased, not copied.
  const int64_t added = gpu->memory_pool().stats().bytes_in_use - in_use_before;
  EXPECT_LT(added, from_device->kv_cache().stats().bytes_total + (int64_t{4} << 20));
  MP_ASSERT_OK_AND_ASSIGN(auto from_host, StageExecutor::Create(config, host, gpu, o));

  std::vector<int32_t> ids(100);
  for (int i = 0; i < 100; ++i) ids[i] = (i * 37) % config.vocab_size;
  Tensor input = Tensor::Host({100}, DType::kI32);
  std::copy(ids.begin(), ids.end(), input.data_as<int32_t>());
  MP_ASSERT_OK_AND_ASSIGN(Tensor a, from_device->RunChunk(1, 0, input, LogitsMode::kAllRows));
  MP_ASSERT_OK_AND_ASSIGN(Tensor ha, gpu->ToHostF32(a));
  MP_ASSERT_OK_AND_ASSIGN(Tensor b, from_host->RunChunk(1, 0, input, LogitsMode::kAllRows));
  MP_ASSERT_OK_AND_ASSIGN(Tensor hb, gpu->ToHostF32(b));
  testing::ExpectBitwiseEqual(ha, hb, "logits from device vs host random weights");
}

}  // namespace
}  // namespace mp
