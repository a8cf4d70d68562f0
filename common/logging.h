// Minimal leveled logging to stderr. Kernels never include this header.
#pragma once

#include <sstream>
#include <string_view>

namespace mp {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Messages below this level are dropped. Default kInfo; MILLIPEDE_LOG_LEVEL overrides.
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
bool ParseLogLevel(std::string_view name, LogLevel* level);

namespace internal {
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};
}  // namespace internal

}  // namespace mp

#define MP_LOG(level)                                              \
  if (::mp::LogLevel::k##level < ::mp::GetLogLevel()) {            \
  } else                                                           \
    ::mp::internal::LogMessage(::mp::LogLevel::k##level, __FILE__, __LINE__).stream()
