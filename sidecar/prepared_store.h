// PreparedStore: the SQL of half messages as check-back needs it, behind an interface so the
// check-back policy can be tested with a fake. PgPreparedStore owns its own PostgreSQL
// connection (not the relay's), used by the check-back thread only. Every write is fenced: it
// takes effect only if `leader` (this instance's relay session) still holds the outbox lock,
// checked in the same statement; otherwise it returns NotLeader and changes nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checker.h"
#include "duration.h"
#include "leader_session.h"
#include "pg/connection.h"
#include "status.h"

namespace outboxd {

// PreparedStore::RemoveSettledBefore removes at most this many rows per statement.
inline constexpr int64_t kRemoveSettledBatch = 10'000;

// How a prepared message leaves the 'prepared' state when check-back settles it.
enum class Settlement { kCommit, kRollback, kDeadLetter };
enum class SettledBy { kCheck, kMaxChecks };

class PreparedStore {
 public:
  virtual ~PreparedStore() = default;

  // Connects if needed. Unavailable: PostgreSQL is down; Invalid: the schema is missing or old.
  virtual Status Connect() = 0;
  virtual void Disconnect() = 0;
  // Prepared messages due for a check, the longest-waiting first: the next check time passed
  // and, before the first check, older than `transaction_timeout`.
  virtual Result<std::vector<PreparedMessage>> FetchDue(Millis transaction_timeout, int limit) = 0;
  // Whether `leader` still holds the outbox lock (checked in PostgreSQL).
  virtual Result<bool> Leading(const LeaderSession& leader) = 0;
  // Settles a message unless it is settled already; false then (a late verdict, ignored).
  // final_topic: kDeadLetter's copy ("" = none).
  virtual Result<bool> Settle(int64_t id, Settlement settlement, SettledBy by,
                              const std::string& final_topic, const LeaderSession& leader) = 0;
  // An unknown answer: counts the check and schedules the next one after `check_interval`.
  // False if the message was settled meanwhile.
  virtual Result<bool> RecordUnknown(int64_t id, Millis check_interval,
                                     const LeaderSession& leader) = 0;
  // Removes up to kRemoveSettledBatch committed and rolled-back rows settled more than `retention`
  // ago; returns how many (kRemoveSettledBatch: more may be due).
  virtual Result<int64_t> RemoveSettledBefore(Millis retention) = 0;
};

using PreparedStorePtr = std::unique_ptr<PreparedStore>;

class PgPreparedStore : public PreparedStore {
 public:
  PgPreparedStore(std::string conninfo, const pg::TcpSettings& tcp)
      : conninfo_(std::move(conninfo)), tcp_(tcp) {}

  Status Connect() override;
  void Disconnect() override { conn_.reset(); }
  Result<std::vector<PreparedMessage>> FetchDue(Millis transaction_timeout, int limit) override;
  Result<bool> Leading(const LeaderSession& leader) override;
  Result<bool> Settle(int64_t id, Settlement settlement, SettledBy by,
                      const std::string& final_topic, const LeaderSession& leader) override;
  Result<bool> RecordUnknown(int64_t id, Millis check_interval,
                             const LeaderSession& leader) override;
  Result<int64_t> RemoveSettledBefore(Millis retention) override;

 private:
  // Turns a failed statement into a Status, dropping a broken connection.
  Status Failed(const Status& s);

  // Constant after construction.
  const std::string conninfo_;
  const pg::TcpSettings tcp_;

  std::optional<pg::Connection> conn_;
};

// "1500 milliseconds": a duration as a PostgreSQL interval literal.
std::string IntervalLiteral(Millis d);

}  // namespace outboxd
