// Every server answers grpc.health.v1 ("" = alive, its service name = ready) and server
// reflection (v1alpha, what grpcurl falls back to), and every process exports Prometheus
// metrics whose names follow the conventions (millipede_ prefix, _total exactly on counters)
// and include the series the operations docs promise.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "common/grpc_channel.h"
#include "common/grpc_health_client.h"
#include "common/status_matchers.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "tests/integration/cluster_test_util.h"

namespace mp::testing {
namespace {

namespace v1 = millipede::v1;
namespace refl = grpc::reflection::v1alpha;

std::set<std::string> ListServices(const std::string& address) {
  auto stub = refl::ServerReflection::NewStub(MakeChannel(address));
  grpc::ClientContext context;
  SetTimeout(context, absl::Seconds(5));
  auto stream = stub->ServerReflectionInfo(&context);
  refl::ServerReflectionRequest request;
  request.set_list_services("*");
  std::set<std::string> names;
  if (!stream->Write(request)) return names;
  stream->WritesDone();
  refl::ServerReflectionResponse response;
  while (stream->Read(&response)) {
    for (const auto& s : response.list_services_response().service()) names.insert(s.name());
  }
  stream->Finish();
  return names;
}

// "# TYPE name kind" lines of a /metrics text.
std::map<std::string, std::string> MetricTypes(const std::string& text) {
  std::map<std::string, std::string> types;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, "# TYPE ")) continue;
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    if (parts.size() == 4) types[parts[2]] = parts[3];
  }
  return types;
}

void ExpectConventions(const std::map<std::string, std::string>& types) {
  for (const auto& [name, kind] : types) {
    EXPECT_TRUE(absl::StartsWith(name, "millipede_")) << name;
    EXPECT_EQ(absl::EndsWith(name, "_total"), kind == "counter") << name << " is a " << kind;
    EXPECT_EQ(name.find(':'), std::string::npos) << name;
    for (const char* banned : {"_counter", "_gauge", "_time", "_size"}) {
      EXPECT_FALSE(absl::EndsWith(name, banned)) << name;
    }
  }
}

TEST(ClusterHealthTest, HealthReflectionAndMetricsOnEveryProcess) {
  ClusterOptions options;
  options.model_dir = TestdataDir() + "/tiny_llama";
  options.stages = 2;
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Cluster> cluster, Cluster::Start(options));
  MP_ASSERT_OK(cluster->WaitReady(2, absl::Seconds(60)));
  // Traffic, so that the per-stage series exist.
  GenerateResult r = RunGenerate(cluster->stub(), TokenRequest(RandomIds(50, 512, 5), 3));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();

  auto coordinator = MakeChannel(cluster->address());
  MP_ASSERT_OK_AND_ASSIGN(bool alive, CheckHealth(coordinator, "", absl::Seconds(5)));
  EXPECT_TRUE(alive);
  MP_ASSERT_OK_AND_ASSIGN(bool ready,
                          CheckHealth(coordinator, "millipede.v1.Coordinator", absl::Seconds(5)));
  EXPECT_TRUE(ready);
  EXPECT_TRUE(
      absl::IsNotFound(CheckHealth(coordinator, "no.such.Service", absl::Seconds(5)).status()));
  const std::set<std::string> services = ListServices(cluster->address());
  for (const char* s :
       {"millipede.v1.Coordinator", "millipede.v1.WorkerRegistry", "grpc.health.v1.Health"}) {
    EXPECT_TRUE(services.contains(s)) << s << " is not listed by reflection";
  }

  MP_ASSERT_OK_AND_ASSIGN(v1::ListWorkersResponse list, cluster->ListWorkers());
  ASSERT_EQ(list.workers_size(), 2);
  std::map<std::string, std::string> worker_types;
  for (const v1::WorkerInfo& w : list.workers()) {
    auto channel = MakeChannel(w.address());
    MP_ASSERT_OK_AND_ASSIGN(bool worker_alive, CheckHealth(channel, "", absl::Seconds(5)));
    EXPECT_TRUE(worker_alive);
    MP_ASSERT_OK_AND_ASSIGN(bool worker_ready,
                            CheckHealth(channel, "millipede.v1.StageWorker", absl::Seconds(5)));
    EXPECT_TRUE(worker_ready);
    EXPECT_TRUE(ListServices(w.address()).contains("millipede.v1.StageWorker"));
    MP_ASSERT_OK_AND_ASSIGN(std::string text, HttpGet(w.metrics_address(), "/metrics"));
    worker_types = MetricTypes(text);
    ExpectConventions(worker_types);
    EXPECT_GT(MetricValue(text, "millipede_activation_transfer_bytes_total{direction=\"send\"}")
                      .value_or(0) +
                  MetricValue(text, "millipede_activation_transfer_bytes_total{direction=\"recv\"}")
                      .value_or(0),
              0)
        << text;
  }
  for (const char* name :
       {"millipede_stage_forward_seconds", "millipede_stage_busy_seconds_total",
        "millipede_stage_idle_seconds_total", "millipede_activation_transfer_bytes_total",
        "millipede_activation_transfer_seconds", "millipede_kv_blocks_in_use",
        "millipede_kv_cache_usage_ratio", "millipede_build_info"}) {
    EXPECT_TRUE(worker_types.contains(name)) << name << " missing on a worker";
  }

  MP_ASSERT_OK_AND_ASSIGN(std::string metrics_address,
                          cluster->coordinator().WaitForToken("metrics on ", absl::Seconds(1)));
  MP_ASSERT_OK_AND_ASSIGN(std::string text, HttpGet(metrics_address, "/metrics"));
  const std::map<std::string, std::string> types = MetricTypes(text);
  ExpectConventions(types);
  for (const char* name :
       {"millipede_time_to_first_token_seconds", "millipede_request_queue_time_seconds",
        "millipede_prefill_tokens_per_second", "millipede_chunk_tokens",
        "millipede_pipeline_stage_busy_seconds_total",
        "millipede_pipeline_stage_idle_seconds_total", "millipede_pipeline_stage_bubble_ratio",
        "millipede_pipeline_stage_kv_blocks_in_use", "millipede_requests_admitted_total",
        "millipede_requests_rejected_total", "millipede_requests_cancelled_total",
        "millipede_requests_failed_total", "millipede_build_info"}) {
    EXPECT_TRUE(types.contains(name)) << name << " missing on the coordinator";
  }
  EXPECT_EQ(MetricValue(text, "millipede_requests_completed_total"), 1.0);
  EXPECT_EQ(MetricValue(text, "millipede_time_to_first_token_seconds_count"), 1.0);
  EXPECT_EQ(MetricValue(text, "millipede_chunk_tokens_count{mode=\"dynamic\"}"), 1.0);

  // Not found / wrong method on the metrics port.
  EXPECT_FALSE(HttpGet(metrics_address, "/nothing").ok());
}

}  // namespace
}  // namespace mp::testing
