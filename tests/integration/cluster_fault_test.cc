// A stage worker killed in the middle of a request: that request fails with UNAVAILABLE within
// a bounded time, while the cluster keeps serving — first on a pipeline rebuilt from the
// surviving workers, then, once a replacement worker registers, on the full pipeline again.
// Results after the failure equal those before it.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/status_matchers.h"
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
    victim = RunGenerate(cluster->stub(), TokenRequest(RandomIds(1000, 512, 8), 3000), call);
    if (!decoding.HasBeenNotified()) decoding.Notify();
  });
  ASSERT_TRUE(decoding.WaitForNotificationWithTimeout(absl::Seconds(60))) << cluster->Logs();
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

}  // namespace
}  // namespace mp::testing
