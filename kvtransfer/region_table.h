// RegionTable: the memory regions registered with one transport.
//
// Finds the region that holds a byte range and counts the operations in flight on each region,
// so that a region cannot be deregistered while a transfer may still touch it. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kvtransfer/transport.h"

namespace mp::kvtransfer {

class RegionTable {
 public:
  // Adds a region after checking that it is non-empty, non-null, does not wrap around the
  // address space and overlaps no registered region. `backend` is an opaque per-region value
  // of the backend (a UCX memory handle, ...).
  absl::StatusOr<RegionId> Add(const MemoryRegion& region, void* backend);
  // Removes a region and returns its backend value. FAILED_PRECONDITION while operations are
  // in flight on it, INVALID_ARGUMENT for an unknown id.
  absl::StatusOr<void*> Remove(RegionId id);
  absl::StatusOr<MemoryRegion> Get(RegionId id) const;
  void* Backend(RegionId id) const;

  // Finds the region that fully contains [addr, addr + bytes) and counts one more operation in
  // flight on it. INVALID_ARGUMENT naming the range when no region holds it.
  absl::StatusOr<RegionId> Acquire(const void* addr, size_t bytes);
  // Ends one in-flight operation on `id`.
  void Unacquire(RegionId id);

  // Removes every region regardless of in-flight counts and returns (region, backend) pairs.
  std::vector<std::pair<MemoryRegion, void*>> Clear();

 private:
  struct Entry {
    MemoryRegion region;
    void* backend = nullptr;
    uint64_t in_flight = 0;
  };
  mutable absl::Mutex mu_;
  RegionId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<RegionId, Entry> regions_ ABSL_GUARDED_BY(mu_);
  std::map<uintptr_t, RegionId> by_start_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mp::kvtransfer
