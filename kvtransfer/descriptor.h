// Endpoint descriptors: the opaque blobs that Transport::LocalEndpoint() returns and that peers
// pass to Transport::Connect() after the coordinator has carried them across.
//
// Wire format (little endian), version 1:
//   "MPKV" | u8 version | u8 kind length | kind | u64 instance id | u32 pid | u8 host length |
//   host | u8 scope length | scope | u32 payload length | payload | u32 FNV-1a checksum of
//   everything before it
// The payload is backend specific (a UCP worker address, an ncclUniqueId, nothing for local).
// Decoding never trusts the blob: every length is bounds-checked and every problem is reported
// as INVALID_ARGUMENT naming what is wrong.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mp::kvtransfer {

struct EndpointDescriptor {
  std::string kind;          // "local", "ucx", "nccl"
  uint64_t instance_id = 0;  // random, unique per transport object; never 0
  uint32_t pid = 0;          // process that owns the transport (diagnostics, local checks)
  std::string host;          // its host name (diagnostics)
  // Boot id and pid namespace of that process: equal scopes mean the two processes share a
  // machine and can see each other's pids (see ProcessScope()).
  std::string scope;
  std::string payload;  // backend specific
};

inline constexpr uint8_t kDescriptorVersion = 1;
inline constexpr size_t kMaxDescriptorPayload = 1 << 20;

std::string EncodeDescriptor(const EndpointDescriptor& descriptor);

// Parses `blob` and checks that it describes a transport of `expected_kind`.
absl::StatusOr<EndpointDescriptor> DecodeDescriptor(absl::string_view blob,
                                                    absl::string_view expected_kind);

// A fresh random non-zero id for a transport object.
uint64_t NewInstanceId();

// This process's host name ("unknown" when it cannot be read).
std::string LocalHostName();

// "<boot id>/<pid namespace>" of this process, or "" when /proc cannot tell.
std::string ProcessScope();

// Whether process `pid` of this scope is still running (false for zombies).
bool ProcessAlive(uint32_t pid);

}  // namespace mp::kvtransfer
