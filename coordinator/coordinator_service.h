// The coordinator's gRPC services: millipede.v1.Coordinator (the public API, see
// proto/millipede/v1/coordinator.proto) and millipede.v1.WorkerRegistry (workers register and
// heartbeat). Generate / Prefill validate the request (INVALID_ARGUMENT naming the field and the
// limit), tokenize text prompts, submit to the Scheduler and stream its events; a client that
// cancels or goes away cancels the request. Thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "coordinator/coordinator_metrics.h"
#include "coordinator/coordinator_options.h"
#include "coordinator/membership.h"
#include "coordinator/model_info.h"
#include "coordinator/request_validation.h"
#include "coordinator/scheduler.h"
#include "millipede/v1/coordinator.grpc.pb.h"
#include "millipede/v1/worker.grpc.pb.h"

namespace mp {

inline constexpr char kCoordinatorService[] = "millipede.v1.Coordinator";

class CoordinatorService final : public millipede::v1::Coordinator::Service {
 public:
  CoordinatorService(const CoordinatorOptions& options, const ModelInfo* model,
                     std::shared_ptr<Scheduler> scheduler, CoordinatorMetrics* metrics);

  grpc::Status Generate(grpc::ServerContext* context, const millipede::v1::GenerateRequest* request,
                        grpc::ServerWriter<millipede::v1::GenerateEvent>* writer) override;
  grpc::Status Prefill(grpc::ServerContext* context, const millipede::v1::GenerateRequest* request,
                       grpc::ServerWriter<millipede::v1::GenerateEvent>* writer) override;
  grpc::Status Cancel(grpc::ServerContext* context, const millipede::v1::CancelRequest* request,
                      millipede::v1::CancelResponse* response) override;
  grpc::Status GetRequest(grpc::ServerContext* context,
                          const millipede::v1::GetRequestRequest* request,
                          millipede::v1::RequestInfo* response) override;
  grpc::Status ListWorkers(grpc::ServerContext* context,
                           const millipede::v1::ListWorkersRequest* request,
                           millipede::v1::ListWorkersResponse* response) override;

 private:
  grpc::Status Serve(grpc::ServerContext* context, const millipede::v1::GenerateRequest& request,
                     grpc::ServerWriter<millipede::v1::GenerateEvent>* writer, bool prefill_only);
  // Validates and turns the request into scheduler parameters.
  absl::StatusOr<RequestParams> Prepare(const grpc::ServerContext& context,
                                        const millipede::v1::GenerateRequest& request,
                                        bool prefill_only) const;

  const CoordinatorOptions options_;
  const ModelInfo* const model_;
  const std::shared_ptr<Scheduler> scheduler_;
  CoordinatorMetrics* const metrics_;
  RequestLimits limits_;
};

class WorkerRegistryService final : public millipede::v1::WorkerRegistry::Service {
 public:
  WorkerRegistryService(Membership* membership, std::string coordinator_id,
                        absl::Duration heartbeat)
      : membership_(membership),
        coordinator_id_(std::move(coordinator_id)),
        heartbeat_(heartbeat) {}

  grpc::Status RegisterWorker(grpc::ServerContext* context,
                              const millipede::v1::RegisterWorkerRequest* request,
                              millipede::v1::RegisterWorkerResponse* response) override;

 private:
  Membership* const membership_;
  const std::string coordinator_id_;
  const absl::Duration heartbeat_;
};

}  // namespace mp
