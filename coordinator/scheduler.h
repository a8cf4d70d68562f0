// Scheduler: the coordinator's pipeline driver.
//
// It owns the current pipeline (building it from the live workers, rebuilding it after a stage
// is lost), admits requests by KV budget, plans prefill chunks, issues steps — several in
// flight, interleaving requests chunk by chunk so that a short request is not stuck behind a
// long prefill — and turns the stages' answers into events for each request's client.
//
// One dispatcher thread issues every step in step order; step results arrive on gRPC callback
// threads. All state is under one mutex; RPCs are started only with the mutex released.
//
// Order among runnable requests: higher priority first; equal priorities round-robin, one step
// per turn. A request's prefill chunks may all be in flight at once (the stages run them in
// order); its decode steps go one at a time (each needs the token before it).
//
// Failures: a step failing for its request (bad input, KV exhausted on a stage) fails that
// request; a stage lost (RPC or transfer failure) or stalled (the oldest step in flight past its
// no-progress bound, stall_watchdog.h) breaks the pipeline: every running request fails with
// UNAVAILABLE, waiting requests stay queued, the pipeline is rebuilt from the workers that still
// answer (waiting up to rebuild_wait for the full stage count). Cancellation and
// deadlines release the request's KV on every stage right away; steps still in flight pass
// through the stages without computing.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/cancel.h"
#include "coordinator/admission.h"
#include "coordinator/chunk_planner.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/coordinator_options.h"
#include "coordinator/event_queue.h"
#include "coordinator/membership.h"
#include "coordinator/model_info.h"
#include "coordinator/pipeline.h"
#include "millipede/v1/coordinator.pb.h"
#include "model/tokenizer.h"

namespace mp {

// A validated request, ready to be queued.
struct RequestParams {
  std::string name;  // the client's request_id, or "" to have one assigned
  std::vector<int32_t> prompt;
  bool text_prompt = false;  // stream detokenized text
  int64_t max_new_tokens = 0;
  bool prefill_only = false;  // the Prefill RPC: stop after the first token
  millipede::v1::SamplingParams sampling;
  std::vector<int32_t> stop_token_ids;  // complete set (the model's end tokens included)
  bool return_logits = false;
  int32_t priority = 0;
  absl::Time deadline = absl::InfiniteFuture();
};

struct RequestHandle {
  uint64_t id = 0;
  std::string name;
  std::shared_ptr<EventQueue> events;
};

class Scheduler : public std::enable_shared_from_this<Scheduler> {
 public:
  // `model`, `membership` and `metrics` must outlive the scheduler. `on_ready(bool)` runs
  // whenever the pipeline starts or stops taking requests.
  static std::shared_ptr<Scheduler> Create(const CoordinatorOptions& options,
                                           const ModelInfo* model, Membership* membership,
                                           CoordinatorMetrics* metrics,
                                           std::function<void(bool)> on_ready);
  ~Scheduler();

  void Start();
  // Fails every request with `why`, aborts the pipeline, ends the dispatcher.
  void Stop(const absl::Status& why);
  // Rejects new requests with UNAVAILABLE from now on.
  void StopAccepting() ABSL_LOCKS_EXCLUDED(mu_);
  int active_requests() const;

  // Queues a request: its Accepted event is already in the returned queue. RESOURCE_EXHAUSTED
  // when it can never fit the KV budget or the queue is full (saying what would fit),
  // ALREADY_EXISTS for a live request_id, UNAVAILABLE when no pipeline can be built.
  absl::StatusOr<RequestHandle> Submit(RequestParams params);
  // Stops a request (queued or running) with `why`. False when it is not live.
  bool Cancel(const std::string& name, const absl::Status& why);
  absl::StatusOr<millipede::v1::RequestInfo> GetRequest(const std::string& name) const;
  void ListWorkers(millipede::v1::ListWorkersResponse* response) const;
  // Wakes the dispatcher (membership changed).
  void Wake();

 private:
  enum class State { kQueued, kPrefilling, kDecoding, kDone };
  struct Request {
    uint64_t id = 0;
    RequestParams params;
    std::shared_ptr<EventQueue> events;
    std::unique_ptr<CancelToken> token;
    State state = State::kQueued;
    uint64_t arrival = 0;
    uint64_t epoch = 0;     // the pipeline it holds KV on (0: none)
    bool reserved = false;  // holds KV budget
    int64_t kv_tokens = 0;  // KV it needs
    int64_t issued = 0;     // prompt tokens sent as chunks
    int64_t done = 0;       // prompt tokens finished on the last stage
    uint32_t next_chunk = 0;
    int inflight = 0;
    bool decode_ready = false;  // a generated token waits to be fed back
    std::vector<int32_t> generated;
    std::string text;
    std::unique_ptr<StreamingDecoder> decoder;
    absl::Time accepted, started, prefill_done, first_token, last_token;
    uint32_t chunks = 0;  // prefill chunks reported (Progress events sent)
    // Token range of every prefill chunk issued, by chunk index.
    std::vector<std::pair<int64_t, int64_t>> chunk_ranges;
    millipede::v1::StopReason stop_reason = millipede::v1::STOP_REASON_UNSPECIFIED;
    bool wants_token() const { return params.prefill_only || params.max_new_tokens > 0; }
  };
  using Actions = std::vector<std::function<void()>>;
  // A step of the current pipeline that has not come back yet.
  struct InflightStep {
    std::string request;  // the request's name
    uint32_t chunk = 0;
    millipede::v1::ChunkKind kind = millipede::v1::CHUNK_KIND_UNSPECIFIED;
    int64_t start = 0;  // first token position
    int64_t tokens = 0;
    absl::Time issued;
    std::shared_ptr<StepCall> call;  // null until the call has started
    bool warned = false;             // its slow-progress warning was logged
  };

  Scheduler(const CoordinatorOptions& options, const ModelInfo* model, Membership* membership,
            CoordinatorMetrics* metrics, std::function<void(bool)> on_ready);
  // What a pipeline build needs, decided under the lock and run without it.
  struct BuildPlan {
    std::vector<WorkerRecord> workers;
    size_t min_workers = 1;  // fewer answering workers: try again later
    PipelineSpec spec;
    uint64_t epoch = 0;
  };

  void Loop();
  // A build plan when there is no pipeline and the workers allow one.
  std::optional<BuildPlan> PlanBuild() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Probes the workers, builds the pipeline and installs it (takes the mutex itself).
  void DoBuild(BuildPlan plan) ABSL_LOCKS_EXCLUDED(mu_);
  // Breaks or tears down the pipeline when a stage is down or draining, or when it can grow.
  void CheckPipeline(Actions* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Background(std::function<void()> fn) ABSL_LOCKS_EXCLUDED(mu_);
  void CheckDeadlines(Actions* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Admit(Actions* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Picks the next runnable request and prepares its step; false when none can run now.
  bool IssueOne(Actions* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnStepDone(StepCall& call) ABSL_LOCKS_EXCLUDED(mu_);
  // Attaches the started call to its in-flight step (when that is still of pipeline `epoch`).
  void TrackCall(uint64_t epoch, uint64_t step, std::shared_ptr<StepCall> call)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The stall watchdog: breaks the pipeline when its oldest step is past its bound.
  void CheckStalls(Actions* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets the steps in flight (the pipeline changed).
  void ResetSteps() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleToken(Request& r, int32_t token, const millipede::v1::RunChunkResponse& last,
                   Actions* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends a request with `status` (OK: Completed) and releases its KV.
  void Finish(Request& r, absl::Status status, Actions* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BreakPipeline(const StageFailure& failure, Actions* after)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TearDown(const std::string& why, Actions* after) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  millipede::v1::RequestInfo Info(const Request& r) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  millipede::v1::Timings Timings(const Request& r) const;
  void Remember(const Request& r, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void Run(Actions& actions);
  // "prefill chunk 2, tokens [128, 192)" / "decode step 7 at position 130"
  static std::string StepName(const InflightStep& step);
  // Seconds from `from` to `to` (0 when either is unset or `to` is earlier).
  static double Seconds(absl::Time from, absl::Time to);

  const CoordinatorOptions options_;
  const ModelInfo* const model_;
  Membership* const membership_;
  CoordinatorMetrics* const metrics_;
  const std::function<void(bool)> on_ready_;
  std::thread thread_;
  absl::Mutex background_mu_;
  std::vector<std::thread> background_ ABSL_GUARDED_BY(background_mu_);

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<Pipeline> pipeline_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;  // a stage of pipeline_ is draining
  bool ever_built_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time broken_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time next_build_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::string build_error_ ABSL_GUARDED_BY(mu_);
  uint64_t last_epoch_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_step_ ABSL_GUARDED_BY(mu_) = 1;
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, InflightStep> steps_ ABSL_GUARDED_BY(mu_);  // by step number
  // When the last step of the pipeline came back (or the pipeline was installed).
  absl::Time last_step_end_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  KvAdmission admission_ ABSL_GUARDED_BY(mu_);
  ChunkPlanner planner_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_arrival_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, std::unique_ptr<Request>> requests_ ABSL_GUARDED_BY(mu_);  // live ones
  absl::flat_hash_map<std::string, uint64_t> by_name_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> waiting_ ABSL_GUARDED_BY(mu_);  // admission order
  std::deque<uint64_t> running_ ABSL_GUARDED_BY(mu_);  // round-robin order
  std::vector<uint64_t> stage_kv_blocks_ ABSL_GUARDED_BY(mu_);
  // Finished requests for GetRequest, oldest first.
  std::deque<std::pair<absl::Time, millipede::v1::RequestInfo>> finished_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, size_t> finished_index_ ABSL_GUARDED_BY(mu_);
  uint64_t finished_base_ ABSL_GUARDED_BY(mu_) = 0;  // index of finished_.front()
};

}  // namespace mp
