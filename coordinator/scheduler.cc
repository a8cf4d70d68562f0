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

double Seconds(absl::Time from, absl::Time to) {
  if (from == absl::InfinitePast() || to == absl::InfinitePast() || to < from) return 0;
  return absl::ToDoubleSeconds(to - from);
}

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

std::shared_ptr<Scheduler> Scheduler::Create(const CoordinatorOptions& options,
                                             const ModelInfo* model, Membership* membership,
                                             CoordinatorMetrics* metrics,
                                             std::function<void(bool)> on_ready) {
  return std::shared_ptr<Scheduler>(
      new Scheduler(options, model, membership, metrics, std::move(on_ready)));
}

Scheduler::Scheduler(const CoordinatorOptions& options, const ModelInfo* model,
                     Membership* membership, CoordinatorMetrics* metrics,
                     std::function<void(bool)> on_ready)
    : options_(options),
      model_(model),
      membership_(membership),
      metrics_(metrics),
      on_ready_(std::move(on_ready)),
      planner_(options.planner) {}

Scheduler::~Scheduler() { Stop(absl::UnavailableError("the coordinator is shutting down")); }

void Scheduler::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void Scheduler::Run(Actions& actions) {
  for (auto& fn : actions) fn();
  actions.clear();
}

void Scheduler::Background(std::function<void()> fn) {
  absl::MutexLock lock(&background_mu_);
  background_.emplace_back(std::move(fn));
}

void Scheduler::Wake() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void Scheduler::StopAccepting() {
  absl::MutexLock lock(&mu_);
  accepting_ = false;
}

int Scheduler::active_requests() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(requests_.size());
}

void Scheduler::Stop(const absl::Status& why) {
  Actions after;
  std::shared_ptr<Pipeline> pipeline;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    stop_ = true;
    accepting_ = false;
    std::vector<uint64_t> ids;
    for (const auto& [id, r] : requests_) ids.push_back(id);
    for (uint64_t id : ids) Finish(*requests_[id], why, &after);
    pipeline.swap(pipeline_);
  }
  Run(after);
  if (pipeline != nullptr) AbortPipeline(*pipeline, std::string(why.message()), absl::Seconds(3));
  if (thread_.joinable()) thread_.join();
  std::vector<std::thread> background;
  {
    absl::MutexLock lock(&background_mu_);
    background.swap(background_);
  }
  for (std::thread& t : background) t.join();
}

// ---- submission and queries -------------------------------------------------------------------

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

// ---- the dispatcher -------------------------------------------------------------------------

void Scheduler::Loop() {
  while (true) {
    Actions after;
    std::optional<BuildPlan> plan;
    {
      absl::MutexLock lock(&mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wake_ || stop_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), absl::Milliseconds(50));
      wake_ = false;
      if (stop_) return;
      CheckDeadlines(&after);
      CheckPipeline(&after);
      if (pipeline_ == nullptr) {
        plan = PlanBuild();
      } else {
        Admit(&after);
        while (IssueOne(&after)) {
        }
      }
      UpdateGauges();
    }
    Run(after);
    if (plan.has_value()) DoBuild(*std::move(plan));
  }
}

void Scheduler::CheckDeadlines(Actions* after) {
  std::vector<uint64_t> expired;
  for (const auto& [id, r] : requests_) {
    if (r->token->IsCancelled()) expired.push_back(id);
  }
  for (uint64_t id : expired) {
    Request& r = *requests_[id];
    Finish(r, r.token->status(), after);
  }
}

void Scheduler::CheckPipeline(Actions* after) {
  if (pipeline_ == nullptr) return;
  const std::vector<WorkerRecord> all = membership_->All();
  bool draining = false;
  for (size_t i = 0; i < pipeline_->stages.size(); ++i) {
    const std::string& id = pipeline_->stages[i].worker_id;
    auto it = std::find_if(all.begin(), all.end(),
                           [&](const WorkerRecord& w) { return w.registration.worker_id() == id; });
    if (it == all.end() || it->state == v1::WORKER_STATE_DOWN) {
      StageFailure f;
      f.stage = static_cast<int>(i);
      f.worker_id = id;
      f.status = absl::UnavailableError(
          it == all.end() ? "the worker was replaced"
                          : absl::StrCat("the worker failed its health checks: ", it->last_error));
      BreakPipeline(f, after);
      return;
    }
    if (it->state == v1::WORKER_STATE_DRAINING) draining = true;
  }
  draining_ = draining;
  if (draining) {
    if (running_.empty()) TearDown("a stage's worker is draining", after);
    return;
  }
  const size_t stages = pipeline_->stages.size();
  if (options_.num_stages > 0 && stages < static_cast<size_t>(options_.num_stages) &&
      running_.empty() && waiting_.empty() &&
      membership_->LiveWorkers().size() >= static_cast<size_t>(options_.num_stages)) {
    TearDown("enough workers are back for the full pipeline", after);
  }
}

std::optional<Scheduler::BuildPlan> Scheduler::PlanBuild() {
  const absl::Time now = absl::Now();
  if (now < next_build_) return std::nullopt;
  std::vector<WorkerRecord> live = membership_->LiveWorkers();
  if (live.empty()) return std::nullopt;
  const size_t target = options_.num_stages > 0 ? static_cast<size_t>(options_.num_stages) : 0;
  size_t want = 0, min_workers = 1;
  if (target > 0) {
    if (live.size() >= target) {
      want = min_workers = target;
    } else if (ever_built_ && now - broken_at_ >= options_.rebuild_wait) {
      want = live.size();  // the surviving workers
    } else {
      return std::nullopt;
    }
  } else {
    // Every registered worker, once registrations have settled.
    if (now - membership_->last_change() < options_.rebuild_wait) return std::nullopt;
    want = live.size();
  }
  want = std::min<size_t>(want, static_cast<size_t>(model_->config.num_hidden_layers));
  BuildPlan plan;
  plan.workers.assign(live.begin(), live.end());
  plan.min_workers = std::min(min_workers, want);
  plan.spec.config = model_->config;
  plan.spec.source = model_->source;
  plan.spec.device = options_.device;
  plan.spec.transport.set_kind(options_.transport);
  if (!options_.ucx_transports.empty()) {
    (*plan.spec.transport.mutable_options())["ucx_transports"] = options_.ucx_transports;
  }
  if (!options_.ucx_net_devices.empty()) {
    (*plan.spec.transport.mutable_options())["ucx_net_devices"] = options_.ucx_net_devices;
  }
  plan.spec.kv_tokens = options_.kv_tokens;
  plan.spec.default_kv_tokens = 2 * model_->max_context;
  plan.spec.min_kv_tokens = model_->max_context;
  plan.spec.kv_block_tokens = options_.kv_block_tokens;
  plan.spec.max_chunk = options_.planner.max_chunk;
  plan.spec.load_timeout = options_.load_timeout;
  // Epochs are unique across coordinator restarts: microseconds since 1970.
  plan.epoch = std::max<uint64_t>(last_epoch_ + 1, static_cast<uint64_t>(absl::ToUnixMicros(now)));
  last_epoch_ = plan.epoch;
  next_build_ = now + absl::Milliseconds(500);
  // Only `want` workers take part; the probe below may drop some.
  plan.workers.resize(std::max(want, plan.min_workers));
  return plan;
}

void Scheduler::DoBuild(BuildPlan plan) {
  std::vector<std::string> ids;
  for (const WorkerRecord& w : plan.workers) ids.push_back(w.registration.worker_id());
  const std::vector<std::string> alive = membership_->Probe(ids, absl::Seconds(2));
  std::vector<WorkerRecord> workers;
  for (const WorkerRecord& w : plan.workers) {
    if (std::find(alive.begin(), alive.end(), w.registration.worker_id()) != alive.end()) {
      workers.push_back(w);
    }
  }
  if (workers.size() < plan.min_workers || workers.empty()) return;  // try again later
  StageFailure failure;
  MP_LOG(Info) << "building pipeline epoch " << plan.epoch << " on " << workers.size()
               << " workers";
  absl::StatusOr<std::shared_ptr<Pipeline>> built =
      BuildPipeline(workers, plan.spec, plan.epoch, &failure);
  Actions after;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) {
      if (built.ok()) {
        std::shared_ptr<Pipeline> p = *built;
        after.push_back(
            [p] { AbortPipeline(*p, "the coordinator is stopping", absl::Seconds(2)); });
      }
    } else if (!built.ok()) {
      build_error_ = std::string(built.status().message());
      const bool transient =
          absl::IsUnavailable(built.status()) || absl::IsDeadlineExceeded(built.status());
      next_build_ = absl::Now() + (transient ? absl::Seconds(1) : absl::Seconds(5));
      MP_LOG(Warning) << "pipeline epoch " << plan.epoch << " failed: " << built.status();
      if (transient && !failure.worker_id.empty()) {
        const std::string id = failure.worker_id;
        const std::string why = build_error_;
        after.push_back([this, id, why] { membership_->MarkDown(id, why); });
      }
    } else {
      pipeline_ = *built;
      draining_ = false;
      ever_built_ = true;
      build_error_.clear();
      next_step_ = 1;
      inflight_ = 0;
      admission_.Reset(pipeline_->blocks_total, pipeline_->block_tokens);
      stage_kv_blocks_.assign(pipeline_->stages.size(), 0);
      metrics_->pipeline_rebuilds.Increment();
      MP_LOG(Info) << "pipeline epoch " << pipeline_->epoch << " ready: " << pipeline_->description
                   << "; KV for " << admission_.total_tokens() << " tokens per stage";
      after.push_back([this] {
        if (on_ready_) on_ready_(true);
      });
      wake_ = true;
      UpdateGauges();
    }
  }
  Run(after);
}

void Scheduler::TearDown(const std::string& why, Actions* after) {
  std::shared_ptr<Pipeline> p;
  p.swap(pipeline_);
  if (p == nullptr) return;
  MP_LOG(Info) << "pipeline epoch " << p->epoch << " taken down: " << why;
  broken_at_ = absl::InfinitePast();  // a planned rebuild: no need to wait
  admission_.Reset(0, 0);
  after->push_back([this, p, why] {
    if (on_ready_) on_ready_(false);
    Background([p, why] { AbortPipeline(*p, why, absl::Seconds(3)); });
  });
}

void Scheduler::BreakPipeline(const StageFailure& failure, Actions* after) {
  std::shared_ptr<Pipeline> p;
  p.swap(pipeline_);
  if (p == nullptr) return;
  const PipelineStage* stage =
      failure.stage >= 0 && failure.stage < static_cast<int>(p->stages.size())
          ? &p->stages[failure.stage]
          : nullptr;
  const std::string reason =
      stage != nullptr
          ? absl::StrCat("pipeline stage ", failure.stage, " (worker ", stage->worker_id, " at ",
                         stage->address, ") failed: ", failure.status.message())
          : absl::StrCat("the pipeline failed: ", failure.status.message());
  MP_LOG(Warning) << reason << "; failing its requests and rebuilding";
  broken_at_ = absl::Now();
  next_build_ = absl::Now() + absl::Milliseconds(200);
  // Requests that ran on the pipeline fail; admitted ones that had not started wait again.
  std::vector<uint64_t> ids(running_.begin(), running_.end());
  std::vector<uint64_t> requeue;
  for (uint64_t id : ids) {
    Request& r = *requests_[id];
    if (r.next_chunk == 0) {
      requeue.push_back(id);
      continue;
    }
    Finish(r, absl::UnavailableError(absl::StrCat(reason, "; the request's KV is lost")), after);
  }
  for (auto it = requeue.rbegin(); it != requeue.rend(); ++it) {
    Request& r = *requests_[*it];
    r.state = State::kQueued;
    r.reserved = false;
    r.epoch = 0;
    running_.erase(std::remove(running_.begin(), running_.end(), r.id), running_.end());
    waiting_.push_front(r.id);
  }
  admission_.Reset(0, 0);
  const std::string worker = failure.worker_id;
  after->push_back([this, p, reason, worker] {
    if (on_ready_) on_ready_(false);
    Background([this, p, reason, worker] {
      AbortPipeline(*p, reason, absl::Seconds(3));
      if (!worker.empty()) membership_->Probe({worker}, absl::Seconds(1));
      Wake();
    });
  });
}

void Scheduler::Admit(Actions* after) {
  // A pipeline with a draining stage takes no new requests; it is rebuilt once it is idle.
  if (pipeline_ == nullptr || draining_) return;
  while (!waiting_.empty()) {
    Request& r = *requests_[waiting_.front()];
    const int64_t prompt = static_cast<int64_t>(r.params.prompt.size());
    absl::Status fits =
        admission_.CheckCapacity(prompt, r.params.prefill_only ? 1 : r.params.max_new_tokens);
    if (!fits.ok()) {
      Finish(r, fits, after);
      continue;
    }
    if (!admission_.TryReserve(r.id, r.kv_tokens)) break;
    r.reserved = true;
    r.epoch = pipeline_->epoch;
    r.state = State::kPrefilling;
    waiting_.pop_front();
    running_.push_back(r.id);
  }
}

bool Scheduler::IssueOne(Actions* after) {
  const int cap = options_.max_inflight > 0 ? options_.max_inflight
                                            : static_cast<int>(pipeline_->stages.size()) + 1;
  if (inflight_ >= cap) return false;
  auto runnable = [&](const Request& r) {
    return (r.state == State::kPrefilling &&
            r.issued < static_cast<int64_t>(r.params.prompt.size())) ||
           (r.state == State::kDecoding && r.decode_ready);
  };
  std::optional<int32_t> best;
  for (uint64_t id : running_) {
    const Request& r = *requests_[id];
    if (runnable(r) && (!best || r.params.priority > *best)) best = r.params.priority;
  }
  if (!best) return false;
  auto it = std::find_if(running_.begin(), running_.end(), [&](uint64_t id) {
    const Request& r = *requests_[id];
    return runnable(r) && r.params.priority == *best;
  });
  const uint64_t id = *it;
  running_.erase(it);
  running_.push_back(id);  // round robin: its next turn comes after the others
  Request& r = *requests_[id];

  v1::RunChunkRequest step;
  step.set_pipeline_epoch(pipeline_->epoch);
  step.set_request_id(r.id);
  step.set_chunk_index(r.next_chunk++);
  step.set_prompt_tokens(r.params.prompt.size());
  *step.mutable_sampling() = r.params.sampling;
  step.set_return_logits(r.params.return_logits);
  step.set_step(next_step_++);
  if (step.chunk_index() == 0) {
    step.set_reserve_tokens(static_cast<uint64_t>(r.kv_tokens));
    r.started = absl::Now();
    metrics_->queue_time.Observe(Seconds(r.accepted, r.started));
  }
  std::vector<int32_t> ids;
  if (r.state == State::kPrefilling) {
    const int64_t total = static_cast<int64_t>(r.params.prompt.size());
    const int64_t n = planner_.NextChunk(r.issued, total - r.issued);
    const bool last = r.issued + n == total;
    step.set_kind(last && r.wants_token() ? v1::CHUNK_KIND_PREFILL_LAST : v1::CHUNK_KIND_PREFILL);
    step.set_start(static_cast<uint64_t>(r.issued));
    step.set_num_tokens(static_cast<uint32_t>(n));
    ids.assign(r.params.prompt.begin() + r.issued, r.params.prompt.begin() + r.issued + n);
    r.chunk_ranges.emplace_back(r.issued, r.issued + n);
    r.issued += n;
    metrics_->ChunkTokens(ChunkModeName(options_.planner.mode)).Observe(static_cast<double>(n));
  } else {
    step.set_kind(v1::CHUNK_KIND_DECODE);
    step.set_start(r.params.prompt.size() + r.generated.size() - 1);
    step.set_num_tokens(1);
    ids.push_back(r.generated.back());
    r.decode_ready = false;
  }
  ++r.inflight;
  ++inflight_;
  std::weak_ptr<Scheduler> weak = weak_from_this();
  std::shared_ptr<const Pipeline> p = pipeline_;
  const absl::Duration timeout = options_.step_timeout;
  after->push_back([weak, p, step = std::move(step), ids = std::move(ids), timeout]() mutable {
    StepCall::Start(p, std::move(step), std::move(ids), timeout, [weak](StepCall& call) {
      if (std::shared_ptr<Scheduler> self = weak.lock()) self->OnStepDone(call);
    });
  });
  return true;
}

// ---- step results -------------------------------------------------------------------------

void Scheduler::OnStepDone(StepCall& call) {
  Actions after;
  {
    absl::MutexLock lock(&mu_);
    wake_ = true;
    if (pipeline_ == nullptr || call.pipeline().epoch != pipeline_->epoch) return;
    --inflight_;
    const v1::RunChunkRequest& step = call.request();
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
