// Checker: asks the application whether a prepared (half) message's local step happened.
// HttpChecker POSTs to a URL, SqlChecker runs a query in the application's database. Both turn
// every failure (timeout, connection error, 5xx, an answer that is not one of the three words)
// into kUnknown with a detail for the log; they never throw. Used by the check-back thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "config.h"
#include "pg/connection.h"
#include "status.h"

namespace outboxd {

// A prepared message as the checker sees it (no payload: the application knows its own data).
struct PreparedMessage {
  int64_t id = 0;
  std::string topic;
  std::optional<std::string> key;
  std::string headers = "{}";  // jsonb as text
  std::string created_at;      // ISO 8601, UTC
  int check_count = 0;         // checks already answered "unknown" (0 on the first check)
};

enum class Verdict { kCommit, kRollback, kUnknown };

const char* VerdictName(Verdict v);

struct CheckAnswer {
  Verdict verdict = Verdict::kUnknown;
  std::string detail;  // why unknown (empty when the application answered)
};

class Checker {
 public:
  virtual ~Checker() = default;
  virtual CheckAnswer Check(const PreparedMessage& message) = 0;
};

using CheckerPtr = std::unique_ptr<Checker>;

// "commit" | "rollback" | "unknown" -> the verdict; anything else -> nullopt.
std::optional<Verdict> ParseVerdict(std::string_view word);
// An HTTP answer: 2xx with {"status": "commit" | "rollback" | "unknown"} settles; the rest is
// unknown with a reason.
CheckAnswer ParseHttpAnswer(int http_status, const std::string& body);
// The JSON body of a check request: id, topic, key, headers (an object), created_at, check_count.
std::string CheckRequestBody(const PreparedMessage& message);

class HttpChecker : public Checker {
 public:
  HttpChecker(std::string url, Millis timeout);
  ~HttpChecker() override;
  CheckAnswer Check(const PreparedMessage& message) override;

 private:
  struct Client;
  std::unique_ptr<Client> client_;
  std::string path_;
  std::string url_;
};

class SqlChecker : public Checker {
 public:
  // Connects lazily, and again after a broken connection.
  SqlChecker(std::string conninfo, std::string query, Millis statement_timeout);
  CheckAnswer Check(const PreparedMessage& message) override;

 private:
  Status Connect();

  // Constant after construction.
  const std::string conninfo_;
  const std::string query_;
  const Millis statement_timeout_;

  std::optional<pg::Connection> conn_;
};

// The configured checker; nullptr for checker = "none".
CheckerPtr MakeChecker(const CheckbackConfig& config, const std::string& default_conninfo);

}  // namespace outboxd
