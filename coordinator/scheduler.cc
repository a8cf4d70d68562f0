// The dispatcher and the pipeline's life: building, checking, breaking and tearing it down,
// admitting requests and issuing their steps. Requests' results and queries are in
// scheduler_requests.cc.
#include "coordinator/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace mp {

namespace v1 = millipede::v1;

double Scheduler::Seconds(absl::Time from, absl::Time to) {
  if (from == absl::InfinitePast() || to == absl::InfinitePast() || to < from) return 0;
  return absl::ToDoubleSeconds(to - from);
}

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
      CheckStalls(&after);
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
  plan.spec.max_context = model_->max_context;
  plan.spec.sparse_workspace_per_layer = model_->sparse_workspace_per_layer;
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
      ResetSteps();
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
  ResetSteps();
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
  ResetSteps();
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
  InflightStep& tracked = steps_[step.step()];
  tracked.request = r.params.name;
  tracked.chunk = step.chunk_index();
  tracked.kind = step.kind();
  tracked.start = static_cast<int64_t>(step.start());
  tracked.tokens = step.num_tokens();
  tracked.issued = absl::Now();
  MP_LOG(Debug) << "issuing step " << step.step() << ": request " << r.params.name << ", "
                << StepName(tracked) << " (" << inflight_ << " in flight)";
  std::weak_ptr<Scheduler> weak = weak_from_this();
  std::shared_ptr<const Pipeline> p = pipeline_;
  const absl::Duration timeout = options_.step_timeout;
  after->push_back([weak, p, step = std::move(step), ids = std::move(ids), timeout]() mutable {
    const uint64_t number = step.step();
    std::shared_ptr<StepCall> call =
        StepCall::Start(p, std::move(step), std::move(ids), timeout, [weak](StepCall& call) {
          if (std::shared_ptr<Scheduler> self = weak.lock()) self->OnStepDone(call);
        });
    if (std::shared_ptr<Scheduler> self = weak.lock()) {
      self->TrackCall(p->epoch, number, std::move(call));
    }
  });
  return true;
}

std::string Scheduler::StepName(const InflightStep& s) {
  if (s.kind == v1::CHUNK_KIND_DECODE) {
    return absl::StrCat("decode step ", s.chunk, " at position ", s.start);
  }
  return absl::StrCat("prefill chunk ", s.chunk, ", tokens [", s.start, ", ", s.start + s.tokens,
                      ")");
}

void Scheduler::ResetSteps() {
  steps_.clear();
  last_step_end_ = absl::Now();
}

void Scheduler::TrackCall(uint64_t epoch, uint64_t step, std::shared_ptr<StepCall> call) {
  absl::MutexLock lock(&mu_);
  if (pipeline_ == nullptr || pipeline_->epoch != epoch) return;
  auto it = steps_.find(step);
  if (it != steps_.end()) it->second.call = std::move(call);  // else: it came back already
}

void Scheduler::CheckStalls(Actions* after) {
  if (pipeline_ == nullptr || steps_.empty()) return;
  auto& [number, head] = *steps_.begin();
  if (head.call == nullptr) return;  // its RPCs are being started
  HeadStep h;
  h.since = std::max(head.issued, last_step_end_);
  h.predicted_seconds =
      planner_.model().Predict(head.start, head.kind == v1::CHUNK_KIND_DECODE ? 1 : head.tokens);
  h.stages = head.call->Answers();
  const std::optional<StageWait> wait = WaitingStage(h, options_.stall, absl::Now());
  if (!wait.has_value()) return;
  const std::string what = absl::StrCat("step ", number, " (request ", head.request, ", ",
                                        StepName(head), "): ", DescribeWait(*wait, options_.stall));
  if (wait->waited < wait->bound) {
    if (!head.warned && wait->waited >= wait->bound / 2) {
      head.warned = true;
      MP_LOG(Warning) << "slow pipeline: " << what;
    }
    return;
  }
  metrics_->pipeline_stalls.Increment();
  StageFailure f;
  f.stage = wait->stage;
  f.worker_id = pipeline_->stages[wait->stage].worker_id;
  f.status = absl::UnavailableError(
      absl::StrCat("no progress on ", what,
                   wait->stage > 0 ? absl::StrCat("; the activations from stage ", wait->stage - 1,
                                                  " never arrived or the stage hangs")
                                   : std::string("; the stage hangs")));
  BreakPipeline(f, after);
}

}  // namespace mp
