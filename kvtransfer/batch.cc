#include "kvtransfer/batch.h"

#include <utility>

namespace mp::kvtransfer {

Batch::Batch(TransferHandle handle, std::vector<TransferOp> ops, std::vector<RegionId> regions,
             Observer* observer)
    : handle_(handle),
      ops_(std::move(ops)),
      regions_(std::move(regions)),
      submit_time_(absl::Now()),
      observer_(observer),
      finished_(ops_.size(), false),
      remaining_(ops_.size()) {}

bool Batch::FinishOp(size_t i, absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (i >= finished_.size() || finished_[i]) return false;
  finished_[i] = true;
  --remaining_;
  bool first_failure = false;
  if (!status.ok() && first_error_.ok()) {
    first_error_ = status;
    first_failure = true;
  }
  if (observer_ != nullptr) observer_->OnOpFinished(*this, i, status);
  if (remaining_ == 0) {
    if (observer_ != nullptr) observer_->OnBatchFinished(*this, first_error_);
    state_ = first_error_.ok() ? TransferState::kDone : TransferState::kFailed;
  }
  return first_failure;
}

bool Batch::op_finished(size_t i) const {
  absl::MutexLock lock(&mu_);
  return i < finished_.size() && finished_[i];
}

TransferState Batch::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

absl::Status Batch::status() const {
  absl::MutexLock lock(&mu_);
  return state_ == TransferState::kFailed ? first_error_ : absl::OkStatus();
}

bool Batch::AwaitTerminal(absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  auto terminal = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return state_ != TransferState::kInProgress;
  };
  return mu_.AwaitWithDeadline(absl::Condition(&terminal), deadline);
}

}  // namespace mp::kvtransfer
