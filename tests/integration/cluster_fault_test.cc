// A stage worker killed in the middle of a request: that request fails with UNAVAILABLE within
// a bounded time, while the cluster keeps serving — first on a pipeline rebuilt from the
// surviving workers, then, once a replacement worker registers, on the full pipeline again.
// Results after the failure equal those before it.
//
// A transfer that never arrives (the worker drops one request's activations, as a link whose
// network interface vanished would lose them): the stall watchdog fails that request with
// UNAVAILABLE naming the stage and the chunk within its bound, every stage frees the request's
// KV, and the rebuilt pipeline serves the next request with the tokens transformers computed.
//
// A link that carries nothing when the pipeline is built (stage 1 drops the first link probe):
// the coordinator never reports that pipeline ready; it builds another one on fresh links, and
// once it reports ready the cluster serves the request with the tokens transformers computed.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "common/status_matchers.h"
#include "model/safetensors.h"
#include "tests/integration/cluster_test_util.h"

namespace mp::testing {
namespace {

namespace v1 = millipede::v1;

TEST(ClusterFaultTest, KilledWorkerFailsItsRequestAndTheClusterRecovers) {
  ClusterOptions options;
  options.model_dir = TestdataDir() + "/tiny_llama";
  options.stages = 3;
  options.coordinator_args = {"--chunk-mode",     "fixed", "--max-chunk", "32",
                              "--ucx-transports", "tcp"};
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Cluster> cluster, Cluster::Start(options));
  MP_ASSERT_OK(cluster->WaitReady(3, absl::Seconds(60)));

  // A short request's answer on the healthy pipeline.
  const v1::GenerateRequest probe = TokenRequest(RandomIds(40, 512, 7), 8);
  GenerateResult before = RunGenerate(cluster->stub(), probe);
  ASSERT_TRUE(before.status.ok()) << before.status.error_message() << cluster->Logs();
  ASSERT_EQ(before.tokens.size(), 8u);

  // A long request (prefill, then thousands of decode steps); stage 1 dies under it.
  absl::Notification decoding;
  GenerateResult victim;
  std::thread client([&] {
    GenerateCall call;
    call.on_event = [&](const v1::GenerateEvent& ev, grpc::ClientContext&) {
      if (ev.has_tokens() && !decoding.HasBeenNotified()) decoding.Notify();
    };
    v1::GenerateRequest long_one = TokenRequest(RandomIds(1000, 512, 8), 3000);
    long_one.set_request_id("victim");
    victim = RunGenerate(cluster->stub(), long_one, call);
    if (!decoding.HasBeenNotified()) decoding.Notify();
  });
  if (!decoding.WaitForNotificationWithTimeout(absl::Seconds(60))) {
    CancelRequest(cluster->stub(), "victim");
    client.join();
    FAIL() << "the long request did not start decoding within 60 s: "
           << victim.status.error_message() << "\n"
           << cluster->Logs();
  }
  const absl::Time killed = absl::Now();
  kill(cluster->worker(1).pid(), SIGKILL);
  client.join();
  const absl::Duration to_fail = absl::Now() - killed;
  EXPECT_EQ(victim.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << victim.status.error_message();
  EXPECT_TRUE(absl::StrContains(victim.status.error_message(), "stage"))
      << victim.status.error_message();
  EXPECT_LT(to_fail, absl::Seconds(10)) << "the request took " << to_fail << " to fail";
  EXPECT_LT(victim.tokens.size(), 3000u);

  // Submitted right away, this request waits for the rebuilt two-stage pipeline.
  GenerateResult survivors = RunGenerate(cluster->stub(), probe);
  ASSERT_TRUE(survivors.status.ok()) << survivors.status.error_message() << cluster->Logs();
  EXPECT_EQ(survivors.tokens, before.tokens);
  MP_ASSERT_OK_AND_ASSIGN(v1::ListWorkersResponse list, cluster->ListWorkers());
  int ready = 0, down = 0;
  for (const v1::WorkerInfo& w : list.workers()) {
    ready += w.state() == v1::WORKER_STATE_READY;
    down += w.state() == v1::WORKER_STATE_DOWN;
  }
  EXPECT_EQ(ready, 2) << list.DebugString();
  EXPECT_EQ(down, 1) << list.DebugString();

  // A replacement worker brings the pipeline back to three stages.
  MP_ASSERT_OK(cluster->AddWorker(1).status());
  MP_ASSERT_OK(cluster->WaitReady(3, absl::Seconds(60)));
  GenerateResult restored = RunGenerate(cluster->stub(), probe);
  ASSERT_TRUE(restored.status.ok()) << restored.status.error_message() << cluster->Logs();
  EXPECT_EQ(restored.tokens, before.tokens);

  MP_ASSERT_OK_AND_ASSIGN(const std::string metrics_address,
                          cluster->coordinator().WaitForToken("metrics on ", absl::Seconds(1)));
  MP_ASSERT_OK_AND_ASSIGN(std::string metrics, HttpGet(metrics_address, "/metrics"));
  EXPECT_EQ(MetricValue(metrics, "millipede_requests_failed_total{code=\"unavailable\"}"), 1.0)
      << metrics;
  EXPECT_GE(MetricValue(metrics, "millipede_pipeline_rebuilds_total").value_or(0), 3.0);
}

TEST(ClusterFaultTest, StalledTransferFailsItsRequestNamingStageAndChunkAndFreesKv) {
  const std::string dir = TestdataDir() + "/tiny_llama";
  ClusterOptions options;
  options.model_dir = dir;
  options.stages = 2;
  // The coordinator's first request has id 1: stage 1 never receives its activations.
  options.coordinator_args = {"--chunk-mode",     "fixed", "--max-chunk",     "32",
                              "--ucx-transports", "tcp",   "--stall-timeout", "2"};
  options.worker_args = {"--inject-drop-request", "1"};
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Cluster> cluster, Cluster::Start(options));
  MP_ASSERT_OK(cluster->WaitReady(2, absl::Seconds(60)));
  MP_ASSERT_OK_AND_ASSIGN(v1::ListWorkersResponse list, cluster->ListWorkers());
  std::vector<std::string> worker_metrics;
  for (const v1::WorkerInfo& w : list.workers()) worker_metrics.push_back(w.metrics_address());
  ASSERT_EQ(worker_metrics.size(), 2u);
  auto kv_blocks = [&] {
    double total = 0;
    for (const std::string& address : worker_metrics) {
      absl::StatusOr<std::string> text = HttpGet(address, "/metrics");
      if (!text.ok()) return -1.0;
      total += MetricValue(*text, "millipede_kv_blocks_in_use").value_or(-1e9);
    }
    return total;
  };

  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> expected,
                          SafetensorsFile::Open(dir + "/expected.safetensors"));
  MP_ASSERT_OK_AND_ASSIGN(Tensor ids, expected->Get("input_ids"));
  MP_ASSERT_OK_AND_ASSIGN(Tensor greedy, expected->Get("greedy_ids"));
  const std::vector<int32_t> prompt(ids.data_as<int32_t>(), ids.data_as<int32_t>() + ids.numel());
  const std::vector<int32_t> want(greedy.data_as<int32_t>(),
                                  greedy.data_as<int32_t>() + greedy.numel());
  const v1::GenerateRequest request = TokenRequest(prompt, static_cast<int>(want.size()));

  // While the request is stuck, stage 0 holds its KV.
  std::atomic<bool> done{false};
  double most_kv = 0;
  std::thread watch([&] {
    while (!done.load()) {
      most_kv = std::max(most_kv, kv_blocks());
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  const absl::Time start = absl::Now();
  GenerateResult lost = RunGenerate(cluster->stub(), request);
  const absl::Duration to_fail = absl::Now() - start;
  done = true;
  watch.join();
  EXPECT_EQ(lost.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << lost.status.error_message() << "\n"
      << cluster->Logs();
  const std::string& message = lost.status.error_message();
  for (const char* part :
       {"pipeline stage 1 (worker",
        "no progress on step 1 (request req-1, "
        "prefill chunk 0, tokens [0, 32))",
        "stage 1 has not finished it", "after stage 0 did", "--stall-timeout 2s"}) {
    EXPECT_TRUE(absl::StrContains(message, part)) << "'" << message << "' lacks '" << part << "'";
  }
  EXPECT_GE(to_fail, absl::Seconds(2)) << "the bound is 2 s plus 10 x the chunk's compute";
  EXPECT_LT(to_fail, absl::Seconds(60)) << "the request took " << to_fail << " to fail";
  EXPECT_GT(most_kv, 0) << "the stuck request held KV";
  // The aborted stages free the request's KV.
  const absl::Time freeing = absl::Now();
  while (kv_blocks() != 0 && absl::Now() - freeing < absl::Seconds(30)) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(kv_blocks(), 0) << cluster->Logs();

  // The rebuilt pipeline (same workers, fresh links) serves the next request (id 2) right.
  GenerateResult next = RunGenerate(cluster->stub(), request);
  ASSERT_TRUE(next.status.ok()) << next.status.error_message() << "\n" << cluster->Logs();
  EXPECT_EQ(next.tokens, want);

  MP_ASSERT_OK_AND_ASSIGN(const std::string metrics_address,
                          cluster->coordinator().WaitForToken("metrics on ", absl::Seconds(1)));
  MP_ASSERT_OK_AND_ASSIGN(std::string metrics, HttpGet(metrics_address, "/metrics"));
  EXPECT_EQ(MetricValue(metrics, "millipede_pipeline_stalls_total"), 1.0) << metrics;
  EXPECT_EQ(MetricValue(metrics, "millipede_requests_failed_total{code=\"unavailable\"}"), 1.0)
      << metrics;
  EXPECT_EQ(MetricValue(metrics, "millipede_requests_completed_total"), 1.0) << metrics;
}

TEST(ClusterFaultTest, APipelineWhoseLinkCarriesNothingIsNeverReportedReady) {
  const std::string dir = TestdataDir() + "/tiny_llama";
  ClusterOptions options;
  options.model_dir = dir;
  options.stages = 2;
  options.coordinator_args = {"--chunk-mode",     "fixed", "--max-chunk", "32",
                              "--ucx-transports", "tcp"};
  // Stage 1 (the only stage with a previous one) never sees the first pipeline's link probe.
  options.worker_args = {"--inject-drop-link-probes", "1", "--connect-timeout", "1"};
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Cluster> cluster, Cluster::Start(options));
  // Every pipeline epoch the coordinator says is ready, watched from the start.
  std::set<uint64_t> ready_epochs;
  std::atomic<bool> done{false};
  std::thread watch([&] {
    while (!done.load()) {
      absl::StatusOr<v1::ListWorkersResponse> list = cluster->ListWorkers();
      if (list.ok() && list->ready()) ready_epochs.insert(list->pipeline_epoch());
      absl::SleepFor(absl::Milliseconds(10));
    }
  });
  absl::Status ready = cluster->WaitReady(2, absl::Seconds(60));
  done = true;
  watch.join();
  MP_ASSERT_OK(ready);

  // The first pipeline failed at ConnectPeers on stage 1, saying why.
  const std::string log = cluster->coordinator().Log();
  uint64_t failed = 0;
  std::string why;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    const size_t at = line.find("pipeline epoch ");
    const size_t end = line.find(" failed: ");
    if (at == absl::string_view::npos || end == absl::string_view::npos || end < at) continue;
    ASSERT_TRUE(absl::SimpleAtoi(line.substr(at + 15, end - at - 15), &failed)) << line;
    why = std::string(line.substr(end));
    break;
  }
  ASSERT_NE(failed, 0u) << "no pipeline build failed:\n" << cluster->Logs();
  for (const char* part : {"ConnectPeers on stage 1", "link probe from the previous stage",
                           "did not arrive within 1s"}) {
    EXPECT_TRUE(absl::StrContains(why, part)) << "'" << why << "' lacks '" << part << "'";
  }
  EXPECT_FALSE(ready_epochs.contains(failed)) << "the broken pipeline was reported ready";
  MP_ASSERT_OK_AND_ASSIGN(v1::ListWorkersResponse list, cluster->ListWorkers());
  EXPECT_NE(list.pipeline_epoch(), failed);

  // Ready means serving: the first request after it gets the tokens transformers computed.
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> expected,
                          SafetensorsFile::Open(dir + "/expected.safetensors"));
  MP_ASSERT_OK_AND_ASSIGN(Tensor ids, expected->Get("input_ids"));
  MP_ASSERT_OK_AND_ASSIGN(Tensor greedy, expected->Get("greedy_ids"));
  const std::vector<int32_t> prompt(ids.data_as<int32_t>(), ids.data_as<int32_t>() + ids.numel());
  const std::vector<int32_t> want(greedy.data_as<int32_t>(),
                                  greedy.data_as<int32_t>() + greedy.numel());
  GenerateCall call;
  call.timeout = absl::Seconds(30);
  GenerateResult result =
      RunGenerate(cluster->stub(), TokenRequest(prompt, static_cast<int>(want.size())), call);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message() << "\n" << cluster->Logs();
  EXPECT_EQ(result.tokens, want);
}

}  // namespace
}  // namespace mp::testing
