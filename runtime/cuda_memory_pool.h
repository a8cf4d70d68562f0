// CudaMemoryPool: a caching allocator of device memory for one GPU.
//
// Blocks come from cudaMalloc, rounded up (512 B below 1 MiB, 2 MiB above) and never split. A
// freed block goes back to a free list instead of cudaFree; a later request of the same or a
// somewhat smaller size (at most 1/8 of waste, or 512 B for small blocks) reuses it. When
// cudaMalloc fails, every cached block is released and the allocation is tried once more; if it
// still fails the result is RESOURCE_EXHAUSTED naming the size and the pool's state.
//
// Reuse is ordered on the stream that uses the memory: the pool does not record events, so all
// work touching pool memory must be on one stream (the CUDA backend's) or synchronized with it.
//
// Thread-safe. The pool stays alive until the last block it handed out is freed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mp {

struct CudaMemoryStats {
  int64_t bytes_in_use = 0;       // blocks handed out (rounded sizes)
  int64_t peak_bytes_in_use = 0;  // since creation or the last ResetPeak()
  int64_t bytes_cached = 0;       // free blocks kept for reuse
  int64_t bytes_reserved() const { return bytes_in_use + bytes_cached; }
  int64_t allocations = 0;         // Allocate() calls that succeeded
  int64_t cache_hits = 0;          // ... served from the free lists
  int64_t device_allocations = 0;  // cudaMalloc calls that succeeded
};

class CudaMemoryPool {
 public:
  // A pool for device `device` (the CUDA device ordinal).
  static std::shared_ptr<CudaMemoryPool> Create(int device);

  CudaMemoryPool(const CudaMemoryPool&) = delete;
  CudaMemoryPool& operator=(const CudaMemoryPool&) = delete;
  ~CudaMemoryPool();

  // At least `bytes` of device memory (256-byte aligned; 0 bytes gives a minimal block). The
  // returned owner's deleter gives the block back to the pool.
  absl::StatusOr<std::shared_ptr<void>> Allocate(size_t bytes);

  CudaMemoryStats stats() const;
  void ResetPeak();
  // cudaFree of every cached block (synchronizes the device).
  absl::Status ReleaseCached();

  int device() const { return device_; }
  // The size a request of `bytes` is rounded up to.
  static size_t RoundedSize(size_t bytes);

 private:
  explicit CudaMemoryPool(int device) : device_(device) {}
  void Free(void* ptr, size_t size);
  absl::Status ReleaseCachedLocked();

  const int device_;
  std::weak_ptr<CudaMemoryPool> self_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;  // size -> block
  CudaMemoryStats stats_;
};

}  // namespace mp
