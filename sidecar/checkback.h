// CheckBack: settles prepared (half) messages that the application left unresolved, as RocketMQ's
// broker checks back with a transactional producer. Each round it takes the due messages from
// the PreparedStore; one with max_checks unknown answers gets the final action (rollback or
// dead letter), the others are put to the Checker: commit / rollback settle the message (a
// verdict for a message the application settled meanwhile is ignored), unknown schedules the
// next check after check_interval. All state is in PostgreSQL, so a restart continues the count.
//
// It runs on its own thread (Start/Stop) with its own store connection, so it never slows the
// relay, and only while this instance leads the outbox: `leader` gives the relay's lock session,
// and check-back proves in PostgreSQL that this session still holds the lock before each round
// and before each question, and within each write (PreparedStore's fence). A relay stalled on
// Kafka sends no statement and would not notice that it was deposed; its check-back does. With no
// checker (checker = "none") it only removes old settled rows. RunOnce is the same round, for
// tests.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>

#include "backoff.h"
#include "checker.h"
#include "config.h"
#include "log.h"
#include "prepared_store.h"
#include "stoppable_thread.h"

namespace outboxd {

class CheckBack {
 public:
  struct Stats {
    int64_t checks = 0;         // questions put to the checker
    int64_t committed = 0;      // settled by a commit verdict
    int64_t rolled_back = 0;    // settled by a rollback verdict
    int64_t unknown = 0;        // unknown answers (including timeouts and bad answers)
    int64_t final_actions = 0;  // settled after max_checks
    int64_t ignored = 0;        // verdicts for messages settled meanwhile
  };

  // `checker` may be null (checker = "none"). `leader` is called from the check-back thread: the
  // relay's lock session while it leads, nullopt otherwise.
  using LeaderFn = std::function<std::optional<LeaderSession>()>;
  CheckBack(const CheckbackConfig& config, PreparedStore& store, CheckerPtr checker,
            LeaderFn leader);
  ~CheckBack();
  CheckBack(const CheckBack&) = delete;
  CheckBack& operator=(const CheckBack&) = delete;

  // Starts the thread; it runs until Stop() or until `stop` is set.
  void Start(const std::atomic<bool>& stop);
  void Stop();

  // One round on the caller's thread: cleanup when due, then up to batch_size due messages.
  // Returns how many messages it handled (checked or settled).
  Result<int> RunOnce();
  // A snapshot of the counters; safe to call from any thread (the admin listener reads it).
  Stats stats() const {
    Stats s;
    s.checks = counts_.checks.load(std::memory_order_relaxed);
    s.committed = counts_.committed.load(std::memory_order_relaxed);
    s.rolled_back = counts_.rolled_back.load(std::memory_order_relaxed);
    s.unknown = counts_.unknown.load(std::memory_order_relaxed);
    s.final_actions = counts_.final_actions.load(std::memory_order_relaxed);
    s.ignored = counts_.ignored.load(std::memory_order_relaxed);
    return s;
  }

 private:
  void Loop();
  // NotLeader unless `leader` still holds the outbox lock, checked in PostgreSQL.
  Status ProveLeading(const LeaderSession& leader);
  // One message: the final action or a check. Store errors (and NotLeader) end the round.
  Status Handle(const PreparedMessage& m, const LeaderSession& leader);
  Status Apply(const PreparedMessage& m, Settlement settlement, SettledBy by,
               const LeaderSession& leader);

  // Constant after construction.
  const CheckbackConfig& config_;
  PreparedStore& store_;
  const CheckerPtr checker_;
  const LeaderFn leader_;

  StoppableThread thread_;

  // State below is used by the check-back thread only (or by RunOnce's caller in tests).
  Backoff backoff_{Millis(100), Millis(10'000)};
  OnceLogger pg_log_{"PostgreSQL (check-back)"};
  std::chrono::steady_clock::time_point next_cleanup_{};
  std::set<int64_t> warned_;  // messages whose failed check was logged at warn already
  bool connected_ = false;
  bool warned_deposed_ = false;
  struct AtomicStats {
    std::atomic<int64_t> checks{0}, committed{0}, rolled_back{0}, unknown{0}, final_actions{0},
        ignored{0};
  };
  AtomicStats counts_;  // written by the check-back thread, read by any
};

}  // namespace outboxd
