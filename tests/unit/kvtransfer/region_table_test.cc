#include "kvtransfer/region_table.h"

#include <gtest/gtest.h>

#include <random>

#include "common/status.h"
#include "common/status_matchers.h"
#include "tests/unit/kvtransfer/transfer_test_util.h"

namespace mp::kvtransfer {
namespace {

void* At(uintptr_t a) { return reinterpret_cast<void*>(a); }

// Random registrations and lookups against a brute-force list of intervals.
TEST(RegionTableTest, MatchesABruteForceReference) {
  std::mt19937_64 rng(17);
  RegionTable table;
  struct Ref {
    uintptr_t start;
    size_t bytes;
    RegionId id;
  };
  std::vector<Ref> ref;
  auto overlaps = [&](uintptr_t s, size_t n) {
    for (const Ref& r : ref) {
      if (s < r.start + r.bytes && r.start < s + n) return true;
    }
    return false;
  };
  for (int i = 0; i < 3000; ++i) {
    const uintptr_t start = 0x1000 + rng() % 100000;
    const size_t bytes = 1 + rng() % 3000;
    const int action = rng() % 3;
    if (action == 0) {
      absl::StatusOr<RegionId> id = table.Add({At(start), bytes}, nullptr);
      ASSERT_EQ(id.ok(), !overlaps(start, bytes)) << id.status();
      if (id.ok()) ref.push_back({start, bytes, *id});
    } else if (action == 1 && !ref.empty()) {
      const size_t k = rng() % ref.size();
      MP_ASSERT_OK(table.Remove(ref[k].id));
      ref.erase(ref.begin() + k);
    } else {
      RegionId expected = 0;
      for (const Ref& r : ref) {
        if (start >= r.start && start + bytes <= r.start + r.bytes) expected = r.id;
      }
      absl::StatusOr<RegionId> got = table.Acquire(At(start), bytes);
      ASSERT_EQ(got.ok(), expected != 0) << got.status();
      if (got.ok()) {
        EXPECT_EQ(*got, expected);
        table.Unacquire(*got);
      }
    }
  }
}

TEST(RegionTableTest, InFlightOperationsBlockRemoval) {
  RegionTable table;
  MP_ASSERT_OK_AND_ASSIGN(RegionId id, table.Add({At(0x10000), 4096}, At(0x77)));
  MP_ASSERT_OK_AND_ASSIGN(RegionId a, table.Acquire(At(0x10000 + 100), 200));
  EXPECT_EQ(a, id);
  MP_ASSERT_OK(table.Acquire(At(0x10000), 4096));
  KV_EXPECT_ERROR(table.Remove(id), absl::StatusCode::kFailedPrecondition, "2 transfer");
  table.Unacquire(id);
  KV_EXPECT_ERROR(table.Remove(id), absl::StatusCode::kFailedPrecondition, "1 transfer");
  table.Unacquire(id);
  MP_ASSERT_OK_AND_ASSIGN(void* backend, table.Remove(id));
  EXPECT_EQ(backend, At(0x77));
  KV_EXPECT_ERROR(table.Remove(id), absl::StatusCode::kInvalidArgument, "unknown");
}

TEST(RegionTableTest, RejectsBadRegions) {
  RegionTable table;
  KV_EXPECT_ERROR(table.Add({nullptr, 10}, nullptr), absl::StatusCode::kInvalidArgument, "null");
  KV_EXPECT_ERROR(table.Add({At(0x1000), 0}, nullptr), absl::StatusCode::kInvalidArgument, "empty");
  KV_EXPECT_ERROR(table.Add({At(~uintptr_t{0} - 10), 100}, nullptr),
                  absl::StatusCode::kInvalidArgument, "wraps");
  KV_EXPECT_ERROR(table.Acquire(At(0x1000), 1), absl::StatusCode::kInvalidArgument,
                  "not inside one registered memory region");
}

}  // namespace
}  // namespace mp::kvtransfer
