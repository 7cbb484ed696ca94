#include "log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace outboxd {

void InitLogging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("outboxd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(level));
}

void OnceLogger::Failure(const std::string& detail) {
  auto now = std::chrono::steady_clock::now();
  if (!failing_) {
    failing_ = true;
    repeats_ = 0;
    since_ = now;
    last_logged_ = now;
    last_detail_ = detail;
    spdlog::warn("{}: {}; retrying with back-off", what_, detail);
    return;
  }
  ++repeats_;
  if (detail != last_detail_ && now - last_logged_ > std::chrono::minutes(1)) {
    last_logged_ = now;
    last_detail_ = detail;
    spdlog::warn("{}: still failing after {} retries: {}", what_, repeats_, detail);
  }
}

void OnceLogger::Recovered() {
  if (!failing_) return;
  failing_ = false;
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - since_).count();
  spdlog::info("{}: recovered after {:.1f}s and {} retries", what_, secs, repeats_);
}

}  // namespace outboxd
