#include "coordinator/coordinator_metrics.h"

#include "common/metric_names.h"
#include "common/metrics.h"

namespace mp {
namespace {

namespace n = metric_names;
using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

prometheus::Family<prometheus::Gauge>& Budget(prometheus::Registry& r) {
  return BuildGauge()
      .Name(n::kKvBudgetTokens)
      .Help("KV tokens of the pipeline's budget per stage: total, and free for new requests")
      .Register(r);
}

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& r)
    : admitted(BuildCounter()
                   .Name(n::kRequestsAdmitted)
                   .Help("Requests accepted (queued or started)")
                   .Register(r)
                   .Add({})),
      completed(BuildCounter()
                    .Name(n::kRequestsCompleted)
                    .Help("Requests that finished successfully")
                    .Register(r)
                    .Add({})),
      running(BuildGauge()
                  .Name(n::kRequestsRunning)
                  .Help("Requests holding KV in the pipeline")
                  .Register(r)
                  .Add({})),
      waiting(BuildGauge()
                  .Name(n::kRequestsWaiting)
                  .Help("Requests waiting for KV budget or a pipeline")
                  .Register(r)
                  .Add({})),
      ttft(BuildHistogram()
               .Name(n::kTimeToFirstToken)
               .Help("Time from acceptance to the first sampled token")
               .Register(r)
               .Add({}, RequestSecondsBuckets())),
      queue_time(BuildHistogram()
                     .Name(n::kRequestQueueTime)
                     .Help("Time from acceptance to the first prefill chunk")
                     .Register(r)
                     .Add({}, RequestSecondsBuckets())),
      prefill_time(BuildHistogram()
                       .Name(n::kRequestPrefillTime)
                       .Help("Time from the first prefill chunk to the last")
                       .Register(r)
                       .Add({}, RequestSecondsBuckets())),
      prompt_tokens_hist(BuildHistogram()
                             .Name(n::kRequestPromptTokens)
                             .Help("Prompt length of accepted requests")
                             .Register(r)
                             .Add({}, TokenCountBuckets())),
      prompt_tokens(BuildCounter()
                        .Name(n::kPromptTokens)
                        .Help("Prompt tokens prefilled")
                        .Register(r)
                        .Add({})),
      generation_tokens(
          BuildCounter().Name(n::kGenerationTokens).Help("Tokens generated").Register(r).Add({})),
      prefill_tokens_per_second(BuildGauge()
                                    .Name(n::kPrefillTokensPerSecond)
                                    .Help("Prefill throughput of the last finished prefill")
                                    .Register(r)
                                    .Add({})),
      planner_target_seconds(BuildGauge()
                                 .Name(n::kPlannerTargetSeconds)
                                 .Help("The chunk planner's target step time T* = t(0, max "
                                       "chunk)")
                                 .Register(r)
                                 .Add({})),
      pipeline_epoch(BuildGauge()
                         .Name(n::kPipelineEpoch)
                         .Help("Epoch of the current pipeline (0: none)")
                         .Register(r)
                         .Add({})),
      pipeline_ready(BuildGauge()
                         .Name(n::kPipelineReady)
                         .Help("1 when a pipeline takes requests")
                         .Register(r)
                         .Add({})),
      pipeline_rebuilds(BuildCounter()
                            .Name(n::kPipelineRebuilds)
                            .Help("Pipelines built (the first one included)")
                            .Register(r)
                            .Add({})),
      kv_budget_total(Budget(r).Add({{"kind", "total"}})),
      kv_budget_free(Budget(r).Add({{"kind", "free"}})),
      rejected_(BuildCounter()
                    .Name(n::kRequestsRejected)
                    .Help("Requests refused before they ran, by reason")
                    .Register(r)),
      cancelled_(BuildCounter()
                     .Name(n::kRequestsCancelled)
                     .Help("Requests stopped by their client or deadline")
                     .Register(r)),
      failed_(BuildCounter()
                  .Name(n::kRequestsFailed)
                  .Help("Requests that failed while running, by gRPC code")
                  .Register(r)),
      chunk_tokens_(BuildHistogram()
                        .Name(n::kChunkTokens)
                        .Help("Prefill chunk sizes the planner chose, by mode")
                        .Register(r)),
      stage_busy_(BuildCounter()
                      .Name(n::kPipelineStageBusy)
                      .Help("Compute time stages reported, by stage")
                      .Register(r)),
      stage_idle_(BuildCounter()
                      .Name(n::kPipelineStageIdle)
                      .Help("Time stages reported waiting for input activations, by stage")
                      .Register(r)),
      stage_bubble_(BuildGauge()
                        .Name(n::kPipelineStageBubbleRatio)
                        .Help("Moving average of wait / (wait + compute) per step, by stage")
                        .Register(r)),
      stage_kv_(BuildGauge()
                    .Name(n::kPipelineStageKvBlocksInUse)
                    .Help("KV blocks in use that each stage last reported")
                    .Register(r)),
      workers_(BuildGauge().Name(n::kWorkers).Help("Known workers by state").Register(r)) {
  // Series that exist from the start, so that rates over them begin at 0.
  for (const char* reason : {"invalid", "overload", "unavailable"})
    rejected_.Add({{"reason", reason}});
  for (const char* reason : {"client", "deadline"}) cancelled_.Add({{"reason", reason}});
  for (const char* code : {"unavailable", "internal", "resource_exhausted"}) {
    failed_.Add({{"code", code}});
  }
}

prometheus::Histogram& CoordinatorMetrics::ChunkTokens(const std::string& mode) {
  return chunk_tokens_.Add({{"mode", mode}}, ChunkTokenBuckets());
}

void CoordinatorMetrics::StageStep(int stage, double busy, double idle, double kv_blocks) {
  const prometheus::Labels labels = {{"stage", std::to_string(stage)}};
  stage_busy_.Add(labels).Increment(busy);
  stage_idle_.Add(labels).Increment(idle);
  stage_kv_.Add(labels).Set(kv_blocks);
  const double total = busy + idle;
  if (total <= 0) return;
  absl::MutexLock lock(&mu_);
  if (static_cast<int>(bubble_.size()) <= stage) bubble_.resize(stage + 1, -1);
  double& avg = bubble_[stage];
  const double ratio = idle / total;
  avg = avg < 0 ? ratio : 0.95 * avg + 0.05 * ratio;
  stage_bubble_.Add(labels).Set(avg);
}

}  // namespace mp
