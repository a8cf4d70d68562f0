#include "worker/worker_server.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/grpc_server.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/signals.h"
#include "common/status.h"
#include "kvtransfer/descriptor.h"
#include "kvtransfer/transport_factory.h"
#include "worker/registration.h"
#include "worker/stage_worker_service.h"
#include "worker/worker_metrics.h"

namespace mp {

namespace v1 = millipede::v1;

uint64_t DefaultCpuMemoryBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024 / 4;
  }
  return 0;
}

absl::Status RunWorker(const WorkerOptions& flags) {
  WorkerOptions options = flags;
  if (options.role != "prefill") {
    return absl::InvalidArgumentError(
        absl::StrCat("--role ", options.role,
                     ": only prefill workers exist yet (decode steps run through the "
                     "prefill stages)"));
  }
  if (options.memory_bytes == 0 && (options.device.empty() || options.device == "cpu")) {
    options.memory_bytes = DefaultCpuMemoryBytes();
  }
  const std::string worker_id = options.worker_id.empty()
                                    ? absl::StrCat(kvtransfer::LocalHostName(), "-", getpid())
                                    : options.worker_id;
  MP_ASSIGN_OR_RETURN(std::unique_ptr<MetricsExporter> exporter,
                      MetricsExporter::Start(options.metrics_listen, "worker"));
  WorkerMetrics metrics(exporter->registry());
  StageWorkerService service(options, worker_id, &metrics);
  MP_ASSIGN_OR_RETURN(StartedServer server,
                      StartGrpcServer(options.listen, {&service}, {kStageWorkerService}));
  std::string address = options.advertise.empty() ? server.address : options.advertise;
  // A wildcard listen address is no address for others: advertise the host name instead.
  for (const char* any : {"0.0.0.0:", "[::]:"}) {
    if (options.advertise.empty() && address.rfind(any, 0) == 0) {
      address = absl::StrCat(kvtransfer::LocalHostName(), address.substr(std::strlen(any) - 1));
    }
  }
  service.set_server(server.server.get());
  service.set_address(address);
  service.set_metrics_address(exporter->address());

  v1::RegisterWorkerRequest reg;
  reg.set_worker_id(worker_id);
  reg.set_address(address);
  reg.set_role(v1::WORKER_ROLE_PREFILL);
  reg.set_device(options.device.empty() ? "cpu" : options.device);
  reg.set_memory_bytes(options.memory_bytes);
  for (const std::string& t : kvtransfer::AvailableTransports()) reg.add_transports(t);
  reg.set_preferred_stage(options.preferred_stage);
  reg.set_pid(static_cast<uint32_t>(getpid()));
  reg.set_host(kvtransfer::LocalHostName());
  reg.set_metrics_address(exporter->address());
  Registrar registrar(options.coordinator, reg);
  registrar.Start();
  std::printf("millipede worker %s: serving on %s, metrics on %s, coordinator %s\n",
              worker_id.c_str(), address.c_str(),
              exporter->address().empty() ? "(off)" : exporter->address().c_str(),
              options.coordinator.c_str());
  std::fflush(stdout);

  int sig = 0;
  while (sig != SIGINT && sig != SIGTERM) sig = WaitForSignal(absl::Seconds(1));
  MP_LOG(Info) << "signal " << sig << ": draining (up to "
               << absl::FormatDuration(options.drain_timeout) << ")";
  service.StartDrain();
  registrar.SetDraining();
  const absl::Time end = absl::Now() + options.drain_timeout;
  while (!service.Idle() && absl::Now() < end) {
    if (WaitForSignal(absl::Milliseconds(100)) != 0) break;  // a second signal: stop now
  }
  registrar.Stop();
  service.Shutdown();
  server.server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  server.server->Wait();
  MP_LOG(Info) << "worker " << worker_id << " stopped";
  return absl::OkStatus();
}

}  // namespace mp
