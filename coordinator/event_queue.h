// EventQueue: the events of one request, from the scheduler to the RPC handler that streams
// them to the client.
//
// Push() never blocks: a slow client never stalls the pipeline. Once kCoalesceAfter events wait
// to be sent, consecutive Progress events coalesce (the latest wins) and consecutive Tokens
// events merge, so the queue stays small.
// Close() ends the stream with its final status after the queued events. Thread-safe.
#pragma once

#include <deque>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "millipede/v1/coordinator.pb.h"

namespace mp {

class EventQueue {
 public:
  enum class PopResult { kEvent, kClosed, kTimeout };
  static constexpr size_t kCoalesceAfter = 16;

  void Push(millipede::v1::GenerateEvent event);
  // The first Close() wins; later pushes are dropped.
  void Close(absl::Status final_status);
  // kEvent: *event is set. kClosed: no more events; *final_status is set. kTimeout: nothing yet.
  PopResult Pop(absl::Duration timeout, millipede::v1::GenerateEvent* event,
                absl::Status* final_status);
  bool closed() const;

 private:
  mutable absl::Mutex mu_;
  std::deque<millipede::v1::GenerateEvent> events_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mp
