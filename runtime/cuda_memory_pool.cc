#include "runtime/cuda_memory_pool.h"

#include <cuda_runtime_api.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mp {
namespace {

constexpr size_t kSmallLimit = size_t{1} << 20;
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t{2} << 20;

std::string Bytes(int64_t bytes) {
  return absl::StrFormat("%d bytes (%.2f GiB)", bytes, static_cast<double>(bytes) / (1 << 30));
}

// Makes `device` current for the calling thread and restores the previous one on exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) cudaSetDevice(device);
  }
  ~DeviceGuard() {
    int now = -1;
    if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_) {
      cudaSetDevice(previous_);
    }
  }

 private:
  int previous_ = -1;
};

}  // namespace

std::shared_ptr<CudaMemoryPool> CudaMemoryPool::Create(int device) {
  std::shared_ptr<CudaMemoryPool> pool(new CudaMemoryPool(device));
  pool->self_ = pool;
  return pool;
}

CudaMemoryPool::~CudaMemoryPool() {
  // Every block handed out holds a reference, so only cached blocks remain.
  std::lock_guard<std::mutex> lock(mu_);
  ReleaseCachedLocked().IgnoreError();
}

size_t CudaMemoryPool::RoundedSize(size_t bytes) {
  if (bytes == 0) return kSmallRound;
  if (bytes < kSmallLimit) return (bytes + kSmallRound - 1) / kSmallRound * kSmallRound;
  return (bytes + kLargeRound - 1) / kLargeRound * kLargeRound;
}

absl::StatusOr<std::shared_ptr<void>> CudaMemoryPool::Allocate(size_t bytes) {
  if (bytes > (size_t{1} << 62)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("CUDA memory pool: cannot allocate ", bytes, " bytes"));
  }
  const size_t size = RoundedSize(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  void* ptr = nullptr;
  size_t block_size = size;
  // The smallest cached block that fits without wasting too much.
  const size_t max_size = size < kSmallLimit ? size : size + size / 8;
  auto it = free_.lower_bound(size);
  if (it != free_.end() && it->first <= max_size) {
    block_size = it->first;
    ptr = it->second;
    free_.erase(it);
    stats_.bytes_cached -= static_cast<int64_t>(block_size);
    ++stats_.cache_hits;
  } else {
    DeviceGuard guard(device_);
    cudaError_t e = cudaMalloc(&ptr, size);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the error so later launches do not report it
      if (!free_.empty()) {
        absl::Status released = ReleaseCachedLocked();
        if (!released.ok()) return released;
        e = cudaMalloc(&ptr, size);
        if (e != cudaSuccess) cudaGetLastError();
      }
    }
    if (e != cudaSuccess) {
      size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat(
          "CUDA memory pool: cannot allocate ", Bytes(static_cast<int64_t>(bytes)), " on device ",
          device_, " (", cudaGetErrorString(e), "); the pool holds ",
          Bytes(stats_.bytes_in_use), " in use, the device has ",
          Bytes(static_cast<int64_t>(free_bytes)), " free of ",
          Bytes(static_cast<int64_t>(total_bytes))));
    }
    ++stats_.device_allocations;
  }
  stats_.bytes_in_use += static_cast<int64_t>(block_size);
  stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
  ++stats_.allocations;
  std::shared_ptr<CudaMemoryPool> self = self_.lock();
  return std::shared_ptr<void>(ptr, [self, block_size](void* p) { self->Free(p, block_size); });
}

void CudaMemoryPool::Free(void* ptr, size_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.bytes_in_use -= static_cast<int64_t>(size);
  stats_.bytes_cached += static_cast<int64_t>(size);
  free_.emplace(size, ptr);
}

CudaMemoryStats CudaMemoryPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CudaMemoryPool::ResetPeak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_bytes_in_use = stats_.bytes_in_use;
}

absl::Status CudaMemoryPool::ReleaseCached() {
  std::lock_guard<std::mutex> lock(mu_);
  return ReleaseCachedLocked();
}

absl::Status CudaMemoryPool::ReleaseCachedLocked() {
  if (free_.empty()) return absl::OkStatus();
  DeviceGuard guard(device_);
  cudaError_t first_error = cudaSuccess;
  for (const auto& [size, ptr] : free_) {
    const cudaError_t e = cudaFree(ptr);
    if (e != cudaSuccess && first_error == cudaSuccess) first_error = e;
    stats_.bytes_cached -= static_cast<int64_t>(size);
  }
  free_.clear();
  if (first_error != cudaSuccess) {
    return absl::InternalError(
        absl::StrCat("CUDA memory pool: cudaFree failed: ", cudaGetErrorString(first_error)));
  }
  return absl::OkStatus();
}

}  // namespace mp
