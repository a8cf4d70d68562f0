// Pipeline: one built pipeline of stage workers (an epoch), and the calls the coordinator makes
// on all of its stages at once.
//
// BuildPipeline() assigns layer slices (layer_assignment.h), calls AssignLayers on every stage
// in parallel (each loads its layers and creates its transports), then ConnectPeers on every
// stage in parallel with its neighbours' endpoints. StepCall runs one step (RunChunk) on every
// stage; its callback fires once, when every stage has answered OK or at the first failure
// (without waiting for the others, which may be blocked on the failed one).
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/membership.h"
#include "coordinator/stall_watchdog.h"
#include "millipede/v1/worker.grpc.pb.h"
#include "model/config.h"
#include "model/weights.h"

namespace mp {

struct PipelineStage {
  std::string worker_id;
  std::string address;
  std::shared_ptr<millipede::v1::StageWorker::Stub> stub;
  LayerRange layers;
  int64_t kv_blocks_total = 0;
  int64_t kv_block_tokens = 0;
  std::string device;
};

struct Pipeline {
  uint64_t epoch = 0;
  std::vector<PipelineStage> stages;
  int64_t kv_tokens = 0;     // per-stage budget assigned
  int64_t blocks_total = 0;  // the smallest stage's KV blocks
  int64_t block_tokens = 0;
  int64_t max_chunk = 0;
  std::string transport;
  std::string description;  // "3 stages: w1 [0, 10), w2 [10, 20), w3 [20, 30)"
};

struct PipelineSpec {
  ModelConfig config;
  millipede::v1::ModelSource source;
  std::string device = "cpu";
  millipede::v1::TransportConfig transport;
  int64_t kv_tokens = 0;  // cap (0: what memory allows, at most default_kv_tokens)
  int64_t default_kv_tokens = 0;
  int64_t min_kv_tokens = 1;
  int64_t kv_block_tokens = 64;
  int64_t max_chunk = 4096;
  int64_t max_context = 0;  // longest request admitted (0: not stated)
  std::vector<int64_t> sparse_workspace_per_layer;  // ModelInfo's (empty: none)
  absl::Duration load_timeout = absl::Minutes(15);
};

// A failure of one stage: which one and why.
struct StageFailure {
  int stage = -1;
  std::string worker_id;
  absl::Status status;
};

// Builds epoch `epoch` on `workers` (in stage order). On failure returns the failing stage (its
// worker is the suspect) and aborts the stages that were assigned.
absl::StatusOr<std::shared_ptr<Pipeline>> BuildPipeline(const std::vector<WorkerRecord>& workers,
                                                        const PipelineSpec& spec, uint64_t epoch,
                                                        StageFailure* failure);

// Abort(epoch) on every stage; waits at most `timeout`.
void AbortPipeline(const Pipeline& pipeline, const std::string& reason, absl::Duration timeout);

class StepCall : public std::enable_shared_from_this<StepCall> {
 public:
  using Callback = std::function<void(StepCall&)>;

  // Starts RunChunk(`request` + the stage's token ids) on every stage. Stage 0 gets
  // `token_ids`; the other stages none.
  static std::shared_ptr<StepCall> Start(std::shared_ptr<const Pipeline> pipeline,
                                         millipede::v1::RunChunkRequest request,
                                         std::vector<int32_t> token_ids, absl::Duration timeout,
                                         Callback on_done);

  const millipede::v1::RunChunkRequest& request() const { return request_; }
  const Pipeline& pipeline() const { return *pipeline_; }
  // After the callback: OK with every stage's response, or the first failure.
  const absl::Status& status() const { return failure_.status; }
  const StageFailure& failure() const { return failure_; }
  const std::vector<millipede::v1::RunChunkResponse>& responses() const { return responses_; }
  absl::Time start_time() const { return start_; }
  // What every stage has answered so far (any time, from any thread).
  std::vector<StageAnswer> Answers() const;

 private:
  StepCall() = default;
  void OnStageDone(int stage, const grpc::Status& status);

  std::shared_ptr<const Pipeline> pipeline_;
  millipede::v1::RunChunkRequest request_;
  std::vector<millipede::v1::RunChunkRequest> stage_requests_;
  std::vector<millipede::v1::RunChunkResponse> responses_;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts_;
  Callback on_done_;
  absl::Time start_;
  mutable absl::Mutex mu_;
  std::vector<StageAnswer> answers_ ABSL_GUARDED_BY(mu_);
  int pending_ = 0;
  bool reported_ = false;
  StageFailure failure_;
};

// Release(request) on every stage; `on_done` runs once all have answered (failures included).
void ReleaseOnAllStages(std::shared_ptr<const Pipeline> pipeline, uint64_t request,
                        std::function<void()> on_done);

}  // namespace mp
