#include "kvtransfer/region_table.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mp::kvtransfer {
namespace {

std::string Range(uintptr_t start, size_t bytes) {
  return absl::StrFormat("[%#x, %#x)", start, start + bytes);
}

}  // namespace

absl::StatusOr<RegionId> RegionTable::Add(const MemoryRegion& region, void* backend) {
  const uintptr_t start = reinterpret_cast<uintptr_t>(region.addr);
  if (region.addr == nullptr) {
    return absl::InvalidArgumentError("cannot register memory: address is null");
  }
  if (region.bytes == 0) {
    return absl::InvalidArgumentError("cannot register memory: region is empty (0 bytes)");
  }
  if (start + region.bytes < start) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot register memory: region at ", absl::StrFormat("%#x", start), " of ",
                     region.bytes, " bytes wraps around the address space"));
  }
  absl::MutexLock lock(&mu_);
  auto next = by_start_.lower_bound(start);
  if (next != by_start_.end() && next->first < start + region.bytes) {
    const Entry& other = regions_.at(next->second);
    return absl::InvalidArgumentError(
        absl::StrCat("cannot register memory ", Range(start, region.bytes), ": overlaps region ",
                     next->second, " ", Range(next->first, other.region.bytes)));
  }
  if (next != by_start_.begin()) {
    auto prev = std::prev(next);
    const Entry& other = regions_.at(prev->second);
    if (prev->first + other.region.bytes > start) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot register memory ", Range(start, region.bytes), ": overlaps region ",
                       prev->second, " ", Range(prev->first, other.region.bytes)));
    }
  }
  const RegionId id = next_id_++;
  regions_[id] = Entry{region, backend, 0};
  by_start_[start] = id;
  return id;
}

absl::StatusOr<void*> RegionTable::Remove(RegionId id) {
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown memory region id ", id));
  }
  if (it->second.in_flight != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("memory region ", id, " still has ", it->second.in_flight,
                     " transfer operation(s) in flight; wait for them or destroy the transport"));
  }
  void* backend = it->second.backend;
  by_start_.erase(reinterpret_cast<uintptr_t>(it->second.region.addr));
  regions_.erase(it);
  return backend;
}

absl::StatusOr<MemoryRegion> RegionTable::Get(RegionId id) const {
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown memory region id ", id));
  }
  return it->second.region;
}

void* RegionTable::Backend(RegionId id) const {
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(id);
  return it == regions_.end() ? nullptr : it->second.backend;
}

absl::StatusOr<RegionId> RegionTable::Acquire(const void* addr, size_t bytes) {
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  absl::MutexLock lock(&mu_);
  auto it = by_start_.upper_bound(start);
  if (it != by_start_.begin()) {
    --it;
    Entry& e = regions_.at(it->second);
    const uintptr_t region_end = it->first + e.region.bytes;
    if (start >= it->first && start + bytes >= start && start + bytes <= region_end) {
      ++e.in_flight;
      return it->second;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("byte range ", Range(start, bytes),
                                                 " is not inside one registered memory region"));
}

void RegionTable::Unacquire(RegionId id) {
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(id);
  if (it != regions_.end() && it->second.in_flight > 0) --it->second.in_flight;
}

std::vector<std::pair<MemoryRegion, void*>> RegionTable::Clear() {
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<MemoryRegion, void*>> out;
  for (auto& [id, e] : regions_) out.emplace_back(e.region, e.backend);
  regions_.clear();
  by_start_.clear();
  return out;
}

}  // namespace mp::kvtransfer
