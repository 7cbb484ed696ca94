// Structured logs ([log] format = "json"): one JSON object per line on stderr,
//   {"time":"2026-12-01T23:59:01.123Z","level":"warn","message":"...","message_id":42,...}
// Fields (message_id, topic, error, ...) travel beside the text: a call site sets them for the
// lines it logs on its thread (LogWith, or ScopedLogFields around spdlog calls); the text format
// ignores them, since the text already carries the same facts.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

namespace outboxd {

using LogFields = std::vector<std::pair<std::string, std::string>>;

// While it lives, lines logged on this thread carry `fields` (JSON format). Nests: the inner
// scope's fields are used until it ends.
class ScopedLogFields {
 public:
  explicit ScopedLogFields(LogFields fields);
  ~ScopedLogFields();
  ScopedLogFields(const ScopedLogFields&) = delete;
  ScopedLogFields& operator=(const ScopedLogFields&) = delete;

 private:
  LogFields fields_;
  const LogFields* previous_;
};

// One log line with fields.
template <typename... Args>
void LogWith(spdlog::level::level_enum level, LogFields fields,
             spdlog::format_string_t<Args...> format, Args&&... args) {
  ScopedLogFields scope(std::move(fields));
  spdlog::log(level, format, std::forward<Args>(args)...);
}

// The formatter of the JSON format: time (UTC, RFC 3339 with milliseconds), level, message,
// then this thread's fields. A field whose value is a decimal integer is written as a number.
std::unique_ptr<spdlog::formatter> MakeJsonFormatter();

}  // namespace outboxd
