#include "coordinator/admission.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mp {

void KvAdmission::Reset(int64_t blocks_total, int64_t block_tokens) {
  blocks_total_ = std::max<int64_t>(blocks_total, 0);
  block_tokens_ = std::max<int64_t>(block_tokens, 0);
  blocks_used_ = 0;
  held_.clear();
}

int64_t KvAdmission::BlocksFor(int64_t tokens) const {
  if (block_tokens_ <= 0) return 0;
  return (std::max<int64_t>(tokens, 0) + block_tokens_ - 1) / block_tokens_;
}

absl::Status KvAdmission::CheckCapacity(int64_t prompt_tokens, int64_t max_new_tokens) const {
  if (!configured()) return absl::FailedPreconditionError("no pipeline is built yet");
  const int64_t need = TokensNeeded(prompt_tokens, max_new_tokens);
  if (BlocksFor(need) <= blocks_total_) return absl::OkStatus();
  const int64_t total = total_tokens();
  std::string fit;
  if (prompt_tokens <= total) {
    fit = absl::StrCat("this prompt fits with max_new_tokens <= ", total - prompt_tokens + 1);
  } else {
    fit = absl::StrCat("a prompt of at most ", total, " tokens would fit");
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("the request needs KV for ", need, " tokens (prompt ", prompt_tokens,
                   " + max_new_tokens ", max_new_tokens, "), but the cluster's KV budget holds ",
                   total, " tokens per request; ", fit));
}

bool KvAdmission::TryReserve(uint64_t request, int64_t tokens) {
  if (!configured() || held_.contains(request)) return false;
  const int64_t blocks = BlocksFor(tokens);
  if (blocks_used_ + blocks > blocks_total_) return false;
  blocks_used_ += blocks;
  held_[request] = blocks;
  return true;
}

void KvAdmission::Free(uint64_t request) {
  auto it = held_.find(request);
  if (it == held_.end()) return;
  blocks_used_ -= it->second;
  held_.erase(it);
}

}  // namespace mp
