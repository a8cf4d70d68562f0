// KvAdmission: the cluster's KV budget, in blocks of `block_tokens` tokens, and which requests
// hold how much of it.
//
// A request needs blocks for prompt + max_new_tokens - 1 tokens (the last sampled token is never
// fed back) on every stage; every stage has the same budget (see layer_assignment.h). Admission
// reserves all of it up front, so a request never runs out of KV half way. Not thread-safe.
#pragma once

#include <cstdint>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace mp {

class KvAdmission {
 public:
  // A new pipeline's budget; forgets every reservation.
  void Reset(int64_t blocks_total, int64_t block_tokens);

  static int64_t TokensNeeded(int64_t prompt_tokens, int64_t max_new_tokens) {
    return prompt_tokens + (max_new_tokens > 0 ? max_new_tokens - 1 : 0);
  }
  int64_t BlocksFor(int64_t tokens) const;

  // OK when the request could ever fit the budget; RESOURCE_EXHAUSTED saying what would fit
  // otherwise. FAILED_PRECONDITION before Reset().
  absl::Status CheckCapacity(int64_t prompt_tokens, int64_t max_new_tokens) const;
  // Reserves the request's blocks when they are free now.
  bool TryReserve(uint64_t request, int64_t tokens);
  // Returns a request's blocks (no-op when it holds none).
  void Free(uint64_t request);

  bool configured() const { return block_tokens_ > 0; }
  int64_t block_tokens() const { return block_tokens_; }
  int64_t total_tokens() const { return blocks_total_ * block_tokens_; }
  int64_t free_tokens() const { return (blocks_total_ - blocks_used_) * block_tokens_; }
  int64_t blocks_used() const { return blocks_used_; }

 private:
  int64_t blocks_total_ = 0;
  int64_t block_tokens_ = 0;
  int64_t blocks_used_ = 0;
  absl::flat_hash_map<uint64_t, int64_t> held_;
};

}  // namespace mp
