// MetricsExporter: a Prometheus registry (prometheus-cpp core) and, optionally, the HTTP
// endpoint that serves it at /metrics on its own port (metrics_http_server.h). Metric names are
// in metric_names.h.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace mp {

class MetricsHttpServer;

class MetricsExporter {
 public:
  // `listen` is "host:port" ("host:0" picks a free port) or "" for no endpoint (metrics are
  // still recorded). `component` ("coordinator", "worker") labels millipede_build_info.
  // UNAVAILABLE when the port cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsExporter>> Start(const std::string& listen,
                                                                const std::string& component);
  ~MetricsExporter();

  prometheus::Registry& registry() { return *registry_; }
  // "host:port" actually bound, "" without an endpoint.
  const std::string& address() const { return address_; }

 private:
  MetricsExporter() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<MetricsHttpServer> server_;
  std::string address_;
};

// Families registered in `registry` under `name` with `help` (a second registration of a name
// returns the same family), and their one unlabelled series.
prometheus::Family<prometheus::Counter>& CounterFamily(prometheus::Registry& registry,
                                                       const char* name, const char* help);
prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& registry, const char* name,
                                                   const char* help);
prometheus::Family<prometheus::Histogram>& HistogramFamily(prometheus::Registry& registry,
                                                           const char* name, const char* help);
prometheus::Counter& AddCounter(prometheus::Registry& registry, const char* name, const char* help);
prometheus::Gauge& AddGauge(prometheus::Registry& registry, const char* name, const char* help);
prometheus::Histogram& AddHistogram(prometheus::Registry& registry, const char* name,
                                    const char* help,
                                    const prometheus::Histogram::BucketBoundaries& buckets);

// Bucket boundaries shared by the histograms.
// Time to first token / queue / prefill time: 0.05 s to 5120 s (ecosystem.md §2.3).
prometheus::Histogram::BucketBoundaries RequestSecondsBuckets();
// One stage forward pass: 1 ms to 100 s.
prometheus::Histogram::BucketBoundaries ForwardSecondsBuckets();
// One activation transfer: 10 us to 10 s.
prometheus::Histogram::BucketBoundaries TransferSecondsBuckets();
// Token counts: 1-2-5 series up to 2M.
prometheus::Histogram::BucketBoundaries TokenCountBuckets();
// Chunk sizes: powers of two from 1 to 1M tokens.
prometheus::Histogram::BucketBoundaries ChunkTokenBuckets();

}  // namespace mp
