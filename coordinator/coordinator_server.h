// RunCoordinator: the `millipede coordinator` process — serves millipede.v1.Coordinator and
// WorkerRegistry (with health and reflection) and /metrics, builds the pipeline from the workers
// that register, and on SIGINT / SIGTERM stops accepting requests, lets running ones finish for
// up to drain_timeout, then fails the rest with UNAVAILABLE and exits.
#pragma once

#include "absl/status/status.h"
#include "coordinator/coordinator_options.h"

namespace mp {

// Blocks until a shutdown signal; call BlockShutdownSignals() first (before any thread starts).
absl::Status RunCoordinator(const CoordinatorOptions& options);

}  // namespace mp
