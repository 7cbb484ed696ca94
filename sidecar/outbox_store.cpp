#include "outbox_store.h"

#include <algorithm>
#include <cstdlib>

#include <spdlog/spdlog.h>

#include "migrate.h"
#include "status_report.h"

namespace outboxd {
namespace {

// Row 0 carries the statement's snapshot; then late rows (inside the gaps), then fresh rows.
// Results are binary: id is int8, the rest raw bytes.
constexpr const char* kFetchSql = R"sql(
SELECT 0 AS branch, NULL::bigint AS id, s::text AS topic,
       -- how far the next xid is past xmax; age() reads the next xid without assigning one
       age((pg_snapshot_xmax(s)::text::numeric % 4294967296)::text::xid)::text AS key,
       -- the put-back generation (schema 010), as text
       (SELECT convert_to(put_back::text, 'UTF8') FROM outbox.relay_state) AS payload,
       -- an admin command's request to look again from this id (schema/007)
       (SELECT rescan_from::text FROM outbox.relay_state) AS headers,
       NULL::timestamptz AS created_at
  FROM pg_current_snapshot() AS s
UNION ALL
-- LATERAL: an index range scan per gap, also in the generic plan of the prepared statement
(SELECT 1, m.id, m.topic, m.key, m.payload, m.headers::text, m.created_at
   FROM unnest($2::bigint[], $3::bigint[]) AS g(first, last)
  CROSS JOIN LATERAL (SELECT id, topic, key, payload, headers, created_at FROM outbox.messages
                       WHERE id BETWEEN g.first AND g.last AND sent_at IS NULL
                       ORDER BY id LIMIT $4) AS m
  ORDER BY m.id LIMIT $4)
UNION ALL
(SELECT 2, id, topic, key, payload, headers::text, created_at
   FROM outbox.messages
  WHERE id > $1 AND sent_at IS NULL
  ORDER BY id LIMIT $4))sql";

// Binary timestamptz: microseconds since 2000-01-01 UTC.
constexpr int64_t kPgEpochUnixMicros = 946'684'800'000'000;

// $1, $2: the acknowledged ids as runs (ToRuns), each read by one index range scan.
constexpr const char* kDeleteSql = R"sql(
DELETE FROM outbox.messages m USING unnest($1::bigint[], $2::bigint[]) AS r(first, last)
 WHERE m.id BETWEEN r.first AND r.last)sql";
constexpr const char* kRetainSql = R"sql(
UPDATE outbox.messages m SET sent_at = now()
  FROM unnest($1::bigint[], $2::bigint[]) AS r(first, last)
 WHERE m.id BETWEEN r.first AND r.last AND m.sent_at IS NULL)sql";
constexpr const char* kDeadLetterSql = R"sql(
WITH moved AS (DELETE FROM outbox.messages WHERE id = $1
               RETURNING id, topic, key, payload, headers, created_at)
INSERT INTO outbox.dead_letters (id, topic, key, payload, headers, created_at, error)
SELECT id, topic, key, payload, headers, created_at, $2 FROM moved
ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, failed_at = now())sql";
// Exactly-once recovery: only the versions of the rows that the checkpoint carried (put back at
// its generation $2 or earlier, or never).
constexpr const char* kDeleteCheckpointedSql =
    "DELETE FROM outbox.messages WHERE id = ANY($1::bigint[]) AND coalesce(put_back, 0) <= $2";
constexpr const char* kRetainCheckpointedSql =
    "UPDATE outbox.messages SET sent_at = now() WHERE id = ANY($1::bigint[]) AND sent_at IS NULL "
    "AND coalesce(put_back, 0) <= $2";
constexpr const char* kDeadLetterCheckpointedSql = R"sql(
WITH moved AS (DELETE FROM outbox.messages
               WHERE id = ANY($1::bigint[]) AND coalesce(put_back, 0) <= $2
               RETURNING id, topic, key, payload, headers, created_at)
INSERT INTO outbox.dead_letters (id, topic, key, payload, headers, created_at, error)
SELECT id, topic, key, payload, headers, created_at, $3 FROM moved
ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, failed_at = now())sql";
constexpr const char* kSleepSql = "UPDATE outbox.relay_state SET sleeping = $1";
// By the index on sent_at (schema 013): the expired rows only, never a walk over the retained
// ones that are not due yet.
constexpr const char* kCleanupSql = R"sql(
DELETE FROM outbox.messages WHERE id IN (
  SELECT id FROM outbox.messages
   WHERE sent_at IS NOT NULL AND sent_at < now() - $1::interval
   ORDER BY sent_at LIMIT $2))sql";

// The mark_sent statement's parameters.
pg::Params RunParams(std::vector<int64_t> ids) {
  IdRuns runs = ToRuns(std::move(ids));
  pg::Params p;
  p.Add(pg::ArrayLiteral(runs.starts)).Add(pg::ArrayLiteral(runs.ends));
  return p;
}

}  // namespace

IdRuns ToRuns(std::vector<int64_t> ids) {
  std::sort(ids.begin(), ids.end());
  IdRuns runs;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0 && ids[i] == ids[i - 1]) continue;
    if (runs.ends.empty() || ids[i] != runs.ends.back() + 1) {
      runs.starts.push_back(ids[i]);
      runs.ends.push_back(ids[i]);
    } else {
      runs.ends.back() = ids[i];
    }
  }
  return runs;
}

PgOutboxStore::PgOutboxStore(const Config& config)
    : conninfo_(config.postgres.conninfo),
      tcp_(SessionTcpSettings(config.leadership)),
      session_timeout_(config.leadership.session_timeout),
      lock_id_(config.leadership.lock_id),
      batch_size_(config.relay.batch_size),
      notify_(config.relay.notify),
      on_sent_(config.relay.on_sent),
      durable_removals_(config.relay.delivery == Delivery::kExactlyOnce) {}

Status PgOutboxStore::Failed(const Status& s) {
  if (conn_ && !conn_->healthy()) Disconnect();
  return s;
}

void PgOutboxStore::Disconnect() {
  // Debug: the relay says it ("stopped delivering: <why>") when it loses leadership.
  if (leader_) spdlog::debug("leadership released: PostgreSQL connection closed");
  conn_.reset();
  leader_ = false;
  window_.Reset();
}

Status PgOutboxStore::Lead() {
  if (conn_ && leader_ && conn_->healthy()) return Status::Ok();
  if (!conn_ || !conn_->healthy()) {
    leader_ = false;
    auto c = pg::Connection::Open(conninfo_, InstanceApplicationName(), tcp_);
    if (!c.ok()) return c.status();
    conn_.emplace(std::move(*c));
  }
  pg::Params p;
  p.Add(lock_id_);
  last_statement_ = std::chrono::steady_clock::now();
  auto r = conn_->Query(
      "SELECT pg_try_advisory_lock($1::bigint), pg_backend_pid(), extract(epoch FROM "
      "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()))::text",
      p);
  if (!r.ok()) return Failed(r.status());
  if (r->Get(0, 0) != "t") return Status::NotLeader("another outboxd instance holds the outbox");
  session_ = LeaderSession{lock_id_, r->GetInt(0, 1), std::string(r->Get(0, 2))};
  if (Status s = CheckSchemaCurrent(*conn_); !s.ok()) {
    Disconnect();
    return s;
  }
  if (Status s = CheckIdSequence(*conn_); !s.ok()) {
    Disconnect();
    return s;
  }
  if (Status s = Prepare(); !s.ok()) {
    Disconnect();
    return s;
  }
  leader_ = true;
  window_.Reset();
  rescan_request_.reset();
  // A previous leader may have died asleep; until a relay sleeps again nobody needs a NOTIFY.
  return SetSleeping(false);
}

Status PgOutboxStore::KeepLeading() {
  if (!leader_) return Status::NotLeader("not leading");
  if (conn_->in_pipeline()) return Status::Ok();  // a round is on the way: its answer proves it
  auto now = std::chrono::steady_clock::now();
  if (now - last_statement_ < session_timeout_ / 4) return Status::Ok();
  last_statement_ = now;
  return Failed(conn_->Exec("SELECT 1"));
}

Status PgOutboxStore::Prepare() {
  // At least once, removing acknowledged rows need not wait for the WAL flush: if PostgreSQL
  // crashes and loses the last removals, those rows are sent again (duplicates, which
  // at-least-once allows), never lost. This takes an fsync off every batch. Exactly once, a lost
  // removal is a duplicate too: the next transaction's checkpoint names only its own rows, so a
  // crash after it resends the rows whose removal was lost (e2e eo-pg-crash: 72 duplicates in 11
  // crashes). There every removal waits for its flush, whatever the role's default.
  Status s = conn_->Exec(durable_removals_ ? "SET synchronous_commit = on"
                                           : "SET synchronous_commit = off");
  // The lease: a leader that sends nothing for this long (a frozen process, a dead host or
  // network) loses its session, and the lock with it, whatever TCP says.
  if (s.ok()) {
    s = conn_->Exec("SET idle_session_timeout = '" + std::to_string(session_timeout_.count()) +
                    "ms'");
  }
  // The statements are prepared once per session, and PostgreSQL may keep a generic plan made from
  // the statistics of that moment. Made on an empty outbox (the usual state of a live one), the
  // fetch's and the removal's plans read outbox.messages by a sequential scan, which reads every
  // dead row the removals leave, each round, until autovacuum replans them (bench, live at 5,000/s:
  // 75 sequential scans a second over up to 90,000 dead rows); made before a backlog builds up,
  // the fetch reads and sorts the whole backlog each round. The relay reads outbox rows only by
  // id, so index scans in id order are right at any size. (This needs jit = off, which every
  // session has (pg/connection.cpp): a disabled scan costs 1e10, and PostgreSQL would otherwise
  // JIT-compile every plan that must scan the one-row relay_state.)
  if (s.ok()) s = conn_->Exec("SET enable_seqscan = off");
  if (s.ok()) s = conn_->Exec("SET enable_bitmapscan = off");
  if (s.ok()) s = conn_->Prepare("fetch", kFetchSql);
  if (s.ok())
    s = conn_->Prepare("mark_sent", on_sent_ == OnSent::kDelete ? kDeleteSql : kRetainSql);
  if (s.ok()) s = conn_->Prepare("dead_letter", kDeadLetterSql);
  if (s.ok()) s = conn_->Prepare("sleep", kSleepSql);
  if (s.ok() && notify_) s = conn_->Exec("LISTEN outbox");
  return s;
}

pg::Params PgOutboxStore::FetchParams() const {
  pg::Params p;
  p.Add(window_.hi()).Add(window_.GapStarts()).Add(window_.GapEnds()).Add(int64_t{batch_size_});
  return p;
}

Status PgOutboxStore::FetchBatch(std::vector<OutboxRow>* rows) {
  rows->clear();
  if (!leader_) return Status::NotLeader("not leading");
  last_statement_ = std::chrono::steady_clock::now();
  auto r = conn_->ExecPrepared("fetch", FetchParams(), /*binary_results=*/true);
  if (!r.ok()) return Failed(r.status());
  return ReadFetch(*r, rows);
}

Status PgOutboxStore::StartRound(std::vector<int64_t> ids) {
  if (!leader_) return Status::NotLeader("not leading");
  last_statement_ = std::chrono::steady_clock::now();
  round_marks_ = !ids.empty();
  std::vector<pg::Connection::Statement> statements;
  if (round_marks_) statements.push_back({"mark_sent", RunParams(std::move(ids)), false});
  statements.push_back({"fetch", FetchParams(), true});
  return Failed(conn_->SendPipeline(statements));
}

bool PgOutboxStore::RoundReady(Millis timeout) { return conn_ && conn_->PipelineReady(timeout); }

Status PgOutboxStore::FinishRound(std::vector<OutboxRow>* rows) {
  rows->clear();
  auto results = conn_->FinishPipeline();
  last_statement_ = std::chrono::steady_clock::now();
  if (!results.ok()) return Failed(results.status());
  return ReadFetch(results->back(), rows);
}

Status PgOutboxStore::ReadFetch(const pg::PgResult& result, std::vector<OutboxRow>* rows) {
  const pg::PgResult* r = &result;
  std::optional<Snapshot> snap;
  std::vector<int64_t> late_ids, fresh_ids;
  rows->reserve(r->rows());
  for (int i = 0; i < r->rows(); ++i) {
    int64_t branch = r->GetBinaryInt(i, 0);
    if (branch == 0) {
      snap = Snapshot::Parse(r->Get(i, 2));
      if (!snap) return Status::Invalid("cannot parse snapshot " + std::string(r->Get(i, 2)));
      // age() is 32-bit; outside a sane range, assume any xid above xmax may be an owner.
      long long ahead = std::atoll(std::string(r->Get(i, 3)).c_str());
      snap->next_xid = ahead >= 0 && ahead < (1LL << 30) ? snap->xmax + ahead : UINT64_MAX;
      if (!r->IsNull(i, 5)) rescan_request_ = std::atoll(std::string(r->Get(i, 5)).c_str());
      if (!r->IsNull(i, 4)) put_back_ = std::atoll(std::string(r->Get(i, 4)).c_str());
      continue;
    }
    OutboxRow row;
    row.id = r->GetBinaryInt(i, 1);
    row.topic = r->Get(i, 2);
    if (!r->IsNull(i, 3)) row.key = std::string(r->Get(i, 3));
    if (!r->IsNull(i, 4)) row.payload = std::string(r->Get(i, 4));
    row.headers = r->Get(i, 5);
    row.created_at_us = r->GetBinaryInt(i, 6) + kPgEpochUnixMicros;
    (branch == 1 ? late_ids : fresh_ids).push_back(row.id);
    rows->push_back(std::move(row));
  }
  if (!snap) return Status::Invalid("fetch returned no snapshot row");
  // Late ids are all below hi and fresh ones above it, so id order puts the late rows first.
  std::sort(rows->begin(), rows->end(),
            [](const OutboxRow& a, const OutboxRow& b) { return a.id < b.id; });
  std::sort(fresh_ids.begin(), fresh_ids.end());
  bool late_full = static_cast<int>(late_ids.size()) >= batch_size_;
  if (spdlog::should_log(spdlog::level::trace)) {
    spdlog::trace("fetch hi={} gaps={}..{} snapshot={}: {} late, {} fresh ({}..{})", window_.hi(),
                  window_.GapStarts(), window_.GapEnds(), r->Get(0, 2), late_ids.size(),
                  fresh_ids.size(), fresh_ids.empty() ? 0 : fresh_ids.front(),
                  fresh_ids.empty() ? 0 : fresh_ids.back());
  }
  if (!window_.Apply(*snap, late_ids, late_full, fresh_ids)) {
    rows->resize(late_ids.size());
  }
  if (!late_ids.empty()) {
    spdlog::debug("fetched {} late rows (committed after higher ids)", late_ids.size());
  }
  return Status::Ok();
}

Status PgOutboxStore::MarkSent(const std::vector<int64_t>& ids) {
  if (ids.empty()) return Status::Ok();
  if (!leader_) return Status::NotLeader("not leading");
  last_statement_ = std::chrono::steady_clock::now();
  return Failed(conn_->ExecPrepared("mark_sent", RunParams(ids)).status());
}

Status PgOutboxStore::DeadLetter(int64_t id, const std::string& error) {
  if (!leader_) return Status::NotLeader("not leading");
  last_statement_ = std::chrono::steady_clock::now();
  pg::Params p;
  p.Add(id).Add(error);
  return Failed(conn_->ExecPrepared("dead_letter", p).status());
}

Status PgOutboxStore::ClearRescanRequest(int64_t from) {
  if (!leader_) return Status::NotLeader("not leading");
  last_statement_ = std::chrono::steady_clock::now();
  pg::Params p;
  p.Add(from);
  // Only this request: a command that asked for a lower id meanwhile keeps its own.
  return Failed(
      conn_->Query("UPDATE outbox.relay_state SET rescan_from = NULL WHERE rescan_from = $1", p)
          .status());
}

Status PgOutboxStore::SetSleeping(bool sleeping) {
  if (!leader_) return Status::NotLeader("not leading");
  last_statement_ = std::chrono::steady_clock::now();
  pg::Params p;
  p.Add(std::string(sleeping ? "true" : "false"));
  return Failed(conn_->ExecPrepared("sleep", p).status());
}

Result<bool> PgOutboxStore::WaitForNotify(Millis timeout) {
  if (!leader_) return Status::NotLeader("not leading");
  auto r = conn_->WaitForNotifications(timeout);
  if (!r.ok()) return Failed(r.status());
  return *r > 0;
}

Result<std::optional<OutboxRow>> PgOutboxStore::FetchRow(int64_t id) {
  if (!leader_) return Status::NotLeader("not leading");
  last_statement_ = std::chrono::steady_clock::now();
  pg::Params p;
  p.Add(id);
  auto r = conn_->Query(
      "SELECT topic, key, payload, headers::text, created_at FROM outbox.messages WHERE id = $1", p,
      true);
  if (!r.ok()) return Failed(r.status());
  if (r->rows() == 0) return std::optional<OutboxRow>();
  OutboxRow row;
  row.id = id;
  row.topic = r->Get(0, 0);
  if (!r->IsNull(0, 1)) row.key = std::string(r->Get(0, 1));
  if (!r->IsNull(0, 2)) row.payload = std::string(r->Get(0, 2));
  row.headers = r->Get(0, 3);
  row.created_at_us = r->GetBinaryInt(0, 4) + kPgEpochUnixMicros;
  return std::optional<OutboxRow>(std::move(row));
}

Result<int64_t> PgOutboxStore::RemoveSentBefore(Millis retention) {
  if (!leader_) return Status::NotLeader("not leading");
  last_statement_ = std::chrono::steady_clock::now();
  pg::Params p;
  p.Add(std::to_string(retention.count()) + " milliseconds").Add(kRemoveSentBatch);
  auto r = conn_->Query(kCleanupSql, p);
  if (!r.ok()) return Failed(r.status());
  return r->Affected();
}

Result<int64_t> PgOutboxStore::RemoveCheckpointed(const Checkpoint& checkpoint,
                                                  const std::string& error) {
  if (!leader_) return Status::NotLeader("not leading");
  last_statement_ = std::chrono::steady_clock::now();
  if (!checkpoint.sent.empty()) {
    pg::Params p;
    p.Add(pg::ArrayLiteral(checkpoint.sent)).Add(checkpoint.put_back);
    auto r = conn_->Query(
        on_sent_ == OnSent::kDelete ? kDeleteCheckpointedSql : kRetainCheckpointedSql, p);
    if (!r.ok()) return Failed(r.status());
  }
  if (checkpoint.dead.empty()) return int64_t{0};
  pg::Params p;
  p.Add(pg::ArrayLiteral(checkpoint.dead)).Add(checkpoint.put_back).Add(error);
  auto r = conn_->Query(kDeadLetterCheckpointedSql, p);
  if (!r.ok()) return Failed(r.status());
  return r->Affected();
}

Result<std::string> PgOutboxStore::Incarnation() {
  if (!leader_) return Status::NotLeader("not leading");
  last_statement_ = std::chrono::steady_clock::now();
  auto r = conn_->Query("SELECT incarnation::text FROM outbox.relay_state LIMIT 1", pg::Params());
  if (!r.ok()) return Failed(r.status());
  if (r->rows() != 1) return Status::Invalid("outbox.relay_state has no row");
  return std::string(r->Get(0, 0));
}

}  // namespace outboxd
