// Options of `millipede worker` (flags of the same names, see cli/worker_command.cc).
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "model/sparse_attention_config.h"

namespace mp {

struct WorkerOptions {
  std::string listen = "127.0.0.1:0";  // StageWorker service; port 0 picks one
  std::string advertise;               // address registered with the coordinator (default: listen)
  std::string coordinator = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:0";  // "" disables /metrics
  std::string role = "prefill";
  std::string device;         // overrides the coordinator's choice when set ("cpu", "cuda:N")
  std::string model_dir;      // overrides the coordinator's model directory when set
  uint64_t memory_bytes = 0;  // for weights + KV + activations; 0: a quarter of free RAM (cpu)
  int preferred_stage = -1;
  std::string worker_id;  // default: <host>-<pid>
  int send_buffers = 4;
  absl::Duration activation_timeout = absl::Seconds(600);
  // How long ConnectPeers waits for the previous stage's link probe (ActivationLinkOptions).
  absl::Duration connect_timeout = absl::Seconds(30);
  absl::Duration drain_timeout = absl::Seconds(30);
  // Tests: delay every activation receive by this much (see ActivationLinkOptions).
  absl::Duration inject_receive_delay = absl::ZeroDuration();
  // Tests: the activations of this request (the coordinator's numeric id) never arrive: their
  // receives are dropped (a lost transfer). 0: none.
  uint64_t inject_drop_request = 0;
  // Tests: the link probes of the first this many pipeline epochs never arrive here (a link
  // that carries nothing when the pipeline is built).
  int inject_drop_link_probes = 0;
  // Vertical-slash sparse prefill (--sparse-config, --sparse-threshold, --sparse-last-q,
  // --no-sparse; cli/sparse_flags.h): by default the model directory's file, vLLM semantics.
  SparsePrefillRequest sparse;
};

}  // namespace mp
