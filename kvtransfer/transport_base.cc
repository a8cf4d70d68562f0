#include "kvtransfer/transport_base.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace mp::kvtransfer {

TransportBase::TransportBase(std::string kind, BatchLimits limits)
    : kind_(std::move(kind)), limits_(limits) {}

TransportBase::~TransportBase() = default;

absl::StatusOr<RegionId> TransportBase::RegisterMemory(const MemoryRegion& region) {
  MP_RETURN_IF_ERROR(CheckMemoryKind(region));
  if (region.addr == nullptr || region.bytes == 0) {
    // RegionTable words these errors; checking here keeps MapMemory from seeing them.
    return regions_.Add(region, nullptr);
  }
  MP_ASSIGN_OR_RETURN(void* backend, MapMemory(region));
  absl::StatusOr<RegionId> id = regions_.Add(region, backend);
  if (!id.ok()) UnmapMemory(region, backend);
  return id;
}

absl::Status TransportBase::DeregisterMemory(RegionId id) {
  MP_ASSIGN_OR_RETURN(MemoryRegion region, regions_.Get(id));
  MP_ASSIGN_OR_RETURN(void* backend, regions_.Remove(id));
  UnmapMemory(region, backend);
  return absl::OkStatus();
}

absl::StatusOr<MemoryRegion> TransportBase::DescribeMemory(RegionId id) const {
  return regions_.Get(id);
}

absl::StatusOr<TransferHandle> TransportBase::Submit(TransferBatch batch) {
  std::vector<TransferOp>& ops = batch.ops;
  if (ops.empty()) return absl::InvalidArgumentError("transfer batch has no operations");
  if (ops.size() > limits_.max_ops_per_batch) {
    return absl::InvalidArgumentError(absl::StrCat("transfer batch has ", ops.size(),
                                                   " operations, more than the limit of ",
                                                   limits_.max_ops_per_batch));
  }
  absl::flat_hash_set<std::string> peers_checked;
  for (size_t i = 0; i < ops.size(); ++i) {
    const TransferOp& op = ops[i];
    const std::string where = absl::StrCat("op ", i, " (", ToString(op.tag), ")");
    if (op.direction != TransferDirection::kSend && op.direction != TransferDirection::kRecv) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": invalid direction ", static_cast<int>(op.direction)));
    }
    if (op.peer.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": empty peer"));
    if (op.addr == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": null address"));
    }
    if (op.bytes == 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": empty transfer (0 bytes)"));
    }
    if (peers_checked.insert(op.peer).second) {
      absl::Status s = CheckPeer(op.peer);
      if (!s.ok()) return Annotate(s, where);
    }
  }
  // Two receives writing the same bytes would race.
  std::vector<size_t> recvs;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (ops[i].direction == TransferDirection::kRecv) recvs.push_back(i);
  }
  std::sort(recvs.begin(), recvs.end(), [&](size_t a, size_t b) {
    return reinterpret_cast<uintptr_t>(ops[a].addr) < reinterpret_cast<uintptr_t>(ops[b].addr);
  });
  for (size_t k = 1; k < recvs.size(); ++k) {
    const TransferOp& a = ops[recvs[k - 1]];
    const TransferOp& b = ops[recvs[k]];
    if (reinterpret_cast<uintptr_t>(a.addr) + a.bytes > reinterpret_cast<uintptr_t>(b.addr)) {
      return absl::InvalidArgumentError(absl::StrCat("ops ", recvs[k - 1], " and ", recvs[k],
                                                     " receive into overlapping memory"));
    }
  }

  std::vector<RegionId> op_regions;
  op_regions.reserve(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    absl::StatusOr<RegionId> region = regions_.Acquire(ops[i].addr, ops[i].bytes);
    if (!region.ok()) {
      for (RegionId r : op_regions) regions_.Unacquire(r);
      return Annotate(region.status(), absl::StrCat("op ", i, " (", ToString(ops[i].tag), ")"));
    }
    op_regions.push_back(*region);
  }

  std::shared_ptr<Batch> shared;
  {
    absl::MutexLock lock(&mu_);
    if (live_.size() >= limits_.max_batches_in_flight) {
      for (RegionId r : op_regions) regions_.Unacquire(r);
      return absl::ResourceExhaustedError(
          absl::StrCat(live_.size(), " transfer batches are in flight, the limit is ",
                       limits_.max_batches_in_flight, "; wait for or release some first"));
    }
    const TransferHandle handle{next_handle_++};
    shared = std::make_shared<Batch>(handle, std::move(ops), std::move(op_regions),
                                     static_cast<Batch::Observer*>(this));
    handles_[handle.id] = shared;
    live_[handle.id] = shared;
  }
  stats_.BatchStarted();
  StartBatch(shared);
  return shared->handle();
}

std::shared_ptr<Batch> TransportBase::Find(TransferHandle handle) const {
  absl::MutexLock lock(&mu_);
  auto it = handles_.find(handle.id);
  return it == handles_.end() ? nullptr : it->second;
}

TransferState TransportBase::Poll(TransferHandle handle) {
  std::shared_ptr<Batch> batch = Find(handle);
  return batch == nullptr ? TransferState::kFailed : batch->state();
}

absl::Status TransportBase::Wait(TransferHandle handle, absl::Time deadline) {
  std::shared_ptr<Batch> batch = Find(handle);
  if (batch == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown transfer handle ", handle.id,
                                                   " (never submitted here, or released)"));
  }
  if (!batch->AwaitTerminal(deadline)) {
    return absl::DeadlineExceededError(
        absl::StrCat("transfer batch ", handle.id, " (", batch->size(), " ops, first ",
                     ToString(batch->op(0).tag), " with peer '", batch->op(0).peer,
                     "') still in progress at the deadline"));
  }
  return batch->status();
}

void TransportBase::Cancel(TransferHandle handle) {
  std::shared_ptr<Batch> batch = Find(handle);
  if (batch != nullptr && batch->state() == TransferState::kInProgress) {
    batch->MarkCancelled();
    CancelBatch(batch);
  }
}

void TransportBase::Release(TransferHandle handle) {
  std::shared_ptr<Batch> batch;
  {
    absl::MutexLock lock(&mu_);
    auto it = handles_.find(handle.id);
    if (it == handles_.end()) return;
    batch = std::move(it->second);
    handles_.erase(it);
  }
  if (batch->state() == TransferState::kInProgress) {
    batch->MarkCancelled();
    CancelBatch(batch);
  }
}

TransportStats TransportBase::Stats() const { return stats_.Snapshot(); }

void TransportBase::FinishOp(const std::shared_ptr<Batch>& batch, size_t i, absl::Status status) {
  if (batch->FinishOp(i, std::move(status))) {
    batch->MarkCancelled();
    CancelBatch(batch);
  }
}

void TransportBase::OnOpFinished(const Batch& batch, size_t op, const absl::Status& status) {
  regions_.Unacquire(batch.region(op));
  stats_.OpFinished(batch.op(op).direction, batch.op(op).bytes, status.ok());
}

void TransportBase::OnBatchFinished(const Batch& batch, const absl::Status& status) {
  stats_.BatchFinished(status.ok(), absl::Now() - batch.submit_time());
  absl::MutexLock lock(&mu_);
  live_.erase(batch.handle().id);
}

size_t TransportBase::Shutdown(absl::Duration timeout) {
  std::vector<std::shared_ptr<Batch>> live;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, batch] : live_) live.push_back(batch);
  }
  for (const auto& batch : live) {
    batch->MarkCancelled();
    CancelBatch(batch);
  }
  const absl::Time deadline = absl::Now() + timeout;
  size_t unfinished = 0;
  for (const auto& batch : live) {
    if (!batch->AwaitTerminal(deadline)) ++unfinished;
  }
  for (auto& [region, backend] : regions_.Clear()) UnmapMemory(region, backend);
  return unfinished;
}

}  // namespace mp::kvtransfer
