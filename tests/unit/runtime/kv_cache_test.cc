// KvCache: budget and block accounting, exhaustion errors, release, and that blocks of different
// sequences never alias.
#include "runtime/kv_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "common/status_matchers.h"
#include "tests/unit/runtime/tiny_model.h"

namespace mp {
namespace {

using ::absl::StatusCode;

class KvCacheTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<KvCache>> Make(KvCacheOptions options,
                                                LayerRange layers = {0, 2}) {
    return KvCache::Create(backend_, config_, layers, options);
  }

  ModelConfig config_ = testing::TinyConfig({});  // 2 layers, 2 kv heads, head_dim 16
  std::shared_ptr<Backend> backend_ = NewCpuBackend();
  // K and V, 2 layers, 2 kv heads, head_dim 16, f32.
  const int64_t bytes_per_token_ = 2 * 2 * 2 * 16 * 4;
};

TEST_F(KvCacheTest, BudgetInTokensRoundsUpToBlocks) {
  MP_ASSERT_OK_AND_ASSIGN(auto cache, Make({.block_size = 16, .max_tokens = 100}));
  const KvCacheStats s = cache->stats();
  EXPECT_EQ(s.block_size, 16);
  EXPECT_EQ(s.blocks_total, 7);
  EXPECT_EQ(s.blocks_in_use, 0);
  EXPECT_EQ(s.blocks_free(), 7);
  EXPECT_EQ(s.tokens_total(), 112);
  EXPECT_EQ(s.bytes_per_token, bytes_per_token_);
  EXPECT_EQ(s.bytes_total, 112 * bytes_per_token_);
  EXPECT_EQ(cache->FreeTokens(), 112);
}

TEST_F(KvCacheTest, BudgetInBytesRoundsDownAndTheSmallerBudgetWins) {
  const int64_t block_bytes = 16 * bytes_per_token_;
  MP_ASSERT_OK_AND_ASSIGN(auto by_bytes,
                          Make({.block_size = 16, .max_bytes = 3 * block_bytes + block_bytes / 2}));
  EXPECT_EQ(by_bytes->stats().blocks_total, 3);
  MP_ASSERT_OK_AND_ASSIGN(
      auto both, Make({.block_size = 16, .max_tokens = 1000, .max_bytes = 5 * block_bytes}));
  EXPECT_EQ(both->stats().blocks_total, 5);
  MP_ASSERT_OK_AND_ASSIGN(auto both2,
                          Make({.block_size = 16, .max_tokens = 20, .max_bytes = 5 * block_bytes}));
  EXPECT_EQ(both2->stats().blocks_total, 2);
  // One layer held: half the bytes per token.
  MP_ASSERT_OK_AND_ASSIGN(auto one_layer, Make({.block_size = 16, .max_tokens = 16}, {1, 2}));
  EXPECT_EQ(one_layer->stats().bytes_per_token, bytes_per_token_ / 2);
}

TEST_F(KvCacheTest, RejectsBadOptions) {
  MP_EXPECT_ERROR(Make({.block_size = 0, .max_tokens = 64}), StatusCode::kInvalidArgument,
                  "block_size must be positive");
  MP_EXPECT_ERROR(Make({.block_size = 16}), StatusCode::kInvalidArgument,
                  "max_tokens > 0 or max_bytes > 0");
  MP_EXPECT_ERROR(Make({.block_size = 16, .max_bytes = 100}), StatusCode::kInvalidArgument,
                  "below one block");
  MP_EXPECT_ERROR(Make({.block_size = 16, .max_tokens = 64}, {1, 3}), StatusCode::kInvalidArgument,
                  "layer range [1, 3)");
  MP_EXPECT_ERROR(Make({.block_size = 16, .max_tokens = 64}, {1, 1}), StatusCode::kInvalidArgument,
                  "layer range [1, 1)");
}

TEST_F(KvCacheTest, BlockSizeMustDivideTheDcaChunkLength) {
  DualChunkConfig dca;
  dca.chunk_size = 64;
  dca.local_size = 16;  // chunk length 48
  dca.original_max_position_embeddings = 32;
  config_.dual_chunk = dca;
  MP_EXPECT_ERROR(Make({.block_size = 64, .max_tokens = 256}), StatusCode::kInvalidArgument,
                  "block_size 64 must divide the dual chunk attention chunk length 48");
  MP_EXPECT_ERROR(Make({.block_size = 32, .max_tokens = 256}), StatusCode::kInvalidArgument,
                  "chunk length 48");
  MP_EXPECT_OK(Make({.block_size = 16, .max_tokens = 256}));
  MP_EXPECT_OK(Make({.block_size = 48, .max_tokens = 256}));
}

TEST_F(KvCacheTest, ReserveGrowsReleaseReturnsBlocks) {
  MP_ASSERT_OK_AND_ASSIGN(auto cache, Make({.block_size = 16, .max_tokens = 112}));  // 7 blocks
  MP_ASSERT_OK(cache->Reserve(1, 20));
  EXPECT_TRUE(cache->Contains(1));
  EXPECT_EQ(cache->Capacity(1), 32);
  EXPECT_EQ(cache->Length(1), 0);
  EXPECT_EQ(cache->stats().blocks_in_use, 2);
  MP_ASSERT_OK(cache->Reserve(1, 30));  // fits in what it holds
  EXPECT_EQ(cache->stats().blocks_in_use, 2);
  MP_ASSERT_OK(cache->Reserve(1, 10));  // never shrinks
  EXPECT_EQ(cache->Capacity(1), 32);
  MP_ASSERT_OK(cache->Reserve(1, 33));
  EXPECT_EQ(cache->stats().blocks_in_use, 3);
  MP_ASSERT_OK(cache->Reserve(2, 64));
  EXPECT_EQ(cache->stats().blocks_in_use, 7);
  EXPECT_EQ(cache->stats().num_sequences, 2);
  EXPECT_EQ(cache->FreeTokens(), 0);

  MP_ASSERT_OK(cache->Release(2));
  EXPECT_FALSE(cache->Contains(2));
  EXPECT_EQ(cache->stats().blocks_in_use, 3);
  EXPECT_EQ(cache->stats().num_sequences, 1);
  MP_ASSERT_OK(cache->Reserve(3, 64));  // the released blocks are reusable
  EXPECT_EQ(cache->stats().blocks_in_use, 7);
  MP_ASSERT_OK(cache->Release(1));
  MP_ASSERT_OK(cache->Release(3));
  EXPECT_EQ(cache->stats().blocks_in_use, 0);
  EXPECT_EQ(cache->stats().num_sequences, 0);
  MP_EXPECT_ERROR(cache->Release(3), StatusCode::kNotFound, "no sequence 3");
}

TEST_F(KvCacheTest, ExhaustionSaysWhatFitsAndChangesNothing) {
  MP_ASSERT_OK_AND_ASSIGN(auto cache, Make({.block_size = 16, .max_tokens = 112}));  // 7 blocks
  MP_ASSERT_OK(cache->Reserve(1, 48));                                               // 3 blocks
  MP_ASSERT_OK(cache->Reserve(2, 16));  // 1 block; 3 free
  MP_EXPECT_ERROR(cache->Reserve(3, 49), StatusCode::kResourceExhausted,
                  "sequence 3 needs 49 tokens (4 blocks of 16) but only 48 tokens fit");
  EXPECT_FALSE(cache->Contains(3));
  MP_EXPECT_ERROR(cache->Reserve(1, 200), StatusCode::kResourceExhausted,
                  "only 96 tokens fit (3 of 7 blocks free, 3 already held)");
  EXPECT_EQ(cache->Capacity(1), 48);
  EXPECT_EQ(cache->stats().blocks_in_use, 4);
  MP_EXPECT_OK(cache->Reserve(3, 48));
  MP_EXPECT_ERROR(cache->Reserve(4, 1), StatusCode::kResourceExhausted, "only 0 tokens fit");
  MP_EXPECT_ERROR(cache->Reserve(4, -1), StatusCode::kInvalidArgument, "-1 tokens");
}

TEST_F(KvCacheTest, LengthAndLayerViews) {
  MP_ASSERT_OK_AND_ASSIGN(auto cache, Make({.block_size = 16, .max_tokens = 64}, {1, 2}));
  MP_ASSERT_OK(cache->Reserve(9, 40));
  MP_ASSERT_OK(cache->SetLength(9, 40));
  EXPECT_EQ(cache->Length(9), 40);
  MP_EXPECT_ERROR(cache->SetLength(9, 49), StatusCode::kFailedPrecondition,
                  "outside its capacity of 48");
  MP_EXPECT_ERROR(cache->SetLength(8, 1), StatusCode::kNotFound, "no sequence 8");
  MP_EXPECT_ERROR(cache->LayerView(9, 0), StatusCode::kInvalidArgument, "layer 0 is not held");
  MP_EXPECT_ERROR(cache->LayerView(8, 1), StatusCode::kNotFound, "no sequence 8");
  MP_ASSERT_OK_AND_ASSIGN(KvLayerView view, cache->LayerView(9, 1));
  EXPECT_EQ(view.block_size, 16);
  EXPECT_EQ(view.k.shape(), (std::vector<int64_t>{4, 2, 16, 16}));
  EXPECT_EQ(view.v.shape(), view.k.shape());
  EXPECT_NE(view.k.data(), view.v.data());
  MP_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> blocks, cache->BlockTable(9));
  ASSERT_EQ(view.block_table.numel(), 3);
  ASSERT_EQ(blocks.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(view.block_table.data_as<int32_t>()[i], blocks[i]);
}

// Random reserve/grow/release traffic: the block tables of live sequences are always disjoint,
// inside the pool, and add up to the blocks in use.
TEST_F(KvCacheTest, BlocksOfDifferentSequencesNeverAlias) {
  MP_ASSERT_OK_AND_ASSIGN(auto cache, Make({.block_size = 8, .max_tokens = 8 * 40}));
  std::mt19937_64 rng(7);
  std::map<uint64_t, int64_t> capacity;  // expected tokens per live sequence
  for (int step = 0; step < 2000; ++step) {
    const uint64_t seq = rng() % 12;
    if (rng() % 3 == 0) {
      absl::Status s = cache->Release(seq);
      EXPECT_EQ(s.ok(), capacity.erase(seq) == 1) << s;
    } else {
      const int64_t tokens = static_cast<int64_t>(rng() % 120);
      int64_t in_use = 0;
      for (const auto& [id, cap] : capacity) in_use += cap / 8;
      const int64_t have = capacity.contains(seq) ? capacity[seq] / 8 : 0;
      const int64_t want = std::max<int64_t>((tokens + 7) / 8, have);
      absl::Status s = cache->Reserve(seq, tokens);
      if (in_use - have + want <= 40) {
        ASSERT_TRUE(s.ok()) << s;
        capacity[seq] = want * 8;
      } else {
        ASSERT_EQ(s.code(), StatusCode::kResourceExhausted) << s;
      }
    }
    std::set<int32_t> seen;
    int64_t total = 0;
    for (const auto& [id, cap] : capacity) {
      MP_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> blocks, cache->BlockTable(id));
      ASSERT_EQ(static_cast<int64_t>(blocks.size()) * 8, cap);
      for (int32_t b : blocks) {
        ASSERT_TRUE(b >= 0 && b < 40) << b;
        ASSERT_TRUE(seen.insert(b).second) << "block " << b << " is held twice";
      }
      total += static_cast<int64_t>(blocks.size());
    }
    ASSERT_EQ(cache->stats().blocks_in_use, total);
    ASSERT_EQ(cache->stats().num_sequences, static_cast<int64_t>(capacity.size()));
  }
}

// K/V written for one sequence through its view are read back unchanged after another sequence
// wrote the same positions through its own view.
TEST_F(KvCacheTest, SequencesKeepTheirOwnData) {
  MP_ASSERT_OK_AND_ASSIGN(auto cache, Make({.block_size = 4, .max_tokens = 64}));
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  auto random_kv = [&](int64_t n) {
    Tensor t = Tensor::Host({n, 2, 16}, DType::kF32);
    for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = normal(rng);
    return t;
  };
  const int64_t n = 10;
  std::vector<Tensor> ks, vs;
  for (uint64_t seq : {5, 6}) {
    MP_ASSERT_OK(cache->Reserve(seq, n));
    ks.push_back(random_kv(n));
    vs.push_back(random_kv(n));
    MP_ASSERT_OK_AND_ASSIGN(KvLayerView view, cache->LayerView(seq, 1));
    MP_ASSERT_OK(backend_->WriteKv(ks.back(), vs.back(), 0, view));
  }
  for (int i = 0; i < 2; ++i) {
    MP_ASSERT_OK_AND_ASSIGN(KvLayerView view, cache->LayerView(5 + i, 1));
    const int32_t* table = view.block_table.data_as<int32_t>();
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t h = 0; h < 2; ++h) {
        const int64_t row = ((table[t / 4] * 2 + h) * 4 + t % 4) * 16;
        ASSERT_EQ(std::memcmp(view.k.data_as<float>() + row,
                              ks[i].data_as<float>() + (t * 2 + h) * 16, 64),
                  0);
        ASSERT_EQ(std::memcmp(view.v.data_as<float>() + row,
                              vs[i].data_as<float>() + (t * 2 + h) * 16, 64),
                  0);
      }
    }
  }
}

}  // namespace
}  // namespace mp
