#include "coordinator/pipeline.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "coordinator/layer_assignment.h"

namespace mp {

namespace v1 = millipede::v1;

namespace {

// Runs fn(i) for i in [0, n) on n threads and waits for all.
template <typename Fn>
void Parallel(size_t n, Fn fn) {
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) threads.emplace_back([&fn, i] { fn(i); });
  for (std::thread& t : threads) t.join();
}

}  // namespace

absl::StatusOr<std::shared_ptr<Pipeline>> BuildPipeline(const std::vector<WorkerRecord>& workers,
                                                        const PipelineSpec& spec, uint64_t epoch,
                                                        StageFailure* failure) {
  *failure = StageFailure();
  const size_t n = workers.size();
  if (n == 0) return absl::UnavailableError("no workers to build a pipeline from");
  AssignmentOptions ao;
  ao.chunk_tokens = spec.max_chunk;
  const bool cuda = spec.device.rfind("cuda", 0) == 0;
  ao.weight_bytes_per_element = cuda ? 2 : 4;
  ao.kv_bytes_per_element = cuda ? 2 : 4;
  ao.kv_tokens = spec.kv_tokens > 0 ? spec.kv_tokens : spec.default_kv_tokens;
  ao.sparse_workspace_per_layer = spec.sparse_workspace_per_layer;
  ao.min_kv_tokens = std::max<int64_t>(
      1, std::min(spec.min_kv_tokens, ao.kv_tokens > 0 ? ao.kv_tokens : spec.min_kv_tokens));
  std::vector<uint64_t> memory;
  for (const WorkerRecord& w : workers) memory.push_back(w.registration.memory_bytes());
  absl::StatusOr<Assignment> assignment = AssignLayers(spec.config, memory, ao);
  if (!assignment.ok()) {
    failure->status = assignment.status();
    return assignment.status();
  }

  auto p = std::make_shared<Pipeline>();
  p->epoch = epoch;
  p->kv_tokens = assignment->kv_tokens;
  p->max_chunk = spec.max_chunk;
  p->transport = spec.transport.kind();
  p->description = absl::StrCat(n, n == 1 ? " stage:" : " stages:");
  for (size_t i = 0; i < n; ++i) {
    PipelineStage s;
    s.worker_id = workers[i].registration.worker_id();
    s.address = workers[i].registration.address();
    s.stub = std::shared_ptr<v1::StageWorker::Stub>(v1::StageWorker::NewStub(workers[i].channel));
    s.layers = assignment->stages[i].layers;
    absl::StrAppend(&p->description, i ? "," : "", " ", s.worker_id, " [", s.layers.begin, ", ",
                    s.layers.end, ")");
    p->stages.push_back(std::move(s));
  }

  // AssignLayers on every stage.
  std::vector<v1::AssignLayersResponse> assigned(n);
  std::vector<absl::Status> results(n);
  Parallel(n, [&](size_t i) {
    v1::AssignLayersRequest r;
    r.set_pipeline_epoch(epoch);
    r.set_stage(static_cast<uint32_t>(i));
    r.set_num_stages(static_cast<uint32_t>(n));
    r.mutable_layers()->set_begin(static_cast<uint32_t>(p->stages[i].layers.begin));
    r.mutable_layers()->set_end(static_cast<uint32_t>(p->stages[i].layers.end));
    *r.mutable_model() = spec.source;
    r.set_kv_tokens(static_cast<uint64_t>(p->kv_tokens));
    r.set_max_chunk_tokens(static_cast<uint32_t>(spec.max_chunk));
    r.set_max_context_tokens(static_cast<uint64_t>(std::max<int64_t>(spec.max_context, 0)));
    *r.mutable_transport() = spec.transport;
    r.set_device(spec.device);
    r.set_kv_block_tokens(static_cast<uint32_t>(spec.kv_block_tokens));
    grpc::ClientContext context;
    SetTimeout(context, spec.load_timeout);
    results[i] = FromGrpcStatus(p->stages[i].stub->AssignLayers(&context, r, &assigned[i]));
  });
  auto fail = [&](size_t i, const absl::Status& s, const char* what) {
    failure->stage = static_cast<int>(i);
    failure->worker_id = p->stages[i].worker_id;
    failure->status = absl::Status(
        s.code(), absl::StrCat(what, " on stage ", i, " (worker ", p->stages[i].worker_id, " at ",
                               p->stages[i].address, "): ", s.message()));
    AbortPipeline(*p, failure->status.ToString(), absl::Seconds(5));
    return failure->status;
  };
  for (size_t i = 0; i < n; ++i) {
    if (!results[i].ok()) return fail(i, results[i], "AssignLayers");
  }
  p->blocks_total = assigned[0].kv_blocks_total();
  p->block_tokens = static_cast<int64_t>(assigned[0].kv_block_tokens());
  for (size_t i = 0; i < n; ++i) {
    p->stages[i].kv_blocks_total = static_cast<int64_t>(assigned[i].kv_blocks_total());
    p->stages[i].kv_block_tokens = static_cast<int64_t>(assigned[i].kv_block_tokens());
    p->stages[i].device = assigned[i].device();
    if (assigned[i].sparse_workspace_bytes() > 0) {
      MP_LOG(Info) << "stage " << i << " (" << p->stages[i].worker_id << ") holds "
                   << assigned[i].sparse_workspace_bytes() << " bytes of sparse prefill workspace";
    }
    p->blocks_total = std::min<int64_t>(p->blocks_total, p->stages[i].kv_blocks_total);
    if (p->stages[i].kv_block_tokens != p->block_tokens) {
      return fail(i, absl::InternalError("KV block sizes differ between stages"), "AssignLayers");
    }
  }

  // ConnectPeers on every stage at once (NCCL links form only when both sides connect).
  Parallel(n, [&](size_t i) {
    v1::ConnectPeersRequest r;
    r.set_pipeline_epoch(epoch);
    if (i > 0) {
      r.mutable_previous()->set_worker_id(p->stages[i - 1].worker_id);
      r.mutable_previous()->set_endpoint(assigned[i - 1].downstream_endpoint());
    }
    if (i + 1 < n) {
      r.mutable_next()->set_worker_id(p->stages[i + 1].worker_id);
      r.mutable_next()->set_endpoint(assigned[i + 1].upstream_endpoint());
    }
    grpc::ClientContext context;
    SetTimeout(context, absl::Minutes(3));
    v1::ConnectPeersResponse response;
    results[i] = FromGrpcStatus(p->stages[i].stub->ConnectPeers(&context, r, &response));
  });
  for (size_t i = 0; i < n; ++i) {
    if (!results[i].ok()) return fail(i, results[i], "ConnectPeers");
  }
  return p;
}

void AbortPipeline(const Pipeline& pipeline, const std::string& reason, absl::Duration timeout) {
  Parallel(pipeline.stages.size(), [&](size_t i) {
    v1::AbortRequest r;
    r.set_pipeline_epoch(pipeline.epoch);
    r.set_reason(reason);
    grpc::ClientContext context;
    SetTimeout(context, timeout);
    v1::AbortResponse response;
    pipeline.stages[i].stub->Abort(&context, r, &response);
  });
}

std::shared_ptr<StepCall> StepCall::Start(std::shared_ptr<const Pipeline> pipeline,
                                          v1::RunChunkRequest request,
                                          std::vector<int32_t> token_ids, absl::Duration timeout,
                                          Callback on_done) {
  auto call = std::shared_ptr<StepCall>(new StepCall());
  const size_t n = pipeline->stages.size();
  call->pipeline_ = std::move(pipeline);
  call->request_ = std::move(request);
  call->on_done_ = std::move(on_done);
  call->start_ = absl::Now();
  call->pending_ = static_cast<int>(n);
  call->stage_requests_.assign(n, call->request_);
  call->stage_requests_[0].mutable_token_ids()->Assign(token_ids.begin(), token_ids.end());
  call->responses_.resize(n);
  call->answers_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    call->contexts_.push_back(std::make_unique<grpc::ClientContext>());
    SetTimeout(*call->contexts_[i], timeout);
  }
  for (size_t i = 0; i < n; ++i) {
    call->pipeline_->stages[i].stub->async()->RunChunk(
        call->contexts_[i].get(), &call->stage_requests_[i], &call->responses_[i],
        [call, i](grpc::Status status) { call->OnStageDone(static_cast<int>(i), status); });
  }
  return call;
}

void StepCall::OnStageDone(int stage, const grpc::Status& status) {
  bool fire = false;
  {
    absl::MutexLock lock(&mu_);
    --pending_;
    StageAnswer& a = answers_[stage];
    a.answered = true;
    a.at = absl::Now();
    a.forward_seconds = status.ok() ? responses_[stage].forward_seconds() : 0;
    if (!status.ok() && !reported_) {
      failure_.stage = stage;
      failure_.worker_id = pipeline_->stages[stage].worker_id;
      failure_.status = FromGrpcStatus(status);
      reported_ = true;
      fire = true;
    } else if (pending_ == 0 && !reported_) {
      reported_ = true;
      fire = true;
    }
  }
  if (fire) on_done_(*this);
}

std::vector<StageAnswer> StepCall::Answers() const {
  absl::MutexLock lock(&mu_);
  return answers_;
}

void ReleaseOnAllStages(std::shared_ptr<const Pipeline> pipeline, uint64_t request,
                        std::function<void()> on_done) {
  struct State {
    std::shared_ptr<const Pipeline> pipeline;
    std::vector<v1::ReleaseRequest> requests;
    std::vector<v1::ReleaseResponse> responses;
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
    std::function<void()> on_done;
    absl::Mutex mu;
    size_t pending = 0;
  };
  auto state = std::make_shared<State>();
  const size_t n = pipeline->stages.size();
  state->pipeline = std::move(pipeline);
  state->on_done = std::move(on_done);
  state->pending = n;
  state->requests.resize(n);
  state->responses.resize(n);
  for (size_t i = 0; i < n; ++i) {
    state->requests[i].set_request_id(request);
    state->requests[i].set_pipeline_epoch(state->pipeline->epoch);
    state->contexts.push_back(std::make_unique<grpc::ClientContext>());
    SetTimeout(*state->contexts[i], absl::Seconds(10));
  }
  for (size_t i = 0; i < n; ++i) {
    state->pipeline->stages[i].stub->async()->Release(state->contexts[i].get(), &state->requests[i],
                                                      &state->responses[i], [state](grpc::Status) {
                                                        bool last = false;
                                                        {
                                                          absl::MutexLock lock(&state->mu);
                                                          last = --state->pending == 0;
                                                        }
                                                        if (last && state->on_done)
                                                          state->on_done();
                                                      });
  }
}

}  // namespace mp
