// Server setup shared by every Millipede gRPC server: message limits sized for 1M-token
// requests, grpc.health.v1 and server reflection.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/grpc_channel.h"

namespace mp {

struct StartedServer {
  std::unique_ptr<grpc::Server> server;
  std::string address;  // host:port actually bound (the port filled in when "host:0" was asked)
};

// Builds and starts a server on `listen` ("host:port"; port 0 picks one) serving `services`,
// the default health service ("" SERVING; every name in `health_services` NOT_SERVING until
// SetServing()) and reflection. UNAVAILABLE when the address cannot be bound.
absl::StatusOr<StartedServer> StartGrpcServer(const std::string& listen,
                                              const std::vector<grpc::Service*>& services,
                                              const std::vector<std::string>& health_services,
                                              int max_message_bytes = kDefaultMaxMessageBytes);

// Sets the health status of `service` ("" is the whole server).
void SetServing(grpc::Server& server, const std::string& service, bool serving);

}  // namespace mp
