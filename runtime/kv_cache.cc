#include "runtime/kv_cache.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace mp {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(std::shared_ptr<Backend> backend,
                                                         const ModelConfig& config,
                                                         LayerRange layers,
                                                         const KvCacheOptions& options) {
  if (backend == nullptr) return absl::InvalidArgumentError("KV cache: no backend given");
  if (layers.begin < 0 || layers.end <= layers.begin || layers.end > config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: layer range [", layers.begin, ", ", layers.end,
        ") is not a non-empty part of the model's ", config.num_hidden_layers, " layers"));
  }
  if (config.num_key_value_heads <= 0 || config.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: num_key_value_heads (",
                                                   config.num_key_value_heads, ") and head_dim (",
                                                   config.head_dim, ") must be positive"));
  }
  if (options.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: block_size must be positive, got ", options.block_size));
  }
  if (config.dual_chunk.has_value()) {
    const int64_t chunk_len = config.dual_chunk->chunk_len();
    if (chunk_len <= 0 || chunk_len % options.block_size != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV cache: block_size ", options.block_size,
                       " must divide the dual chunk attention chunk length ", chunk_len,
                       " (chunk_size - local_size)"));
    }
  }
  if (options.max_tokens < 0 || options.max_bytes < 0 ||
      (options.max_tokens == 0 && options.max_bytes == 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: the budget needs max_tokens > 0 or max_bytes > 0 (got max_tokens ",
                     options.max_tokens, ", max_bytes ", options.max_bytes, ")"));
  }

  auto cache = std::unique_ptr<KvCache>(new KvCache());
  cache->backend_ = std::move(backend);
  cache->layers_ = layers;
  cache->block_size_ = options.block_size;
  cache->kv_heads_ = config.num_key_value_heads;
  cache->head_dim_ = config.head_dim;
  const int64_t num_layers = layers.end - layers.begin;
  const int64_t elem = static_cast<int64_t>(DTypeSize(cache->backend_->compute_dtype()));
  cache->bytes_per_token_ = 2 * num_layers * cache->kv_heads_ * cache->head_dim_ * elem;
  const int64_t bytes_per_block = cache->bytes_per_token_ * cache->block_size_;

  int64_t blocks = std::numeric_limits<int32_t>::max();
  if (options.max_tokens > 0)
    blocks = std::min(blocks, CeilDiv(options.max_tokens, cache->block_size_));
  if (options.max_bytes > 0) blocks = std::min(blocks, options.max_bytes / bytes_per_block);
  if (blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: max_bytes ", options.max_bytes,
                                                   " is below one block (", bytes_per_block,
                                                   " bytes: ", cache->block_size_, " tokens x ",
                                                   cache->bytes_per_token_, " bytes per token)"));
  }
  cache->num_blocks_ = blocks;

  const DType dtype = cache->backend_->compute_dtype();
  const std::vector<int64_t> pool_shape = {blocks, cache->kv_heads_, cache->block_size_,
                                           cache->head_dim_};
  for (int64_t l = 0; l < num_layers; ++l) {
    for (auto* pools : {&cache->k_pools_, &cache->v_pools_}) {
      absl::StatusOr<Tensor> pool = cache->backend_->Allocate(pool_shape, dtype);
      if (!pool.ok()) {
        return Annotate(pool.status(), absl::StrCat("KV cache: allocating ", blocks,
                                                    " blocks for layer ", layers.begin + l));
      }
      pools->push_back(*std::move(pool));
    }
  }
  cache->free_.reserve(blocks);
  for (int64_t b = blocks - 1; b >= 0; --b) cache->free_.push_back(static_cast<int32_t>(b));
  return cache;
}

absl::Status KvCache::Reserve(uint64_t seq, int64_t total_tokens) {
  if (total_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: sequence ", seq, " asks for ", total_tokens, " tokens"));
  }
  auto it = sequences_.find(seq);
  const int64_t held = it == sequences_.end() ? 0 : static_cast<int64_t>(it->second.blocks.size());
  const int64_t wanted = CeilDiv(total_tokens, block_size_);
  if (it != sequences_.end() && wanted <= held) return absl::OkStatus();
  const int64_t missing = wanted - held;
  const int64_t free_blocks = static_cast<int64_t>(free_.size());
  if (missing > free_blocks) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: sequence ", seq, " needs ", total_tokens, " tokens (", wanted,
                     " blocks of ", block_size_, ") but only ", (held + free_blocks) * block_size_,
                     " tokens fit (", free_blocks, " of ", num_blocks_, " blocks free",
                     held > 0 ? absl::StrCat(", ", held, " already held") : "", ")"));
  }

  std::vector<int32_t> blocks = it == sequences_.end() ? std::vector<int32_t>() : it->second.blocks;
  for (int64_t i = 0; i < missing; ++i) {
    blocks.push_back(free_[free_.size() - 1 - i]);
  }
  // Upload the new table before committing anything, so a failure leaves no trace.
  Tensor host = Tensor::Host({wanted}, DType::kI32);
  std::copy(blocks.begin(), blocks.end(), host.data_as<int32_t>());
  MP_ASSIGN_OR_RETURN(Tensor table, backend_->Allocate({wanted}, DType::kI32));
  MP_RETURN_IF_ERROR(backend_->CopyFromHost(host, table));

  free_.resize(free_.size() - missing);
  Sequence& s = sequences_[seq];
  s.blocks = std::move(blocks);
  s.table = std::move(table);
  return absl::OkStatus();
}

absl::Status KvCache::Release(uint64_t seq) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("KV cache: no sequence ", seq));
  }
  const std::vector<int32_t>& blocks = it->second.blocks;
  free_.insert(free_.end(), blocks.rbegin(), blocks.rend());
  sequences_.erase(it);
  return absl::OkStatus();
}

int64_t KvCache::Length(uint64_t seq) const {
  auto it = sequences_.find(seq);
  return it == sequences_.end() ? 0 : it->second.length;
}

int64_t KvCache::Capacity(uint64_t seq) const {
  auto it = sequences_.find(seq);
  return it == sequences_.end() ? 0 : static_cast<int64_t>(it->second.blocks.size()) * block_size_;
}

absl::Status KvCache::SetLength(uint64_t seq, int64_t length) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("KV cache: no sequence ", seq));
  }
  const int64_t capacity = static_cast<int64_t>(it->second.blocks.size()) * block_size_;
  if (length < 0 || length > capacity) {
    return absl::FailedPreconditionError(absl::StrCat("KV cache: sequence ", seq, " length ",
                                                      length, " is outside its capacity of ",
                                                      capacity, " tokens"));
  }
  it->second.length = length;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> KvCache::BlockTable(uint64_t seq) const {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("KV cache: no sequence ", seq));
  }
  return it->second.blocks;
}

absl::StatusOr<KvLayerView> KvCache::LayerView(uint64_t seq, int64_t layer) const {
  if (layer < layers_.begin || layer >= layers_.end) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: layer ", layer,
                                                   " is not held (layers [", layers_.begin, ", ",
                                                   layers_.end, "))"));
  }
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("KV cache: no sequence ", seq));
  }
  KvLayerView view;
  view.k = k_pools_[layer - layers_.begin];
  view.v = v_pools_[layer - layers_.begin];
  view.block_table = it->second.table;
  view.block_size = block_size_;
  return view;
}

KvCacheStats KvCache::stats() const {
  KvCacheStats s;
  s.block_size = block_size_;
  s.blocks_total = num_blocks_;
  s.blocks_in_use = num_blocks_ - static_cast<int64_t>(free_.size());
  s.num_sequences = static_cast<int64_t>(sequences_.size());
  s.bytes_per_token = bytes_per_token_;
  s.bytes_total = bytes_per_token_ * block_size_ * num_blocks_;
  return s;
}

}  // namespace mp
