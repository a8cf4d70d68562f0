#include "common/metrics.h"

#include "absl/strings/str_cat.h"
#include "common/metric_names.h"
#include "common/metrics_http_server.h"
#include "prometheus/gauge.h"

namespace mp {

absl::StatusOr<std::unique_ptr<MetricsExporter>> MetricsExporter::Start(
    const std::string& listen, const std::string& component) {
  auto m = std::unique_ptr<MetricsExporter>(new MetricsExporter());
  m->registry_ = std::make_shared<prometheus::Registry>();
  GaugeFamily(*m->registry_, metric_names::kBuildInfo,
              "Build of this process; the value is always 1")
      .Add({{"version", "0.1.0"}, {"component", component}})
      .Set(1);
  if (listen.empty()) return m;
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start(listen, m->registry_);
  if (!server.ok()) return server.status();
  m->server_ = *std::move(server);
  m->address_ = m->server_->address();
  return m;
}

MetricsExporter::~MetricsExporter() = default;

prometheus::Family<prometheus::Counter>& CounterFamily(prometheus::Registry& r, const char* name,
                                                       const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}

prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& r, const char* name,
                                                   const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r);
}

prometheus::Family<prometheus::Histogram>& HistogramFamily(prometheus::Registry& r,
                                                           const char* name, const char* help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r);
}

prometheus::Counter& AddCounter(prometheus::Registry& r, const char* name, const char* help) {
  return CounterFamily(r, name, help).Add({});
}

prometheus::Gauge& AddGauge(prometheus::Registry& r, const char* name, const char* help) {
  return GaugeFamily(r, name, help).Add({});
}

prometheus::Histogram& AddHistogram(prometheus::Registry& r, const char* name, const char* help,
                                    const prometheus::Histogram::BucketBoundaries& buckets) {
  return HistogramFamily(r, name, help).Add({}, buckets);
}

prometheus::Histogram::BucketBoundaries RequestSecondsBuckets() {
  return {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120};
}

prometheus::Histogram::BucketBoundaries ForwardSecondsBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100};
}

prometheus::Histogram::BucketBoundaries TransferSecondsBuckets() {
  return {1e-5,  2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01,
          0.025, 0.05,   0.1,  0.25, 0.5,    1,    2.5,  5,      10};
}

prometheus::Histogram::BucketBoundaries TokenCountBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double scale = 1; scale <= 1e6; scale *= 10) {
    for (double m : {1.0, 2.0, 5.0}) b.push_back(m * scale);
  }
  return b;  // 1, 2, 5, ..., 1M, 2M, 5M
}

prometheus::Histogram::BucketBoundaries ChunkTokenBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 1; v <= (1 << 20); v *= 2) b.push_back(v);
  return b;
}

}  // namespace mp
