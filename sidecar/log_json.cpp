#include "log_json.h"

#include <chrono>
#include <ctime>

#include <nlohmann/json.hpp>

#include "secrets.h"

namespace outboxd {
namespace {

thread_local const LogFields* t_fields = nullptr;

bool IsInteger(const std::string& v) {
  if (v.empty() || v.size() > 18) return false;
  size_t i = v[0] == '-' ? 1 : 0;
  return i < v.size() && v.find_first_not_of("0123456789", i) == std::string::npos;
}

std::string Rfc3339Utc(spdlog::log_clock::time_point t) {
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count() % 1000;
  const std::time_t secs = spdlog::log_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[48];
  std::snprintf(out, sizeof(out), "%s.%03dZ", buf, static_cast<int>(ms));
  return out;
}

class JsonFormatter : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    nlohmann::ordered_json j;
    j["time"] = Rfc3339Utc(msg.time);
    const auto level = spdlog::level::to_string_view(msg.level);
    j["level"] = std::string(level.data(), level.size());
    j["message"] = std::string(msg.payload.data(), msg.payload.size());
    if (t_fields) {
      for (const auto& [name, value] : *t_fields) {
        if (name == "time" || name == "level" || name == "message") continue;
        if (IsInteger(value)) {
          j[name] = std::stoll(value);
        } else {
          j[name] = Redact(value);  // the sink hides secrets in the message; a field is apart
        }
      }
    }
    // Bytes that are not UTF-8 (a broker message, a row's key) become U+FFFD, never a bad line.
    const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(line.data(), line.data() + line.size());
    dest.push_back('\n');
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

ScopedLogFields::ScopedLogFields(LogFields fields)
    : fields_(std::move(fields)), previous_(t_fields) {
  t_fields = &fields_;
}

ScopedLogFields::~ScopedLogFields() { t_fields = previous_; }

std::unique_ptr<spdlog::formatter> MakeJsonFormatter() { return std::make_unique<JsonFormatter>(); }

}  // namespace outboxd
