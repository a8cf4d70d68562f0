// TransportBase: what every backend shares — memory registration bookkeeping, batch
// validation, the handle table, Poll/Wait/Cancel/Release and statistics.
//
// A backend implements the hooks below. It reports the end of every operation through
// FinishOp(), from any thread, while holding none of the locks its CancelBatch() takes.
// The derived destructor must call Shutdown() while the backend can still cancel and finish
// operations, then tear the backend down.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "kvtransfer/batch.h"
#include "kvtransfer/region_table.h"
#include "kvtransfer/transfer_stats.h"
#include "kvtransfer/transport.h"

namespace mp::kvtransfer {

struct BatchLimits {
  size_t max_ops_per_batch = 1 << 16;
  size_t max_batches_in_flight = 1 << 14;
};

class TransportBase : public Transport, private Batch::Observer {
 public:
  ~TransportBase() override;

  std::string kind() const override { return kind_; }
  absl::StatusOr<RegionId> RegisterMemory(const MemoryRegion& region) final;
  absl::Status DeregisterMemory(RegionId id) final;
  absl::StatusOr<MemoryRegion> DescribeMemory(RegionId id) const final;
  absl::StatusOr<TransferHandle> Submit(TransferBatch batch) final;
  TransferState Poll(TransferHandle handle) final;
  absl::Status Wait(TransferHandle handle, absl::Time deadline) final;
  void Cancel(TransferHandle handle) final;
  void Release(TransferHandle handle) final;
  TransportStats Stats() const final;

 protected:
  TransportBase(std::string kind, BatchLimits limits);

  // ---- backend hooks ----
  // OK when the backend can move memory of this kind/device; UNIMPLEMENTED otherwise.
  virtual absl::Status CheckMemoryKind(const MemoryRegion& region) = 0;
  // Backend registration (e.g. ucp_mem_map); the returned value comes back in UnmapMemory.
  virtual absl::StatusOr<void*> MapMemory(const MemoryRegion& region) { return nullptr; }
  virtual void UnmapMemory(const MemoryRegion& region, void* backend) {}
  // OK when `peer` is connected and alive: FAILED_PRECONDITION / UNAVAILABLE otherwise.
  virtual absl::Status CheckPeer(absl::string_view peer) = 0;
  // Starts every operation of a validated batch; each must end in exactly one FinishOp().
  virtual void StartBatch(const std::shared_ptr<Batch>& batch) = 0;
  // Best effort: withdraws operations of the batch that have not started (FinishOp with
  // CANCELLED or a more specific error). Must not block on other transfers.
  virtual void CancelBatch(const std::shared_ptr<Batch>& batch) = 0;

  // ---- for backends ----
  // Records the end of operation `i`; on the batch's first failure cancels the rest.
  void FinishOp(const std::shared_ptr<Batch>& batch, size_t i, absl::Status status);
  void* RegionBackend(RegionId id) const { return regions_.Backend(id); }
  // Cancels every unfinished batch (released ones included) and waits until all are terminal
  // or `timeout` passes; then unmaps every region. Returns the number of batches still
  // unfinished at the timeout (0 when clean).
  size_t Shutdown(absl::Duration timeout);

 private:
  std::shared_ptr<Batch> Find(TransferHandle handle) const;
  void OnOpFinished(const Batch& batch, size_t op, const absl::Status& status) override;
  void OnBatchFinished(const Batch& batch, const absl::Status& status) override;

  const std::string kind_;
  const BatchLimits limits_;
  RegionTable regions_;
  StatsRecorder stats_;

  mutable absl::Mutex mu_;
  uint64_t next_handle_ ABSL_GUARDED_BY(mu_) = 1;
  // Batches the caller has not released.
  absl::flat_hash_map<uint64_t, std::shared_ptr<Batch>> handles_ ABSL_GUARDED_BY(mu_);
  // Batches not yet terminal, released or not.
  absl::flat_hash_map<uint64_t, std::shared_ptr<Batch>> live_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mp::kvtransfer
