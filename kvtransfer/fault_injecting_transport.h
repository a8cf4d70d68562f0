// FaultInjectingTransport: wraps any Transport and drops, delays, corrupts or fails operations
// on command, so that the pipeline's failure handling can be tested through the same seam that
// production uses.
//
// Rules are matched against each operation at Submit() (first matching rule wins):
//   kDrop    send: not handed to the inner transport; it reports success and the bytes vanish.
//            receive: the inner receive runs, but the operation never reports completion (a
//            lost message as the receiver sees it) until the batch is cancelled or released.
//   kDelay   the operation's completion is reported no earlier than `delay` after Submit().
//   kCorrupt receive only: after the inner receive succeeds, one received byte (position
//            derived from `seed`) is changed before the batch reports kDone.
//   kFail    the operation fails with UNAVAILABLE ("peer gone") without reaching the inner
//            transport.
// Operations that the wrapper ends itself (dropped sends, kFail) are not validated by the
// inner transport. KillPeer(peer) makes a peer look gone: in-flight batches with it are
// cancelled in the inner transport and report UNAVAILABLE once the inner transport has let go
// of their buffers; later operations with it fail at once, until RevivePeer(peer).
//
// Thread safety: as transport.h; rules may be changed while transfers run.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "kvtransfer/transport.h"

namespace mp::kvtransfer {

enum class FaultAction : uint8_t { kDrop = 0, kDelay = 1, kCorrupt = 2, kFail = 3 };

struct FaultRule {
  FaultAction action = FaultAction::kFail;
  // Filters; an empty peer / unset field matches every operation.
  std::string peer;
  std::optional<TransferDirection> direction;
  std::optional<TransferKind> kind;
  std::optional<uint64_t> request_id;
  // How many matching operations the rule hits before it is removed; 0 = every one, forever.
  uint64_t count = 1;
  absl::Duration delay = absl::ZeroDuration();  // kDelay
  uint64_t seed = 1;                            // kCorrupt
};

struct FaultCounts {
  uint64_t dropped = 0;
  uint64_t delayed = 0;
  uint64_t corrupted = 0;
  uint64_t failed = 0;
};

class FaultInjectingTransport final : public Transport {
 public:
  explicit FaultInjectingTransport(std::unique_ptr<Transport> inner);
  ~FaultInjectingTransport() override;

  Transport& inner() { return *inner_; }

  // INVALID_ARGUMENT for kCorrupt on sends and for a negative delay.
  absl::Status AddRule(FaultRule rule);
  void ClearRules();
  void KillPeer(absl::string_view peer);
  void RevivePeer(absl::string_view peer);
  FaultCounts Counts() const;

  std::string kind() const override;
  absl::StatusOr<RegionId> RegisterMemory(const MemoryRegion& region) override;
  absl::Status DeregisterMemory(RegionId id) override;
  absl::StatusOr<MemoryRegion> DescribeMemory(RegionId id) const override;
  absl::StatusOr<std::string> LocalEndpoint() override;
  absl::Status Connect(absl::string_view peer_id, absl::string_view descriptor) override;
  absl::Status Disconnect(absl::string_view peer_id) override;
  absl::StatusOr<TransferHandle> Submit(TransferBatch batch) override;
  TransferState Poll(TransferHandle handle) override;
  absl::Status Wait(TransferHandle handle, absl::Time deadline) override;
  void Cancel(TransferHandle handle) override;
  void Release(TransferHandle handle) override;
  TransportStats Stats() const override;

 private:
  struct Corruption {
    void* addr = nullptr;
    size_t bytes = 0;
    uint64_t seed = 0;
  };
  struct Wrapped {
    TransferHandle inner;       // invalid when every op was handled here
    absl::Status injected;      // first kFail
    bool dropped_recv = false;  // a receive that never reports completion
    absl::Time not_before = absl::InfinitePast();
    std::vector<Corruption> corruptions;  // applied once, when the inner batch is done
    bool corrupted = false;
    absl::flat_hash_set<std::string> peers;
    absl::Status killed;  // set by KillPeer
    bool cancelled = false;
  };

  // State of `w` now (applies pending corruption); mu_ held.
  TransferState StateLocked(Wrapped& w, absl::Status* status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  FaultRule* MatchLocked(const TransferOp& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::unique_ptr<Transport> inner_;
  mutable absl::Mutex mu_;
  std::vector<FaultRule> rules_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> killed_peers_ ABSL_GUARDED_BY(mu_);
  FaultCounts counts_ ABSL_GUARDED_BY(mu_);
  uint64_t next_handle_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, Wrapped> batches_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mp::kvtransfer
