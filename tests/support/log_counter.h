// LogCounter: while it lives, every spdlog line (the relay's, and librdkafka's through the
// producer's log callback) is also kept with its level, so a test can count or wait for lines
// containing a text, or show them. Warnings still reach stderr. Thread-safe.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace outboxd::testing {

class LogCounter {
 public:
  LogCounter() : previous_(spdlog::default_logger()), sink_(std::make_shared<Sink>()) {
    auto console = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    console->set_level(previous_->level());
    auto logger =
        std::make_shared<spdlog::logger>("counted", spdlog::sinks_init_list{console, sink_});
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(logger);
  }
  ~LogCounter() { spdlog::set_default_logger(previous_); }
  LogCounter(const LogCounter&) = delete;
  LogCounter& operator=(const LogCounter&) = delete;

  // Lines containing `text`, at any level.
  int Count(const std::string& text) { return sink_->Count(spdlog::level::trace, text); }
  // Lines at `level` or above containing `text`.
  int Count(spdlog::level::level_enum level, const std::string& text) {
    return sink_->Count(level, text);
  }
  // The lines at `level` or above, one a line (for failure messages).
  std::string Dump(spdlog::level::level_enum level) { return sink_->Dump(level); }

 private:
  class Sink : public spdlog::sinks::base_sink<std::mutex> {
   public:
    int Count(spdlog::level::level_enum level, const std::string& text) {
      std::lock_guard l(mutex_);
      int n = 0;
      for (const auto& [at, line] : lines_) {
        n += at >= level && line.find(text) != std::string::npos;
      }
      return n;
    }
    std::string Dump(spdlog::level::level_enum level) {
      std::lock_guard l(mutex_);
      std::string out;
      for (const auto& [at, line] : lines_) {
        if (at >= level) out += line + "\n";
      }
      return out;
    }

   protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
      lines_.emplace_back(msg.level, std::string(msg.payload.data(), msg.payload.size()));
    }
    void flush_() override {}

   private:
    std::vector<std::pair<spdlog::level::level_enum, std::string>> lines_;  // GUARDED_BY(mutex_)
  };

  std::shared_ptr<spdlog::logger> previous_;
  std::shared_ptr<Sink> sink_;
};

}  // namespace outboxd::testing
