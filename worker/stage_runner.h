// StageRunner: runs the steps of one pipeline epoch on one stage, strictly in step order, on
// its own thread.
//
// A step is one chunk of one request (RunChunkRequest). Per step: the first stage takes the
// chunk's token ids, later stages receive their input activations from the previous stage; the
// stage runs its layers (StageExecutor::RunChunk), then sends its output to the next stage or,
// on the last stage, samples the next token for a prompt's last chunk and for decode steps.
// The first chunk of a request reserves the request's whole KV.
//
// Released requests (Release(): done, cancelled, failed) stop at the next step boundary: their
// KV is freed before the next step starts, and their steps still in flight pass through without
// computing (input received, a buffer forwarded), so that sends and receives stay paired in
// step order on every link. A step whose computation fails is answered with its error, but its
// transfers still happen for the same reason. A failed transfer breaks the pipeline: that step
// and all later ones fail with the transfer's error (UNAVAILABLE for a lost peer).
//
// Sampling matches the single-process engine: greedy at temperature 0, else top-p with a
// per-request std::mt19937_64 seeded by SamplingParams.seed, one draw per sampled token.
//
// Thread-safe: RunStep / Release / Stop may be called from any thread (gRPC handlers).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "millipede/v1/worker.pb.h"
#include "runtime/stage_executor.h"
#include "worker/activation_links.h"
#include "worker/worker_metrics.h"

namespace mp {

class StageRunner {
 public:
  // `executor` and `links` must outlive the runner; `metrics` may be null. Chunks hold at most
  // `max_rows` tokens.
  StageRunner(StageExecutor* executor, ActivationLinks* links, WorkerMetrics* metrics,
              int64_t max_rows);
  ~StageRunner();  // Stop()s

  void Start();
  // Returns true once the caller no longer waits for the step (its RPC was cancelled or is past
  // its deadline).
  using CallerGone = std::function<bool()>;

  // Queues the step and blocks until it has run. INVALID_ARGUMENT for a malformed step,
  // FAILED_PRECONDITION for a step number that already ran, ALREADY_EXISTS for one queued twice,
  // CANCELLED for a step of a released request, the stop reason after Stop(). When
  // `caller_gone` says so (checked every 100 ms) it returns CANCELLED at once; the step stays
  // queued and runs in its turn all the same, so that the links stay in step order.
  absl::StatusOr<millipede::v1::RunChunkResponse> RunStep(
      const millipede::v1::RunChunkRequest& request, const CallerGone& caller_gone = nullptr);
  // Marks the request released and waits (up to `timeout`) until its KV is freed at the next
  // step boundary. Returns whether the stage held KV for it.
  absl::StatusOr<bool> Release(uint64_t request, absl::Duration timeout);
  // Fails queued and future steps with `why`, ends the thread, frees every request's KV.
  void Stop(absl::Status why);

  int requests_held() const;
  uint64_t steps_done() const;
  // KV blocks held by all requests (updated at every step boundary).
  int64_t kv_blocks_in_use() const { return kv_blocks_in_use_.load(); }
  // No step queued or running.
  bool idle() const;

 private:
  struct Pending {
    millipede::v1::RunChunkRequest request;
    absl::StatusOr<millipede::v1::RunChunkResponse> result;
    bool done = false;
  };
  struct ReleaseOrder {
    uint64_t request = 0;
    bool done = false;
    bool held = false;
  };

  void Loop();
  absl::StatusOr<millipede::v1::RunChunkResponse> RunOne(const millipede::v1::RunChunkRequest& r,
                                                         bool pass_through);
  // Reserves (first chunk) and runs the chunk's layers; `out` gets the stage's output.
  absl::Status Compute(const millipede::v1::RunChunkRequest& r, const Tensor& input, Tensor* out);
  bool Aborted() const;
  // Frees the KV of every request in `releases` (step thread only).
  void ApplyReleases(const std::vector<std::shared_ptr<ReleaseOrder>>& releases);
  void UpdateKvMetrics();
  int32_t Sample(const millipede::v1::RunChunkRequest& r, const float* logits);
  absl::Status ValidateStep(const millipede::v1::RunChunkRequest& r) const;

  StageExecutor* const executor_;
  ActivationLinks* const links_;
  WorkerMetrics* const metrics_;
  const int64_t max_rows_;
  std::thread thread_;
  std::once_flag joined_;
  std::atomic<int64_t> kv_blocks_in_use_{0};

  mutable absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status stopped_ ABSL_GUARDED_BY(mu_);  // non-OK once stopped
  uint64_t next_step_ ABSL_GUARDED_BY(mu_) = 1;
  bool running_step_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, std::shared_ptr<Pending>> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<ReleaseOrder>> releases_ ABSL_GUARDED_BY(mu_);
  // Released request ids with the time of release (pruned after an hour).
  absl::flat_hash_map<uint64_t, absl::Time> released_ ABSL_GUARDED_BY(mu_);
  int requests_held_count_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t steps_done_ ABSL_GUARDED_BY(mu_) = 0;

  // Step thread only.
  absl::Status broken_;  // first transfer failure
  absl::flat_hash_set<uint64_t> held_;
  absl::flat_hash_map<uint64_t, std::mt19937_64> rngs_;
  absl::Time idle_since_;
};

}  // namespace mp
