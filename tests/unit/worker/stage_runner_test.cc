// StageRunner + ActivationLinks in one process: two stages of tests/testdata/tiny_llama joined
// by kvtransfer's local backend run prefill chunks and decode steps and reproduce the greedy
// tokens Hugging Face transformers computed; steps run in step order whatever order they arrive
// in; a released request's steps pass through and its KV is freed while the link stays usable;
// a lost peer fails the step (and every later one) with UNAVAILABLE; malformed steps are
// INVALID_ARGUMENT. Stalls are bounded: activations that never arrive (kvtransfer's fault
// injection drops them) fail the step with DEADLINE_EXCEEDED naming the request and chunk after
// the link timeout, Stop() ends such a wait at once, and a caller that goes away is answered
// at once while its step keeps its place in the order.
#include "worker/stage_runner.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "absl/strings/match.h"
#include "common/status_matchers.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "worker/activation_links.h"

#ifndef MP_TESTDATA_DIR
#error "MP_TESTDATA_DIR must point at tests/testdata"
#endif

namespace mp {
namespace {

namespace v1 = millipede::v1;
using StepResult = absl::StatusOr<v1::RunChunkResponse>;

constexpr int64_t kMaxRows = 64;

class StageRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = std::string(MP_TESTDATA_DIR) + "/tiny_llama";
    MP_ASSERT_OK_AND_ASSIGN(config_, LoadModelConfig(dir + "/config.json"));
    MP_ASSERT_OK_AND_ASSIGN(auto expected, SafetensorsFile::Open(dir + "/expected.safetensors"));
    MP_ASSERT_OK_AND_ASSIGN(Tensor ids, expected->Get("input_ids"));
    MP_ASSERT_OK_AND_ASSIGN(Tensor greedy, expected->Get("greedy_ids"));
    prompt_.assign(ids.data_as<int32_t>(), ids.data_as<int32_t>() + ids.numel());
    greedy_.assign(greedy.data_as<int32_t>(), greedy.data_as<int32_t>() + greedy.numel());
    const LayerRange ranges[2] = {{0, 2}, {2, 3}};
    for (int s = 0; s < 2; ++s) {
      WeightLoadOptions load;
      load.layers = ranges[s];
      load.embedding = s == 0;
      load.head = s == 1;
      MP_ASSERT_OK_AND_ASSIGN(ModelWeights w, LoadModelWeights(dir, config_, load));
      std::shared_ptr<Backend> backend = NewCpuBackend();
      StageExecutorOptions options;
      options.kv_cache.max_tokens = 1024;
      MP_ASSERT_OK_AND_ASSIGN(executors_[s], StageExecutor::Create(config_, w, backend, options));
      ActivationLinkOptions link;
      link.kind = "local";
      link.upstream = s == 1;
      link.downstream = s == 0;
      link.max_rows = kMaxRows;
      link.hidden = config_.hidden_size;
      link.send_buffers = 2;
      link.timeout = absl::Seconds(20);
      Customize(s, &link);
      MP_ASSERT_OK_AND_ASSIGN(links_[s], ActivationLinks::Create(link, backend));
    }
    MP_ASSERT_OK(links_[0]->Connect("", links_[1]->upstream_endpoint()));
    MP_ASSERT_OK(links_[1]->Connect(links_[0]->downstream_endpoint(), ""));
    for (int s = 0; s < 2; ++s) {
      runners_[s] =
          std::make_unique<StageRunner>(executors_[s].get(), links_[s].get(), nullptr, kMaxRows);
      runners_[s]->Start();
    }
  }

  // Changes stage `stage`'s link options before the links are made.
  virtual void Customize(int stage, ActivationLinkOptions* link) {}

  void TearDown() override {
    for (auto& r : runners_) r.reset();
    for (auto& l : links_) l.reset();
  }

  v1::RunChunkRequest Chunk(uint64_t request, uint32_t index, v1::ChunkKind kind, uint64_t start,
                            const std::vector<int32_t>& ids) {
    v1::RunChunkRequest r;
    r.set_request_id(request);
    r.set_chunk_index(index);
    r.set_kind(kind);
    r.set_start(start);
    r.set_num_tokens(static_cast<uint32_t>(ids.size()));
    r.mutable_token_ids()->Assign(ids.begin(), ids.end());
    r.set_prompt_tokens(prompt_.size());
    r.set_step(++step_);
    if (index == 0) r.set_reserve_tokens(prompt_.size() + greedy_.size());
    return r;
  }

  // Runs a step on both stages at once (the first stage gets the token ids).
  std::pair<StepResult, StepResult> Step(const v1::RunChunkRequest& r) {
    v1::RunChunkRequest later = r;
    later.clear_token_ids();
    auto first = std::async(std::launch::async, [&] { return runners_[0]->RunStep(r); });
    StepResult last = runners_[1]->RunStep(later);
    return {first.get(), std::move(last)};
  }

  // Prefill in chunks of 32, then decode: the greedy tokens of request `id`.
  std::vector<int32_t> Generate(uint64_t id) {
    std::vector<int32_t> tokens;
    uint32_t index = 0;
    for (size_t start = 0; start < prompt_.size(); start += 32) {
      const size_t end = std::min(prompt_.size(), start + 32);
      const bool last = end == prompt_.size();
      auto [a, b] =
          Step(Chunk(id, index++, last ? v1::CHUNK_KIND_PREFILL_LAST : v1::CHUNK_KIND_PREFILL,
                     start, {prompt_.begin() + start, prompt_.begin() + end}));
      EXPECT_TRUE(a.ok() && b.ok()) << a.status() << " / " << b.status();
      if (!a.ok() || !b.ok()) return tokens;
      if (last) tokens.push_back(b->token_id());
    }
    while (tokens.size() < greedy_.size()) {
      auto [a, b] = Step(Chunk(id, index++, v1::CHUNK_KIND_DECODE,
                               prompt_.size() + tokens.size() - 1, {tokens.back()}));
      EXPECT_TRUE(a.ok() && b.ok()) << a.status() << " / " << b.status();
      if (!a.ok() || !b.ok()) return tokens;
      EXPECT_EQ(b->cached_tokens(), prompt_.size() + tokens.size());
      tokens.push_back(b->token_id());
    }
    return tokens;
  }

  ModelConfig config_;
  std::vector<int32_t> prompt_, greedy_;
  std::unique_ptr<StageExecutor> executors_[2];
  std::unique_ptr<ActivationLinks> links_[2];
  std::unique_ptr<StageRunner> runners_[2];
  uint64_t step_ = 0;
};

TEST_F(StageRunnerTest, TwoStagesReproduceTheGreedyTokens) {
  EXPECT_EQ(Generate(1), greedy_);
  EXPECT_EQ(runners_[0]->requests_held(), 1);
  MP_ASSERT_OK_AND_ASSIGN(bool held, runners_[0]->Release(1, absl::Seconds(5)));
  EXPECT_TRUE(held);
  MP_ASSERT_OK_AND_ASSIGN(held, runners_[1]->Release(1, absl::Seconds(5)));
  EXPECT_TRUE(held);
  EXPECT_EQ(runners_[0]->kv_blocks_in_use(), 0);
  EXPECT_EQ(runners_[1]->kv_blocks_in_use(), 0);
  EXPECT_EQ(Generate(2), greedy_) << "a second request on the same links";
}

TEST_F(StageRunnerTest, StepsRunInStepOrderWhateverTheArrivalOrder) {
  const v1::RunChunkRequest c0 =
      Chunk(5, 0, v1::CHUNK_KIND_PREFILL, 0, {prompt_.begin(), prompt_.begin() + 50});
  const v1::RunChunkRequest c1 =
      Chunk(5, 1, v1::CHUNK_KIND_PREFILL_LAST, 50, {prompt_.begin() + 50, prompt_.end()});
  // Step 2 arrives first on both stages; it must wait for step 1.
  auto second = std::async(std::launch::async, [&] { return Step(c1); });
  absl::SleepFor(absl::Milliseconds(50));
  auto first = Step(c0);
  auto [a, b] = second.get();
  ASSERT_TRUE(first.first.ok() && first.second.ok());
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << " / " << b.status();
  EXPECT_EQ(b->token_id(), greedy_[0]);
  EXPECT_EQ(b->cached_tokens(), prompt_.size());
  // A step number that already ran.
  v1::RunChunkRequest stale = c0;
  MP_EXPECT_ERROR(runners_[0]->RunStep(stale), absl::StatusCode::kFailedPrecondition,
                  "already ran");
}

TEST_F(StageRunnerTest, ReleasedRequestsPassThroughAndFreeTheirKv) {
  auto [a, b] =
      Step(Chunk(7, 0, v1::CHUNK_KIND_PREFILL, 0, {prompt_.begin(), prompt_.begin() + 40}));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_GT(runners_[0]->kv_blocks_in_use(), 0);
  MP_ASSERT_OK_AND_ASSIGN(bool held, runners_[0]->Release(7, absl::Seconds(5)));
  EXPECT_TRUE(held);
  EXPECT_EQ(runners_[0]->kv_blocks_in_use(), 0);
  // Stage 1 has not heard of the release yet: it still computes what stage 0 forwards.
  auto [c, d] =
      Step(Chunk(7, 1, v1::CHUNK_KIND_PREFILL, 40, {prompt_.begin() + 40, prompt_.begin() + 80}));
  EXPECT_TRUE(absl::IsCancelled(c.status())) << c.status();
  EXPECT_TRUE(d.ok()) << d.status();
  MP_ASSERT_OK_AND_ASSIGN(held, runners_[1]->Release(7, absl::Seconds(5)));
  EXPECT_TRUE(held);
  EXPECT_EQ(runners_[1]->kv_blocks_in_use(), 0);
  auto [e, f] =
      Step(Chunk(7, 2, v1::CHUNK_KIND_PREFILL_LAST, 80, {prompt_.begin() + 80, prompt_.end()}));
  EXPECT_TRUE(absl::IsCancelled(e.status()));
  EXPECT_TRUE(absl::IsCancelled(f.status()));
  EXPECT_EQ(runners_[0]->requests_held(), 0);
  MP_ASSERT_OK_AND_ASSIGN(held, runners_[0]->Release(7, absl::Seconds(5)));
  EXPECT_FALSE(held) << "nothing left to free";
  // The link is still in step: a new request runs normally.
  EXPECT_EQ(Generate(8), greedy_);
}

TEST_F(StageRunnerTest, LostPeerFailsTheStepWithUnavailable) {
  v1::RunChunkRequest r = Chunk(9, 0, v1::CHUNK_KIND_PREFILL, 0, {1, 2, 3});
  r.clear_token_ids();
  auto waiting = std::async(std::launch::async, [&] { return runners_[1]->RunStep(r); });
  absl::SleepFor(absl::Milliseconds(50));
  runners_[0].reset();  // stage 0 goes away with its transport
  links_[0].reset();
  const StepResult result = waiting.get();
  EXPECT_TRUE(absl::IsUnavailable(result.status())) << result.status();
  v1::RunChunkRequest next = Chunk(9, 1, v1::CHUNK_KIND_PREFILL, 3, {4});
  next.clear_token_ids();
  EXPECT_TRUE(absl::IsUnavailable(runners_[1]->RunStep(next).status()));
}

TEST_F(StageRunnerTest, MalformedStepsAreInvalidArgument) {
  const auto bad = absl::StatusCode::kInvalidArgument;
  v1::RunChunkRequest r = Chunk(3, 0, v1::CHUNK_KIND_PREFILL, 0, {1, 2});
  r.set_num_tokens(3);
  MP_EXPECT_ERROR(runners_[0]->RunStep(r), bad, "token_ids");
  r = Chunk(3, 0, v1::CHUNK_KIND_PREFILL, 0, std::vector<int32_t>(kMaxRows + 1, 1));
  MP_EXPECT_ERROR(runners_[0]->RunStep(r), bad, "max_chunk_tokens = 64");
  r = Chunk(3, 0, v1::CHUNK_KIND_UNSPECIFIED, 0, {1});
  MP_EXPECT_ERROR(runners_[0]->RunStep(r), bad, "kind");
  r.set_kind(v1::CHUNK_KIND_PREFILL);
  r.set_step(0);
  MP_EXPECT_ERROR(runners_[0]->RunStep(r), bad, "step must be >= 1");
}

TEST_F(StageRunnerTest, StopFailsQueuedStepsAndFreesKv) {
  auto [a, b] = Step(Chunk(4, 0, v1::CHUNK_KIND_PREFILL, 0, {1, 2, 3, 4}));
  ASSERT_TRUE(a.ok() && b.ok());
  // A step that can never start (step numbers skip one) is failed by Stop.
  v1::RunChunkRequest gap = Chunk(4, 1, v1::CHUNK_KIND_PREFILL, 4, {5});
  gap.set_step(gap.step() + 1);
  auto queued = std::async(std::launch::async, [&] { return runners_[0]->RunStep(gap); });
  absl::SleepFor(absl::Milliseconds(20));
  runners_[0]->Stop(absl::AbortedError("epoch over"));
  EXPECT_TRUE(absl::IsAborted(queued.get().status()));
  EXPECT_EQ(runners_[0]->kv_blocks_in_use(), 0);
  EXPECT_EQ(executors_[0]->kv_cache().stats().blocks_in_use, 0);
  EXPECT_TRUE(absl::IsAborted(runners_[0]->RunStep(gap).status()));
}

// Stage 1 never receives request 11's activations (they are dropped on arrival) and gives up
// on a receive after 1 s.
class StalledLinkTest : public StageRunnerTest {
 protected:
  static constexpr uint64_t kLost = 11;
  void Customize(int stage, ActivationLinkOptions* link) override {
    if (stage != 1) return;
    kvtransfer::FaultRule drop;
    drop.action = kvtransfer::FaultAction::kDrop;
    drop.request_id = kLost;
    drop.count = 0;
    link->inject_receive_faults.push_back(drop);
    link->timeout = absl::Seconds(1);
  }
};

TEST_F(StalledLinkTest, LostActivationsFailTheStepNamingRequestAndChunkWithinTheTimeout) {
  EXPECT_EQ(Generate(3), greedy_) << "other requests' activations arrive";
  const absl::Time start = absl::Now();
  auto [a, b] = Step(Chunk(kLost, 0, v1::CHUNK_KIND_PREFILL, 0, {1, 2, 3, 4, 5}));
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(a.ok()) << "stage 0 computed and sent it: " << a.status();
  EXPECT_TRUE(absl::IsDeadlineExceeded(b.status())) << b.status();
  EXPECT_TRUE(absl::StrContains(b.status().message(), "request 11 chunk 0")) << b.status();
  EXPECT_GE(took, absl::Seconds(1));
  EXPECT_LT(took, absl::Seconds(30));
  // The link is out of step now: the stage fails every later step the same way until the
  // pipeline is rebuilt, instead of computing on another chunk's activations.
  auto [c, d] = Step(Chunk(12, 0, v1::CHUNK_KIND_PREFILL, 0, {1, 2, 3}));
  EXPECT_TRUE(absl::IsDeadlineExceeded(d.status())) << d.status();
  runners_[1]->Stop(absl::AbortedError("epoch over"));
  EXPECT_EQ(executors_[1]->kv_cache().stats().blocks_in_use, 0);
}

TEST_F(StalledLinkTest, StopEndsAStalledReceiveAtOnce) {
  v1::RunChunkRequest r = Chunk(kLost, 0, v1::CHUNK_KIND_PREFILL, 0, {1, 2, 3});
  // Only stage 1 runs the step: its receive waits for a send that never comes.
  r.clear_token_ids();
  auto waiting = std::async(std::launch::async, [&] { return runners_[1]->RunStep(r); });
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time stop = absl::Now();
  runners_[1]->Stop(absl::AbortedError("pipeline epoch aborted: the coordinator gave up"));
  const StepResult result = waiting.get();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(5));
  EXPECT_TRUE(absl::IsAborted(result.status())) << result.status();
}

TEST_F(StageRunnerTest, ACallerThatGoesAwayIsAnsweredAtOnceAndItsStepStillRunsInOrder) {
  // Step 2 waits for step 1, which has not arrived; its caller gives up.
  const v1::RunChunkRequest c0 =
      Chunk(6, 0, v1::CHUNK_KIND_PREFILL, 0, {prompt_.begin(), prompt_.begin() + 50});
  const v1::RunChunkRequest c1 =
      Chunk(6, 1, v1::CHUNK_KIND_PREFILL_LAST, 50, {prompt_.begin() + 50, prompt_.end()});
  std::atomic<bool> gone{false};
  auto abandoned = std::async(
      std::launch::async, [&] { return runners_[0]->RunStep(c1, [&] { return gone.load(); }); });
  absl::SleepFor(absl::Milliseconds(100));
  const absl::Time left = absl::Now();
  gone = true;
  const StepResult result = abandoned.get();
  EXPECT_LT(absl::Now() - left, absl::Seconds(5));
  EXPECT_TRUE(absl::IsCancelled(result.status())) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "went away")) << result.status();
  // Step 1 arrives: both run on stage 0, so stage 1 (which gets both normally) stays in step.
  auto first = std::async(std::launch::async, [&] { return runners_[0]->RunStep(c0); });
  v1::RunChunkRequest later0 = c0, later1 = c1;
  later0.clear_token_ids();
  later1.clear_token_ids();
  auto second = std::async(std::launch::async, [&] { return runners_[1]->RunStep(later1); });
  const StepResult b0 = runners_[1]->RunStep(later0);
  ASSERT_TRUE(first.get().ok());
  ASSERT_TRUE(b0.ok()) << b0.status();
  const StepResult b1 = second.get();
  ASSERT_TRUE(b1.ok()) << b1.status();
  EXPECT_EQ(b1->token_id(), greedy_[0]) << "stage 0 ran the abandoned step with the right input";
  // Stage 0 counts the step once its send is out, a moment after stage 1 may have finished.
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (runners_[0]->steps_done() < 2 && absl::Now() < end) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(runners_[0]->steps_done(), 2u);
}

}  // namespace
}  // namespace mp
