// Scheduling on a two-stage cluster whose second stage takes at least 10 ms per step:
//  * cancellation and deadlines reach every stage: a request stopped in the middle of its
//    prefill (a Cancel call, the client cancelling its call, or its deadline passing) ends with
//    CANCELLED / DEADLINE_EXCEEDED, and every stage's KV blocks (millipede_kv_blocks_in_use on
//    each worker's /metrics) are back to 0 within 1 s; the cluster then serves normally;
//  * fair interleaving: a short request sent while a long prefill runs finishes while that prefill
//    still runs, its first token within a few of the prefill's 94 chunks (counted in chunks, not
//    seconds: it holds on a loaded machine).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/grpc_channel.h"
#include "common/status_matchers.h"
#include "tests/integration/cluster_test_util.h"

namespace mp::testing {
namespace {

namespace v1 = millipede::v1;

class ClusterSchedulingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ClusterOptions options;
    options.model_dir = TestdataDir() + "/tiny_llama";
    options.stages = 2;
    // Small chunks, and stage 1 takes at least 10 ms per step (an injected receive delay):
    // the 3000-token prompt takes about a hundred steps, a second or more.
    options.coordinator_args = {"--chunk-mode",     "fixed", "--max-chunk", "32",
                                "--ucx-transports", "tcp"};
    options.worker_args = {"--inject-receive-delay-ms", "10"};
    absl::StatusOr<std::unique_ptr<Cluster>> c = Cluster::Start(options);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
    ASSERT_TRUE(cluster_->WaitReady(2, absl::Seconds(60)).ok()) << cluster_->Logs();
    absl::StatusOr<v1::ListWorkersResponse> list = cluster_->ListWorkers();
    ASSERT_TRUE(list.ok());
    for (const v1::WorkerInfo& w : list->workers()) worker_metrics_->push_back(w.metrics_address());
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  // KV blocks in use on every worker.
  static double KvBlocksInUse() {
    double total = 0;
    for (const std::string& address : *worker_metrics_) {
      absl::StatusOr<std::string> text = HttpGet(address, "/metrics");
      if (!text.ok()) return -1;
      total += MetricValue(*text, "millipede_kv_blocks_in_use").value_or(-1e9);
    }
    return total;
  }

  // Waits up to `limit` for all stages to hold no KV; returns how long it took (or the limit
  // plus one second when it never happened).
  static absl::Duration TimeUntilKvFree(absl::Time since, absl::Duration limit) {
    while (absl::Now() - since < limit) {
      if (KvBlocksInUse() == 0) return absl::Now() - since;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return limit + absl::Seconds(1);
  }

  static double CoordinatorMetric(const std::string& series) {
    absl::StatusOr<std::string> address =
        cluster_->coordinator().WaitForToken("metrics on ", absl::Seconds(1));
    if (!address.ok()) return -1;
    absl::StatusOr<std::string> text = HttpGet(*address, "/metrics");
    return text.ok() ? MetricValue(*text, series).value_or(0) : -1;
  }

  static v1::GenerateRequest LongRequest(const std::string& id) {
    v1::GenerateRequest r = TokenRequest(RandomIds(3000, 512, 11), 50);
    r.set_request_id(id);
    return r;
  }

  // The cluster still answers normally.
  static void ExpectServes() {
    GenerateResult r = RunGenerate(cluster_->stub(), TokenRequest(RandomIds(20, 512, 3), 4));
    EXPECT_TRUE(r.status.ok()) << r.status.error_message() << "\n" << cluster_->Logs();
    EXPECT_EQ(r.tokens.size(), 4u);
  }

  static Cluster* cluster_;
  static std::vector<std::string>* worker_metrics_;
};

Cluster* ClusterSchedulingTest::cluster_ = nullptr;
std::vector<std::string>* ClusterSchedulingTest::worker_metrics_ = new std::vector<std::string>();

TEST_F(ClusterSchedulingTest, CancelCallStopsThePrefillAndFreesKvOnEveryStage) {
  std::atomic<int> progress{0};
  absl::Notification started;
  GenerateResult result;
  std::thread client([&] {
    GenerateCall call;
    call.on_event = [&](const v1::GenerateEvent& ev, grpc::ClientContext&) {
      if (ev.has_progress() && ++progress == 3) started.Notify();
    };
    result = RunGenerate(cluster_->stub(), LongRequest("cancel-me"), call);
    if (!started.HasBeenNotified()) started.Notify();
  });
  if (!started.WaitForNotificationWithTimeout(absl::Seconds(60))) {
    CancelRequest(cluster_->stub(), "cancel-me");
    client.join();
    FAIL() << "no progress within 60 s: " << result.status.error_message() << "\n"
           << cluster_->Logs();
  }
  EXPECT_GT(KvBlocksInUse(), 0) << "the request should hold KV while it runs";
  grpc::ClientContext context;
  SetTimeout(context, absl::Seconds(5));
  v1::CancelRequest cancel;
  cancel.set_request_id("cancel-me");
  v1::CancelResponse response;
  const absl::Time at = absl::Now();
  EXPECT_TRUE(cluster_->stub().Cancel(&context, cancel, &response).ok());
  EXPECT_TRUE(response.cancelled());
  client.join();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED)
      << result.status.error_message();
  EXPECT_LT(result.completed.prompt_tokens(), 1u) << "a cancelled request never completes";
  const absl::Duration freed = TimeUntilKvFree(at, absl::Seconds(1));
  EXPECT_LE(freed, absl::Seconds(1))
      << "KV still held on some stage 1 s after Cancel: " << KvBlocksInUse() << " blocks\n"
      << cluster_->Logs();
  EXPECT_GE(CoordinatorMetric("millipede_requests_cancelled_total{reason=\"client\"}"), 1);

  // GetRequest remembers it as cancelled; the cluster keeps serving.
  grpc::ClientContext get_context;
  v1::GetRequestRequest get;
  get.set_request_id("cancel-me");
  v1::RequestInfo info;
  ASSERT_TRUE(cluster_->stub().GetRequest(&get_context, get, &info).ok());
  EXPECT_EQ(info.state(), v1::REQUEST_STATE_CANCELLED);
  EXPECT_LT(info.tokens_done(), 3000u);
  ExpectServes();
}

TEST_F(ClusterSchedulingTest, ClientCancellingItsCallFreesKv) {
  std::atomic<int> progress{0};
  absl::Time at;
  GenerateCall call;
  call.on_event = [&](const v1::GenerateEvent& ev, grpc::ClientContext& context) {
    if (ev.has_progress() && ++progress == 3) {
      at = absl::Now();
      context.TryCancel();
    }
  };
  GenerateResult result = RunGenerate(cluster_->stub(), LongRequest("walk-away"), call);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED)
      << result.status.error_message();
  ASSERT_GE(progress.load(), 3);
  // The coordinator notices the cancelled call within its 100 ms poll.
  EXPECT_LE(TimeUntilKvFree(at, absl::Seconds(1)), absl::Seconds(1))
      << KvBlocksInUse() << " KV blocks still in use\n"
      << cluster_->Logs();
  ExpectServes();
}

TEST_F(ClusterSchedulingTest, DeadlineStopsTheRequestAndFreesKv) {
  GenerateCall call;
  call.timeout = absl::Milliseconds(500);
  const double before =
      CoordinatorMetric("millipede_requests_cancelled_total{reason=\"deadline\"}");
  GenerateResult result = RunGenerate(cluster_->stub(), LongRequest("too-slow"), call);
  const absl::Time at = absl::Now();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(result.seconds, 2.0);
  EXPECT_LE(TimeUntilKvFree(at, absl::Seconds(1)), absl::Seconds(1))
      << KvBlocksInUse() << " KV blocks still in use\n"
      << cluster_->Logs();
  EXPECT_EQ(CoordinatorMetric("millipede_requests_cancelled_total{reason=\"deadline\"}"),
            before + 1)
      << CoordinatorMetric("millipede_requests_cancelled_total{reason=\"client\"}") << "\n"
      << cluster_->coordinator().Log();
  ExpectServes();
}

TEST_F(ClusterSchedulingTest, ShortRequestsAreNotStuckBehindALongPrefill) {
  constexpr int kLongChunks = (3000 + 31) / 32;  // LongRequest() at --max-chunk 32
  absl::Notification started;
  std::atomic<int> long_chunks{0};  // the long prefill's chunks reported so far
  GenerateResult long_result;
  std::thread client([&] {
    GenerateCall call;
    call.on_event = [&](const v1::GenerateEvent& ev, grpc::ClientContext&) {
      if (ev.has_progress()) ++long_chunks;
      if (ev.has_progress() && !started.HasBeenNotified()) started.Notify();
    };
    long_result = RunGenerate(cluster_->stub(), LongRequest("long-one"), call);
    if (!started.HasBeenNotified()) started.Notify();
  });
  if (!started.WaitForNotificationWithTimeout(absl::Seconds(60))) {
    CancelRequest(cluster_->stub(), "long-one");
    client.join();
    FAIL() << "no progress within 60 s: " << long_result.status.error_message() << "\n"
           << cluster_->Logs();
  }
  // About ninety chunks of the long prefill remain; the short request needs one chunk and a
  // few decode steps, interleaved with them: its chunk goes after the long one's steps already
  // in flight (at most stages + 1) and one more. Counted in the long prefill's chunks, not in
  // seconds, so that the check holds on a loaded machine.
  const int chunks_before = long_chunks.load();
  int chunks_at_first_token = -1;
  GenerateCall short_call;
  short_call.on_event = [&](const v1::GenerateEvent& ev, grpc::ClientContext&) {
    if (ev.has_first_token()) chunks_at_first_token = long_chunks.load();
  };
  GenerateResult short_result =
      RunGenerate(cluster_->stub(), TokenRequest(RandomIds(20, 512, 4), 3), short_call);
  const int chunks_at_short_done = long_chunks.load();
  // The rest of the long prefill would only cost time: stop it.
  const bool long_was_live = CancelRequest(cluster_->stub(), "long-one");
  client.join();
  ASSERT_TRUE(short_result.status.ok()) << short_result.status.error_message();
  EXPECT_EQ(short_result.tokens.size(), 3u);
  EXPECT_TRUE(long_was_live) << "the short request waited for the long prefill: "
                             << long_result.status.error_message();
  EXPECT_EQ(long_result.status.error_code(), grpc::StatusCode::CANCELLED)
      << long_result.status.error_message();
  EXPECT_LT(chunks_at_short_done, kLongChunks);
  ASSERT_GE(chunks_at_first_token, 0);
  RecordProperty("long_chunks_while_short_waited", chunks_at_first_token - chunks_before);
  EXPECT_LT(chunks_at_first_token - chunks_before, kLongChunks / 4)
      << "the long prefill finished " << chunks_at_first_token - chunks_before << " of its "
      << kLongChunks << " chunks while the short request waited for its first token (short TTFT "
      << short_result.completed.timings().ttft_seconds() << " s)";
}

}  // namespace
}  // namespace mp::testing
