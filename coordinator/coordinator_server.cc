#include "coordinator/coordinator_server.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/grpc_server.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/signals.h"
#include "common/status.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/membership.h"
#include "coordinator/model_info.h"
#include "coordinator/scheduler.h"
#include "kvtransfer/descriptor.h"

namespace mp {

namespace v1 = millipede::v1;

namespace {

void UpdateWorkerGauges(const Membership& membership, CoordinatorMetrics& metrics) {
  std::map<std::string, int> counts = {{"registered", 0}, {"draining", 0}, {"down", 0}};
  for (const WorkerRecord& w : membership.All()) {
    switch (w.state) {
      case v1::WORKER_STATE_DOWN:
        ++counts["down"];
        break;
      case v1::WORKER_STATE_DRAINING:
        ++counts["draining"];
        break;
      default:
        ++counts["registered"];
    }
  }
  for (const auto& [state, n] : counts) metrics.Workers(state, n);
}

}  // namespace

absl::Status RunCoordinator(const CoordinatorOptions& options) {
  MP_RETURN_IF_ERROR(ValidateChunkPlannerOptions(options.planner));
  if (options.num_stages < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--stages must be >= 0, got ", options.num_stages));
  }
  if (options.transport != "ucx" && options.transport != "nccl" && options.transport != "local") {
    return absl::InvalidArgumentError(
        absl::StrCat("--transport ", options.transport, ": expected ucx or nccl"));
  }
  if (options.kv_block_tokens <= 0 || options.kv_tokens < 0) {
    return absl::InvalidArgumentError("--kv-block-tokens must be > 0 and --kv-tokens >= 0");
  }
  MP_ASSIGN_OR_RETURN(std::unique_ptr<ModelInfo> model, LoadModelInfo(options));
  MP_ASSIGN_OR_RETURN(std::unique_ptr<MetricsExporter> exporter,
                      MetricsExporter::Start(options.metrics_listen, "coordinator"));
  CoordinatorMetrics metrics(exporter->registry());

  std::atomic<Scheduler*> scheduler_ptr{nullptr};
  std::atomic<grpc::Server*> server_ptr{nullptr};
  Membership membership(options.health_interval, options.health_failures, [&] {
    if (Scheduler* s = scheduler_ptr.load()) s->Wake();
  });
  std::shared_ptr<Scheduler> scheduler =
      Scheduler::Create(options, model.get(), &membership, &metrics, [&](bool ready) {
        if (grpc::Server* s = server_ptr.load()) SetServing(*s, kCoordinatorService, ready);
      });
  scheduler_ptr.store(scheduler.get());
  CoordinatorService service(options, model.get(), scheduler, &metrics);
  const std::string coordinator_id = absl::StrCat(kvtransfer::LocalHostName(), "-", getpid());
  WorkerRegistryService registry(&membership, coordinator_id, absl::Seconds(2));
  MP_ASSIGN_OR_RETURN(StartedServer server,
                      StartGrpcServer(options.listen, {&service, &registry}, {kCoordinatorService},
                                      static_cast<int>(options.max_message_bytes)));
  server_ptr.store(server.server.get());
  membership.Start();
  scheduler->Start();
  std::printf("millipede coordinator: serving on %s (model %s, %s), metrics on %s\n",
              server.address.c_str(), model->name.c_str(),
              options.num_stages > 0 ? absl::StrCat(options.num_stages, " stages").c_str()
                                     : "every registered worker",
              exporter->address().empty() ? "(off)" : exporter->address().c_str());
  std::fflush(stdout);

  int sig = 0;
  while (sig != SIGINT && sig != SIGTERM) {
    sig = WaitForSignal(absl::Seconds(1));
    UpdateWorkerGauges(membership, metrics);
  }
  MP_LOG(Info) << "signal " << sig << ": stopping (running requests get "
               << absl::FormatDuration(options.drain_timeout) << ")";
  SetServing(*server.server, kCoordinatorService, false);
  scheduler->StopAccepting();
  const absl::Time end = absl::Now() + options.drain_timeout;
  while (scheduler->active_requests() > 0 && absl::Now() < end) {
    if (WaitForSignal(absl::Milliseconds(100)) != 0) break;
  }
  scheduler->Stop(absl::UnavailableError("the coordinator is shutting down"));
  scheduler_ptr.store(nullptr);
  membership.Stop();
  server.server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  server.server->Wait();
  return absl::OkStatus();
}

}  // namespace mp
