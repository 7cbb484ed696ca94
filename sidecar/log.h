// Logging: spdlog to stderr, plus a guard that says a repeating condition once, not in a loop.
#pragma once

#include <chrono>
#include <string>

#include <spdlog/spdlog.h>

namespace outboxd {

// Sets the level ("trace", "debug", "info", "warn", "error") and the line format: text, or with
// `json` one JSON object per line (log_json.h).
void InitLogging(const std::string& level, bool json = false);

// Says a problem once when it starts, counts repeats silently, and says when it ends.
// Used by the loops that retry: "PostgreSQL unavailable ..." once, then "... recovered after N".
class OnceLogger {
 public:
  explicit OnceLogger(std::string what) : what_(std::move(what)) {}

  // A failure: logged at warn (without a leading "<what>: " the detail may already carry) the first
  // time, and again at most once a minute if the text changes.
  void Failure(const std::string& detail);
  // Success after failures: logged at info with how long and how many attempts.
  void Recovered();
  bool failing() const { return failing_; }

 private:
  std::string Detail(const std::string& detail) const;

  std::string what_;
  bool failing_ = false;
  int repeats_ = 0;
  std::string last_detail_;
  std::chrono::steady_clock::time_point since_;
  std::chrono::steady_clock::time_point last_logged_;
};

}  // namespace outboxd
