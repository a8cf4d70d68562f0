#include "common/cancel.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace mp {

bool CancelToken::Cancel(absl::Status why) {
  if (why.ok()) why = absl::CancelledError("cancelled");
  std::map<int64_t, Callback> callbacks;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return false;
    cancelled_ = true;
    status_ = why;
    callbacks.swap(callbacks_);
  }
  for (auto& [id, fn] : callbacks) fn(why);
  return true;
}

void CancelToken::CheckDeadline() {
  if (deadline_ == absl::InfiniteFuture() || absl::Now() < deadline_) return;
  Cancel(absl::DeadlineExceededError("the request's deadline passed"));
}

bool CancelToken::IsCancelled() {
  CheckDeadline();
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

absl::Status CancelToken::status() {
  CheckDeadline();
  absl::MutexLock lock(&mu_);
  return status_;
}

int64_t CancelToken::OnCancel(Callback fn) {
  absl::Status reason;
  {
    absl::MutexLock lock(&mu_);
    if (!cancelled_) {
      const int64_t id = next_id_++;
      callbacks_.emplace(id, std::move(fn));
      return id;
    }
    reason = status_;
  }
  fn(reason);
  return 0;
}

void CancelToken::RemoveCallback(int64_t id) {
  absl::MutexLock lock(&mu_);
  callbacks_.erase(id);
}

bool CancelToken::WaitUntil(absl::Time until) {
  const absl::Time end = std::min(until, deadline_);
  {
    absl::MutexLock lock(&mu_);
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return cancelled_; };
    mu_.AwaitWithDeadline(absl::Condition(&done), end);
  }
  return IsCancelled();
}

}  // namespace mp
