#include "coordinator/coordinator_service.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status.h"

namespace mp {

namespace v1 = millipede::v1;

CoordinatorService::CoordinatorService(const CoordinatorOptions& options, const ModelInfo* model,
                                       std::shared_ptr<Scheduler> scheduler,
                                       CoordinatorMetrics* metrics)
    : options_(options), model_(model), scheduler_(std::move(scheduler)), metrics_(metrics) {
  limits_.vocab_size = model->config.vocab_size;
  limits_.max_context = model->max_context;
  limits_.has_tokenizer = model->tokenizer != nullptr;
}

absl::StatusOr<RequestParams> CoordinatorService::Prepare(const grpc::ServerContext& context,
                                                          const v1::GenerateRequest& r,
                                                          bool prefill_only) const {
  MP_RETURN_IF_ERROR(ValidateRequestFields(r, limits_));
  RequestParams p;
  p.name = r.request_id();
  p.prefill_only = prefill_only;
  p.max_new_tokens = prefill_only ? 0 : r.max_new_tokens();
  p.sampling = r.sampling();
  p.return_logits = r.return_logits();
  p.priority = r.priority();
  if (r.prompt_case() == v1::GenerateRequest::kTokens) {
    p.prompt.assign(r.tokens().ids().begin(), r.tokens().ids().end());
    MP_RETURN_IF_ERROR(ValidatePromptIds(p.prompt, p.max_new_tokens, limits_, "tokens.ids"));
  } else {
    std::string text = r.text();
    if (!r.raw() && model_->chat.has_value()) {
      std::vector<ChatMessage> messages;
      if (!r.system().empty()) messages.push_back({"system", r.system()});
      messages.push_back({"user", text});
      MP_ASSIGN_OR_RETURN(text, model_->chat->Render(messages, /*add_generation_prompt=*/true));
    }
    p.prompt = model_->tokenizer->Encode(text);
    p.text_prompt = true;
    MP_RETURN_IF_ERROR(ValidatePromptIds(p.prompt, p.max_new_tokens, limits_, "text"));
  }
  if (!r.ignore_eos()) {
    for (int64_t id : model_->config.eos_token_ids)
      p.stop_token_ids.push_back(static_cast<int32_t>(id));
    if (p.text_prompt && !r.raw() && model_->end_of_turn) {
      p.stop_token_ids.push_back(*model_->end_of_turn);
    }
  }
  p.stop_token_ids.insert(p.stop_token_ids.end(), r.stop_token_ids().begin(),
                          r.stop_token_ids().end());
  absl::Time deadline = absl::Now() + options_.request_timeout;
  const auto client = context.deadline();
  if (client != std::chrono::system_clock::time_point::max()) {
    deadline = std::min(deadline, absl::FromChrono(client));
  }
  p.deadline = deadline;
  return p;
}

grpc::Status CoordinatorService::Generate(grpc::ServerContext* context,
                                          const v1::GenerateRequest* request,
                                          grpc::ServerWriter<v1::GenerateEvent>* writer) {
  return Serve(context, *request, writer, /*prefill_only=*/false);
}

grpc::Status CoordinatorService::Prefill(grpc::ServerContext* context,
                                         const v1::GenerateRequest* request,
                                         grpc::ServerWriter<v1::GenerateEvent>* writer) {
  return Serve(context, *request, writer, /*prefill_only=*/true);
}

grpc::Status CoordinatorService::Serve(grpc::ServerContext* context,
                                       const v1::GenerateRequest& request,
                                       grpc::ServerWriter<v1::GenerateEvent>* writer,
                                       bool prefill_only) {
  absl::StatusOr<RequestParams> params = Prepare(*context, request, prefill_only);
  if (!params.ok()) {
    metrics_->Rejected("invalid");
    return ToGrpcStatus(params.status());
  }
  absl::StatusOr<RequestHandle> handle = scheduler_->Submit(*std::move(params));
  if (!handle.ok()) return ToGrpcStatus(handle.status());
  // Why the call ended from the client's side: its deadline, or it cancelled / went away.
  auto client_gone = [&] {
    const bool past = absl::FromChrono(context->deadline()) <= absl::Now();
    return past ? absl::DeadlineExceededError("the client's deadline passed")
                : absl::CancelledError("the client cancelled the call or went away");
  };
  while (true) {
    v1::GenerateEvent event;
    absl::Status final_status;
    switch (handle->events->Pop(absl::Milliseconds(100), &event, &final_status)) {
      case EventQueue::PopResult::kEvent:
        if (!writer->Write(event)) scheduler_->Cancel(handle->name, client_gone());
        break;
      case EventQueue::PopResult::kClosed:
        return ToGrpcStatus(final_status);
      case EventQueue::PopResult::kTimeout:
        if (context->IsCancelled()) scheduler_->Cancel(handle->name, client_gone());
        break;
    }
  }
}

grpc::Status CoordinatorService::Cancel(grpc::ServerContext*, const v1::CancelRequest* request,
                                        v1::CancelResponse* response) {
  response->set_cancelled(scheduler_->Cancel(request->request_id(),
                                             absl::CancelledError("cancelled by a Cancel call")));
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::GetRequest(grpc::ServerContext*,
                                            const v1::GetRequestRequest* request,
                                            v1::RequestInfo* response) {
  absl::StatusOr<v1::RequestInfo> info = scheduler_->GetRequest(request->request_id());
  if (!info.ok()) return ToGrpcStatus(info.status());
  *response = *std::move(info);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::ListWorkers(grpc::ServerContext*, const v1::ListWorkersRequest*,
                                             v1::ListWorkersResponse* response) {
  scheduler_->ListWorkers(response);
  return grpc::Status::OK;
}

grpc::Status WorkerRegistryService::RegisterWorker(grpc::ServerContext*,
                                                   const v1::RegisterWorkerRequest* request,
                                                   v1::RegisterWorkerResponse* response) {
  if (request->worker_id().empty() || request->address().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "RegisterWorker: worker_id and address are required");
  }
  membership_->Register(*request);
  response->set_coordinator_id(coordinator_id_);
  response->set_heartbeat_interval_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(heartbeat_)));
  return grpc::Status::OK;
}

}  // namespace mp
