// A multi-process cluster (a coordinator and 2 or 3 stage workers on loopback, activations
// over UCX) gives the same logits and tokens as the single-process stage executor.
//
// The reference runs one StageExecutor over all layers in this process, with the chunk
// boundaries the cluster reports in its Progress events, then one decode step per token — the
// same operations in the same order, so logits must be bit-identical (the CPU backend computes
// in fp32 and the pipeline moves hidden states as raw bytes). Tokens must also equal the greedy
// continuation that Hugging Face transformers computed (tests/testdata), and the first token's
// logits its last-row logits within 1e-4 relative. A text prompt through SmolLM2-135M-Instruct
// ($MILLIPEDE_SMOLLM2_DIR) checks the chat template, tokenizer and detokenized text against the
// single-process engine.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "model/chat_template.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/engine.h"
#include "runtime/stage_executor.h"
#include "tests/integration/cluster_test_util.h"

namespace mp::testing {
namespace {

namespace v1 = millipede::v1;

struct Fixture {
  ModelConfig config;
  ModelWeights weights;
  std::vector<int32_t> input_ids;
  std::vector<float> last_logits;  // transformers, last prompt row
  std::vector<int32_t> greedy_ids;
};

std::vector<int32_t> Ids(const Tensor& t) {
  return std::vector<int32_t>(t.data_as<int32_t>(), t.data_as<int32_t>() + t.numel());
}

absl::StatusOr<Fixture> LoadFixture(const std::string& dir) {
  Fixture f;
  MP_ASSIGN_OR_RETURN(f.config, LoadModelConfig(dir + "/config.json"));
  WeightLoadOptions load;
  load.layers = {0, f.config.num_hidden_layers};
  MP_ASSIGN_OR_RETURN(f.weights, LoadModelWeights(dir, f.config, load));
  MP_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> expected,
                      SafetensorsFile::Open(dir + "/expected.safetensors"));
  MP_ASSIGN_OR_RETURN(Tensor ids, expected->Get("input_ids"));
  MP_ASSIGN_OR_RETURN(Tensor logits, expected->Get("logits"));
  MP_ASSIGN_OR_RETURN(Tensor greedy, expected->Get("greedy_ids"));
  f.input_ids = Ids(ids);
  f.greedy_ids = Ids(greedy);
  const int64_t vocab = f.config.vocab_size;
  const float* last = logits.data_as<const float>() + (logits.dim(0) - 1) * vocab;
  f.last_logits.assign(last, last + vocab);
  return f;
}

// Runs the prompt in `chunks` and then one decode step per token of `tokens` but the last,
// through one executor over all layers; returns the last-row logits of the prompt and of every
// decode step.
absl::StatusOr<std::vector<std::vector<float>>> Reference(
    const Fixture& f, const std::vector<std::pair<uint64_t, uint64_t>>& chunks,
    const std::vector<int32_t>& prompt, const std::vector<int32_t>& tokens) {
  StageExecutorOptions options;
  options.kv_cache.max_tokens = 4096;
  MP_ASSIGN_OR_RETURN(std::unique_ptr<StageExecutor> ex,
                      StageExecutor::Create(f.config, f.weights, NewCpuBackend(), options));
  auto run = [&](int64_t start,
                 const std::vector<int32_t>& ids) -> absl::StatusOr<std::vector<float>> {
    Tensor input = Tensor::Host({static_cast<int64_t>(ids.size())}, DType::kI32);
    std::memcpy(input.data(), ids.data(), ids.size() * sizeof(int32_t));
    MP_ASSIGN_OR_RETURN(Tensor out, ex->RunChunk(1, start, input, LogitsMode::kLastRow));
    MP_ASSIGN_OR_RETURN(Tensor host, ex->backend().ToHostF32(out));
    return std::vector<float>(host.data_as<float>(), host.data_as<float>() + host.numel());
  };
  std::vector<std::vector<float>> out;
  std::vector<float> last;
  for (const auto& [start, end] : chunks) {
    std::vector<int32_t> ids(prompt.begin() + start, prompt.begin() + end);
    MP_ASSIGN_OR_RETURN(last, run(static_cast<int64_t>(start), ids));
  }
  out.push_back(last);
  for (size_t i = 0; i + 1 < tokens.size(); ++i) {
    MP_ASSIGN_OR_RETURN(std::vector<float> step,
                        run(static_cast<int64_t>(prompt.size() + i), {tokens[i]}));
    out.push_back(std::move(step));
  }
  return out;
}

// The chunks tile [0, n) in order.
void ExpectTiling(const std::vector<std::pair<uint64_t, uint64_t>>& chunks, uint64_t n) {
  ASSERT_FALSE(chunks.empty());
  uint64_t next = 0;
  for (const auto& [start, end] : chunks) {
    ASSERT_EQ(start, next);
    ASSERT_GT(end, start);
    next = end;
  }
  ASSERT_EQ(next, n);
}

double RelativeError(const std::vector<float>& ours, const std::vector<float>& theirs) {
  double max_diff = 0, max_ref = 0;
  for (size_t j = 0; j < theirs.size(); ++j) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(ours[j]) - theirs[j]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(theirs[j])));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

using Param = std::tuple<std::string, int, std::string>;  // fixture, stages, chunk mode

class ClusterParityTest : public ::testing::TestWithParam<Param> {};

TEST_P(ClusterParityTest, LogitsAndTokensMatchTheSingleProcessExecutor) {
  const auto& [name, stages, mode] = GetParam();
  const std::string dir = TestdataDir() + "/" + name;
  MP_ASSERT_OK_AND_ASSIGN(Fixture f, LoadFixture(dir));
  ClusterOptions options;
  options.model_dir = dir;
  options.stages = stages;
  // Several chunks per prompt: fixed 32-token chunks, or dynamic ones of 16..48 tokens.
  options.coordinator_args = {
      "--chunk-mode",     mode, "--max-chunk",   mode == "fixed" ? "32" : "48",
      "--min-chunk",      "16", "--chunk-align", "16",
      "--ucx-transports", "tcp"};
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Cluster> cluster, Cluster::Start(options));
  MP_ASSERT_OK(cluster->WaitReady(stages, absl::Seconds(60)));

  // Two requests: the fixture's prompt, then a second one on the same pipeline (KV reuse).
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    v1::GenerateRequest request = TokenRequest(f.input_ids, static_cast<int>(f.greedy_ids.size()));
    request.set_return_logits(true);
    GenerateResult result = RunGenerate(cluster->stub(), request);
    ASSERT_TRUE(result.status.ok()) << result.status.error_message() << "\n" << cluster->Logs();
    EXPECT_EQ(result.tokens, f.greedy_ids);
    EXPECT_EQ(result.completed.stop_reason(), v1::STOP_REASON_MAX_NEW_TOKENS);
    EXPECT_EQ(std::vector<int32_t>(result.completed.token_ids().begin(),
                                   result.completed.token_ids().end()),
              f.greedy_ids);
    ExpectTiling(result.chunks, f.input_ids.size());
    if (mode == "fixed") {
      EXPECT_EQ(result.chunks.size(), (f.input_ids.size() + 31) / 32);
    }
    ASSERT_EQ(result.logits.size(), f.greedy_ids.size());
    EXPECT_LE(RelativeError(result.logits[0], f.last_logits), 1e-4);

    MP_ASSERT_OK_AND_ASSIGN(auto reference,
                            Reference(f, result.chunks, f.input_ids, result.tokens));
    ASSERT_EQ(reference.size(), result.logits.size());
    for (size_t i = 0; i < reference.size(); ++i) {
      ASSERT_EQ(result.logits[i].size(), reference[i].size());
      EXPECT_EQ(std::memcmp(result.logits[i].data(), reference[i].data(),
                            reference[i].size() * sizeof(float)),
                0)
          << "logits of token " << i << " differ from the single-process executor (relative "
          << RelativeError(result.logits[i], reference[i]) << ")";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, ClusterParityTest,
    ::testing::Values(Param{"tiny_llama", 2, "fixed"}, Param{"tiny_llama", 3, "dynamic"},
                      Param{"tiny_qwen2", 2, "dynamic"}, Param{"tiny_qwen2", 3, "fixed"}),
    [](const ::testing::TestParamInfo<Param>& info) {
      return absl::StrCat(std::get<0>(info.param), "_", std::get<1>(info.param), "stages_",
                          std::get<2>(info.param));
    });

// The embedded model through a text prompt: the cluster's chat template, tokenization, greedy
// tokens and streamed text equal the single-process engine's, with the 30 layers split over 2,
// 4 and 8 worker processes.
class ClusterParitySmolLM2Test : public ::testing::TestWithParam<int> {};

TEST_P(ClusterParitySmolLM2Test, TextPromptMatchesTheEngine) {
  const int stages = GetParam();
  const char* env = std::getenv("MILLIPEDE_SMOLLM2_DIR");
  ASSERT_NE(env, nullptr) << "MILLIPEDE_SMOLLM2_DIR must name the converted SmolLM2 directory "
                             "(scripts/fetch_default_model.sh prints it)";
  const std::string dir = env;
  const std::string question = "What is the capital of France? Answer in one word.";
  constexpr int kNewTokens = 12;

  // The engine: chat template + tokenizer + greedy generation in this process.
  MP_ASSERT_OK_AND_ASSIGN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Tokenizer> tokenizer,
                          Tokenizer::Load(dir + "/tokenizer.json"));
  MP_ASSERT_OK_AND_ASSIGN(ChatTemplate chat, ChatTemplate::FromModelDir(dir));
  std::vector<ChatMessage> messages = {{"user", question}};
  MP_ASSERT_OK_AND_ASSIGN(std::string text, chat.Render(messages, true));
  const std::vector<int32_t> prompt = tokenizer->Encode(text);
  std::vector<int32_t> expected;
  {
    WeightLoadOptions load;
    load.layers = {0, config.num_hidden_layers};
    MP_ASSERT_OK_AND_ASSIGN(ModelWeights weights, LoadModelWeights(dir, config, load));
    EngineOptions eo;
    eo.chunk_size = 32;
    eo.max_context = 2048;
    MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine,
                            Engine::Create(config, weights, NewCpuBackend(), eo));
    GenerationOptions gen;
    gen.max_new_tokens = kNewTokens;
    for (int64_t id : config.eos_token_ids) gen.stop_token_ids.push_back(static_cast<int32_t>(id));
    if (auto end = tokenizer->TokenToId(ChatTemplate::kEndOfTurn))
      gen.stop_token_ids.push_back(*end);
    MP_ASSERT_OK_AND_ASSIGN(GenerationResult result, engine->Generate(prompt, gen));
    expected = result.token_ids;
  }
  MP_ASSERT_OK_AND_ASSIGN(std::string expected_text, tokenizer->Decode(expected, true));

  ClusterOptions options;
  options.model_dir = dir;
  options.stages = stages;
  options.coordinator_args = {"--chunk-mode", "fixed", "--max-chunk",   "32",
                              "--kv-tokens",  "2048",  "--max-context", "2048"};
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Cluster> cluster, Cluster::Start(options));
  MP_ASSERT_OK(cluster->WaitReady(stages, absl::Seconds(120)));
  // Every stage holds a slice: the layer assignment covers the 30 layers in order.
  MP_ASSERT_OK_AND_ASSIGN(v1::ListWorkersResponse workers, cluster->ListWorkers());
  ASSERT_EQ(workers.workers_size(), stages);
  std::vector<std::pair<uint32_t, uint32_t>> slices;
  for (const v1::WorkerInfo& w : workers.workers()) {
    slices.push_back({w.layers().begin(), w.layers().end()});
  }
  std::sort(slices.begin(), slices.end());
  uint32_t next = 0;
  for (const auto& [begin, end] : slices) {
    EXPECT_EQ(begin, next);
    EXPECT_GT(end, begin);
    next = end;
  }
  EXPECT_EQ(next, static_cast<uint32_t>(config.num_hidden_layers));
  v1::GenerateRequest request;
  request.set_text(question);
  request.set_max_new_tokens(kNewTokens);
  GenerateResult result = RunGenerate(cluster->stub(), request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message() << "\n" << cluster->Logs();
  EXPECT_EQ(result.tokens, expected);
  EXPECT_EQ(result.completed.prompt_tokens(), prompt.size());
  EXPECT_EQ(result.completed.text(), expected_text);
  std::string streamed;
  for (const v1::GenerateEvent& ev : result.events) {
    if (ev.has_first_token()) streamed += ev.first_token().text();
    if (ev.has_tokens()) streamed += ev.tokens().text();
  }
  EXPECT_EQ(streamed, expected_text);
}

INSTANTIATE_TEST_SUITE_P(Stages, ClusterParitySmolLM2Test, ::testing::Values(2, 4, 8),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat(info.param, "stages");
                         });

}  // namespace
}  // namespace mp::testing
