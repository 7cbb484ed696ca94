// Relay: the loop that moves committed outbox rows to Kafka.
//   lead -> fetch (id order) -> produce -> serve delivery reports -> remove acknowledged rows
// It owns the producer (rebuilt after a fatal error) and drives the store; everything runs on the
// thread that calls Run, so the hot path has no locks. The outbox is the source of truth: after any
// failure the relay rewinds and fetches again what PostgreSQL still holds.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "backoff.h"
#include "config.h"
#include "headers.h"
#include "log.h"
#include "metrics.h"
#include "outbox_store.h"
#include "publisher.h"

namespace outboxd {

class Relay {
 public:
  // Counters since construction. T is int64_t for a snapshot, an atomic inside the relay (its
  // thread writes them while others may read).
  template <typename T>
  struct Counters {
    T produced{0};       // messages handed to the producer (including repeats)
    T acknowledged{0};   // persisted delivery reports
    T marked_sent{0};    // rows removed (or marked) after their ack
    T dead_lettered{0};  // rows moved to outbox.dead_letters
    T rewinds{0};        // times the relay went back to re-fetch after a failure
    T producer_rebuilds{0};
    T leadership_terms{0};
    T unproven_reports{0};  // "persisted" reports without an offset, sent again
  };
  using Stats = Counters<int64_t>;

  Relay(const Config& config, OutboxStore& store, PublisherFactory make_publisher);

  // Runs until `stop` is set, then drains as DESIGN.md says: stop fetching, wait for outstanding
  // acknowledgements up to shutdown_timeout, remove what was acknowledged. Returns a non-ok Status
  // only for errors that retrying cannot fix (a producer property librdkafka rejects).
  Status Run(const std::atomic<bool>& stop);

  // A snapshot of the counters; safe to call from any thread.
  Stats stats() const;
  // The session that holds the outbox lock while this relay leads, nullopt otherwise; safe to
  // read from any thread. Check-back proves against it in PostgreSQL that the lock is still held:
  // this value changes only when a relay statement fails, which a stalled relay may not send.
  std::optional<LeaderSession> leader_session() const;
  // Histograms, gauges and the relay's state for the admin listener; lock-free, any thread.
  const RelayMetrics& metrics() const { return metrics_; }

 private:
  struct InFlight {
    int64_t id;
    std::optional<std::string> key;
    bool dead_letter_copy = false;  // a copy on the dead-letter topic
    bool isolated = false;          // a suspect, sent with nothing else in flight
    int64_t created_at_us = 0;      // the row's created_at (commit-to-ack latency)
  };
  struct PendingDeadLetter {
    std::string error;
    bool in_flight = false;  // its copy is on the way to the dead-letter topic
  };

  // One pass: serve reports, remove acked rows, fetch and produce, or wait. False: leadership lost.
  bool Step(const std::atomic<bool>& stop);
  bool ProduceRows(std::vector<OutboxRow>& rows);
  bool ProducePending();
  // Moves the rows DeadLetterRow queued to outbox.dead_letters. A row that PostgreSQL refuses to
  // move, even with a plain ASCII error text, is set aside for the rest of the term (logged,
  // left in the outbox, skipped by later fetches of this term) so that it cannot stop the others.
  bool MoveDeadLetters();
  // Produces one message, waiting out a full local queue. On Permanent (poison) and on any other
  // failure the caller decides; a Fatal one has already started HandleFatal.
  Status ProduceOne(const OutgoingMessage& m, InFlight entry);
  void ServeReports(Millis timeout);
  void OnReport(const DeliveryReport& report);
  // A row that can never be delivered: to the table now, or (dead_letter_topic set) queued for
  // a copy on that topic, produced by ProduceDeadLetterCopies while the producer is healthy.
  void Poison(int64_t id, const std::string& error);
  bool ProduceDeadLetterCopies();
  void DeadLetterRow(int64_t id, const std::string& error);
  bool FlushMarks(bool force);
  // After a retriable failure: wait for in-flight reports, remove what may be, fetch again.
  bool Recover(const std::atomic<bool>& stop);
  // An admin command put rows back below the fetch position (OutboxStore::TakeRescanRequest):
  // once nothing is in flight, fetch again from rescan_from_.
  bool Rescan();
  void HandleFatal(const std::string& reason);
  // Fails everything in flight and waits for the reports; no row is removed afterwards.
  void Abandon();
  void LoseLeadership(const Status& why);
  // Nothing to fetch: poll again soon, or (notify = true) sleep on LISTEN.
  bool IdleWait(const std::atomic<bool>& stop);
  // Rows arrived: leave the sleeping state, so publish() stops notifying.
  bool Wake();
  void Drain();
  void WaitInterruptibly(Millis d, const std::atomic<bool>& stop);
  // While leading: keeps the session alive (OutboxStore::KeepLeading); false if leadership is lost.
  bool KeepLeading();
  void PublishLeadership(bool leading);
  void Failure(int64_t id) { rewind_to_ = std::min(rewind_to_.value_or(id), id); }
  bool StoreOk(const Status& s);

  // Constant after construction.
  const Config& config_;
  OutboxStore& store_;
  PublisherFactory make_publisher_;

  PublisherPtr publisher_;
  bool leading_ = false;
  mutable std::mutex session_mu_;
  std::optional<LeaderSession> session_;  // GUARDED_BY(session_mu_): published for other threads
  uint64_t next_token_ = 1;
  std::unordered_map<uint64_t, InFlight> in_flight_;
  std::vector<int64_t> to_mark_;  // acknowledged, not yet removed
  std::chrono::steady_clock::time_point first_unmarked_;
  // The current attempt's failures: the first unacknowledged id, and per key the lowest failed id
  // (a later row of that key is not removed even if it was acknowledged: it goes again, in order).
  std::optional<int64_t> rewind_to_;
  std::optional<int64_t> rescan_from_;  // requested by an admin command, not yet done
  std::unordered_map<std::string, int64_t> failed_keys_;
  std::string last_failure_;
  bool fatal_ = false;
  bool abandoning_ = false;  // reports only count as acks, nothing else
  // Rows the broker refused in a request with others: each is sent again alone to tell.
  std::set<int64_t> suspects_;
  bool isolated_in_flight_ = false;
  std::map<int64_t, PendingDeadLetter> dead_letters_;  // poison rows awaiting their topic copy
  std::deque<std::pair<int64_t, std::string>> to_dead_letter_;  // to move at the next safe point
  std::set<int64_t> set_aside_;          // poison rows that could not be dead-lettered in this term
  std::vector<OutboxRow> pending_rows_;  // fetched, produced during the next round
  std::optional<std::chrono::steady_clock::time_point> idle_since_;
  bool asleep_ = false;  // outbox.relay_state.sleeping is set
  std::chrono::steady_clock::time_point next_cleanup_;
  Backoff backoff_;
  OnceLogger pg_log_{"PostgreSQL"};
  OnceLogger kafka_log_{"Kafka delivery"};
  bool standby_logged_ = false;
  Counters<std::atomic<int64_t>> stats_;  // written by the relay thread, read by any
  RelayMetrics metrics_;                  // written by the relay thread, read by any
};

}  // namespace outboxd
