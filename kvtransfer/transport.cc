#include "kvtransfer/transport.h"

#include "absl/strings/str_cat.h"

namespace mp::kvtransfer {

absl::string_view MemoryKindName(MemoryKind kind) {
  switch (kind) {
    case MemoryKind::kHost:
      return "host";
    case MemoryKind::kCuda:
      return "cuda";
  }
  return "unknown";
}

absl::string_view TransferKindName(TransferKind kind) {
  switch (kind) {
    case TransferKind::kActivations:
      return "activations";
    case TransferKind::kKv:
      return "kv";
    case TransferKind::kLogits:
      return "logits";
    case TransferKind::kOther:
      return "other";
  }
  return "unknown";
}

absl::string_view TransferStateName(TransferState state) {
  switch (state) {
    case TransferState::kInProgress:
      return "in_progress";
    case TransferState::kDone:
      return "done";
    case TransferState::kFailed:
      return "failed";
  }
  return "unknown";
}

std::string ToString(const TransferTag& tag) {
  return absl::StrCat("req=", tag.request_id, " chunk=", tag.chunk_index,
                      " kind=", TransferKindName(tag.kind), " part=", tag.part);
}

TransferOp TransferOp::Send(absl::string_view peer, const TransferTag& tag, const void* addr,
                            size_t bytes) {
  TransferOp op;
  op.direction = TransferDirection::kSend;
  op.peer = std::string(peer);
  op.tag = tag;
  // Sends never write through the pointer; the field is shared with receives.
  op.addr = const_cast<void*>(addr);
  op.bytes = bytes;
  return op;
}

TransferOp TransferOp::Recv(absl::string_view peer, const TransferTag& tag, void* addr,
                            size_t bytes) {
  TransferOp op;
  op.direction = TransferDirection::kRecv;
  op.peer = std::string(peer);
  op.tag = tag;
  op.addr = addr;
  op.bytes = bytes;
  return op;
}

}  // namespace mp::kvtransfer
