#include "worker/worker_metrics.h"

#include <string>

#include "common/metric_names.h"
#include "common/metrics.h"

namespace mp {
namespace {

namespace n = metric_names;
using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

prometheus::Family<prometheus::Histogram>& Forward(prometheus::Registry& r) {
  return BuildHistogram()
      .Name(n::kStageForward)
      .Help("Time this stage spent running its layers on one step, by step kind")
      .Register(r);
}
prometheus::Family<prometheus::Counter>& Steps(prometheus::Registry& r) {
  return BuildCounter()
      .Name(n::kStageSteps)
      .Help(
          "Steps this stage ran, by outcome (ok, passed_through: the request was released, "
          "failed)")
      .Register(r);
}
prometheus::Family<prometheus::Counter>& Bytes(prometheus::Registry& r) {
  return BuildCounter()
      .Name(n::kActivationBytes)
      .Help("Bytes of activations moved to the next / from the previous stage")
      .Register(r);
}
prometheus::Family<prometheus::Histogram>& TransferTime(prometheus::Registry& r) {
  return BuildHistogram()
      .Name(n::kActivationSeconds)
      .Help(
          "Time of one activation transfer (send: copy + submit, incl. waiting for a free "
          "buffer; recv: waiting for the previous stage, incl. its compute)")
      .Register(r);
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& r)
    : forward_prefill(Forward(r).Add({{"kind", "prefill"}}, ForwardSecondsBuckets())),
      forward_decode(Forward(r).Add({{"kind", "decode"}}, ForwardSecondsBuckets())),
      busy_seconds(BuildCounter()
                       .Name(n::kStageBusy)
                       .Help("Time this stage spent computing")
                       .Register(r)
                       .Add({})),
      idle_seconds(BuildCounter()
                       .Name(n::kStageIdle)
                       .Help("Time this stage spent waiting for work or for its input "
                             "activations (pipeline bubbles)")
                       .Register(r)
                       .Add({})),
      steps_ok(Steps(r).Add({{"outcome", "ok"}})),
      steps_passed_through(Steps(r).Add({{"outcome", "passed_through"}})),
      steps_failed(Steps(r).Add({{"outcome", "failed"}})),
      prefill_tokens(BuildCounter()
                         .Name(n::kStagePrefillTokens)
                         .Help("Prompt tokens this stage ran through its layers")
                         .Register(r)
                         .Add({})),
      requests_held(BuildGauge()
                        .Name(n::kStageRequestsHeld)
                        .Help("Requests whose KV this stage holds")
                        .Register(r)
                        .Add({})),
      sent_bytes(Bytes(r).Add({{"direction", "send"}})),
      received_bytes(Bytes(r).Add({{"direction", "recv"}})),
      send_seconds(TransferTime(r).Add({{"direction", "send"}}, TransferSecondsBuckets())),
      receive_seconds(TransferTime(r).Add({{"direction", "recv"}}, TransferSecondsBuckets())),
      kv_blocks_in_use(BuildGauge()
                           .Name(n::kKvBlocksInUse)
                           .Help("KV cache blocks held by requests on this stage")
                           .Register(r)
                           .Add({})),
      kv_blocks_total(BuildGauge()
                          .Name(n::kKvBlocksCapacity)
                          .Help("KV cache blocks of this stage")
                          .Register(r)
                          .Add({})),
      kv_usage_ratio(BuildGauge()
                         .Name(n::kKvCacheUsageRatio)
                         .Help("Fraction of this stage's KV cache blocks in use")
                         .Register(r)
                         .Add({})),
      stage_info_(BuildGauge()
                      .Name(n::kStageInfo)
                      .Help("The pipeline stage and layer range [layer_begin, layer_end) this "
                            "worker holds; the value is always 1")
                      .Register(r)) {}

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
