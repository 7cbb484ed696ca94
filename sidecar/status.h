// Status and Result: errors as values on the hot path (after LevelDB's util/status.h).
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace outboxd {

class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk,
    kUnavailable,  // a service is down or the connection broke: back off and retry
    kPermanent,    // this message can never be delivered (poison)
    kFatal,        // the producer is unusable: rebuild it
    kQueueFull,    // local back-pressure: serve reports and retry
    kInvalid,      // bad input or configuration
    kNotLeader,    // another instance holds the outbox
    // The Kafka transaction failed: abort it (its messages count as not delivered).
    kAbortRequired,
    // Kafka refuses this message's topic (it does not exist, or writing it is not authorized):
    // the topic's messages wait, the others go on.
    kTopicUnavailable,
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status Unavailable(std::string msg) { return Status(Code::kUnavailable, std::move(msg)); }
  static Status Permanent(std::string msg) { return Status(Code::kPermanent, std::move(msg)); }
  static Status Fatal(std::string msg) { return Status(Code::kFatal, std::move(msg)); }
  static Status QueueFull(std::string msg) { return Status(Code::kQueueFull, std::move(msg)); }
  static Status Invalid(std::string msg) { return Status(Code::kInvalid, std::move(msg)); }
  static Status NotLeader(std::string msg) { return Status(Code::kNotLeader, std::move(msg)); }
  static Status AbortRequired(std::string msg) {
    return Status(Code::kAbortRequired, std::move(msg));
  }

  static Status TopicUnavailable(std::string msg) {
    return Status(Code::kTopicUnavailable, std::move(msg));
  }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const { return ok() ? "OK" : message_; }

 private:
  Status(Code code, std::string msg) : code_(code), message_(std::move(msg)) {}

  Code code_ = Code::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() { return *value_; }
  const T& value() const { return *value_; }
  T& operator*() { return *value_; }
  T* operator->() { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace outboxd
