// Shutdown signals for the server commands. BlockShutdownSignals() must run on the main thread
// before any other thread starts, so that every thread inherits the mask and SIGINT / SIGTERM
// (and SIGCHLD, when asked) are only ever taken by WaitForSignal().
#pragma once

#include "absl/time/time.h"

namespace mp {

void BlockShutdownSignals(bool with_sigchld = false);
// The signal taken (SIGINT, SIGTERM, SIGCHLD), or 0 when `timeout` passed first.
int WaitForSignal(absl::Duration timeout);

}  // namespace mp
