// The Prometheus series of one worker (names in common/metric_names.h).
#pragma once

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace mp {

struct WorkerMetrics {
  explicit WorkerMetrics(prometheus::Registry& registry);

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
};

}  // namespace mp
