// Batch: the shared state of one submitted TransferBatch, used by every backend.
//
// Backends report the end of each operation with FinishOp() from any thread; the batch turns
// terminal (kDone / kFailed) when every operation has ended. Observers (the owning transport's
// accounting) run under the batch lock before the terminal state becomes visible, so a thread
// that sees a terminal batch knows that the transport is done with it.
#pragma once

#include <atomic>
#include <cstddef>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvtransfer/transport.h"

namespace mp::kvtransfer {

class Batch {
 public:
  class Observer {
   public:
    virtual ~Observer() = default;
    // Runs once per operation, under the batch lock; must not call back into the batch.
    virtual void OnOpFinished(const Batch& batch, size_t op, const absl::Status& status) = 0;
    // Runs once, under the batch lock, just before the batch turns terminal.
    virtual void OnBatchFinished(const Batch& batch, const absl::Status& status) = 0;
  };

  // `regions[i]` is the registered region holding ops[i]'s bytes.
  Batch(TransferHandle handle, std::vector<TransferOp> ops, std::vector<RegionId> regions,
        Observer* observer);
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;

  TransferHandle handle() const { return handle_; }
  size_t size() const { return ops_.size(); }
  const TransferOp& op(size_t i) const { return ops_[i]; }
  RegionId region(size_t i) const { return regions_[i]; }
  absl::Time submit_time() const { return submit_time_; }

  // Records that operation `i` ended with `status`. Later calls for the same operation are
  // ignored. Returns true when this call recorded the batch's first failure: the caller should
  // then cancel the batch's remaining operations (without holding locks the cancel needs).
  bool FinishOp(size_t i, absl::Status status);

  // Set before a backend's CancelBatch() runs: operations not yet started must not start.
  void MarkCancelled() { cancelled_.store(true, std::memory_order_release); }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

  bool op_finished(size_t i) const;
  TransferState state() const;
  // OK while in progress or done; the first error once failed.
  absl::Status status() const;
  // Blocks until the batch is terminal or `deadline` passes; true when terminal.
  bool AwaitTerminal(absl::Time deadline) const;

 private:
  const TransferHandle handle_;
  const std::vector<TransferOp> ops_;
  const std::vector<RegionId> regions_;
  const absl::Time submit_time_;
  Observer* const observer_;
  std::atomic<bool> cancelled_{false};

  mutable absl::Mutex mu_;
  std::vector<bool> finished_ ABSL_GUARDED_BY(mu_);
  size_t remaining_ ABSL_GUARDED_BY(mu_);
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  TransferState state_ ABSL_GUARDED_BY(mu_) = TransferState::kInProgress;
};

}  // namespace mp::kvtransfer
