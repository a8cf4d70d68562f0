// Status helpers shared by every module.
//
// Public functions return absl::Status / absl::StatusOr<T>; errors never cross a module boundary
// as exceptions. Debian's abseil (20220623) has no status_macros.h, so the two macros live here.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define MP_STATUS_CONCAT_INNER_(a, b) a##b
#define MP_STATUS_CONCAT_(a, b) MP_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define MP_RETURN_IF_ERROR(expr)                     \
  do {                                               \
    ::absl::Status mp_status_ = (expr);              \
    if (!mp_status_.ok()) return mp_status_;         \
  } while (false)

// MP_ASSIGN_OR_RETURN(auto x, Foo()) — assigns the value of an absl::StatusOr<T> or returns its
// error from the enclosing function.
#define MP_ASSIGN_OR_RETURN(lhs, rexpr) \
  MP_ASSIGN_OR_RETURN_IMPL_(MP_STATUS_CONCAT_(mp_statusor_, __LINE__), lhs, rexpr)
#define MP_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

namespace mp {

// Prefixes the message of a non-OK status with `context` ("loading model.safetensors: ...").
inline absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  const absl::string_view message = status.message();
  std::string text(context);
  text.append(": ").append(message.data(), message.size());
  return absl::Status(status.code(), text);
}

}  // namespace mp
