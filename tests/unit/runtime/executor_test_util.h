// Helpers of the stage executor tests: executor options, building an executor over a layer slice,
// running a prompt through a chain of executors in chunks, and comparing all-row logits.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/status.h"
#include "model/config.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/stage_executor.h"
#include "runtime/tensor.h"
#include "tests/unit/runtime/tiny_model.h"

namespace mp::testing {

inline StageExecutorOptions ExecutorOptions(int64_t max_tokens = 1024, int64_t block_size = 16) {
  StageExecutorOptions o;
  o.kv_cache.block_size = block_size;
  o.kv_cache.max_tokens = max_tokens;
  return o;
}

// An executor for the layers `layers` of the model (null, and the test fails, on error).
inline std::unique_ptr<StageExecutor> MakeExecutor(const ModelConfig& config,
                                                   const ModelWeights& weights,
                                                   std::shared_ptr<Backend> backend,
                                                   LayerRange layers,
                                                   const StageExecutorOptions& options) {
  absl::StatusOr<std::unique_ptr<StageExecutor>> ex = StageExecutor::Create(
      config, SliceWeights(weights, config, layers), std::move(backend), options);
  EXPECT_TRUE(ex.ok()) << ex.status();
  return ex.ok() ? *std::move(ex) : nullptr;
}

// The values of `t` as host f32 (empty, and the test fails, on error).
inline std::vector<float> ToVector(Backend& backend, const Tensor& t) {
  absl::StatusOr<Tensor> host = backend.ToHostF32(t);
  EXPECT_TRUE(host.ok()) << host.status();
  if (!host.ok()) return {};
  return std::vector<float>(host->data_as<float>(), host->data_as<float>() + host->numel());
}

// All-row logits [ids.size(), vocab] of `ids` (positions from 0) run through `chain` in chunks of
// `chunk`, every chunk told the request's prompt length `prompt_len` (0: unknown).
inline absl::StatusOr<std::vector<float>> RunPrompt(const std::vector<StageExecutor*>& chain,
                                                    uint64_t seq, const std::vector<int32_t>& ids,
                                                    int64_t chunk, int64_t prompt_len = 0) {
  std::vector<float> logits;
  for (int64_t s = 0; s < static_cast<int64_t>(ids.size()); s += chunk) {
    const int64_t n = std::min<int64_t>(chunk, static_cast<int64_t>(ids.size()) - s);
    Tensor x = HostIds(std::span<const int32_t>(ids).subspan(s, n));
    for (StageExecutor* ex : chain) {
      MP_ASSIGN_OR_RETURN(x, ex->RunChunk(seq, s, x, LogitsMode::kAllRows, prompt_len));
    }
    std::vector<float> rows = ToVector(chain.back()->backend(), x);
    logits.insert(logits.end(), rows.begin(), rows.end());
  }
  return logits;
}

// Every row of `got` within `tol` of `want` (RowRelativeError); rows of `vocab` values.
template <typename T>
void ExpectRowsNear(const std::vector<float>& got, const std::vector<T>& want, int64_t vocab,
                    double tol, const std::string& what = "logits") {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t r = 0; r < got.size() / vocab; ++r) {
    ASSERT_LE(RowRelativeError(&got[r * vocab], &want[r * vocab], vocab), tol)
        << what << ": row " << r;
  }
}

}  // namespace mp::testing
