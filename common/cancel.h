// CancelToken: the cancellation state and deadline of one request, shared by everything that
// works on it (the RPC handler, the scheduler, the calls to the stages).
//
// A token is cancelled once, with a non-OK status saying why (CANCELLED for a client that
// cancelled or went away, DEADLINE_EXCEEDED for a passed deadline, UNAVAILABLE for a lost stage,
// ...); the first Cancel() wins. A passed deadline counts as cancellation as soon as anyone
// looks (IsCancelled(), status(), WaitUntil()): the token then records DEADLINE_EXCEEDED. Work
// checks the token at chunk boundaries. Callbacks run once, on the thread that cancels, outside
// the token's lock. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace mp {

class CancelToken {
 public:
  using Callback = std::function<void(const absl::Status&)>;

  explicit CancelToken(absl::Time deadline = absl::InfiniteFuture()) : deadline_(deadline) {}
  CancelToken(const CancelToken&) = delete;
  CancelToken& operator=(const CancelToken&) = delete;

  // Cancels with `why` (an OK status is turned into CANCELLED). Returns true when this call
  // cancelled the token, false when it already was.
  bool Cancel(absl::Status why);
  // Cancelled, or past the deadline (which then cancels it with DEADLINE_EXCEEDED).
  bool IsCancelled();
  // OK while live, else the reason.
  absl::Status status();
  absl::Time deadline() const { return deadline_; }
  // Runs `fn(reason)` once when the token is cancelled, at once (on this thread) when it already
  // is. Returns an id for RemoveCallback().
  int64_t OnCancel(Callback fn);
  void RemoveCallback(int64_t id);
  // Blocks until the token is cancelled or `until` passes (the deadline cancels it); true when
  // cancelled.
  bool WaitUntil(absl::Time until);

 private:
  // Cancels with DEADLINE_EXCEEDED when the deadline has passed.
  void CheckDeadline();

  const absl::Time deadline_;
  absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<int64_t, Callback> callbacks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mp
