// KvCache: the paged K/V cache of the layers one stage holds.
//
// Every layer held has a K pool and a V pool of shape [num_blocks, kv_heads, block_size,
// head_dim] in the backend's compute dtype, allocated once at creation from the budget in
// KvCacheOptions. Blocks are handed out from a free list; a sequence (a request id) owns an
// ordered list of blocks, its block table, that is the same for every layer: token t of the
// sequence lives in block table[t / block_size] at row t % block_size of each layer's pools.
//
// A sequence reserves capacity up front (Reserve: admission) and may grow it later; it records
// how many tokens have been written (length). Release returns all its blocks. Blocks of two
// sequences never overlap.
//
// Not thread-safe: one stage executor thread uses it (callers synchronize otherwise).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/tensor.h"

namespace mp {

struct KvCacheOptions {
  // Tokens per block. Must divide the DCA chunk length when the model uses DCA.
  int64_t block_size = 64;
  // The budget: the cache holds at most max_tokens tokens (rounded up to whole blocks) and at
  // most max_bytes bytes over all layers held (K and V). 0 = no limit of that kind; at least
  // one of the two must be set. With both set the smaller one wins.
  int64_t max_tokens = 0;
  int64_t max_bytes = 0;
};

struct KvCacheStats {
  int64_t block_size = 0;
  int64_t blocks_total = 0;
  int64_t blocks_in_use = 0;
  int64_t num_sequences = 0;
  int64_t bytes_per_token = 0;  // K and V over all layers held
  int64_t bytes_total = 0;      // size of all pools
  int64_t blocks_free() const { return blocks_total - blocks_in_use; }
  int64_t tokens_total() const { return blocks_total * block_size; }
};

class KvCache {
 public:
  // Allocates the pools of `layers` on `backend`. INVALID_ARGUMENT for a bad block size (not
  // positive, or not dividing the DCA chunk length), a budget below one block, a bad layer
  // range; RESOURCE_EXHAUSTED when the backend cannot allocate the pools.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(std::shared_ptr<Backend> backend,
                                                         const ModelConfig& config,
                                                         LayerRange layers,
                                                         const KvCacheOptions& options);

  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // Makes sure sequence `seq` can hold `total_tokens` tokens, creating it when new. Takes only
  // the blocks it lacks; never shrinks. RESOURCE_EXHAUSTED (nothing changes) when the free
  // blocks do not suffice, saying how many tokens would fit for this sequence.
  absl::Status Reserve(uint64_t seq, int64_t total_tokens);
  // Frees all blocks of `seq` and forgets it. NOT_FOUND for an unknown sequence.
  absl::Status Release(uint64_t seq);

  bool Contains(uint64_t seq) const { return sequences_.contains(seq); }
  // Tokens written so far (0 for an unknown sequence).
  int64_t Length(uint64_t seq) const;
  // Tokens the sequence's blocks can hold (0 for an unknown sequence).
  int64_t Capacity(uint64_t seq) const;
  // Records that tokens [0, length) are written. FAILED_PRECONDITION beyond the capacity,
  // NOT_FOUND for an unknown sequence.
  absl::Status SetLength(uint64_t seq, int64_t length);
  // The sequence's blocks, in order.
  absl::StatusOr<std::vector<int32_t>> BlockTable(uint64_t seq) const;

  // The pools of model layer `layer` (in [layers().begin, layers().end)) with the block table
  // of `seq`, for Backend::WriteKv / Backend::Attention.
  absl::StatusOr<KvLayerView> LayerView(uint64_t seq, int64_t layer) const;

  KvCacheStats stats() const;
  LayerRange layers() const { return layers_; }
  int64_t block_size() const { return block_size_; }
  // Tokens a new sequence could reserve right now.
  int64_t FreeTokens() const { return static_cast<int64_t>(free_.size()) * block_size_; }

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    Tensor table;  // [blocks.size()] i32 on the backend
    int64_t length = 0;
  };

  KvCache() = default;

  std::shared_ptr<Backend> backend_;
  LayerRange layers_;
  int64_t block_size_ = 0;
  int64_t num_blocks_ = 0;
  int64_t kv_heads_ = 0;
  int64_t head_dim_ = 0;
  int64_t bytes_per_token_ = 0;
  std::vector<Tensor> k_pools_;  // per layer held: [num_blocks, kv_heads, block_size, head_dim]
  std::vector<Tensor> v_pools_;
  std::vector<int32_t> free_;  // free block ids; the back is handed out first
  absl::flat_hash_map<uint64_t, Sequence> sequences_;
};

}  // namespace mp
