// Transport: the data plane between pipeline stages and from prefill to decode workers.
//
// A Transport moves byte ranges between processes (or between objects of one process) without
// going through the control plane. The shape follows NIXL / Mooncake:
//
//   1. RegisterMemory() every buffer that transfers read from or write into.
//   2. LocalEndpoint() returns an opaque descriptor; the coordinator hands it to the peer, and
//      each side calls Connect(peer_id, peer_descriptor). Both sides of a link must connect:
//      a side can receive only from peers it has connected to.
//   3. Submit() a TransferBatch of sends and receives, each tagged with (request id, chunk
//      index, kind, part). A receive matches the send from its peer that carries the same tag;
//      receives and sends may be submitted in any order on the two sides.
//   4. Poll() / Wait() until the batch is kDone or kFailed, then Release() the handle.
//
// Contract:
//  * A batch is terminal (kDone or kFailed) only when none of its operations can touch its
//    buffers any more. When an operation fails, the transport cancels the batch's operations
//    that have not started; the batch turns kFailed once the rest have finished.
//  * A send may finish before the peer posts its receive (the peer buffers it) or only when the
//    peer receives it; callers must not rely on either.
//  * A receive whose matching send carries a different number of bytes fails; the send may
//    still succeed.
//  * Several in-flight sends with one tag to one peer are matched in submission order.
//  * Error codes: INVALID_ARGUMENT for malformed input (bad descriptor, range outside
//    registered memory, size mismatch), FAILED_PRECONDITION for a peer that is not connected or
//    memory still in use, UNAVAILABLE when the peer is gone (disconnected, destroyed, crashed),
//    CANCELLED for operations withdrawn by Cancel/Release/Disconnect/shutdown,
//    DEADLINE_EXCEEDED from Wait, RESOURCE_EXHAUSTED above the in-flight batch limit.
//  * Memory of an unfinished batch that was Released must stay valid until DeregisterMemory()
//    of its region succeeds (it fails with FAILED_PRECONDITION while operations are in flight)
//    or the transport is destroyed. Destroying a transport cancels everything and returns only
//    when no operation touches any buffer; its peers see UNAVAILABLE.
//
// Thread safety: every method may be called concurrently from any thread. A handle may be
// polled or waited on from several threads at once; Release() while another thread waits on
// the same handle cancels the batch and that Wait returns when the batch is terminal (or at its
// deadline). Using a handle after Release() is safe and behaves as for an unknown handle.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace mp::kvtransfer {

// ---- memory ----------------------------------------------------------------------------------

enum class MemoryKind : uint8_t { kHost = 0, kCuda = 1 };
absl::string_view MemoryKindName(MemoryKind kind);

// A contiguous range of local memory that transfers may read or write.
struct MemoryRegion {
  void* addr = nullptr;
  size_t bytes = 0;
  MemoryKind kind = MemoryKind::kHost;
  int device = 0;  // CUDA device ordinal for kCuda, ignored for kHost
};

// Identifies a registered region within one transport. 0 is never a valid id.
using RegionId = uint64_t;

// ---- transfers -------------------------------------------------------------------------------

enum class TransferKind : uint8_t { kActivations = 1, kKv = 2, kLogits = 3, kOther = 4 };
absl::string_view TransferKindName(TransferKind kind);

// What a receiver matches on, together with the sending peer.
struct TransferTag {
  uint64_t request_id = 0;
  uint32_t chunk_index = 0;
  TransferKind kind = TransferKind::kActivations;
  uint32_t part = 0;  // sub-index within (request, chunk, kind), e.g. a layer or a block group

  friend bool operator==(const TransferTag&, const TransferTag&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const TransferTag& t) {
    return H::combine(std::move(h), t.request_id, t.chunk_index, t.kind, t.part);
  }
};
std::string ToString(const TransferTag& tag);  // "req=7 chunk=3 kind=kv part=12"

enum class TransferDirection : uint8_t { kSend = 0, kRecv = 1 };

// One send or receive of `bytes` bytes at `addr`, which must lie inside one registered region.
struct TransferOp {
  TransferDirection direction = TransferDirection::kSend;
  std::string peer;  // the peer_id given to Connect()
  TransferTag tag;
  void* addr = nullptr;  // read by sends, written by receives
  size_t bytes = 0;

  static TransferOp Send(absl::string_view peer, const TransferTag& tag, const void* addr,
                         size_t bytes);
  static TransferOp Recv(absl::string_view peer, const TransferTag& tag, void* addr, size_t bytes);
};

struct TransferBatch {
  std::vector<TransferOp> ops;
};

// Names one submitted batch within one transport. Default-constructed handles are invalid.
struct TransferHandle {
  uint64_t id = 0;
  bool valid() const { return id != 0; }
  friend bool operator==(const TransferHandle&, const TransferHandle&) = default;
};

enum class TransferState : uint8_t { kInProgress = 0, kDone = 1, kFailed = 2 };
absl::string_view TransferStateName(TransferState state);

// ---- statistics ------------------------------------------------------------------------------

// Latency from Submit() to the batch turning terminal, as a cumulative-friendly histogram.
struct LatencyStats {
  uint64_t count = 0;
  double sum_seconds = 0;
  double max_seconds = 0;
  std::vector<double> bucket_upper_seconds;  // ascending; the last bucket is +inf (not listed)
  std::vector<uint64_t> bucket_counts;       // bucket_upper_seconds.size() + 1 entries
};

struct TransportStats {
  uint64_t bytes_sent = 0;      // payload bytes of sends that finished successfully
  uint64_t bytes_received = 0;  // payload bytes of receives that finished successfully
  uint64_t sends_done = 0;
  uint64_t recvs_done = 0;
  uint64_t ops_failed = 0;  // includes cancelled operations
  uint64_t batches_done = 0;
  uint64_t batches_failed = 0;
  uint64_t batches_in_flight = 0;
  LatencyStats batch_latency;
};

// ---- the interface ---------------------------------------------------------------------------

class Transport {
 public:
  virtual ~Transport() = default;

  // "local", "ucx", "nccl", or "fault(<inner>)".
  virtual std::string kind() const = 0;

  // Registers [addr, addr + bytes). Regions of one transport must not overlap. Fails with
  // INVALID_ARGUMENT for empty/null/overlapping ranges and UNIMPLEMENTED for a memory kind the
  // backend cannot move.
  virtual absl::StatusOr<RegionId> RegisterMemory(const MemoryRegion& region) = 0;
  // FAILED_PRECONDITION while operations on the region are in flight; INVALID_ARGUMENT for an
  // unknown id.
  virtual absl::Status DeregisterMemory(RegionId id) = 0;
  virtual absl::StatusOr<MemoryRegion> DescribeMemory(RegionId id) const = 0;

  // The descriptor a peer passes to Connect(). Stable for the lifetime of the transport.
  virtual absl::StatusOr<std::string> LocalEndpoint() = 0;
  // Connects to the peer whose LocalEndpoint() is `descriptor` and names it `peer_id` in
  // TransferOp::peer. INVALID_ARGUMENT for a malformed descriptor or one of another transport
  // kind, ALREADY_EXISTS when `peer_id` is connected and alive; a gone peer may be reconnected.
  virtual absl::Status Connect(absl::string_view peer_id, absl::string_view descriptor) = 0;
  // Tears the link down on both sides: this side's pending operations with the peer fail with
  // CANCELLED, the peer's with UNAVAILABLE. NOT_FOUND for an unknown peer.
  virtual absl::Status Disconnect(absl::string_view peer_id) = 0;

  // Validates and starts a batch. Errors here mean nothing was started.
  virtual absl::StatusOr<TransferHandle> Submit(TransferBatch batch) = 0;
  // Never blocks for long. Unknown or released handles read as kFailed.
  virtual TransferState Poll(TransferHandle handle) = 0;
  // Blocks until the batch is terminal or `deadline` passes. Returns OK (kDone), the batch's
  // first error (kFailed), DEADLINE_EXCEEDED (still in progress; the handle stays valid) or
  // INVALID_ARGUMENT for an unknown handle. Wait(h, absl::InfinitePast()) never blocks.
  virtual absl::Status Wait(TransferHandle handle, absl::Time deadline) = 0;
  // Withdraws the batch's operations that have not started (they fail with CANCELLED); the
  // handle stays valid. No-op for terminal or unknown handles.
  virtual void Cancel(TransferHandle handle) = 0;
  // Forgets the handle. An unfinished batch is cancelled first (see the memory rule above).
  virtual void Release(TransferHandle handle) = 0;

  virtual TransportStats Stats() const = 0;
};

}  // namespace mp::kvtransfer
