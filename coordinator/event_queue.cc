#include "coordinator/event_queue.h"

#include <utility>

namespace mp {

using millipede::v1::GenerateEvent;

void EventQueue::Push(GenerateEvent event) {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  // Only a client that falls behind sees coalesced events.
  if (events_.size() >= kCoalesceAfter) {
    GenerateEvent& last = events_.back();
    if (last.has_progress() && event.has_progress()) {
      last = std::move(event);
      return;
    }
    if (last.has_tokens() && event.has_tokens()) {
      millipede::v1::Tokens* t = last.mutable_tokens();
      t->mutable_token_ids()->MergeFrom(event.tokens().token_ids());
      t->mutable_text()->append(event.tokens().text());
      t->mutable_logits()->MergeFrom(event.tokens().logits());
      return;
    }
  }
  events_.push_back(std::move(event));
}

void EventQueue::Close(absl::Status final_status) {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  closed_ = true;
  final_ = std::move(final_status);
}

EventQueue::PopResult EventQueue::Pop(absl::Duration timeout, GenerateEvent* event,
                                      absl::Status* final_status) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !events_.empty() || closed_; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (!events_.empty()) {
    *event = std::move(events_.front());
    events_.pop_front();
    return PopResult::kEvent;
  }
  if (closed_) {
    *final_status = final_;
    return PopResult::kClosed;
  }
  return PopResult::kTimeout;
}

bool EventQueue::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

}  // namespace mp
