// A client of grpc.health.v1.Health: is a server (or one of its services) SERVING?
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace mp {

// True when `service` ("" = the whole server) reports SERVING, false for NOT_SERVING/UNKNOWN;
// the RPC's error otherwise (UNAVAILABLE: not reachable, NOT_FOUND: unknown service).
//
// `wait_for_ready`: the call waits (up to `timeout`) for the channel to connect instead of
// failing at once while the channel is in TRANSIENT_FAILURE. Pollers of a server that is still
// starting want it: once a connection attempt has failed, gRPC retries it only while some call
// waits on the channel (or from its backup poller, every 5 s), so fail-fast checks in a loop
// see the server up to 5 s late.
absl::StatusOr<bool> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& service, absl::Duration timeout,
                                 bool wait_for_ready = false);

// Polls CheckHealth (waiting for the channel to connect) until SERVING or `timeout` passes
// (DEADLINE_EXCEEDED naming the last error).
absl::Status WaitForServing(const std::shared_ptr<grpc::Channel>& channel,
                            const std::string& service, absl::Duration timeout);

}  // namespace mp
