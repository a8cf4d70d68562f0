// StatsRecorder: byte counters and batch latency histogram of one transport. Thread-safe.
#pragma once

#include <cstddef>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvtransfer/transport.h"

namespace mp::kvtransfer {

class StatsRecorder {
 public:
  StatsRecorder();

  void OpFinished(TransferDirection direction, size_t bytes, bool ok);
  void BatchStarted();
  void BatchFinished(bool ok, absl::Duration latency);
  TransportStats Snapshot() const;

  // Upper bounds of the latency buckets, in seconds (10 us ... 10 s).
  static const std::vector<double>& BucketUpperSeconds();

 private:
  mutable absl::Mutex mu_;
  TransportStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mp::kvtransfer
