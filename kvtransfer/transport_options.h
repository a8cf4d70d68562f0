// Options of the transport backends, shared by NewTransport() and the backend constructors.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "kvtransfer/transport_base.h"

namespace mp::kvtransfer {

struct TransportOptions {
  BatchLimits limits;
  // How long destruction waits for operations that are already moving bytes.
  absl::Duration shutdown_timeout = absl::Seconds(10);

  // ---- ucx ----
  // UCX_TLS for this transport, e.g. "tcp", "sm" (shared memory), "tcp,sm,self". Empty: the
  // environment's UCX_TLS, else UCX's default ("all").
  std::string ucx_transports;
  // UCX_NET_DEVICES, e.g. "lo" or "eth0". Empty: the environment's, else all devices.
  std::string ucx_net_devices;
  // How often idle connections are probed (UCX keepalive; the pid watch of shared-memory links)
  // so that a crashed peer is noticed.
  absl::Duration ucx_keepalive_interval = absl::Seconds(1);
  // Further UCX settings by name without the UCX_ prefix, e.g. {"RNDV_THRESH", "64k"}.
  std::vector<std::pair<std::string, std::string>> ucx_config;

  // ---- nccl ----
  int cuda_device = 0;
  // Connect() waits this long for the peer's Connect() to form the communicator.
  absl::Duration nccl_connect_timeout = absl::Seconds(120);
};

}  // namespace mp::kvtransfer
