// The one conversion between absl::Status and grpc::Status at every service edge.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace mp {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace mp
