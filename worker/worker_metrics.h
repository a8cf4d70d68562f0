// The Prometheus series of one worker (names in common/metric_names.h).
#pragma once

#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace mp {

struct WorkerMetrics {
  explicit WorkerMetrics(prometheus::Registry& registry);

  // millipede_stage_info{stage, layer_begin, layer_end} = 1 for the stage this worker holds in
  // the current pipeline (one series at most; replaced on every assignment).
  void SetStage(int stage, int layer_begin, int layer_end);
  // No stage: the pipeline epoch ended.
  void ClearStage();

  prometheus::Histogram& forward_prefill;  // kind="prefill"
  prometheus::Histogram& forward_decode;   // kind="decode"
  prometheus::Counter& busy_seconds;
  prometheus::Counter& idle_seconds;
  prometheus::Counter& steps_ok;
  prometheus::Counter& steps_passed_through;
  prometheus::Counter& steps_failed;
  prometheus::Counter& prefill_tokens;
  prometheus::Gauge& requests_held;
  prometheus::Counter& sent_bytes;
  prometheus::Counter& received_bytes;
  prometheus::Histogram& send_seconds;
  prometheus::Histogram& receive_seconds;
  prometheus::Gauge& kv_blocks_in_use;
  prometheus::Gauge& kv_blocks_total;
  prometheus::Gauge& kv_usage_ratio;
  prometheus::Gauge& sparse_workspace_bytes;

 private:
  prometheus::Family<prometheus::Gauge>& stage_info_;
  absl::Mutex mu_;
  prometheus::Gauge* stage_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace mp
