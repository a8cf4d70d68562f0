// GoogleTest helpers for absl::Status (Debian's abseil ships no status_matchers.h).
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status.h"

namespace mp::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

}  // namespace mp::testing

#define MP_EXPECT_OK(expr) EXPECT_TRUE(::mp::testing::GetStatus(expr).ok()) \
    << ::mp::testing::GetStatus(expr)
#define MP_ASSERT_OK(expr) ASSERT_TRUE(::mp::testing::GetStatus(expr).ok()) \
    << ::mp::testing::GetStatus(expr)

#define MP_ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  MP_ASSERT_OK_AND_ASSIGN_IMPL_(MP_STATUS_CONCAT_(mp_statusor_t_, __LINE__), lhs, rexpr)
#define MP_ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, rexpr)           \
  auto statusor = (rexpr);                                            \
  ASSERT_TRUE(statusor.ok()) << statusor.status();                    \
  lhs = std::move(statusor).value()

// Asserts that `expr` fails with `code` and that the message contains `substr`.
#define MP_EXPECT_ERROR(expr, expected_code, substr)                                          \
  do {                                                                               \
    const ::absl::Status mp_s_ = ::mp::testing::GetStatus(expr);                     \
    EXPECT_EQ(mp_s_.code(), expected_code) << mp_s_;                                  \
    EXPECT_NE(std::string(mp_s_.message()).find(substr), std::string::npos) << mp_s_; \
  } while (false)
