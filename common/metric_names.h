// Names of every Prometheus metric Millipede exports (ecosystem.md §2: millipede_ prefix, base
// units as suffix, _total only on counters). Labels are noted after each name.
#pragma once

namespace mp::metric_names {

// ---- every process ----
inline constexpr char kBuildInfo[] = "millipede_build_info";  // {version, component} = 1

// ---- coordinator: requests ----
inline constexpr char kRequestsAdmitted[] = "millipede_requests_admitted_total";
inline constexpr char kRequestsRejected[] = "millipede_requests_rejected_total";    // {reason}
inline constexpr char kRequestsCancelled[] = "millipede_requests_cancelled_total";  // {reason}
inline constexpr char kRequestsFailed[] = "millipede_requests_failed_total";        // {code}
inline constexpr char kRequestsCompleted[] = "millipede_requests_completed_total";
inline constexpr char kRequestsRunning[] = "millipede_requests_running";
inline constexpr char kRequestsWaiting[] = "millipede_requests_waiting";
inline constexpr char kTimeToFirstToken[] = "millipede_time_to_first_token_seconds";
inline constexpr char kRequestQueueTime[] = "millipede_request_queue_time_seconds";
inline constexpr char kRequestPrefillTime[] = "millipede_request_prefill_time_seconds";
inline constexpr char kRequestPromptTokens[] = "millipede_request_prompt_tokens";
inline constexpr char kPromptTokens[] = "millipede_prompt_tokens_total";
inline constexpr char kGenerationTokens[] = "millipede_generation_tokens_total";
// Prompt tokens / prefill seconds of the last request whose prefill finished.
inline constexpr char kPrefillTokensPerSecond[] = "millipede_prefill_tokens_per_second";

// ---- coordinator: planner and pipeline ----
inline constexpr char kChunkTokens[] = "millipede_chunk_tokens";  // {mode}
inline constexpr char kPlannerTargetSeconds[] = "millipede_planner_target_chunk_seconds";
inline constexpr char kPipelineStageBusy[] =
    "millipede_pipeline_stage_busy_seconds_total";  // {stage}
inline constexpr char kPipelineStageIdle[] =
    "millipede_pipeline_stage_idle_seconds_total";  // {stage}
inline constexpr char kPipelineStageBubbleRatio[] =
    "millipede_pipeline_stage_bubble_ratio";  // {stage}
inline constexpr char kPipelineStageKvBlocksInUse[] =
    "millipede_pipeline_stage_kv_blocks_in_use";  // {stage}
inline constexpr char kPipelineEpoch[] = "millipede_pipeline_epoch";
inline constexpr char kPipelineReady[] = "millipede_pipeline_ready";
inline constexpr char kPipelineRebuilds[] = "millipede_pipeline_rebuilds_total";
inline constexpr char kPipelineStalls[] = "millipede_pipeline_stalls_total";
inline constexpr char kWorkers[] = "millipede_workers";                  // {state}
inline constexpr char kKvBudgetTokens[] = "millipede_kv_budget_tokens";  // {kind=total|free}

// ---- worker (one pipeline stage) ----
inline constexpr char kStageForward[] = "millipede_stage_forward_seconds";  // {kind}
inline constexpr char kStageBusy[] = "millipede_stage_busy_seconds_total";
inline constexpr char kStageIdle[] = "millipede_stage_idle_seconds_total";
inline constexpr char kStageSteps[] = "millipede_stage_steps_total";  // {outcome}
inline constexpr char kStagePrefillTokens[] = "millipede_stage_prefill_tokens_total";
inline constexpr char kStageRequestsHeld[] = "millipede_stage_requests_held";
// = 1 while the worker holds a stage of the current pipeline; joins worker series to a stage.
inline constexpr char kStageInfo[] = "millipede_stage_info";  // {stage, layer_begin, layer_end}
inline constexpr char kActivationBytes[] =
    "millipede_activation_transfer_bytes_total";  // {direction}
inline constexpr char kActivationSeconds[] =
    "millipede_activation_transfer_seconds";  // {direction}
inline constexpr char kKvBlocksInUse[] = "millipede_kv_blocks_in_use";
inline constexpr char kKvBlocksCapacity[] = "millipede_kv_blocks_capacity";
inline constexpr char kKvCacheUsageRatio[] = "millipede_kv_cache_usage_ratio";
// Device bytes the stage set aside for the sparse prefill workspace (0: dense prefill).
inline constexpr char kSparseWorkspaceBytes[] = "millipede_sparse_workspace_bytes";

}  // namespace mp::metric_names
