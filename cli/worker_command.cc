// millipede worker: one pipeline stage.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "cli/config_args.h"
#include "cli/sparse_flags.h"
#include "common/signals.h"
#include "worker/worker_server.h"

namespace mp::cli {
namespace {

struct WorkerFlags {
  WorkerOptions options;
  ConfigFlags config;
  double activation_timeout = 600;
  double connect_timeout = 30;
  double drain_timeout = 30;
  double inject_receive_delay_ms = 0;
  SparseFlags sparse;
};

}  // namespace

void RegisterWorkerCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<WorkerFlags>();
  WorkerOptions& o = f->options;
  auto* cmd = app.add_subcommand("worker", "Serve one pipeline stage (a slice of the layers)");
  cmd->option_defaults()->always_capture_default();
  cmd->add_option("--role", o.role, "prefill (decode steps run through the prefill stages)")
      ->check(CLI::IsMember({"prefill", "decode"}));
  cmd->add_option("--coordinator", o.coordinator, "host:port of the coordinator");
  cmd->add_option("--listen", o.listen, "host:port of the StageWorker service (port 0: any)");
  cmd->add_option("--advertise", o.advertise,
                  "address to register with the coordinator (default: the listen address)");
  cmd->add_option("--metrics-listen", o.metrics_listen, "host:port of /metrics (\"\": off)");
  cmd->add_option("--device", o.device, "cpu, cuda or cuda:N (default: the coordinator's)");
  cmd->add_option("--model", o.model_dir,
                  "model directory on this machine (default: the coordinator's path)");
  cmd->add_option("--memory-bytes", o.memory_bytes,
                  "memory for weights, KV and activations (0 on cpu: a quarter of free RAM)");
  cmd->add_option("--stage-hint", o.preferred_stage, "preferred pipeline position (-1: any)");
  cmd->add_option("--worker-id", o.worker_id, "unique id (default: host-pid)");
  cmd->add_option("--send-buffers", o.send_buffers, "activation send buffers")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--activation-timeout", f->activation_timeout,
                  "seconds a stage waits for its input activations");
  cmd->add_option("--connect-timeout", f->connect_timeout,
                  "seconds a stage waits, when a pipeline is built, for the link probe of its "
                  "previous stage")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--drain-timeout", f->drain_timeout,
                  "seconds running requests get to finish on SIGTERM");
  cmd->add_option("--inject-receive-delay-ms", f->inject_receive_delay_ms,
                  "testing: every activation receive takes at least this long (fault injection)");
  cmd->add_option("--inject-drop-request", o.inject_drop_request,
                  "testing: the activations of this request id never arrive here (fault "
                  "injection; 0: none)");
  cmd->add_option("--inject-drop-link-probes", o.inject_drop_link_probes,
                  "testing: the link probes of the first N pipelines built never arrive here "
                  "(fault injection)");
  AddSparseFlags(cmd, &f->sparse);
  AddConfigFlags(cmd, &f->config);
  cmd->callback([f, cmd, exit_code] {
    if (HandleConfigFlags(cmd, f->config)) return;
    absl::StatusOr<SparsePrefillRequest> sparse = ToSparsePrefillRequest(f->sparse);
    if (!sparse.ok()) {
      std::fprintf(stderr, "millipede worker: %s\n", sparse.status().ToString().c_str());
      *exit_code = 2;
      return;
    }
    f->options.sparse = *std::move(sparse);
    f->options.activation_timeout = absl::Seconds(f->activation_timeout);
    f->options.connect_timeout = absl::Seconds(f->connect_timeout);
    f->options.drain_timeout = absl::Seconds(f->drain_timeout);
    f->options.inject_receive_delay = absl::Milliseconds(f->inject_receive_delay_ms);
    if (f->config.check) {
      std::printf("configuration OK\n");
      return;
    }
    BlockShutdownSignals();
    absl::Status status = RunWorker(f->options);
    if (!status.ok()) {
      std::fprintf(stderr, "millipede worker: %s\n", status.ToString().c_str());
      *exit_code = 1;
    }
  });
}

}  // namespace mp::cli
