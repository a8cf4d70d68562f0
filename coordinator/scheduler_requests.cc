// Requests: submission, cancellation, queries, the results of their steps (progress, tokens)
// and their end.
#include "coordinator/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace mp {

namespace v1 = millipede::v1;

namespace {

// Failures that mean the pipeline itself is gone or inconsistent (rather than this request's
// input or budget).
bool PipelineLevel(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kAlreadyExists:
      return true;
    case absl::StatusCode::kFailedPrecondition:
      return absl::StrContains(s.message(), "epoch") || absl::StrContains(s.message(), "step ");
    default:
      return false;
  }
}

std::string CodeName(absl::StatusCode code) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(code));
}

}  // namespace

absl::StatusOr<RequestHandle> Scheduler::Submit(RequestParams params) {
  absl::MutexLock lock(&mu_);
  if (!accepting_ || stop_) {
    metrics_->Rejected("unavailable");
    return absl::UnavailableError("the coordinator is shutting down");
  }
  const uint64_t id = next_id_++;
  if (params.name.empty()) params.name = absl::StrCat("req-", id);
  if (by_name_.contains(params.name)) {
    metrics_->Rejected("invalid");
    return absl::AlreadyExistsError(
        absl::StrCat("request_id '", params.name, "' belongs to a live request"));
  }
  const int64_t prompt = static_cast<int64_t>(params.prompt.size());
  const int64_t kv_tokens =
      KvAdmission::TokensNeeded(prompt, params.prefill_only ? 1 : params.max_new_tokens);
  if (pipeline_ != nullptr) {
    absl::Status fits =
        admission_.CheckCapacity(prompt, params.prefill_only ? 1 : params.max_new_tokens);
    if (!fits.ok()) {
      metrics_->Rejected("overload");
      return fits;
    }
  } else if (!ever_built_ && !build_error_.empty()) {
    metrics_->Rejected("unavailable");
    return absl::UnavailableError(absl::StrCat("no pipeline could be built: ", build_error_));
  }
  int64_t waiting_tokens = 0;
  for (uint64_t w : waiting_) waiting_tokens += requests_[w]->kv_tokens;
  const int64_t queue_limit =
      options_.max_queue_tokens > 0 ? options_.max_queue_tokens : 4 * model_->max_context;
  const bool must_wait =
      !waiting_.empty() || pipeline_ == nullptr ||
      admission_.BlocksFor(kv_tokens) > admission_.BlocksFor(admission_.free_tokens());
  if (must_wait && (static_cast<int>(waiting_.size()) >= options_.max_queued_requests ||
                    waiting_tokens + kv_tokens > queue_limit)) {
    metrics_->Rejected("overload");
    return absl::ResourceExhaustedError(absl::StrCat(
        "the cluster is busy: ", waiting_.size(), " requests wait for ", waiting_tokens,
        " tokens of KV (limits: ", options_.max_queued_requests, " requests, ", queue_limit,
        " tokens); ", admission_.free_tokens(), " KV tokens are free now and this request needs ",
        kv_tokens, "; retry later"));
  }

  auto r = std::make_unique<Request>();
  r->id = id;
  r->params = std::move(params);
  r->events = std::make_shared<EventQueue>();
  r->token = std::make_unique<CancelToken>(r->params.deadline);
  r->arrival = next_arrival_++;
  r->kv_tokens = kv_tokens;
  r->accepted = absl::Now();
  r->started = r->prefill_done = r->first_token = r->last_token = absl::InfinitePast();
  if (r->params.text_prompt && model_->tokenizer != nullptr) {
    r->decoder = std::make_unique<StreamingDecoder>(*model_->tokenizer, /*skip_special=*/true);
  }
  // Waiting order: higher priority first, then arrival.
  auto pos = std::find_if(waiting_.begin(), waiting_.end(), [&](uint64_t w) {
    return requests_[w]->params.priority < r->params.priority;
  });
  const uint32_t position = static_cast<uint32_t>(pos - waiting_.begin());
  waiting_.insert(pos, id);
  v1::GenerateEvent accepted;
  accepted.mutable_accepted()->set_request_id(r->params.name);
  accepted.mutable_accepted()->set_queue_position(position);
  accepted.mutable_accepted()->set_prompt_tokens(static_cast<uint32_t>(prompt));
  r->events->Push(std::move(accepted));
  metrics_->admitted.Increment();
  metrics_->prompt_tokens_hist.Observe(static_cast<double>(prompt));
  RequestHandle handle{id, r->params.name, r->events};
  by_name_[r->params.name] = id;
  requests_[id] = std::move(r);
  wake_ = true;
  UpdateGauges();
  return handle;
}

bool Scheduler::Cancel(const std::string& name, const absl::Status& why) {
  Actions after;
  {
    absl::MutexLock lock(&mu_);
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return false;
    Request& r = *requests_[it->second];
    r.token->Cancel(why);
    Finish(r, why, &after);
    wake_ = true;
  }
  Run(after);
  return true;
}

absl::StatusOr<v1::RequestInfo> Scheduler::GetRequest(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  if (auto it = by_name_.find(name); it != by_name_.end()) {
    return Info(*requests_.at(it->second));
  }
  if (auto it = finished_index_.find(name); it != finished_index_.end()) {
    return finished_[it->second - finished_base_].second;
  }
  return absl::NotFoundError(absl::StrCat("no request '", name, "' is live or finished recently"));
}

v1::Timings Scheduler::Timings(const Request& r) const {
  v1::Timings t;
  const absl::Time now = absl::Now();
  const absl::Time end = r.state == State::kDone ? r.last_token : now;
  t.set_queue_seconds(Seconds(r.accepted, r.started));
  t.set_prefill_seconds(Seconds(r.started, r.prefill_done));
  t.set_ttft_seconds(Seconds(r.accepted, r.first_token));
  t.set_decode_seconds(Seconds(r.first_token, r.last_token));
  t.set_total_seconds(Seconds(r.accepted, end == absl::InfinitePast() ? now : end));
  t.set_chunks(r.chunks);
  return t;
}

v1::RequestInfo Scheduler::Info(const Request& r) const {
  v1::RequestInfo info;
  info.set_request_id(r.params.name);
  switch (r.state) {
    case State::kQueued:
      info.set_state(v1::REQUEST_STATE_QUEUED);
      break;
    case State::kPrefilling:
      info.set_state(v1::REQUEST_STATE_PREFILLING);
      break;
    case State::kDecoding:
      info.set_state(v1::REQUEST_STATE_DECODING);
      break;
    case State::kDone:
      info.set_state(v1::REQUEST_STATE_COMPLETED);
      break;
  }
  info.set_prompt_tokens(static_cast<uint32_t>(r.params.prompt.size()));
  info.set_tokens_done(static_cast<uint64_t>(r.done));
  info.set_generated_tokens(static_cast<uint32_t>(r.generated.size()));
  *info.mutable_timings() = Timings(r);
  return info;
}

void Scheduler::Remember(const Request& r, const absl::Status& status) {
  v1::RequestInfo info = Info(r);
  if (status.ok()) {
    info.set_state(v1::REQUEST_STATE_COMPLETED);
  } else if (status.code() == absl::StatusCode::kCancelled ||
             status.code() == absl::StatusCode::kDeadlineExceeded) {
    info.set_state(v1::REQUEST_STATE_CANCELLED);
  } else {
    info.set_state(v1::REQUEST_STATE_FAILED);
  }
  info.set_error_code(static_cast<int32_t>(status.code()));
  info.set_error_message(std::string(status.message()));
  const absl::Time now = absl::Now();
  finished_index_[r.params.name] = finished_base_ + finished_.size();
  finished_.emplace_back(now, std::move(info));
  while (!finished_.empty() && (finished_.size() > 10000 ||
                                now - finished_.front().first > options_.finished_retention)) {
    auto it = finished_index_.find(finished_.front().second.request_id());
    if (it != finished_index_.end() && it->second == finished_base_) finished_index_.erase(it);
    finished_.pop_front();
    ++finished_base_;
  }
}

void Scheduler::ListWorkers(v1::ListWorkersResponse* response) const {
  const std::vector<WorkerRecord> workers = membership_->All();
  absl::MutexLock lock(&mu_);
  for (const WorkerRecord& w : workers) {
    v1::WorkerInfo* info = response->add_workers();
    const v1::RegisterWorkerRequest& reg = w.registration;
    info->set_worker_id(reg.worker_id());
    info->set_address(reg.address());
    info->set_role(reg.role());
    info->set_state(w.state);
    info->set_device(reg.device());
    info->set_memory_bytes(reg.memory_bytes());
    info->set_pid(reg.pid());
    info->set_host(reg.host());
    info->set_metrics_address(reg.metrics_address());
    if (pipeline_ == nullptr) continue;
    for (size_t i = 0; i < pipeline_->stages.size(); ++i) {
      const PipelineStage& s = pipeline_->stages[i];
      if (s.worker_id != reg.worker_id()) continue;
      if (w.alive()) info->set_state(v1::WORKER_STATE_READY);
      info->set_stage(static_cast<uint32_t>(i));
      info->mutable_layers()->set_begin(static_cast<uint32_t>(s.layers.begin));
      info->mutable_layers()->set_end(static_cast<uint32_t>(s.layers.end));
      info->set_kv_blocks_total(static_cast<uint64_t>(s.kv_blocks_total));
      if (i < stage_kv_blocks_.size()) info->set_kv_blocks_used(stage_kv_blocks_[i]);
      info->set_transport(pipeline_->transport);
      if (!s.device.empty()) info->set_device(s.device);
    }
  }
  response->set_max_context_tokens(static_cast<uint64_t>(model_->max_context));
  response->set_free_kv_tokens(
      static_cast<uint64_t>(pipeline_ != nullptr ? admission_.free_tokens() : 0));
  response->set_pipeline_epoch(pipeline_ != nullptr ? pipeline_->epoch : 0);
  response->set_ready(pipeline_ != nullptr);
}

void Scheduler::UpdateGauges() {
  metrics_->running.Set(static_cast<double>(running_.size()));
  metrics_->waiting.Set(static_cast<double>(waiting_.size()));
  metrics_->kv_budget_total.Set(
      static_cast<double>(pipeline_ != nullptr ? admission_.total_tokens() : 0));
  metrics_->kv_budget_free.Set(
      static_cast<double>(pipeline_ != nullptr ? admission_.free_tokens() : 0));
  metrics_->pipeline_ready.Set(pipeline_ != nullptr ? 1 : 0);
  metrics_->pipeline_epoch.Set(static_cast<double>(pipeline_ != nullptr ? pipeline_->epoch : 0));
}

void Scheduler::OnStepDone(StepCall& call) {
  Actions after;
  {
    absl::MutexLock lock(&mu_);
    wake_ = true;
    if (pipeline_ == nullptr || call.pipeline().epoch != pipeline_->epoch) return;
    --inflight_;
    const v1::RunChunkRequest& step = call.request();
    steps_.erase(step.step());
    last_step_end_ = absl::Now();
    if (GetLogLevel() <= LogLevel::kDebug) {
      std::string stages;
      for (size_t i = 0; i < call.responses().size(); ++i) {
        const v1::RunChunkResponse& s = call.responses()[i];
        absl::StrAppend(&stages, i ? ", " : "", "stage ", i, " wait ", s.wait_seconds(),
                        " s forward ", s.forward_seconds(), " s");
      }
      MP_LOG(Debug) << "step " << step.step() << " (request id " << step.request_id() << ", chunk "
                    << step.chunk_index() << ") came back after "
                    << absl::FormatDuration(absl::Now() - call.start_time()) << ": "
                    << (call.status().ok() ? stages : call.status().ToString());
    }
    auto found = requests_.find(step.request_id());
    Request* r = found == requests_.end() ? nullptr : found->second.get();
    if (r != nullptr) --r->inflight;
    const bool live = r != nullptr && r->state != State::kDone && r->epoch == pipeline_->epoch;

    if (!call.status().ok()) {
      const absl::Status& s = call.status();
      // Steps of a released request come back CANCELLED from the stages: expected.
      if (!live && absl::IsCancelled(s)) return;
      if (PipelineLevel(s)) {
        BreakPipeline(call.failure(), &after);
      } else if (live) {
        const PipelineStage& st = call.pipeline().stages[call.failure().stage];
        const absl::StatusCode code =
            absl::IsResourceExhausted(s) || absl::IsUnimplemented(s) || absl::IsInvalidArgument(s)
                ? s.code()
                : absl::StatusCode::kInternal;
        Finish(*r,
               absl::Status(code, absl::StrCat("stage ", call.failure().stage, " (worker ",
                                               st.worker_id, "): ", s.message())),
               &after);
      }
    } else {
      const auto& responses = call.responses();
      double slowest = 0;
      for (size_t i = 0; i < responses.size(); ++i) {
        slowest = std::max(slowest, responses[i].forward_seconds());
        metrics_->StageStep(static_cast<int>(i), responses[i].forward_seconds(),
                            responses[i].wait_seconds(),
                            static_cast<double>(responses[i].kv_blocks_used()));
        if (i < stage_kv_blocks_.size()) stage_kv_blocks_[i] = responses[i].kv_blocks_used();
      }
      const bool prefill = step.kind() != v1::CHUNK_KIND_DECODE;
      if (prefill) {
        planner_.Observe(static_cast<int64_t>(step.start()), step.num_tokens(), slowest);
        metrics_->planner_target_seconds.Set(planner_.TargetSeconds());
      }
      if (live && prefill) {
        const int64_t total = static_cast<int64_t>(r->params.prompt.size());
        // Every stage runs steps in step order, so this chunk finishing everywhere means the
        // earlier ones have too (their answers may still be on their way): report them all, in
        // chunk order.
        while (r->chunks <= step.chunk_index() && r->chunks < r->chunk_ranges.size()) {
          const auto [start, end] = r->chunk_ranges[r->chunks];
          r->done = std::max(r->done, end);
          v1::GenerateEvent ev;
          v1::Progress* p = ev.mutable_progress();
          p->set_tokens_done(static_cast<uint64_t>(r->done));
          p->set_tokens_total(static_cast<uint64_t>(total));
          p->set_chunk_index(r->chunks);
          p->set_chunk_start(static_cast<uint64_t>(start));
          p->set_chunk_end(static_cast<uint64_t>(end));
          p->set_elapsed_seconds(Seconds(r->accepted, absl::Now()));
          r->events->Push(std::move(ev));
          ++r->chunks;
        }
        if (r->done == total && r->prefill_done == absl::InfinitePast()) {
          r->prefill_done = absl::Now();
          const double seconds = Seconds(r->started, r->prefill_done);
          metrics_->prefill_time.Observe(seconds);
          metrics_->prompt_tokens.Increment(static_cast<double>(total));
          if (seconds > 0) metrics_->prefill_tokens_per_second.Set(total / seconds);
          if (!r->wants_token()) {
            r->stop_reason = v1::STOP_REASON_PREFILL_ONLY;
            Finish(*r, absl::OkStatus(), &after);
            r = nullptr;
          }
        }
      }
      if (r != nullptr && live && step.kind() != v1::CHUNK_KIND_PREFILL) {
        HandleToken(*r, responses.back().token_id(), responses.back(), &after);
      }
    }
  }
  Run(after);
}

void Scheduler::HandleToken(Request& r, int32_t token, const v1::RunChunkResponse& last,
                            Actions* after) {
  const absl::Time now = absl::Now();
  r.generated.push_back(token);
  r.last_token = now;
  std::string piece;
  if (r.decoder != nullptr) {
    absl::StatusOr<std::string> s = r.decoder->Add(token);
    if (s.ok()) piece = *std::move(s);
  }
  r.text += piece;
  metrics_->generation_tokens.Increment();
  v1::GenerateEvent ev;
  if (r.generated.size() == 1) {
    r.first_token = now;
    const double ttft = Seconds(r.accepted, now);
    metrics_->ttft.Observe(ttft);
    v1::FirstToken* f = ev.mutable_first_token();
    f->set_token_id(token);
    f->set_text(piece);
    f->set_ttft_seconds(ttft);
    if (r.params.return_logits) *f->mutable_logits() = last.logits();
  } else {
    v1::Tokens* t = ev.mutable_tokens();
    t->add_token_ids(token);
    t->set_text(piece);
    if (r.params.return_logits) *t->add_logits() = last.logits();
  }
  r.events->Push(std::move(ev));
  const auto& stops = r.params.stop_token_ids;
  if (r.params.prefill_only) {
    r.stop_reason = v1::STOP_REASON_PREFILL_ONLY;
  } else if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
    r.stop_reason = v1::STOP_REASON_STOP_TOKEN;
  } else if (static_cast<int64_t>(r.generated.size()) >= r.params.max_new_tokens) {
    r.stop_reason = v1::STOP_REASON_MAX_NEW_TOKENS;
  } else {
    r.state = State::kDecoding;
    r.decode_ready = true;
    return;
  }
  Finish(r, absl::OkStatus(), after);
}

void Scheduler::Finish(Request& r, absl::Status status, Actions* after) {
  if (r.state == State::kDone) return;
  r.state = State::kDone;
  if (r.last_token == absl::InfinitePast()) r.last_token = absl::Now();
  if (status.ok()) {
    if (r.decoder != nullptr) r.text += r.decoder->Flush();
    v1::GenerateEvent ev;
    v1::Completed* c = ev.mutable_completed();
    c->set_request_id(r.params.name);
    c->set_stop_reason(r.stop_reason);
    c->set_prompt_tokens(static_cast<uint32_t>(r.params.prompt.size()));
    c->set_generated_tokens(static_cast<uint32_t>(r.generated.size()));
    *c->mutable_timings() = Timings(r);
    c->mutable_token_ids()->Assign(r.generated.begin(), r.generated.end());
    c->set_text(r.text);
    r.events->Push(std::move(ev));
    metrics_->completed.Increment();
  } else if (absl::IsCancelled(status)) {
    metrics_->Cancelled("client");
  } else if (absl::IsDeadlineExceeded(status)) {
    metrics_->Cancelled("deadline");
  } else {
    metrics_->Failed(CodeName(status.code()));
  }
  r.events->Close(status);
  Remember(r, status);
  if (!status.ok()) {
    MP_LOG(Info) << "request " << r.params.name << " ended: " << status;
  }
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), r.id), waiting_.end());
  running_.erase(std::remove(running_.begin(), running_.end(), r.id), running_.end());
  by_name_.erase(r.params.name);
  if (r.reserved) {
    if (pipeline_ != nullptr && r.epoch == pipeline_->epoch && !stop_) {
      // The budget returns once every stage has freed the request's KV.
      std::weak_ptr<Scheduler> weak = weak_from_this();
      std::shared_ptr<const Pipeline> p = pipeline_;
      const uint64_t id = r.id, epoch = r.epoch;
      after->push_back([weak, p, id, epoch] {
        ReleaseOnAllStages(p, id, [weak, id, epoch] {
          std::shared_ptr<Scheduler> self = weak.lock();
          if (self == nullptr) return;
          absl::MutexLock lock(&self->mu_);
          if (self->pipeline_ != nullptr && self->pipeline_->epoch == epoch) {
            self->admission_.Free(id);
          }
          self->wake_ = true;
        });
      });
    } else {
      admission_.Free(r.id);
    }
  }
  requests_.erase(r.id);  // `r` is gone from here on
  UpdateGauges();
}

}  // namespace mp
