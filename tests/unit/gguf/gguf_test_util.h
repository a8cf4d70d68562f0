// Status assertions for the GGUF tests.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "absl/status/status.h"
#include "common/status.h"
#include "common/status_matchers.h"

// Expects `expr` (a Status or StatusOr) to fail with `expected_code` and a message containing
// `substr`.
#define GGUF_EXPECT_ERROR(expr, expected_code, substr)                             \
  do {                                                                             \
    const ::absl::Status gguf_status_ = ::mp::testing::GetStatus(expr);            \
    EXPECT_EQ(gguf_status_.code(), (expected_code)) << gguf_status_;               \
    EXPECT_NE(std::string(gguf_status_.message()).find(substr), std::string::npos) \
        << gguf_status_;                                                           \
  } while (false)
