// millipede coordinator: the cluster's public gRPC service and pipeline driver.
#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/config_args.h"
#include "cli/sparse_flags.h"
#include "common/signals.h"
#include "coordinator/coordinator_server.h"
#include "coordinator/model_info.h"

namespace mp::cli {
namespace {

struct CoordinatorFlags {
  CoordinatorOptions options;
  ConfigFlags config;
  SparseFlags sparse;  // as the workers run it: its workspace counts in a stage's memory
  std::string chunk_mode = "dynamic";
  double request_timeout = 3600;
  double rebuild_wait = 3;
  double health_interval = 1;
  double drain_timeout = 10;
  double step_timeout = 1800;
  double stall_timeout = 30;
};

absl::Status Check(CoordinatorFlags& f) {
  f.options.planner.mode = f.chunk_mode == "fixed" ? ChunkMode::kFixed : ChunkMode::kDynamic;
  f.options.request_timeout = absl::Seconds(f.request_timeout);
  f.options.rebuild_wait = absl::Seconds(f.rebuild_wait);
  f.options.health_interval = absl::Seconds(f.health_interval);
  f.options.drain_timeout = absl::Seconds(f.drain_timeout);
  f.options.step_timeout = absl::Seconds(f.step_timeout);
  f.options.stall.timeout = absl::Seconds(f.stall_timeout);
  if (f.request_timeout <= 0 || f.health_interval <= 0 || f.step_timeout <= 0 ||
      f.stall_timeout <= 0) {
    return absl::InvalidArgumentError(
        "--request-timeout, --health-interval, --step-timeout and --stall-timeout must be "
        "positive");
  }
  if (f.options.stall.factor < 0) {
    return absl::InvalidArgumentError("--stall-factor must be >= 0");
  }
  absl::StatusOr<SparsePrefillRequest> sparse = ToSparsePrefillRequest(f.sparse);
  if (!sparse.ok()) return sparse.status();
  f.options.sparse = *std::move(sparse);
  return absl::OkStatus();
}

}  // namespace

void RegisterCoordinatorCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<CoordinatorFlags>();
  CoordinatorOptions& o = f->options;
  auto* cmd = app.add_subcommand("coordinator",
                                 "Serve the cluster's public API and drive the "
                                 "pipeline of workers");
  cmd->option_defaults()->always_capture_default();
  cmd->add_option("--listen", o.listen, "host:port of the gRPC service");
  cmd->add_option("--metrics-listen", o.metrics_listen, "host:port of /metrics (\"\": off)");
  cmd->add_option("--model", o.model_dir, "Hugging Face model directory (the workers read it too)");
  cmd->add_option("--model-preset", o.model_preset,
                  "qwen2.5-7b-instruct-1m or qwen2.5-14b-instruct-1m, with random weights");
  cmd->add_flag("--random-weights", o.random_weights,
                "seeded random weights for the model directory's config (speed runs)");
  cmd->add_option("--seed", o.random_seed, "seed of random weights");
  cmd->add_option("--stages", o.num_stages, "pipeline stages (0: every registered worker)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", o.device, "cpu or cuda (workers started with --device win)");
  cmd->add_option("--transport", o.transport, "activations between stages: ucx or nccl")
      ->check(CLI::IsMember({"ucx", "nccl"}));
  cmd->add_option("--ucx-transports", o.ucx_transports, "UCX_TLS of the stages, e.g. tcp or sm");
  cmd->add_option("--ucx-net-devices", o.ucx_net_devices, "UCX_NET_DEVICES, e.g. lo");
  cmd->add_option("--kv-tokens", o.kv_tokens,
                  "KV budget per stage in tokens (0: what worker memory allows, at most two "
                  "maximum contexts)");
  cmd->add_option("--kv-block-tokens", o.kv_block_tokens, "KV block size in tokens");
  cmd->add_option("--max-inflight", o.max_inflight, "steps in flight (0: stages + 1)");
  cmd->add_option("--max-context", o.max_context,
                  "longest prompt + max_new_tokens (0: the model's maximum)");
  cmd->add_option("--max-queue-tokens", o.max_queue_tokens,
                  "KV tokens of requests allowed to wait (0: four maximum contexts)");
  cmd->add_option("--max-queued-requests", o.max_queued_requests, "requests allowed to wait");
  cmd->add_option("--request-timeout", f->request_timeout,
                  "seconds a request may take when its client sets no earlier deadline");
  cmd->add_option("--chunk-mode", f->chunk_mode,
                  "dynamic: equal-time chunks from the fitted cost model; fixed: --max-chunk")
      ->check(CLI::IsMember({"dynamic", "fixed"}));
  cmd->add_option("--max-chunk", o.planner.max_chunk, "largest prefill chunk in tokens");
  cmd->add_option("--min-chunk", o.planner.min_chunk, "smallest planned prefill chunk");
  cmd->add_option("--chunk-align", o.planner.align, "planned chunks are multiples of this");
  cmd->add_option("--sparse-budget", o.planner.cost.sparse_budget_tokens,
                  "cost model: keys per query of sparse attention (0: the dense shape, which "
                  "also fits vertical-slash sparse attention; docs/distributed.md)");
  cmd->add_option("--rebuild-wait", f->rebuild_wait,
                  "seconds to wait for lost workers before rebuilding with fewer stages");
  cmd->add_option("--health-interval", f->health_interval, "seconds between worker checks");
  cmd->add_option("--health-failures", o.health_failures, "failed checks before a worker is DOWN");
  cmd->add_option("--step-timeout", f->step_timeout,
                  "seconds one step's call may take on a stage, queueing included (hard cap)");
  cmd->add_option("--stall-timeout", f->stall_timeout,
                  "seconds the oldest step may go without progress on a stage, plus "
                  "--stall-factor times its compute time, before the pipeline is rebuilt");
  cmd->add_option("--stall-factor", o.stall.factor,
                  "multiple of a step's compute time added to --stall-timeout");
  cmd->add_option("--drain-timeout", f->drain_timeout,
                  "seconds running requests get to finish on SIGTERM");
  cmd->add_option("--max-message-bytes", o.max_message_bytes, "gRPC message limit");
  AddSparseFlags(cmd, &f->sparse);
  AddConfigFlags(cmd, &f->config);
  cmd->callback([f, cmd, exit_code] {
    if (HandleConfigFlags(cmd, f->config)) return;
    absl::Status status = Check(*f);
    if (status.ok() && f->config.check) {
      absl::StatusOr<std::unique_ptr<ModelInfo>> model = LoadModelInfo(f->options);
      status = model.status();
      if (status.ok()) std::printf("configuration OK\n");
    } else if (status.ok()) {
      BlockShutdownSignals();
      status = RunCoordinator(f->options);
    }
    if (!status.ok()) {
      std::fprintf(stderr, "millipede coordinator: %s\n", status.ToString().c_str());
      *exit_code = 1;
    }
  });
}

}  // namespace mp::cli
