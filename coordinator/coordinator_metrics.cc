#include "coordinator/coordinator_metrics.h"

#include "common/metric_names.h"
#include "common/metrics.h"

namespace mp {
namespace {

namespace n = metric_names;

prometheus::Family<prometheus::Gauge>& Budget(prometheus::Registry& r) {
  return GaugeFamily(r, n::kKvBudgetTokens,
                     "KV tokens of the pipeline's budget per stage: total, and free for new "
                     "requests");
}

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& r)
    : admitted(AddCounter(r, n::kRequestsAdmitted, "Requests accepted (queued or started)")),
      completed(AddCounter(r, n::kRequestsCompleted, "Requests that finished successfully")),
      running(AddGauge(r, n::kRequestsRunning, "Requests holding KV in the pipeline")),
      waiting(AddGauge(r, n::kRequestsWaiting, "Requests waiting for KV budget or a pipeline")),
      ttft(AddHistogram(r, n::kTimeToFirstToken, "Time from acceptance to the first sampled token",
                        RequestSecondsBuckets())),
      queue_time(AddHistogram(r, n::kRequestQueueTime,
                              "Time from acceptance to the first prefill chunk",
                              RequestSecondsBuckets())),
      prefill_time(AddHistogram(r, n::kRequestPrefillTime,
                                "Time from the first prefill chunk to the last",
                                RequestSecondsBuckets())),
      prompt_tokens_hist(AddHistogram(r, n::kRequestPromptTokens,
                                      "Prompt length of accepted requests", TokenCountBuckets())),
      prompt_tokens(AddCounter(r, n::kPromptTokens, "Prompt tokens prefilled")),
      generation_tokens(AddCounter(r, n::kGenerationTokens, "Tokens generated")),
      prefill_tokens_per_second(AddGauge(r, n::kPrefillTokensPerSecond,
                                         "Prefill throughput of the last finished prefill")),
      planner_target_seconds(AddGauge(r, n::kPlannerTargetSeconds,
                                      "The chunk planner's target step time T* = t(0, max chunk)")),
      pipeline_epoch(AddGauge(r, n::kPipelineEpoch, "Epoch of the current pipeline (0: none)")),
      pipeline_ready(AddGauge(r, n::kPipelineReady, "1 when a pipeline takes requests")),
      pipeline_rebuilds(
          AddCounter(r, n::kPipelineRebuilds, "Pipelines built (the first one included)")),
      pipeline_stalls(AddCounter(r, n::kPipelineStalls,
                                 "Pipelines broken because their oldest step made no progress "
                                 "within its bound")),
      kv_budget_total(Budget(r).Add({{"kind", "total"}})),
      kv_budget_free(Budget(r).Add({{"kind", "free"}})),
      rejected_(
          CounterFamily(r, n::kRequestsRejected, "Requests refused before they ran, by reason")),
      cancelled_(
          CounterFamily(r, n::kRequestsCancelled, "Requests stopped by their client or deadline")),
      failed_(
          CounterFamily(r, n::kRequestsFailed, "Requests that failed while running, by gRPC code")),
      chunk_tokens_(
          HistogramFamily(r, n::kChunkTokens, "Prefill chunk sizes the planner chose, by mode")),
      stage_busy_(
          CounterFamily(r, n::kPipelineStageBusy, "Compute time stages reported, by stage")),
      stage_idle_(CounterFamily(r, n::kPipelineStageIdle,
                                "Time stages reported waiting for input activations, by stage")),
      stage_bubble_(GaugeFamily(r, n::kPipelineStageBubbleRatio,
                                "Moving average of wait / (wait + compute) per step, by stage")),
      stage_kv_(GaugeFamily(r, n::kPipelineStageKvBlocksInUse,
                            "KV blocks in use that each stage last reported")),
      workers_(GaugeFamily(r, n::kWorkers, "Known workers by state")) {
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
