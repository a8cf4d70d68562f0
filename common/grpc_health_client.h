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
absl::StatusOr<bool> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& service, absl::Duration timeout);

// Polls CheckHealth until SERVING or `timeout` passes (DEADLINE_EXCEEDED naming the last
// error).
absl::Status WaitForServing(const std::shared_ptr<grpc::Channel>& channel,
                            const std::string& service, absl::Duration timeout);

}  // namespace mp
