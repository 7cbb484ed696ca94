#include "prepared_store.h"

#include "migrate.h"

namespace outboxd {
namespace {

constexpr const char* kDueSql = R"sql(
SELECT id, topic, key, headers::text,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), check_count
  FROM outbox.prepared
 WHERE state = 'prepared' AND next_check_at <= now()
   AND (check_count > 0 OR created_at <= now() - $1::interval)
 ORDER BY next_check_at
 LIMIT $2)sql";
// $5..$7: the leader session; settle runs only while it holds the lock. Returns (held, settled).
std::string SettleSql() {
  return "WITH f AS (SELECT " + LeaderHoldsLockSql(5) +
         " AS held) SELECT held, CASE WHEN held THEN outbox.settle($1, $2, $3, $4) END "
         "FROM f";
}
// $3..$5: the leader session. Returns (held, rows counted).
std::string UnknownSql() {
  return "WITH f AS (SELECT " + LeaderHoldsLockSql(3) + R"sql( AS held),
u AS (UPDATE outbox.prepared
         SET check_count = check_count + 1, last_checked_at = now(),
             next_check_at = now() + $2::interval
       WHERE id = $1 AND state = 'prepared' AND (SELECT held FROM f)
      RETURNING 1)
SELECT (SELECT held FROM f), (SELECT count(*) FROM u))sql";
}
constexpr const char* kCleanupSql = R"sql(
DELETE FROM outbox.prepared WHERE id IN (
  SELECT id FROM outbox.prepared
   WHERE state IN ('committed', 'rolled_back') AND settled_at < now() - $1::interval
   ORDER BY settled_at LIMIT $2))sql";

const char* SettlementName(Settlement s) {
  switch (s) {
    case Settlement::kCommit:
      return "commit";
    case Settlement::kRollback:
      return "rollback";
    case Settlement::kDeadLetter:
      return "dead_letter";
  }
  return "rollback";
}

}  // namespace

std::string IntervalLiteral(Millis d) { return std::to_string(d.count()) + " milliseconds"; }

Status PgPreparedStore::Failed(const Status& s) {
  if (conn_ && !conn_->healthy()) conn_.reset();
  return s;
}

Status PgPreparedStore::Connect() {
  if (conn_ && conn_->healthy()) return Status::Ok();
  conn_.reset();
  auto c = pg::Connection::Open(conninfo_, "outboxd checkback", tcp_);
  if (!c.ok()) return c.status();
  if (Status s = CheckSchemaCurrent(*c); !s.ok()) return s;
  // An application transaction holding a prepared row (it is committing it) must not stall
  // check-back for long: give up on that message this round, it is checked again next round.
  Status s = c->Exec("SET lock_timeout = '2s'");
  // A settlement that PostgreSQL acknowledged but lost in a crash would be made again: a committed
  // half message would go out a second time under a new outbox-id and created_at, a duplicate no
  // consumer can tell. So every settlement waits for its WAL flush, whatever the role's default.
  if (s.ok()) s = c->Exec("SET synchronous_commit = on");
  if (s.ok()) s = c->Prepare("due", kDueSql);
  if (s.ok()) s = c->Prepare("leading", "SELECT " + LeaderHoldsLockSql(1));
  if (s.ok()) s = c->Prepare("settle", SettleSql());
  if (s.ok()) s = c->Prepare("unknown", UnknownSql());
  if (!s.ok()) return s;
  conn_.emplace(std::move(*c));
  return Status::Ok();
}

Result<std::vector<PreparedMessage>> PgPreparedStore::FetchDue(Millis transaction_timeout,
                                                               int limit) {
  if (!conn_) return Status::Unavailable("check-back: not connected");
  pg::Params p;
  p.Add(IntervalLiteral(transaction_timeout)).Add(int64_t{limit});
  auto r = conn_->ExecPrepared("due", p);
  if (!r.ok()) return Failed(r.status());
  std::vector<PreparedMessage> out;
  out.reserve(r->rows());
  for (int i = 0; i < r->rows(); ++i) {
    PreparedMessage m;
    m.id = r->GetInt(i, 0);
    m.topic = r->Get(i, 1);
    if (!r->IsNull(i, 2)) m.key = std::string(r->Get(i, 2));
    m.headers = r->Get(i, 3);
    m.created_at = r->Get(i, 4);
    m.check_count = static_cast<int>(r->GetInt(i, 5));
    out.push_back(std::move(m));
  }
  return out;
}

namespace {

pg::Params& AddLeader(pg::Params& p, const LeaderSession& leader) {
  return p.Add(leader.lock_id).Add(leader.pid).Add(leader.backend_start);
}

Status NotLeading() {
  return Status::NotLeader(
      "this instance's relay session no longer holds the outbox lock (another instance may lead)");
}

}  // namespace

Result<bool> PgPreparedStore::Leading(const LeaderSession& leader) {
  if (!conn_) return Status::Unavailable("check-back: not connected");
  pg::Params p;
  auto r = conn_->ExecPrepared("leading", AddLeader(p, leader));
  if (!r.ok()) return Failed(r.status());
  return r->Get(0, 0) == "t";
}

Result<bool> PgPreparedStore::Settle(int64_t id, Settlement settlement, SettledBy by,
                                     const std::string& final_topic, const LeaderSession& leader) {
  if (!conn_) return Status::Unavailable("check-back: not connected");
  pg::Params p;
  p.Add(id)
      .Add(std::string(SettlementName(settlement)))
      .Add(std::string(by == SettledBy::kCheck ? "check" : "max_checks"));
  if (final_topic.empty()) {
    p.AddNull();
  } else {
    p.Add(final_topic);
  }
  auto r = conn_->ExecPrepared("settle", AddLeader(p, leader));
  if (!r.ok()) return Failed(r.status());
  if (r->Get(0, 0) != "t") return NotLeading();
  return r->Get(0, 1) == "t";
}

Result<bool> PgPreparedStore::RecordUnknown(int64_t id, Millis check_interval,
                                            const LeaderSession& leader) {
  if (!conn_) return Status::Unavailable("check-back: not connected");
  pg::Params p;
  p.Add(id).Add(IntervalLiteral(check_interval));
  auto r = conn_->ExecPrepared("unknown", AddLeader(p, leader));
  if (!r.ok()) return Failed(r.status());
  if (r->Get(0, 0) != "t") return NotLeading();
  return r->GetInt(0, 1) == 1;
}

Result<int64_t> PgPreparedStore::RemoveSettledBefore(Millis retention) {
  if (!conn_) return Status::Unavailable("check-back: not connected");
  pg::Params p;
  p.Add(IntervalLiteral(retention)).Add(kRemoveSettledBatch);
  auto r = conn_->Query(kCleanupSql, p);
  if (!r.ok()) return Failed(r.status());
  return r->Affected();
}

}  // namespace outboxd
