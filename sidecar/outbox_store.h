// OutboxStore: the outbox's SQL, behind an interface so the relay can be tested without services.
// PgOutboxStore owns one PostgreSQL connection, which also holds the leadership lock: a statement
// that succeeds on it proves this instance still leads, so no row is removed by a deposed leader.
// The session runs with idle_session_timeout = leadership.session_timeout, and KeepLeading sends a
// statement when none ran lately, so a dead or frozen leader loses the lock within that time.
// Used by the relay thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint.h"
#include "config.h"
#include "duration.h"
#include "leader_session.h"
#include "pg/connection.h"
#include "scan_window.h"
#include "status.h"

namespace outboxd {

// OutboxStore::RemoveSentBefore removes at most this many rows per statement: the relay runs it
// again between its rounds until a statement removes fewer.
inline constexpr int64_t kRemoveSentBatch = 10'000;

struct OutboxRow {
  int64_t id = 0;
  std::string topic;
  std::optional<std::string> key;      // nullopt: no key
  std::optional<std::string> payload;  // nullopt: a tombstone
  std::string headers = "{}";          // the row's jsonb, as text
  int64_t created_at_us = 0;           // created_at: microseconds since 1970-01-01 UTC
};

// Ids as runs of consecutive values, ascending and without repeats: {7, 1, 3, 2, 9, 10} gives
// starts {1, 7, 9} and ends {3, 7, 10}. A removal names the runs rather than each id, so
// PostgreSQL reads each run by one B-tree range scan instead of one descent per id; every id
// inside a run is one of the ids, so no other row can match.
struct IdRuns {
  std::vector<int64_t> starts, ends;
};
IdRuns ToRuns(std::vector<int64_t> ids);

class OutboxStore {
 public:
  virtual ~OutboxStore() = default;

  // Connects if needed and takes leadership. NotLeader: another instance leads (try again later);
  // Unavailable: PostgreSQL is down; Invalid: the schema is missing or old.
  virtual Status Lead() = 0;
  // Drops the connection, and with it leadership; the scan starts over on the next Lead().
  virtual void Disconnect() = 0;
  // While leading: proves to PostgreSQL that this leader is alive, with a statement when none ran
  // for a quarter of leadership.session_timeout (a no-op otherwise, and while a round is on the
  // connection). An error means leadership is lost. Call it from every wait of the relay thread.
  virtual Status KeepLeading() = 0;
  // The session that holds the lock (valid after Lead() succeeded): other threads prove against
  // it that this instance still leads.
  virtual LeaderSession Session() const = 0;
  // The next rows in id order: rows committed since the last fetch, including late commits of
  // lower ids, never a row returned before (unless Rewind asked for it again).
  virtual Status FetchBatch(std::vector<OutboxRow>* rows) = 0;
  // The same as MarkSent(ids) then FetchBatch, split so the caller can work while PostgreSQL
  // does: StartRound sends both, RoundReady waits up to `timeout` for the answer, FinishRound
  // reads it. Nothing else may be called on the store in between. These defaults run it all in
  // FinishRound; PgOutboxStore sends both statements in one libpq pipeline.
  virtual Status StartRound(std::vector<int64_t> ids) {
    round_ids_ = std::move(ids);
    return Status::Ok();
  }
  virtual bool RoundReady(Millis /*timeout*/) { return true; }
  virtual Status FinishRound(std::vector<OutboxRow>* rows) {
    Status s = MarkSent(round_ids_);
    round_ids_.clear();
    return s.ok() ? FetchBatch(rows) : s;
  }
  // The rows from `first_unacked` on will be fetched again.
  virtual void Rewind(int64_t first_unacked) = 0;
  // Acknowledged rows leave the unsent set: deleted, or sent_at set (on_sent = "retain").
  virtual Status MarkSent(const std::vector<int64_t>& ids) = 0;
  // Moves a poison row to outbox.dead_letters with the error.
  virtual Status DeadLetter(int64_t id, const std::string& error) = 0;
  // One row by id (for its dead-letter copy); nullopt if it is gone.
  virtual Result<std::optional<OutboxRow>> FetchRow(int64_t id) = 0;
  // An admin command's request (outbox.relay_state.rescan_from, read by the last fetch): rows
  // from this id on were put back below the fetch position. Returns it once.
  virtual std::optional<int64_t> TakeRescanRequest() { return std::nullopt; }
  // After the rescan started: clears that request unless a command lowered it meanwhile.
  virtual Status ClearRescanRequest(int64_t /*from*/) { return Status::Ok(); }
  // The wake-up flag that outbox.publish() reads: NOTIFY only while the relay sleeps.
  virtual Status SetSleeping(bool sleeping) = 0;
  // Waits for a NOTIFY or the timeout: true if notified; an error if the connection broke.
  virtual Result<bool> WaitForNotify(Millis timeout) = 0;
  // on_sent = "retain": removes up to kRemoveSentBatch sent rows older than `retention` (the
  // oldest first). Returns rows removed: kRemoveSentBatch means more may be due.
  virtual Result<int64_t> RemoveSentBefore(Millis retention) = 0;
  // The outbox's incarnation (outbox.relay_state.incarnation, made once per outbox): exactly-once
  // checkpoints carry it. "" for a store without one (the tests' fakes).
  virtual Result<std::string> Incarnation() { return std::string(); }
  // The put-back generation (outbox.relay_state.put_back, schema 010) in the last fetch's
  // snapshot: every row that fetch returned was put back by an admin command at this generation or
  // earlier (or never), and a row put back after it gets a higher one. Exactly-once checkpoints
  // carry it. 0 for a store without put-backs (the tests' fakes).
  virtual int64_t PutBackGeneration() const { return 0; }
  // Exactly-once recovery at a term's start: removes the rows the last committed checkpoint
  // carried (its `sent` as MarkSent does, its `dead` moved to outbox.dead_letters with `error`),
  // but only the versions it carried: a row put back by an admin command after the checkpoint's
  // generation stays, to be sent. Each in one statement, so a command committing meanwhile is
  // either seen (its stamp) or not yet there. Returns the number of rows dead-lettered. This
  // default, for stores without put-backs, removes every row named.
  virtual Result<int64_t> RemoveCheckpointed(const Checkpoint& checkpoint,
                                             const std::string& error) {
    if (Status s = MarkSent(checkpoint.sent); !s.ok()) return s;
    for (int64_t id : checkpoint.dead) {
      if (Status s = DeadLetter(id, error); !s.ok()) return s;
    }
    return static_cast<int64_t>(checkpoint.dead.size());
  }

 private:
  std::vector<int64_t> round_ids_;  // the default StartRound's ids
};

using OutboxStorePtr = std::unique_ptr<OutboxStore>;

class PgOutboxStore : public OutboxStore {
 public:
  PgOutboxStore(const Config& config);

  Status Lead() override;
  void Disconnect() override;
  Status KeepLeading() override;
  LeaderSession Session() const override { return session_; }
  Status FetchBatch(std::vector<OutboxRow>* rows) override;
  Status StartRound(std::vector<int64_t> ids) override;
  bool RoundReady(Millis timeout) override;
  Status FinishRound(std::vector<OutboxRow>* rows) override;
  void Rewind(int64_t first_unacked) override { window_.Rewind(first_unacked); }
  Status MarkSent(const std::vector<int64_t>& ids) override;
  Status DeadLetter(int64_t id, const std::string& error) override;
  Result<std::optional<OutboxRow>> FetchRow(int64_t id) override;
  std::optional<int64_t> TakeRescanRequest() override {
    auto r = rescan_request_;
    rescan_request_.reset();
    return r;
  }
  Status ClearRescanRequest(int64_t from) override;
  Status SetSleeping(bool sleeping) override;
  Result<bool> WaitForNotify(Millis timeout) override;
  Result<int64_t> RemoveSentBefore(Millis retention) override;
  Result<std::string> Incarnation() override;
  int64_t PutBackGeneration() const override { return put_back_; }
  Result<int64_t> RemoveCheckpointed(const Checkpoint& checkpoint,
                                     const std::string& error) override;

 private:
  Status Prepare();
  pg::Params FetchParams() const;
  // Reads one fetch result: parses the rows and advances the scan window.
  Status ReadFetch(const pg::PgResult& r, std::vector<OutboxRow>* rows);
  // Turns a failed statement into a Status, dropping a broken connection.
  Status Failed(const Status& s);

  // Constant after construction.
  const std::string conninfo_;
  const pg::TcpSettings tcp_;
  const Millis session_timeout_;
  const int64_t lock_id_;
  const int batch_size_;
  const bool notify_;
  const OnSent on_sent_;
  // Exactly-once: a removal must be durable before the next transaction commits (its checkpoint
  // names only its own rows), so the session keeps synchronous_commit on.
  const bool durable_removals_;

  std::optional<pg::Connection> conn_;
  bool leader_ = false;
  LeaderSession session_;
  std::chrono::steady_clock::time_point last_statement_;  // sent on conn_, for KeepLeading
  ScanWindow window_;
  bool round_marks_ = false;               // the pipelined round includes a removal
  std::optional<int64_t> rescan_request_;  // seen by the last fetch, not yet taken
  int64_t put_back_ = 0;                   // relay_state.put_back in the last fetch's snapshot
};

}  // namespace outboxd
