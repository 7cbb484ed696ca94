// Scheduler: the leader's timed jobs on the outbox. It releases delayed messages whose time has
// come (outbox.release_due moves them from outbox.delayed into outbox.messages with fresh ids,
// in (due_at, seq) order, so the relay delivers them like any other row) and removes inbox rows
// older than inbox.retention (outbox.prune_inbox).
//
// It runs on its own thread (Start/Stop) with its own PostgreSQL connection, and only while this
// instance leads: `leader` gives the relay's lock session, and every statement runs only if that
// session still holds the outbox lock, proved in PostgreSQL in the same statement. Between
// releases it sleeps until the earliest waiting message is due, at most delay.poll_interval, so a
// message is released within that interval of its time (a NOTIFY then wakes a sleeping relay).
// RunOnce is one round, for tests.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>

#include "backoff.h"
#include "config.h"
#include "leader_session.h"
#include "log.h"
#include "pg/connection.h"
#include "status.h"
#include "stoppable_thread.h"

namespace outboxd {

class Scheduler {
 public:
  struct Stats {
    int64_t released = 0;      // delayed messages moved into outbox.messages
    int64_t inbox_pruned = 0;  // inbox rows removed
  };

  using LeaderFn = std::function<std::optional<LeaderSession>()>;
  Scheduler(const Config& config, LeaderFn leader);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Starts the thread; it runs until Stop() or until `stop` is set.
  void Start(const std::atomic<bool>& stop);
  void Stop();

  // One round on the caller's thread: releases every due message (batch by batch), prunes the
  // inbox when that is due. Returns how long to wait before the next round.
  Result<Millis> RunOnce();
  const Stats& stats() const { return stats_; }

 private:
  void Loop();
  Status Connect();
  // Runs a fenced statement whose first column is NULL unless `leader` holds the lock.
  Result<int64_t> Fenced(const char* statement, pg::Params params, const LeaderSession& leader);

  // Constant after construction.
  const std::string conninfo_;
  const pg::TcpSettings tcp_;
  const DelayConfig delay_;
  const InboxConfig inbox_;
  const LeaderFn leader_;

  StoppableThread thread_;

  // State below is used by the scheduler thread only (or by RunOnce's caller in tests).
  std::optional<pg::Connection> conn_;
  Backoff backoff_{Millis(100), Millis(10'000)};
  OnceLogger pg_log_{"PostgreSQL (scheduler)"};
  std::chrono::steady_clock::time_point next_prune_{};
  Stats stats_;
};

}  // namespace outboxd
