#include "kvtransfer/transport_factory.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kvtransfer/local_transport.h"
#ifdef MP_KVTRANSFER_HAVE_UCX
#include "kvtransfer/ucx_transport.h"
#endif
#ifdef MP_KVTRANSFER_HAVE_NCCL
#include "kvtransfer/nccl_transport.h"
#endif

namespace mp::kvtransfer {

std::vector<std::string> AvailableTransports() {
  std::vector<std::string> kinds = {"local"};
#ifdef MP_KVTRANSFER_HAVE_UCX
  kinds.push_back("ucx");
#endif
#ifdef MP_KVTRANSFER_HAVE_NCCL
  kinds.push_back("nccl");
#endif
  return kinds;
}

absl::StatusOr<std::unique_ptr<Transport>> NewTransport(absl::string_view kind,
                                                        const TransportOptions& options) {
  if (kind == "local") return std::make_unique<LocalTransport>(options.limits);
  if (kind == "ucx") {
#ifdef MP_KVTRANSFER_HAVE_UCX
    return UcxTransport::Create(options);
#else
    return absl::UnimplementedError(
        "transport 'ucx' is not compiled into this build (UCX was not found at configure time)");
#endif
  }
  if (kind == "nccl") {
#ifdef MP_KVTRANSFER_HAVE_NCCL
    return NcclTransport::Create(options);
#else
    return absl::UnimplementedError(
        "transport 'nccl' is not compiled into this build (it needs CUDA and NCCL)");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown transport kind '", kind, "'; expected one of: local, ucx, nccl"));
}

}  // namespace mp::kvtransfer
