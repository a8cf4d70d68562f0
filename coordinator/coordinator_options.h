// Options of `millipede coordinator` (flags of the same names, see cli/coordinator_command.cc).
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "coordinator/chunk_planner.h"
#include "coordinator/stall_watchdog.h"
#include "model/sparse_attention_config.h"

namespace mp {

struct CoordinatorOptions {
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9400";  // "" disables /metrics

  // ---- model ----
  std::string model_dir;     // HF directory (config.json, weights, tokenizer.json)
  std::string model_preset;  // "qwen2.5-7b-instruct-1m" / "qwen2.5-14b-instruct-1m": random weights
  bool random_weights = false;
  uint64_t random_seed = 0;
  // Sparse prefill as the workers run it (their --sparse-config / --no-sparse ...): the
  // coordinator counts its workspace in each stage's memory (docs/deploy.md).
  SparsePrefillRequest sparse;

  // ---- pipeline ----
  int num_stages = 0;  // 0: every registered prefill worker
  std::string device = "cpu";
  std::string transport = "ucx";
  std::string ucx_transports;   // UCX_TLS for the stages, e.g. "tcp"
  std::string ucx_net_devices;  // UCX_NET_DEVICES, e.g. "lo"
  int64_t kv_tokens = 0;        // per-stage KV budget; 0: what memory allows, at most 2 contexts
  int64_t kv_block_tokens = 64;
  int max_inflight = 0;  // steps in flight in the pipeline; 0: stages + 1
  // Build a pipeline with fewer stages than num_stages when that many workers are not back
  // this long after a failure.
  absl::Duration rebuild_wait = absl::Seconds(3);

  // ---- requests ----
  int64_t max_context = 0;       // prompt + max_new_tokens; 0: the model's max_position_embeddings
  int64_t max_queue_tokens = 0;  // KV tokens of waiting requests; 0: 4 x max_context
  int max_queued_requests = 256;
  absl::Duration request_timeout = absl::Hours(1);  // cap on requests without a deadline
  int64_t max_message_bytes = 64 << 20;

  // ---- chunk planner ----
  ChunkPlannerOptions planner;

  // ---- health ----
  absl::Duration health_interval = absl::Seconds(1);
  int health_failures = 2;  // consecutive failed checks before a worker is DOWN
  // Hard cap on one step's RunChunk call (queueing behind earlier steps included).
  absl::Duration step_timeout = absl::Minutes(30);
  // The no-progress bound on the oldest step in flight (stall_watchdog.h).
  StallOptions stall;
  absl::Duration load_timeout = absl::Minutes(15);
  absl::Duration finished_retention = absl::Minutes(10);
  // On SIGTERM: how long running requests may finish before they are failed.
  absl::Duration drain_timeout = absl::Seconds(10);
};

}  // namespace mp
