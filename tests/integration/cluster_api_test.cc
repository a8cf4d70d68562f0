// The public API's contract on a running two-stage cluster: malformed and oversized requests
// get INVALID_ARGUMENT naming the field and the limit (a 1M-token request passes the message
// limits and is refused by the context check), a request the KV budget can never hold gets
// RESOURCE_EXHAUSTED saying what would fit, ids of live requests are unique, and Prefill /
// prefill-only Generate / GetRequest / ListWorkers / Cancel behave as coordinator.proto says.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/grpc_channel.h"
#include "common/status_matchers.h"
#include "tests/integration/cluster_test_util.h"

namespace mp::testing {
namespace {

namespace v1 = millipede::v1;

constexpr int kMaxContext = 1024;
constexpr int kKvTokens = 512;

class ClusterApiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ClusterOptions options;
    options.model_dir = TestdataDir() + "/tiny_llama";
    options.stages = 2;
    options.coordinator_args = {"--max-context", std::to_string(kMaxContext),
                                "--kv-tokens",   std::to_string(kKvTokens),
                                "--chunk-mode",  "fixed",
                                "--max-chunk",   "32"};
    absl::StatusOr<std::unique_ptr<Cluster>> c = Cluster::Start(options);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
    ASSERT_TRUE(cluster_->WaitReady(2, absl::Seconds(60)).ok()) << cluster_->Logs();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  static void ExpectError(const v1::GenerateRequest& request, grpc::StatusCode code,
                          const std::string& substring) {
    GenerateResult r = RunGenerate(cluster_->stub(), request);
    EXPECT_EQ(r.status.error_code(), code) << r.status.error_message();
    EXPECT_TRUE(absl::StrContains(r.status.error_message(), substring))
        << "'" << r.status.error_message() << "' does not mention '" << substring << "'";
    EXPECT_FALSE(r.accepted) << "a refused request must not be accepted";
  }

  static Cluster* cluster_;
};

Cluster* ClusterApiTest::cluster_ = nullptr;

v1::GenerateRequest Ids(const std::vector<int32_t>& ids, int max_new = 4) {
  return TokenRequest(ids, max_new);
}

TEST_F(ClusterApiTest, MalformedRequestsAreInvalidArgumentNamingTheField) {
  const auto bad = grpc::StatusCode::INVALID_ARGUMENT;
  ExpectError(v1::GenerateRequest(), bad, "prompt");
  ExpectError(Ids({}), bad, "empty");
  ExpectError(Ids({1, 2, 512}), bad, "tokens.ids[2] = 512 is outside the vocabulary [0, 512)");
  ExpectError(Ids({1, -3}), bad, "tokens.ids[1] = -3");
  ExpectError(Ids(std::vector<int32_t>(1000, 5), 100), bad, "maximum context of 1024");
  ExpectError(Ids({1, 2}, kMaxContext + 1), bad, "max_new_tokens");
  {
    v1::GenerateRequest r = Ids({1, 2});
    r.mutable_sampling()->set_temperature(-1);
    ExpectError(r, bad, "sampling.temperature");
    r.mutable_sampling()->set_temperature(std::numeric_limits<float>::quiet_NaN());
    ExpectError(r, bad, "sampling.temperature");
  }
  {
    v1::GenerateRequest r = Ids({1, 2});
    r.mutable_sampling()->set_top_p(1.5f);
    ExpectError(r, bad, "sampling.top_p");
  }
  {
    v1::GenerateRequest r = Ids({1, 2});
    r.set_request_id("has space");
    ExpectError(r, bad, "request_id");
    r.set_request_id(std::string(129, 'x'));
    ExpectError(r, bad, "request_id has 129 characters; the limit is 128");
  }
  {
    v1::GenerateRequest r = Ids({1, 2});
    r.add_stop_token_ids(9999);
    ExpectError(r, bad, "stop_token_ids[0] = 9999");
  }
  {
    v1::GenerateRequest r = Ids({1, 2});
    r.set_system("be brief");
    ExpectError(r, bad, "text prompts only");
  }
  {
    v1::GenerateRequest r;
    r.set_text("hello");
    ExpectError(r, bad, "no tokenizer.json");  // the tiny fixture has none
  }
}

TEST_F(ClusterApiTest, MillionTokenRequestPassesTheMessageLimitsAndIsRefusedByContext) {
  // 1.5M ids of two varint bytes each: a 3 MB message, and 6 MB with the text below — both
  // above gRPC's default 4 MB limit, which would answer RESOURCE_EXHAUSTED.
  v1::GenerateRequest r = Ids(std::vector<int32_t>(1500000, 300), 16);
  ASSERT_GT(r.ByteSizeLong(), 2800000u);
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT,
              "a prompt of 1500000 tokens + max_new_tokens 16 exceeds the maximum context");
  v1::GenerateRequest text;
  text.set_text(std::string(6 << 20, 'a'));
  ExpectError(text, grpc::StatusCode::INVALID_ARGUMENT, "bytes; the limit is");
}

TEST_F(ClusterApiTest, RequestBeyondTheKvBudgetIsResourceExhaustedSayingWhatFits) {
  ExpectError(Ids(std::vector<int32_t>(600, 7), 10), grpc::StatusCode::RESOURCE_EXHAUSTED,
              "a prompt of at most 512 tokens would fit");
  ExpectError(Ids(std::vector<int32_t>(500, 7), 100), grpc::StatusCode::RESOURCE_EXHAUSTED,
              "this prompt fits with max_new_tokens <= 13");
  // Exactly the budget fits.
  GenerateResult ok = RunGenerate(cluster_->stub(), Ids(std::vector<int32_t>(500, 7), 13));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.tokens.size(), 13u);
}

TEST_F(ClusterApiTest, LiveRequestIdsAreUnique) {
  absl::Notification running;
  GenerateResult first;
  std::thread client([&] {
    v1::GenerateRequest r = Ids(RandomIds(300, 512, 1), 150);
    r.set_request_id("same-id");
    GenerateCall call;
    call.on_event = [&](const v1::GenerateEvent& ev, grpc::ClientContext&) {
      if (ev.has_accepted()) running.Notify();
    };
    first = RunGenerate(cluster_->stub(), r, call);
  });
  if (!running.WaitForNotificationWithTimeout(absl::Seconds(60))) {
    CancelRequest(cluster_->stub(), "same-id");
    client.join();
    FAIL() << "the first request was not accepted within 60 s: " << first.status.error_message()
           << "\n"
           << cluster_->Logs();
  }
  v1::GenerateRequest again = Ids({1, 2});
  again.set_request_id("same-id");
  GenerateResult second = RunGenerate(cluster_->stub(), again);
  client.join();
  EXPECT_TRUE(first.status.ok()) << first.status.error_message();
  // The first request may have finished before the second arrived.
  if (!second.status.ok()) {
    EXPECT_EQ(second.status.error_code(), grpc::StatusCode::ALREADY_EXISTS)
        << second.status.error_message();
  }
}

TEST_F(ClusterApiTest, PrefillOnlyAndGetRequest) {
  v1::GenerateRequest r = Ids(RandomIds(70, 512, 2), 50);
  r.set_request_id("prefill-1");
  GenerateCall call;
  call.prefill_only = true;
  GenerateResult prefill = RunGenerate(cluster_->stub(), r, call);
  ASSERT_TRUE(prefill.status.ok()) << prefill.status.error_message();
  EXPECT_EQ(prefill.tokens.size(), 1u);
  EXPECT_EQ(prefill.completed.stop_reason(), v1::STOP_REASON_PREFILL_ONLY);
  EXPECT_EQ(prefill.completed.timings().chunks(), 3u);  // 70 tokens in chunks of 32
  EXPECT_GT(prefill.completed.timings().ttft_seconds(), 0);

  // The same prompt through Generate: the same first token.
  r.set_request_id("generate-1");
  GenerateResult full = RunGenerate(cluster_->stub(), r);
  ASSERT_TRUE(full.status.ok()) << full.status.error_message();
  ASSERT_EQ(full.tokens.size(), 50u);
  EXPECT_EQ(full.tokens[0], prefill.tokens[0]);

  // max_new_tokens 0: the prefill only, no token.
  v1::GenerateRequest zero = Ids(RandomIds(40, 512, 3), 0);
  GenerateResult none = RunGenerate(cluster_->stub(), zero);
  ASSERT_TRUE(none.status.ok()) << none.status.error_message();
  EXPECT_TRUE(none.tokens.empty());
  EXPECT_EQ(none.completed.stop_reason(), v1::STOP_REASON_PREFILL_ONLY);

  grpc::ClientContext context;
  v1::GetRequestRequest get;
  get.set_request_id("generate-1");
  v1::RequestInfo info;
  ASSERT_TRUE(cluster_->stub().GetRequest(&context, get, &info).ok());
  EXPECT_EQ(info.state(), v1::REQUEST_STATE_COMPLETED);
  EXPECT_EQ(info.generated_tokens(), 50u);
  EXPECT_EQ(info.tokens_done(), 70u);

  grpc::ClientContext missing_context;
  get.set_request_id("never-sent");
  EXPECT_EQ(cluster_->stub().GetRequest(&missing_context, get, &info).error_code(),
            grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext cancel_context;
  v1::CancelRequest cancel;
  cancel.set_request_id("generate-1");
  v1::CancelResponse cancelled;
  ASSERT_TRUE(cluster_->stub().Cancel(&cancel_context, cancel, &cancelled).ok());
  EXPECT_FALSE(cancelled.cancelled()) << "it had already finished";
}

TEST_F(ClusterApiTest, ListWorkersDescribesThePipeline) {
  MP_ASSERT_OK_AND_ASSIGN(v1::ListWorkersResponse list, cluster_->ListWorkers());
  EXPECT_TRUE(list.ready());
  EXPECT_GT(list.pipeline_epoch(), 0u);
  EXPECT_EQ(list.max_context_tokens(), static_cast<uint64_t>(kMaxContext));
  EXPECT_EQ(list.free_kv_tokens(), static_cast<uint64_t>(kKvTokens));
  ASSERT_EQ(list.workers_size(), 2);
  std::vector<std::pair<uint32_t, uint32_t>> layers;
  for (const v1::WorkerInfo& w : list.workers()) {
    EXPECT_EQ(w.state(), v1::WORKER_STATE_READY);
    EXPECT_EQ(w.role(), v1::WORKER_ROLE_PREFILL);
    EXPECT_EQ(w.transport(), "ucx");
    EXPECT_EQ(w.kv_blocks_total(), static_cast<uint64_t>(kKvTokens / 64));
    EXPECT_GT(w.pid(), 0u);
    EXPECT_FALSE(w.metrics_address().empty());
    layers.emplace_back(w.layers().begin(), w.layers().end());
  }
  std::sort(layers.begin(), layers.end());
  // tiny_llama has 3 layers: [0, 2) and [2, 3), or [0, 1) and [1, 3).
  EXPECT_EQ(layers[0].first, 0u);
  EXPECT_EQ(layers[0].second, layers[1].first);
  EXPECT_EQ(layers[1].second, 3u);
}

}  // namespace
}  // namespace mp::testing
