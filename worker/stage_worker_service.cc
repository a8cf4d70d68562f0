#include "worker/stage_worker_service.h"

#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_server.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status.h"
#include "kvtransfer/descriptor.h"
#include "worker/device_backend.h"
#include "worker/stage_model.h"

namespace mp {

namespace v1 = millipede::v1;

namespace {

std::string SourceKey(const v1::ModelSource& s, const std::string& override_dir) {
  return absl::StrCat(override_dir.empty() ? s.model_dir() : override_dir, "|", s.random_weights(),
                      "|", s.random_seed(), "|", std::hash<std::string>()(s.config_json()));
}

}  // namespace

StageWorkerService::StageWorkerService(const WorkerOptions& options, std::string worker_id,
                                       WorkerMetrics* metrics)
    : options_(options), worker_id_(std::move(worker_id)), metrics_(metrics) {}

StageWorkerService::~StageWorkerService() { Shutdown(); }

std::shared_ptr<StageWorkerService::Epoch> StageWorkerService::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

void StageWorkerService::SetReady(bool ready) {
  if (server_ != nullptr) SetServing(*server_, kStageWorkerService, ready && !draining_.load());
}

void StageWorkerService::EndEpoch(const absl::Status& why) {
  std::shared_ptr<Epoch> old;
  {
    absl::MutexLock lock(&mu_);
    old.swap(current_);
  }
  SetReady(false);
  if (metrics_ != nullptr) metrics_->ClearStage();
  if (old != nullptr && old->runner != nullptr) {
    old->runner->Stop(why);
    MP_LOG(Info) << "pipeline epoch " << old->epoch << " ended: " << why.message();
  }
}

grpc::Status StageWorkerService::AssignLayers(grpc::ServerContext*,
                                              const v1::AssignLayersRequest* request,
                                              v1::AssignLayersResponse* response) {
  if (draining_.load()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the worker is draining");
  }
  absl::MutexLock lock(&assign_mu_);
  absl::Status status = DoAssign(*request, response);
  if (!status.ok()) {
    MP_LOG(Warning) << "AssignLayers for epoch " << request->pipeline_epoch()
                    << " failed: " << status;
  }
  return ToGrpcStatus(status);
}

absl::Status StageWorkerService::DoAssign(const v1::AssignLayersRequest& r,
                                          v1::AssignLayersResponse* response) {
  const absl::Time start = absl::Now();
  if (r.num_stages() == 0 || r.stage() >= r.num_stages()) {
    return absl::InvalidArgumentError(
        absl::StrCat("AssignLayers: stage ", r.stage(), " of ", r.num_stages(), " stages"));
  }
  if (r.layers().begin() >= r.layers().end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AssignLayers: empty layer range [", r.layers().begin(), ", ", r.layers().end(), ")"));
  }
  if (r.max_chunk_tokens() == 0 || r.kv_tokens() == 0) {
    return absl::InvalidArgumentError("AssignLayers: max_chunk_tokens and kv_tokens must be > 0");
  }
  EndEpoch(absl::AbortedError(absl::StrCat("pipeline epoch replaced by ", r.pipeline_epoch())));

  const std::string device = !options_.device.empty() ? options_.device
                             : r.device().empty()     ? std::string("cpu")
                                                      : r.device();
  const int64_t block = r.kv_block_tokens() > 0 ? r.kv_block_tokens() : 64;
  const std::string key =
      absl::StrCat(SourceKey(r.model(), options_.model_dir), "|", r.layers().begin(), "-",
                   r.layers().end(), "|", device, "|", r.kv_tokens(), "|", block);
  if (key != loaded_.key || loaded_.executor == nullptr) {
    loaded_ = Loaded();  // frees the previous stage's memory first
    MP_ASSIGN_OR_RETURN(std::shared_ptr<Backend> backend, CreateBackend(device));
    MP_ASSIGN_OR_RETURN(ModelConfig config, LoadSourceConfig(r.model(), options_.model_dir));
    if (r.layers().end() > static_cast<uint32_t>(config.num_hidden_layers)) {
      return absl::InvalidArgumentError(absl::StrCat("AssignLayers: layers [", r.layers().begin(),
                                                     ", ", r.layers().end(), ") of a model with ",
                                                     config.num_hidden_layers, " layers"));
    }
    KvCacheOptions kv;
    kv.block_size = block;
    kv.max_tokens = static_cast<int64_t>(r.kv_tokens());
    const LayerRange layers{r.layers().begin(), r.layers().end()};
    MP_ASSIGN_OR_RETURN(std::unique_ptr<StageExecutor> executor,
                        LoadStageExecutor(r.model(), options_.model_dir, config, layers, backend,
                                          kv, options_.sparse));
    loaded_.key = key;
    loaded_.backend = backend;
    loaded_.executor = std::move(executor);
    loaded_.device = device;
    const KvCacheStats stats = loaded_.executor->kv_cache().stats();
    loaded_.kv_blocks_total = stats.blocks_total;
    loaded_.kv_block_tokens = stats.block_size;
    MP_LOG(Info) << "loaded layers [" << layers.begin << ", " << layers.end << ") on " << device
                 << " with KV for " << stats.tokens_total() << " tokens in "
                 << absl::FormatDuration(absl::Now() - start);
  }
  StageExecutor& ex = *loaded_.executor;
  // The sparse prefill workspace of the longest prompt, before the stage reports ready: a stage
  // that cannot hold it fails its assignment, not its first long request.
  absl::StatusOr<int64_t> sparse_workspace = ex.ReserveSparseWorkspace(
      static_cast<int64_t>(r.max_chunk_tokens()), static_cast<int64_t>(r.max_context_tokens()));
  if (!sparse_workspace.ok()) {
    return absl::Status(
        sparse_workspace.status().code(),
        absl::StrCat("AssignLayers: ", sparse_workspace.status().message(),
                     " (lower the KV budget or the maximum context, give the stage more memory "
                     "or fewer layers, or run dense prefill with --no-sparse)"));
  }
  if (*sparse_workspace > 0) {
    MP_LOG(Info) << "sparse prefill workspace: " << *sparse_workspace << " bytes for chunks of up to "
                 << r.max_chunk_tokens() << " tokens";
  }
  const bool first = r.stage() == 0, last = r.stage() + 1 == r.num_stages();
  if (first != ex.is_first() || last != ex.is_last()) {
    return absl::InvalidArgumentError(absl::StrCat("AssignLayers: stage ", r.stage(), " of ",
                                                   r.num_stages(), " cannot hold layers [",
                                                   r.layers().begin(), ", ", r.layers().end(),
                                                   ") (the first stage starts at layer 0, the "
                                                   "last ends at the last layer)"));
  }

  ActivationLinkOptions link;
  link.kind = r.transport().kind().empty() ? "ucx" : r.transport().kind();
  const auto& opts = r.transport().options();
  if (auto it = opts.find("ucx_transports"); it != opts.end()) {
    link.transport.ucx_transports = it->second;
  }
  if (auto it = opts.find("ucx_net_devices"); it != opts.end()) {
    link.transport.ucx_net_devices = it->second;
  }
  link.upstream = !first;
  link.downstream = !last;
  link.max_rows = r.max_chunk_tokens();
  link.hidden = ex.config().hidden_size;
  link.send_buffers = options_.send_buffers;
  link.cuda_device = DeviceOrdinal(loaded_.device);
  link.timeout = options_.activation_timeout;
  link.connect_timeout = options_.connect_timeout;
  // Test faults; the first matching rule wins. The activation faults leave the link probe alone.
  if (!first && probes_dropped_ < options_.inject_drop_link_probes) {
    ++probes_dropped_;
    kvtransfer::FaultRule drop;
    drop.action = kvtransfer::FaultAction::kDrop;
    drop.kind = kvtransfer::TransferKind::kOther;
    link.inject_receive_faults.push_back(drop);
  }
  if (options_.inject_drop_request != 0) {
    kvtransfer::FaultRule drop;
    drop.action = kvtransfer::FaultAction::kDrop;
    drop.kind = kvtransfer::TransferKind::kActivations;
    drop.request_id = options_.inject_drop_request;
    drop.count = 0;  // all of the request's receives
    link.inject_receive_faults.push_back(drop);
  }
  if (options_.inject_receive_delay > absl::ZeroDuration()) {
    kvtransfer::FaultRule delay;
    delay.action = kvtransfer::FaultAction::kDelay;
    delay.kind = kvtransfer::TransferKind::kActivations;
    delay.count = 0;  // every receive
    delay.delay = options_.inject_receive_delay;
    link.inject_receive_faults.push_back(delay);
  }
  auto epoch = std::make_shared<Epoch>();
  epoch->epoch = r.pipeline_epoch();
  epoch->stage = r.stage();
  epoch->num_stages = r.num_stages();
  epoch->executor = loaded_.executor;
  MP_ASSIGN_OR_RETURN(epoch->links, ActivationLinks::Create(link, loaded_.backend));
  epoch->runner = std::make_unique<StageRunner>(epoch->executor.get(), epoch->links.get(), metrics_,
                                                r.max_chunk_tokens());
  response->set_upstream_endpoint(epoch->links->upstream_endpoint());
  response->set_downstream_endpoint(epoch->links->downstream_endpoint());
  response->set_kv_blocks_total(static_cast<uint64_t>(loaded_.kv_blocks_total));
  response->set_kv_block_tokens(static_cast<uint64_t>(loaded_.kv_block_tokens));
  response->set_load_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  response->set_device(loaded_.device);
  response->set_sparse_workspace_bytes(static_cast<uint64_t>(*sparse_workspace));
  if (metrics_ != nullptr) {
    metrics_->kv_blocks_total.Set(static_cast<double>(loaded_.kv_blocks_total));
    metrics_->sparse_workspace_bytes.Set(static_cast<double>(*sparse_workspace));
    metrics_->SetStage(static_cast<int>(r.stage()), static_cast<int>(r.layers().begin()),
                       static_cast<int>(r.layers().end()));
  }
  absl::MutexLock lock(&mu_);
  current_ = std::move(epoch);
  device_ = loaded_.device;
  kv_blocks_total_ = loaded_.kv_blocks_total;
  return absl::OkStatus();
}

grpc::Status StageWorkerService::ConnectPeers(grpc::ServerContext*,
                                              const v1::ConnectPeersRequest* request,
                                              v1::ConnectPeersResponse*) {
  absl::MutexLock lock(&assign_mu_);
  std::shared_ptr<Epoch> cur = Current();
  if (cur == nullptr || cur->epoch != request->pipeline_epoch()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("ConnectPeers: epoch ", request->pipeline_epoch(),
                                     " is not the assigned one"));
  }
  if (!cur->connected) {
    absl::Status s =
        cur->links->Connect(request->previous().endpoint(), request->next().endpoint());
    if (!s.ok()) return ToGrpcStatus(s);
    cur->runner->Start();
    cur->connected = true;
    MP_LOG(Info) << "pipeline epoch " << cur->epoch << ": stage " << cur->stage << " of "
                 << cur->num_stages << " connected";
  }
  SetReady(true);
  return grpc::Status::OK;
}

grpc::Status StageWorkerService::RunChunk(grpc::ServerContext* context,
                                          const v1::RunChunkRequest* request,
                                          v1::RunChunkResponse* response) {
  std::shared_ptr<Epoch> cur = Current();
  if (cur == nullptr || cur->epoch != request->pipeline_epoch()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("RunChunk: pipeline epoch ", request->pipeline_epoch(),
                                     " is not this stage's current epoch"));
  }
  absl::StatusOr<v1::RunChunkResponse> result =
      cur->runner->RunStep(*request, [context] { return context->IsCancelled(); });
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status StageWorkerService::Release(grpc::ServerContext*, const v1::ReleaseRequest* request,
                                         v1::ReleaseResponse* response) {
  std::shared_ptr<Epoch> cur = Current();
  if (cur == nullptr || cur->epoch != request->pipeline_epoch()) {
    response->set_released(false);
    return grpc::Status::OK;
  }
  absl::StatusOr<bool> held = cur->runner->Release(request->request_id(), absl::Seconds(5));
  if (!held.ok()) return ToGrpcStatus(held.status());
  response->set_released(*held);
  return grpc::Status::OK;
}

grpc::Status StageWorkerService::Abort(grpc::ServerContext*, const v1::AbortRequest* request,
                                       v1::AbortResponse*) {
  absl::MutexLock lock(&assign_mu_);
  std::shared_ptr<Epoch> cur = Current();
  if (cur != nullptr &&
      (request->pipeline_epoch() == 0 || cur->epoch == request->pipeline_epoch())) {
    EndEpoch(absl::AbortedError(
        absl::StrCat("pipeline epoch ", cur->epoch, " aborted: ", request->reason())));
  }
  return grpc::Status::OK;
}

grpc::Status StageWorkerService::Drain(grpc::ServerContext*, const v1::DrainRequest*,
                                       v1::DrainResponse*) {
  StartDrain();
  return grpc::Status::OK;
}

grpc::Status StageWorkerService::GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*,
                                           v1::WorkerStatus* response) {
  *response->mutable_info() = Info();
  std::shared_ptr<Epoch> cur = Current();
  if (cur != nullptr) {
    response->set_pipeline_epoch(cur->epoch);
    response->set_requests_held(static_cast<uint32_t>(cur->runner->requests_held()));
    response->set_steps_done(cur->runner->steps_done());
  }
  response->set_draining(draining_.load());
  return grpc::Status::OK;
}

void StageWorkerService::StartDrain() {
  draining_.store(true);
  SetReady(false);
}

bool StageWorkerService::Idle() const {
  std::shared_ptr<Epoch> cur = Current();
  return cur == nullptr || (cur->runner->idle() && cur->runner->requests_held() == 0);
}

void StageWorkerService::Shutdown() {
  absl::MutexLock lock(&assign_mu_);
  EndEpoch(absl::UnavailableError("the worker is shutting down"));
}

v1::WorkerInfo StageWorkerService::Info() const {
  v1::WorkerInfo info;
  info.set_worker_id(worker_id_);
  info.set_address(address_);
  info.set_role(v1::WORKER_ROLE_PREFILL);
  info.set_memory_bytes(options_.memory_bytes);
  info.set_pid(static_cast<uint32_t>(getpid()));
  info.set_host(kvtransfer::LocalHostName());
  info.set_metrics_address(metrics_address_);
  std::shared_ptr<Epoch> cur = Current();
  absl::MutexLock lock(&mu_);
  info.set_device(device_.empty() ? (options_.device.empty() ? "cpu" : options_.device) : device_);
  info.set_kv_blocks_total(static_cast<uint64_t>(kv_blocks_total_));
  if (draining_.load()) {
    info.set_state(v1::WORKER_STATE_DRAINING);
  } else if (cur != nullptr && cur->connected) {
    info.set_state(v1::WORKER_STATE_READY);
  } else if (cur != nullptr) {
    info.set_state(v1::WORKER_STATE_LOADING);
  } else {
    info.set_state(v1::WORKER_STATE_REGISTERED);
  }
  if (cur != nullptr) {
    info.set_stage(cur->stage);
    info.mutable_layers()->set_begin(static_cast<uint32_t>(cur->executor->layers().begin));
    info.mutable_layers()->set_end(static_cast<uint32_t>(cur->executor->layers().end));
    info.set_kv_blocks_used(static_cast<uint64_t>(cur->runner->kv_blocks_in_use()));
    info.set_transport(cur->links->kind());
  }
  return info;
}

}  // namespace mp
