// The Prometheus series of the coordinator (names in common/metric_names.h). Per-stage series
// are created on first use.
#pragma once

#include <string>

#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace mp {

class CoordinatorMetrics {
 public:
  explicit CoordinatorMetrics(prometheus::Registry& registry);

  // reason: "invalid" | "overload" | "unavailable"
  void Rejected(const std::string& reason) { rejected_.Add({{"reason", reason}}).Increment(); }
  // reason: "client" | "deadline"
  void Cancelled(const std::string& reason) { cancelled_.Add({{"reason", reason}}).Increment(); }
  // code: lower-case gRPC code name, e.g. "unavailable"
  void Failed(const std::string& code) { failed_.Add({{"code", code}}).Increment(); }
  void StageStep(int stage, double busy_seconds, double idle_seconds, double kv_blocks_in_use);
  void Workers(const std::string& state, double n) { workers_.Add({{"state", state}}).Set(n); }
  prometheus::Histogram& ChunkTokens(const std::string& mode);

  prometheus::Counter& admitted;
  prometheus::Counter& completed;
  prometheus::Gauge& running;
  prometheus::Gauge& waiting;
  prometheus::Histogram& ttft;
  prometheus::Histogram& queue_time;
  prometheus::Histogram& prefill_time;
  prometheus::Histogram& prompt_tokens_hist;
  prometheus::Counter& prompt_tokens;
  prometheus::Counter& generation_tokens;
  prometheus::Gauge& prefill_tokens_per_second;
  prometheus::Gauge& planner_target_seconds;
  prometheus::Gauge& pipeline_epoch;
  prometheus::Gauge& pipeline_ready;
  prometheus::Counter& pipeline_rebuilds;
  prometheus::Counter& pipeline_stalls;
  prometheus::Gauge& kv_budget_total;
  prometheus::Gauge& kv_budget_free;

 private:
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Family<prometheus::Counter>& cancelled_;
  prometheus::Family<prometheus::Counter>& failed_;
  prometheus::Family<prometheus::Histogram>& chunk_tokens_;
  prometheus::Family<prometheus::Counter>& stage_busy_;
  prometheus::Family<prometheus::Counter>& stage_idle_;
  prometheus::Family<prometheus::Gauge>& stage_bubble_;
  prometheus::Family<prometheus::Gauge>& stage_kv_;
  prometheus::Family<prometheus::Gauge>& workers_;
  absl::Mutex mu_;  // the bubble-ratio averages
  std::vector<double> bubble_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mp
