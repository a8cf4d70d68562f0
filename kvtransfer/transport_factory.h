// NewTransport: creates a transport backend by name.
//
//   "local"  in-process memcpy between Transport objects of one process (tests)
//   "ucx"    UCP tagged messages over host memory (TCP, shared memory, RDMA where present)
//   "nccl"   ncclSend/ncclRecv between GPUs (only when built with CUDA and NCCL)
//
// Unknown kinds are INVALID_ARGUMENT; a known backend left out of this build is UNIMPLEMENTED.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvtransfer/transport.h"
#include "kvtransfer/transport_options.h"

namespace mp::kvtransfer {

absl::StatusOr<std::unique_ptr<Transport>> NewTransport(absl::string_view kind,
                                                        const TransportOptions& options = {});

// The kinds this build can create, e.g. {"local", "ucx"}.
std::vector<std::string> AvailableTransports();

}  // namespace mp::kvtransfer
