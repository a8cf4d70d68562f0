#include "worker/worker_metrics.h"

#include <string>

#include "common/metric_names.h"
#include "common/metrics.h"

namespace mp {
namespace {

namespace n = metric_names;

prometheus::Family<prometheus::Histogram>& Forward(prometheus::Registry& r) {
  return HistogramFamily(r, n::kStageForward,
                         "Time this stage spent running its layers on one step, by step kind");
}
prometheus::Family<prometheus::Counter>& Steps(prometheus::Registry& r) {
  return CounterFamily(r, n::kStageSteps,
                       "Steps this stage ran, by outcome (ok, passed_through: the request was "
                       "released, failed)");
}
prometheus::Family<prometheus::Counter>& Bytes(prometheus::Registry& r) {
  return CounterFamily(r, n::kActivationBytes,
                       "Bytes of activations moved to the next / from the previous stage");
}
prometheus::Family<prometheus::Histogram>& TransferTime(prometheus::Registry& r) {
  return HistogramFamily(r, n::kActivationSeconds,
                         "Time of one activation transfer (send: copy + submit, incl. waiting for "
                         "a free buffer; recv: waiting for the previous stage, incl. its compute)");
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& r)
    : forward_prefill(Forward(r).Add({{"kind", "prefill"}}, ForwardSecondsBuckets())),
      forward_decode(Forward(r).Add({{"kind", "decode"}}, ForwardSecondsBuckets())),
      busy_seconds(AddCounter(r, n::kStageBusy, "Time this stage spent computing")),
      idle_seconds(AddCounter(r, n::kStageIdle,
                              "Time this stage spent waiting for work or for its input "
                              "activations (pipeline bubbles)")),
      steps_ok(Steps(r).Add({{"outcome", "ok"}})),
      steps_passed_through(Steps(r).Add({{"outcome", "passed_through"}})),
      steps_failed(Steps(r).Add({{"outcome", "failed"}})),
      prefill_tokens(
          AddCounter(r, n::kStagePrefillTokens, "Prompt tokens this stage ran through its layers")),
      requests_held(AddGauge(r, n::kStageRequestsHeld, "Requests whose KV this stage holds")),
      sent_bytes(Bytes(r).Add({{"direction", "send"}})),
      received_bytes(Bytes(r).Add({{"direction", "recv"}})),
      send_seconds(TransferTime(r).Add({{"direction", "send"}}, TransferSecondsBuckets())),
      receive_seconds(TransferTime(r).Add({{"direction", "recv"}}, TransferSecondsBuckets())),
      kv_blocks_in_use(
          AddGauge(r, n::kKvBlocksInUse, "KV cache blocks held by requests on this stage")),
      kv_blocks_total(AddGauge(r, n::kKvBlocksCapacity, "KV cache blocks of this stage")),
      kv_usage_ratio(
          AddGauge(r, n::kKvCacheUsageRatio, "Fraction of this stage's KV cache blocks in use")),
      sparse_workspace_bytes(AddGauge(r, n::kSparseWorkspaceBytes,
                                      "Device bytes this stage set aside for the sparse prefill "
                                      "workspace (0: dense prefill)")),
      stage_info_(GaugeFamily(r, n::kStageInfo,
                              "The pipeline stage and layer range [layer_begin, layer_end) this "
                              "worker holds; the value is always 1")) {}

void WorkerMetrics::SetStage(int stage, int layer_begin, int layer_end) {
  absl::MutexLock lock(&mu_);
  if (stage_ != nullptr) stage_info_.Remove(stage_);
  stage_ = &stage_info_.Add({{"stage", std::to_string(stage)},
                             {"layer_begin", std::to_string(layer_begin)},
                             {"layer_end", std::to_string(layer_end)}});
  stage_->Set(1);
}

void WorkerMetrics::ClearStage() {
  absl::MutexLock lock(&mu_);
  if (stage_ != nullptr) stage_info_.Remove(stage_);
  stage_ = nullptr;
}

}  // namespace mp
