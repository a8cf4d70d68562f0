#include "kvtransfer/fault_injecting_transport.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace mp::kvtransfer {
namespace {

uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

bool Matches(const FaultRule& rule, const TransferOp& op) {
  if (!rule.peer.empty() && rule.peer != op.peer) return false;
  if (rule.direction.has_value() && *rule.direction != op.direction) return false;
  if (rule.kind.has_value() && *rule.kind != op.tag.kind) return false;
  if (rule.request_id.has_value() && *rule.request_id != op.tag.request_id) return false;
  // Corruption only ever applies to receives.
  if (rule.action == FaultAction::kCorrupt && op.direction != TransferDirection::kRecv) {
    return false;
  }
  return true;
}

absl::Status PeerGone(absl::string_view peer) {
  return absl::UnavailableError(absl::StrCat("peer '", peer, "' is gone (injected fault)"));
}

}  // namespace

FaultInjectingTransport::FaultInjectingTransport(std::unique_ptr<Transport> inner)
    : inner_(std::move(inner)) {}

FaultInjectingTransport::~FaultInjectingTransport() = default;

absl::Status FaultInjectingTransport::AddRule(FaultRule rule) {
  if (rule.action == FaultAction::kCorrupt && rule.direction == TransferDirection::kSend) {
    return absl::InvalidArgumentError(
        "kCorrupt applies to receives only; to corrupt what a peer gets, wrap the peer");
  }
  if (rule.delay < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("fault delay must not be negative, got ", absl::FormatDuration(rule.delay)));
  }
  absl::MutexLock lock(&mu_);
  rules_.push_back(std::move(rule));
  return absl::OkStatus();
}

void FaultInjectingTransport::ClearRules() {
  absl::MutexLock lock(&mu_);
  rules_.clear();
}

void FaultInjectingTransport::KillPeer(absl::string_view peer) {
  std::vector<TransferHandle> to_cancel;
  {
    absl::MutexLock lock(&mu_);
    killed_peers_.insert(std::string(peer));
    for (auto& [id, w] : batches_) {
      if (!w.peers.contains(peer) || !w.killed.ok()) continue;
      absl::Status ignored;
      if (StateLocked(w, &ignored) != TransferState::kInProgress) continue;
      w.killed = PeerGone(peer);
      if (w.inner.valid()) to_cancel.push_back(w.inner);
    }
  }
  for (TransferHandle h : to_cancel) inner_->Cancel(h);
}

void FaultInjectingTransport::RevivePeer(absl::string_view peer) {
  absl::MutexLock lock(&mu_);
  killed_peers_.erase(std::string(peer));
}

FaultCounts FaultInjectingTransport::Counts() const {
  absl::MutexLock lock(&mu_);
  return counts_;
}

std::string FaultInjectingTransport::kind() const {
  return absl::StrCat("fault(", inner_->kind(), ")");
}

absl::StatusOr<RegionId> FaultInjectingTransport::RegisterMemory(const MemoryRegion& region) {
  return inner_->RegisterMemory(region);
}
absl::Status FaultInjectingTransport::DeregisterMemory(RegionId id) {
  return inner_->DeregisterMemory(id);
}
absl::StatusOr<MemoryRegion> FaultInjectingTransport::DescribeMemory(RegionId id) const {
  return inner_->DescribeMemory(id);
}
absl::StatusOr<std::string> FaultInjectingTransport::LocalEndpoint() {
  return inner_->LocalEndpoint();
}
absl::Status FaultInjectingTransport::Connect(absl::string_view peer_id,
                                              absl::string_view descriptor) {
  return inner_->Connect(peer_id, descriptor);
}
absl::Status FaultInjectingTransport::Disconnect(absl::string_view peer_id) {
  return inner_->Disconnect(peer_id);
}
TransportStats FaultInjectingTransport::Stats() const { return inner_->Stats(); }

FaultRule* FaultInjectingTransport::MatchLocked(const TransferOp& op) {
  for (FaultRule& rule : rules_) {
    if (Matches(rule, op)) return &rule;
  }
  return nullptr;
}

absl::StatusOr<TransferHandle> FaultInjectingTransport::Submit(TransferBatch batch) {
  if (batch.ops.empty()) return absl::InvalidArgumentError("transfer batch has no operations");
  Wrapped w;
  TransferBatch pass;
  FaultCounts tally;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (TransferOp& op : batch.ops) {
      w.peers.insert(op.peer);
      if (killed_peers_.contains(op.peer)) {
        if (w.injected.ok()) w.injected = PeerGone(op.peer);
        ++tally.failed;
        continue;
      }
      FaultRule* matched = MatchLocked(op);
      if (matched == nullptr) {
        pass.ops.push_back(std::move(op));
        continue;
      }
      const FaultRule rule = *matched;
      if (rule.count == 1) {
        rules_.erase(rules_.begin() + (matched - rules_.data()));
      } else if (rule.count > 1) {
        matched->count -= 1;
      }
      switch (rule.action) {
        case FaultAction::kFail:
          if (w.injected.ok()) w.injected = PeerGone(op.peer);
          ++tally.failed;
          continue;
        case FaultAction::kDrop:
          ++tally.dropped;
          if (op.direction == TransferDirection::kSend) continue;  // reported as sent
          w.dropped_recv = true;
          break;
        case FaultAction::kDelay:
          ++tally.delayed;
          w.not_before = std::max(w.not_before, now + rule.delay);
          break;
        case FaultAction::kCorrupt:
          w.corruptions.push_back(Corruption{op.addr, op.bytes, rule.seed});
          break;
      }
      pass.ops.push_back(std::move(op));
    }
  }
  if (!pass.ops.empty()) {
    absl::StatusOr<TransferHandle> inner = inner_->Submit(std::move(pass));
    if (!inner.ok()) return inner.status();
    w.inner = *inner;
  }
  absl::MutexLock lock(&mu_);
  counts_.dropped += tally.dropped;
  counts_.delayed += tally.delayed;
  counts_.failed += tally.failed;
  const TransferHandle handle{next_handle_++};
  batches_.emplace(handle.id, std::move(w));
  return handle;
}

TransferState FaultInjectingTransport::StateLocked(Wrapped& w, absl::Status* status) {
  *status = absl::OkStatus();
  absl::Status inner_status;
  if (w.inner.valid()) {
    const TransferState inner_state = inner_->Poll(w.inner);
    if (inner_state == TransferState::kInProgress) return TransferState::kInProgress;
    inner_status = inner_->Wait(w.inner, absl::InfinitePast());
    if (inner_state == TransferState::kDone && !w.corrupted) {
      for (const Corruption& c : w.corruptions) {
        const uint64_t h = Mix(c.seed ^ reinterpret_cast<uintptr_t>(c.addr));
        static_cast<unsigned char*>(c.addr)[h % c.bytes] ^= 0xA5;
        ++counts_.corrupted;
      }
      w.corrupted = true;
    }
  }
  if (!w.killed.ok()) {
    *status = w.killed;
    return TransferState::kFailed;
  }
  if (w.dropped_recv && !w.cancelled) return TransferState::kInProgress;
  if (absl::Now() < w.not_before) return TransferState::kInProgress;
  if (!w.injected.ok()) {
    *status = w.injected;
  } else if (!inner_status.ok()) {
    *status = inner_status;
  } else if (w.dropped_recv) {
    *status = absl::CancelledError("transfer batch was cancelled (its receive was dropped)");
  }
  return status->ok() ? TransferState::kDone : TransferState::kFailed;
}

TransferState FaultInjectingTransport::Poll(TransferHandle handle) {
  absl::MutexLock lock(&mu_);
  auto it = batches_.find(handle.id);
  if (it == batches_.end()) return TransferState::kFailed;
  absl::Status ignored;
  return StateLocked(it->second, &ignored);
}

absl::Status FaultInjectingTransport::Wait(TransferHandle handle, absl::Time deadline) {
  while (true) {
    TransferHandle inner;
    bool inner_running = false;
    absl::Time until = deadline;
    {
      absl::MutexLock lock(&mu_);
      auto it = batches_.find(handle.id);
      if (it == batches_.end()) {
        return absl::InvalidArgumentError(absl::StrCat("unknown transfer handle ", handle.id,
                                                       " (never submitted here, or released)"));
      }
      Wrapped& w = it->second;
      absl::Status status;
      if (StateLocked(w, &status) != TransferState::kInProgress) return status;
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("transfer batch ", handle.id, " still in progress at the deadline"));
      }
      inner = w.inner;
      inner_running = inner.valid() && inner_->Poll(inner) == TransferState::kInProgress;
      if (!inner_running && !(w.dropped_recv && !w.cancelled)) {
        until = std::min(deadline, w.not_before);
      }
    }
    if (inner_running) {
      absl::Status s = inner_->Wait(inner, deadline);
      if (absl::IsDeadlineExceeded(s)) {
        return absl::DeadlineExceededError(
            absl::StrCat("transfer batch ", handle.id, " still in progress at the deadline"));
      }
      continue;
    }
    // Sleep until the delay ends, the deadline passes, or the batch is cancelled or killed.
    absl::MutexLock lock(&mu_);
    auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      auto it = batches_.find(handle.id);
      return it == batches_.end() || it->second.cancelled || !it->second.killed.ok();
    };
    mu_.AwaitWithDeadline(absl::Condition(&changed), until);
  }
}

void FaultInjectingTransport::Cancel(TransferHandle handle) {
  TransferHandle inner;
  {
    absl::MutexLock lock(&mu_);
    auto it = batches_.find(handle.id);
    if (it == batches_.end()) return;
    it->second.cancelled = true;
    inner = it->second.inner;
  }
  if (inner.valid()) inner_->Cancel(inner);
}

void FaultInjectingTransport::Release(TransferHandle handle) {
  TransferHandle inner;
  {
    absl::MutexLock lock(&mu_);
    auto it = batches_.find(handle.id);
    if (it == batches_.end()) return;
    inner = it->second.inner;
    batches_.erase(it);
  }
  if (inner.valid()) inner_->Release(inner);
}

}  // namespace mp::kvtransfer
