// KV admission: whole-request reservations in blocks, and errors that say what would fit.
#include "coordinator/admission.h"

#include <gtest/gtest.h>

#include "common/status_matchers.h"

namespace mp {
namespace {

TEST(KvAdmissionTest, ReservesWholeBlocksAndFreesThem) {
  KvAdmission a;
  EXPECT_FALSE(a.TryReserve(1, 10)) << "no budget before Reset";
  MP_EXPECT_ERROR(a.CheckCapacity(10, 1), absl::StatusCode::kFailedPrecondition, "pipeline");
  a.Reset(/*blocks_total=*/10, /*block_tokens=*/64);
  EXPECT_EQ(a.total_tokens(), 640);
  EXPECT_EQ(KvAdmission::TokensNeeded(100, 0), 100);
  EXPECT_EQ(KvAdmission::TokensNeeded(100, 1), 100);  // the last token is never fed back
  EXPECT_EQ(KvAdmission::TokensNeeded(100, 29), 128);
  EXPECT_EQ(a.BlocksFor(128), 2);
  EXPECT_EQ(a.BlocksFor(129), 3);
  EXPECT_TRUE(a.TryReserve(1, 129));  // 3 blocks
  EXPECT_FALSE(a.TryReserve(1, 10)) << "one reservation per request";
  EXPECT_TRUE(a.TryReserve(2, 64 * 7));
  EXPECT_EQ(a.free_tokens(), 0);
  EXPECT_FALSE(a.TryReserve(3, 1));
  a.Free(1);
  EXPECT_EQ(a.free_tokens(), 192);
  EXPECT_TRUE(a.TryReserve(3, 192));
  a.Free(42);  // unknown: no-op
  EXPECT_EQ(a.blocks_used(), 10);
  a.Reset(4, 64);
  EXPECT_EQ(a.blocks_used(), 0);
}

TEST(KvAdmissionTest, CapacityErrorsSayWhatWouldFit) {
  KvAdmission a;
  a.Reset(8, 64);  // 512 tokens
  MP_EXPECT_OK(a.CheckCapacity(500, 13));
  MP_EXPECT_ERROR(a.CheckCapacity(500, 14), absl::StatusCode::kResourceExhausted,
                  "this prompt fits with max_new_tokens <= 13");
  MP_EXPECT_ERROR(a.CheckCapacity(600, 1), absl::StatusCode::kResourceExhausted,
                  "a prompt of at most 512 tokens would fit");
  MP_EXPECT_ERROR(a.CheckCapacity(600, 1), absl::StatusCode::kResourceExhausted,
                  "needs KV for 600 tokens");
}

}  // namespace
}  // namespace mp
