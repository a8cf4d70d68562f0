// RunWorker: the `millipede worker` process — serves StageWorker (with health and reflection)
// and /metrics, registers with the coordinator, and on SIGINT / SIGTERM drains: health
// NOT_SERVING, tells the coordinator, waits (up to drain_timeout) until its requests are done,
// then stops.
#pragma once

#include "absl/status/status.h"
#include "worker/worker_options.h"

namespace mp {

// Blocks until a shutdown signal; call BlockShutdownSignals() first (before any thread starts).
absl::Status RunWorker(const WorkerOptions& options);

// A quarter of MemAvailable (the default memory size of a CPU worker); 0 when unknown.
uint64_t DefaultCpuMemoryBytes();

}  // namespace mp
