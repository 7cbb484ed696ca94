#include "log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "log_json.h"

namespace outboxd {

void InitLogging(const std::string& level, bool json) {
  spdlog::drop("outboxd");
  auto logger = spdlog::stderr_color_mt("outboxd");
  spdlog::set_default_logger(logger);
  if (json) {
    logger->set_formatter(MakeJsonFormatter());
  } else {
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  }
  spdlog::set_level(spdlog::level::from_str(level));
}

namespace {

std::string Retries(int n) { return std::to_string(n) + (n == 1 ? " retry" : " retries"); }

}  // namespace

std::string OnceLogger::Detail(const std::string& detail) const {
  // Status messages of a service often start with its name already ("PostgreSQL: ...").
  const std::string prefix = what_ + ": ";
  return detail.rfind(prefix, 0) == 0 ? detail.substr(prefix.size()) : detail;
}

void OnceLogger::Failure(const std::string& raw_detail) {
  const std::string detail = Detail(raw_detail);
  auto now = std::chrono::steady_clock::now();
  if (!failing_) {
    failing_ = true;
    repeats_ = 0;
    since_ = now;
    last_logged_ = now;
    last_detail_ = detail;
    LogWith(spdlog::level::warn, {{"error", detail}}, "{}: {}; retrying with back-off", what_,
            detail);
    return;
  }
  ++repeats_;
  if (detail != last_detail_ && now - last_logged_ > std::chrono::minutes(1)) {
    last_logged_ = now;
    last_detail_ = detail;
    LogWith(spdlog::level::warn, {{"error", detail}}, "{}: still failing after {}: {}", what_,
            Retries(repeats_), detail);
  }
}

void OnceLogger::Recovered() {
  if (!failing_) return;
  failing_ = false;
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - since_).count();
  spdlog::info("{}: recovered after {:.1f}s and {}", what_, secs, Retries(repeats_));
}

}  // namespace outboxd
