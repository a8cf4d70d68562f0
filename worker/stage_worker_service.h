// StageWorkerService: the millipede.v1.StageWorker gRPC service of one worker process (see
// proto/millipede/v1/worker.proto for the protocol).
//
// It owns the stage's backend and StageExecutor (kept across pipeline epochs while the layers,
// model, device and KV budget stay the same) and, per epoch, the ActivationLinks and the
// StageRunner. Health: "millipede.v1.StageWorker" is SERVING while the stage is connected and not
// draining. Thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "millipede/v1/worker.grpc.pb.h"
#include "runtime/stage_executor.h"
#include "worker/activation_links.h"
#include "worker/stage_runner.h"
#include "worker/worker_metrics.h"
#include "worker/worker_options.h"

namespace mp {

inline constexpr char kStageWorkerService[] = "millipede.v1.StageWorker";

class StageWorkerService final : public millipede::v1::StageWorker::Service {
 public:
  StageWorkerService(const WorkerOptions& options, std::string worker_id, WorkerMetrics* metrics);
  ~StageWorkerService() override;

  // The server whose health service this one updates (set before serving).
  void set_server(grpc::Server* server) { server_ = server; }
  void set_address(const std::string& address) { address_ = address; }
  void set_metrics_address(const std::string& address) { metrics_address_ = address; }

  grpc::Status AssignLayers(grpc::ServerContext* context,
                            const millipede::v1::AssignLayersRequest* request,
                            millipede::v1::AssignLayersResponse* response) override;
  grpc::Status ConnectPeers(grpc::ServerContext* context,
                            const millipede::v1::ConnectPeersRequest* request,
                            millipede::v1::ConnectPeersResponse* response) override;
  grpc::Status RunChunk(grpc::ServerContext* context, const millipede::v1::RunChunkRequest* request,
                        millipede::v1::RunChunkResponse* response) override;
  grpc::Status Release(grpc::ServerContext* context, const millipede::v1::ReleaseRequest* request,
                       millipede::v1::ReleaseResponse* response) override;
  grpc::Status Abort(grpc::ServerContext* context, const millipede::v1::AbortRequest* request,
                     millipede::v1::AbortResponse* response) override;
  grpc::Status Drain(grpc::ServerContext* context, const millipede::v1::DrainRequest* request,
                     millipede::v1::DrainResponse* response) override;
  grpc::Status GetStatus(grpc::ServerContext* context,
                         const millipede::v1::GetStatusRequest* request,
                         millipede::v1::WorkerStatus* response) override;

  // Stops taking new pipelines (health NOT_SERVING); running requests continue.
  void StartDrain();
  bool draining() const { return draining_.load(); }
  // No request holds KV here and no step is queued.
  bool Idle() const;
  // Ends the current epoch (its steps fail with UNAVAILABLE) and frees all KV.
  void Shutdown();
  millipede::v1::WorkerInfo Info() const;

 private:
  // The stage's model, kept across epochs.
  struct Loaded {
    std::string key;  // what was loaded: model source, layers, device, KV budget
    std::shared_ptr<Backend> backend;
    std::shared_ptr<StageExecutor> executor;
    std::string device;
    int64_t kv_blocks_total = 0;
    int64_t kv_block_tokens = 0;
  };
  // One pipeline epoch. Members are destroyed runner first, then links, then the executor ref.
  struct Epoch {
    uint64_t epoch = 0;
    uint32_t stage = 0;
    uint32_t num_stages = 0;
    std::shared_ptr<StageExecutor> executor;
    std::unique_ptr<ActivationLinks> links;
    std::unique_ptr<StageRunner> runner;
    bool connected = false;
  };

  std::shared_ptr<Epoch> Current() const;
  // Replaces the current epoch (stopping its runner with `why`).
  void EndEpoch(const absl::Status& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(assign_mu_);
  absl::Status DoAssign(const millipede::v1::AssignLayersRequest& request,
                        millipede::v1::AssignLayersResponse* response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(assign_mu_);
  void SetReady(bool ready);

  const WorkerOptions options_;
  const std::string worker_id_;
  WorkerMetrics* const metrics_;
  grpc::Server* server_ = nullptr;
  std::string address_;
  std::string metrics_address_;
  std::atomic<bool> draining_{false};

  absl::Mutex assign_mu_;  // serializes AssignLayers / ConnectPeers / Abort / Shutdown
  Loaded loaded_ ABSL_GUARDED_BY(assign_mu_);
  int probes_dropped_ ABSL_GUARDED_BY(assign_mu_) = 0;  // --inject-drop-link-probes
  mutable absl::Mutex mu_;
  std::shared_ptr<Epoch> current_ ABSL_GUARDED_BY(mu_);
  std::string device_ ABSL_GUARDED_BY(mu_);
  int64_t kv_blocks_total_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mp
