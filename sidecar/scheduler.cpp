#include "scheduler.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "migrate.h"

namespace outboxd {

using Clock = std::chrono::steady_clock;

namespace {

constexpr int kPruneBatch = 10'000;

// $1 the batch size, $2..$4 the leader session. NULL when that session lost the lock.
std::string ReleaseSql() {
  return "SELECT CASE WHEN " + LeaderHoldsLockSql(2) + " THEN outbox.release_due($1::int) END";
}
// $1 the retention, $2 the batch size, $3..$5 the leader session.
std::string PruneSql() {
  return "SELECT CASE WHEN " + LeaderHoldsLockSql(3) +
         " THEN outbox.prune_inbox($1::interval, $2::int) END";
}
// Milliseconds until the earliest waiting message is due (negative: overdue); NULL: none waits.
constexpr const char* kNextDueSql =
    "SELECT ceil(extract(epoch FROM min(due_at) - clock_timestamp()) * 1000)::bigint "
    "FROM outbox.delayed";

pg::Params WithLeader(pg::Params p, const LeaderSession& leader) {
  p.Add(leader.lock_id).Add(leader.pid).Add(leader.backend_start);
  return p;
}

}  // namespace

Scheduler::Scheduler(const Config& config, LeaderFn leader)
    : conninfo_(config.postgres.conninfo),
      tcp_(SessionTcpSettings(config.leadership)),
      delay_(config.delay),
      inbox_(config.inbox),
      leader_(std::move(leader)) {}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Start(const std::atomic<bool>& stop) {
  thread_.Start(stop, [this] { Loop(); });
}

void Scheduler::Stop() { thread_.Stop(); }

Status Scheduler::Connect() {
  if (conn_ && conn_->healthy()) return Status::Ok();
  conn_.reset();
  auto c = pg::Connection::Open(conninfo_, "outboxd scheduler", tcp_);
  if (!c.ok()) return c.status();
  if (Status s = CheckSchemaCurrent(*c); !s.ok()) return s;
  // A release that PostgreSQL acknowledged but lost in a crash would run again: the message would
  // go out a second time under a new outbox-id and created_at, a duplicate no consumer can tell.
  // So every release waits for its WAL flush, whatever the role's or server's default.
  Status s = c->Exec("SET synchronous_commit = on");
  if (s.ok()) s = c->Prepare("release", ReleaseSql());
  if (s.ok()) s = c->Prepare("next_due", kNextDueSql);
  if (s.ok()) s = c->Prepare("prune", PruneSql());
  if (!s.ok()) return s;
  conn_.emplace(std::move(*c));
  return Status::Ok();
}

Result<int64_t> Scheduler::Fenced(const char* statement, pg::Params params,
                                  const LeaderSession& leader) {
  auto r = conn_->ExecPrepared(statement, WithLeader(std::move(params), leader));
  if (!r.ok()) {
    if (!conn_->healthy()) conn_.reset();
    return r.status();
  }
  if (r->IsNull(0, 0)) {
    return Status::NotLeader(
        "this instance's relay session no longer holds the outbox lock (another instance may "
        "lead)");
  }
  return r->GetInt(0, 0);
}

Result<Millis> Scheduler::RunOnce() {
  const std::optional<LeaderSession> leader = leader_();
  if (!leader) return Status::NotLeader("scheduler: this instance does not lead the outbox");
  if (Status s = Connect(); !s.ok()) return s;

  if (delay_.enabled) {
    for (;;) {
      auto released = Fenced("release", pg::Params().Add(int64_t{delay_.batch_size}), *leader);
      if (!released.ok()) return released.status();
      stats_.released += *released;
      if (*released > 0) spdlog::debug("released {} delayed messages", *released);
      if (*released < delay_.batch_size || thread_.stop_requested()) break;
    }
  }
  if (inbox_.retention.count() > 0 && Clock::now() >= next_prune_) {
    for (;;) {
      auto pruned = Fenced("prune",
                           pg::Params()
                               .Add(std::to_string(inbox_.retention.count()) + " milliseconds")
                               .Add(int64_t{kPruneBatch}),
                           *leader);
      if (!pruned.ok()) return pruned.status();
      stats_.inbox_pruned += *pruned;
      if (*pruned > 0)
        spdlog::info("inbox: removed {} rows older than {}", *pruned,
                     FormatDuration(inbox_.retention));
      if (*pruned < kPruneBatch || thread_.stop_requested()) break;
    }
    next_prune_ = Clock::now() + inbox_.cleanup_interval;
  }

  Millis wait = delay_.poll_interval;
  if (delay_.enabled) {
    auto r = conn_->ExecPrepared("next_due", pg::Params());
    if (!r.ok()) {
      if (!conn_->healthy()) conn_.reset();
      return r.status();
    }
    if (!r->IsNull(0, 0)) wait = std::clamp(Millis(r->GetInt(0, 0)), Millis(1), wait);
  }
  return wait;
}

void Scheduler::Loop() {
  bool was_leading = false;
  while (!thread_.stopping()) {
    if (!leader_()) {
      if (was_leading) spdlog::debug("scheduler paused: not leading the outbox");
      was_leading = false;
      conn_.reset();
      thread_.SleepFor(delay_.poll_interval);
      continue;
    }
    was_leading = true;
    auto wait = RunOnce();
    if (!wait.ok() && wait.status().code() == Status::Code::kNotLeader) {
      thread_.SleepFor(delay_.poll_interval);
      continue;
    }
    if (!wait.ok()) {
      pg_log_.Failure(wait.status().message());
      thread_.SleepFor(backoff_.Next());
      continue;
    }
    pg_log_.Recovered();
    backoff_.Reset();
    thread_.SleepFor(*wait);
  }
}

}  // namespace outboxd
