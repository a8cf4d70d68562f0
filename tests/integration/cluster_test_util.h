// Helpers for the multi-process cluster tests: child processes of the `millipede` binary with
// their output in log files, a cluster (coordinator + workers on loopback) started from them,
// a Generate client that collects every event, and /metrics scraping.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "millipede/v1/coordinator.grpc.pb.h"

namespace mp::testing {

// The millipede binary under test (MP_MILLIPEDE_BIN at build time).
std::string MillipedeBin();
std::string TestdataDir();
// A fresh temporary directory.
std::string MakeTempDir();

// A temporary directory removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() : path_(MakeTempDir()) {}
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class Process {
 public:
  Process() = default;
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  ~Process();  // SIGKILLs a process still running

  // Starts argv (argv[0] is the program) with stdout and stderr appended to `log_path`.
  static absl::StatusOr<Process> Start(const std::vector<std::string>& argv,
                                       const std::string& log_path);

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  std::string Log() const;
  bool Running();
  void Signal(int sig);
  // The exit code (128 + signal when killed), or nullopt when still running at the timeout.
  std::optional<int> Wait(absl::Duration timeout);
  // Waits until the log holds `prefix` followed by a token (up to white space) and returns the
  // token, e.g. WaitForToken("serving on ") -> "127.0.0.1:40123".
  absl::StatusOr<std::string> WaitForToken(const std::string& prefix, absl::Duration timeout);

 private:
  pid_t pid_ = -1;
  int exit_code_ = -1;
  std::string log_path_;
};

struct ClusterOptions {
  std::string model_dir;
  int stages = 2;
  std::vector<std::string> coordinator_args;
  std::vector<std::string> worker_args;
  // UCX_NET_DEVICES of the stages ("": the environment's, else every interface). Loopback by
  // default, so that interfaces which other tests add and delete meanwhile (veth pairs of the
  // netns tests) never carry a cluster's activations.
  std::string ucx_net_devices = "lo";
  // Prepended to every process's command line, e.g. {"ip", "netns", "exec", "ns"}.
  std::vector<std::string> coordinator_prefix;
  std::vector<std::vector<std::string>> worker_prefix;  // per worker
  std::string coordinator_listen = "127.0.0.1:0";
  std::vector<std::string> worker_listen;  // per worker; default 127.0.0.1:0
};

class Cluster {
 public:
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(const ClusterOptions& options);
  ~Cluster();  // SIGTERM to everything, SIGKILL after 10 s

  const std::string& address() const { return address_; }
  millipede::v1::Coordinator::Stub& stub() { return *stub_; }
  Process& coordinator() { return coordinator_; }
  Process& worker(int i) { return workers_[i]; }
  int num_workers() const { return static_cast<int>(workers_.size()); }
  // Starts one more worker (as the options said) and returns its index.
  absl::StatusOr<int> AddWorker(int stage_hint);
  // Waits until the coordinator is SERVING with a pipeline of `stages` stages.
  absl::Status WaitReady(int stages, absl::Duration timeout);
  absl::StatusOr<millipede::v1::ListWorkersResponse> ListWorkers();
  // Every process's log (for failure messages).
  std::string Logs() const;

 private:
  Cluster() = default;
  absl::Status StartWorker(int index, int stage_hint);

  ClusterOptions options_;
  TempDir dir_;
  std::string address_;
  Process coordinator_;
  std::vector<Process> workers_;
  std::unique_ptr<millipede::v1::Coordinator::Stub> stub_;
};

struct GenerateResult {
  grpc::Status status;
  std::vector<millipede::v1::GenerateEvent> events;
  std::vector<int32_t> tokens;                        // first token + later tokens, in order
  std::vector<std::vector<float>> logits;             // per token, when asked for
  std::vector<std::pair<uint64_t, uint64_t>> chunks;  // [start, end) from Progress events
  millipede::v1::Completed completed;
  bool accepted = false;
  double seconds = 0;
};

struct GenerateCall {
  bool prefill_only = false;
  absl::Duration timeout = absl::Seconds(120);
  // Called on every event; may cancel through the context.
  std::function<void(const millipede::v1::GenerateEvent&, grpc::ClientContext&)> on_event;
};

GenerateResult RunGenerate(millipede::v1::Coordinator::Stub& stub,
                           const millipede::v1::GenerateRequest& request,
                           const GenerateCall& call = {});

// Cancels the live request `request_id` with a Cancel call; false when it was not live.
bool CancelRequest(millipede::v1::Coordinator::Stub& stub, const std::string& request_id);

// A request for token ids (greedy, eos ignored).
millipede::v1::GenerateRequest TokenRequest(const std::vector<int32_t>& ids, int max_new_tokens);
std::vector<int32_t> RandomIds(int n, int vocab, uint64_t seed);

// The lanes of every UCX link a process log reports ("tcp/lo", ...), in log order.
std::vector<std::string> UcxLinkLanes(const std::string& log);

// HTTP GET of http://<address><path>; the body.
absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path);
// The value of the series `series` (name plus labels exactly as exported, e.g.
// `millipede_requests_failed_total{code="unavailable"}`) in a /metrics text.
std::optional<double> MetricValue(const std::string& text, const std::string& series);

}  // namespace mp::testing
