// millipede local: a whole cluster on this machine — the coordinator and N workers as child
// processes on loopback, supervised (restarted when they exit) and stopped cleanly on Ctrl-C /
// SIGTERM. Prints the coordinator's address once the pipeline is ready.
//
// The stages talk over loopback only (UCX_NET_DEVICES=lo unless --ucx-net-devices says
// otherwise): left to itself UCX spreads a link over every network interface that exists when a
// stage starts, and an interface that goes away later (a container's or a test's veth) takes the
// link's TCP connection with it without an error — the pipeline would wait for activations that
// can never arrive.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/config_args.h"
#include "cli/local_supervisor.h"
#include "cli/sparse_flags.h"
#include "common/grpc_channel.h"
#include "common/grpc_health_client.h"
#include "common/signals.h"
#include "common/status.h"

namespace mp::cli {
namespace {

struct LocalFlags {
  ConfigFlags config;
  std::string model_dir;
  std::string model_preset;
  bool random_weights = false;
  int stages = 2;
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9400";
  std::string device = "cpu";
  std::string transport = "ucx";
  std::string ucx_transports;
  std::string ucx_net_devices = "lo";
  int64_t kv_tokens = 0;
  int64_t max_context = 0;
  int64_t max_chunk = 0;
  std::string chunk_mode = "dynamic";
  std::string ready_file;
  double startup_timeout = 300;
  double drain_timeout = 10;
  int max_restarts = 5;
  std::vector<std::string> coordinator_args;
  std::vector<std::string> worker_args;
  SparseFlags sparse;
};

absl::StatusOr<std::string> SelfPath() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return absl::InternalError("cannot read /proc/self/exe");
  return std::string(buf, static_cast<size_t>(n));
}

absl::StatusOr<std::string> ResolveListen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--listen ", listen, " is not host:port"));
  }
  if (port == 0) port = PickFreePort();
  if (port == 0) return absl::UnavailableError("no free port on 127.0.0.1");
  return absl::StrCat(listen.substr(0, colon), ":", port);
}

absl::Status Run(const LocalFlags& f) {
  if (f.stages < 1) return absl::InvalidArgumentError("--stages must be at least 1");
  MP_RETURN_IF_ERROR(ToSparsePrefillRequest(f.sparse).status());
  if (f.model_dir.empty() == f.model_preset.empty()) {
    return absl::InvalidArgumentError("give one of --model DIR and --model-preset");
  }
  struct stat st;
  if (!f.model_dir.empty() && (stat(f.model_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))) {
    return absl::NotFoundError(absl::StrCat("model directory ", f.model_dir, " does not exist"));
  }
  MP_ASSIGN_OR_RETURN(const std::string binary, SelfPath());
  MP_ASSIGN_OR_RETURN(const std::string address, ResolveListen(f.listen));
  BlockShutdownSignals(/*with_sigchld=*/true);

  Supervisor supervisor(binary, f.max_restarts);
  std::vector<std::string> c = {"coordinator",
                                "--listen",
                                address,
                                "--metrics-listen",
                                f.metrics_listen,
                                "--stages",
                                std::to_string(f.stages),
                                "--device",
                                f.device,
                                "--transport",
                                f.transport,
                                "--chunk-mode",
                                f.chunk_mode,
                                "--drain-timeout",
                                std::to_string(f.drain_timeout)};
  if (!f.model_dir.empty()) c.insert(c.end(), {"--model", f.model_dir});
  if (!f.model_preset.empty()) c.insert(c.end(), {"--model-preset", f.model_preset});
  if (f.random_weights) c.push_back("--random-weights");
  if (!f.ucx_transports.empty()) c.insert(c.end(), {"--ucx-transports", f.ucx_transports});
  if (!f.ucx_net_devices.empty()) c.insert(c.end(), {"--ucx-net-devices", f.ucx_net_devices});
  if (f.kv_tokens > 0) c.insert(c.end(), {"--kv-tokens", std::to_string(f.kv_tokens)});
  if (f.max_context > 0) c.insert(c.end(), {"--max-context", std::to_string(f.max_context)});
  if (f.max_chunk > 0) c.insert(c.end(), {"--max-chunk", std::to_string(f.max_chunk)});
  const std::vector<std::string> sparse = SparseFlagArgs(f.sparse);
  c.insert(c.end(), sparse.begin(), sparse.end());  // the coordinator plans the workspace
  c.insert(c.end(), f.coordinator_args.begin(), f.coordinator_args.end());
  supervisor.Add({"coordinator", c});
  for (int i = 0; i < f.stages; ++i) {
    std::vector<std::string> w = {"worker",
                                  "--coordinator",
                                  address,
                                  "--listen",
                                  "127.0.0.1:0",
                                  "--metrics-listen",
                                  "127.0.0.1:0",
                                  "--stage-hint",
                                  std::to_string(i),
                                  "--drain-timeout",
                                  std::to_string(f.drain_timeout)};
    if (f.device != "cpu") w.insert(w.end(), {"--device", absl::StrCat("cuda:", i)});
    w.insert(w.end(), sparse.begin(), sparse.end());
    w.insert(w.end(), f.worker_args.begin(), f.worker_args.end());
    supervisor.Add({absl::StrCat("worker ", i), w});
  }
  for (int i = 0; i < supervisor.size(); ++i) {
    absl::Status s = supervisor.Start(i);
    if (!s.ok()) {
      supervisor.StopAll(absl::Seconds(5));
      return s;
    }
  }
  const absl::Duration grace = absl::Seconds(f.drain_timeout + 5);

  // Wait until the coordinator reports a ready pipeline.
  std::shared_ptr<grpc::Channel> channel = MakeChannel(address);
  const absl::Time end = absl::Now() + absl::Seconds(f.startup_timeout);
  while (true) {
    // Waiting for the channel: the coordinator may not listen yet on the first checks.
    absl::StatusOr<bool> ready = CheckHealth(channel, "millipede.v1.Coordinator", absl::Seconds(1),
                                             /*wait_for_ready=*/true);
    if (ready.ok() && *ready) break;
    const int sig = WaitForSignal(absl::Milliseconds(50));
    absl::Status reaped = supervisor.Reap();
    if (sig == SIGINT || sig == SIGTERM || !reaped.ok() || absl::Now() > end) {
      supervisor.StopAll(grace);
      if (sig == SIGINT || sig == SIGTERM) return absl::OkStatus();
      if (!reaped.ok()) return reaped;
      return absl::DeadlineExceededError(absl::StrCat("the cluster was not ready after ",
                                                      f.startup_timeout, " s (see the log above)"));
    }
  }
  std::printf("millipede local: ready at %s (%d stages; coordinator pid %d)\n", address.c_str(),
              f.stages, static_cast<int>(supervisor.pid(0)));
  std::printf("  try: millipede generate --address %s --prompt \"Hello\"\n", address.c_str());
  std::fflush(stdout);
  if (!f.ready_file.empty()) {
    std::ofstream(f.ready_file) << address << "\n";
  }

  absl::Status result;
  while (true) {
    const int sig = WaitForSignal(absl::Seconds(1));
    if (sig == SIGINT || sig == SIGTERM) break;
    result = supervisor.Reap();
    if (!result.ok()) break;
  }
  std::fprintf(stderr, "millipede local: stopping\n");
  supervisor.StopAll(grace);
  std::fprintf(stderr, "millipede local: stopped\n");
  return result;
}

}  // namespace

void RegisterLocalCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<LocalFlags>();
  auto* cmd = app.add_subcommand("local", "Run a coordinator and N workers on this machine");
  cmd->option_defaults()->always_capture_default();
  cmd->add_option("--model", f->model_dir, "Hugging Face model directory");
  cmd->add_option("--model-preset", f->model_preset,
                  "qwen2.5-7b-instruct-1m or qwen2.5-14b-instruct-1m, with random weights");
  cmd->add_flag("--random-weights", f->random_weights, "seeded random weights (speed runs)");
  cmd->add_option("--stages", f->stages, "pipeline stages (one worker process each)");
  cmd->add_option("--listen", f->listen, "host:port of the coordinator (port 0: any free one)");
  cmd->add_option("--metrics-listen", f->metrics_listen, "host:port of the coordinator's /metrics");
  cmd->add_option("--device", f->device, "cpu or cuda (stage i uses GPU i)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--transport", f->transport, "ucx or nccl")
      ->check(CLI::IsMember({"ucx", "nccl"}));
  cmd->add_option("--ucx-transports", f->ucx_transports, "UCX_TLS of the stages, e.g. tcp or sm");
  cmd->add_option("--ucx-net-devices", f->ucx_net_devices,
                  "UCX_NET_DEVICES of the stages (\"\": every interface)");
  cmd->add_option("--kv-tokens", f->kv_tokens, "KV budget per stage in tokens (0: default)");
  cmd->add_option("--max-context", f->max_context, "longest prompt + new tokens (0: the model's)");
  cmd->add_option("--max-chunk", f->max_chunk, "largest prefill chunk (0: the default)");
  cmd->add_option("--chunk-mode", f->chunk_mode, "dynamic or fixed")
      ->check(CLI::IsMember({"dynamic", "fixed"}));
  cmd->add_option("--ready-file", f->ready_file, "write the coordinator address here when ready");
  cmd->add_option("--startup-timeout", f->startup_timeout, "seconds to wait for readiness");
  cmd->add_option("--drain-timeout", f->drain_timeout, "seconds requests get to finish on stop");
  cmd->add_option("--max-restarts", f->max_restarts, "restarts per process per minute");
  cmd->add_option("--coordinator-arg", f->coordinator_args,
                  "extra argument for the coordinator (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--worker-arg", f->worker_args, "extra argument for every worker (repeatable)")
      ->allow_extra_args(false);
  AddSparseFlags(cmd, &f->sparse);
  AddConfigFlags(cmd, &f->config);
  cmd->callback([f, cmd, exit_code] {
    if (HandleConfigFlags(cmd, f->config)) return;
    if (f->config.check) {
      std::printf("configuration OK\n");
      return;
    }
    absl::Status status = Run(*f);
    if (!status.ok()) {
      std::fprintf(stderr, "millipede local: %s\n", status.ToString().c_str());
      *exit_code = 1;
    }
  });
}

}  // namespace mp::cli
