#include "kvtransfer/transfer_stats.h"

#include <algorithm>

namespace mp::kvtransfer {

const std::vector<double>& StatsRecorder::BucketUpperSeconds() {
  static const std::vector<double> kBounds = {1e-5,   2.5e-5, 5e-5, 1e-4,   2.5e-4, 5e-4, 1e-3,
                                              2.5e-3, 5e-3,   1e-2, 2.5e-2, 5e-2,   0.1,  0.25,
                                              0.5,    1.0,    2.5,  5.0,    10.0};
  return kBounds;
}

StatsRecorder::StatsRecorder() {
  stats_.batch_latency.bucket_upper_seconds = BucketUpperSeconds();
  stats_.batch_latency.bucket_counts.assign(BucketUpperSeconds().size() + 1, 0);
}

void StatsRecorder::OpFinished(TransferDirection direction, size_t bytes, bool ok) {
  absl::MutexLock lock(&mu_);
  if (!ok) {
    ++stats_.ops_failed;
  } else if (direction == TransferDirection::kSend) {
    ++stats_.sends_done;
    stats_.bytes_sent += bytes;
  } else {
    ++stats_.recvs_done;
    stats_.bytes_received += bytes;
  }
}

void StatsRecorder::BatchStarted() {
  absl::MutexLock lock(&mu_);
  ++stats_.batches_in_flight;
}

void StatsRecorder::BatchFinished(bool ok, absl::Duration latency) {
  const double seconds = absl::ToDoubleSeconds(latency);
  absl::MutexLock lock(&mu_);
  if (stats_.batches_in_flight > 0) --stats_.batches_in_flight;
  ++(ok ? stats_.batches_done : stats_.batches_failed);
  LatencyStats& l = stats_.batch_latency;
  ++l.count;
  l.sum_seconds += seconds;
  l.max_seconds = std::max(l.max_seconds, seconds);
  const auto& bounds = l.bucket_upper_seconds;
  const size_t bucket = std::lower_bound(bounds.begin(), bounds.end(), seconds) - bounds.begin();
  ++l.bucket_counts[bucket];
}

TransportStats StatsRecorder::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace mp::kvtransfer
