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
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "backoff.h"
#include "checkpoint.h"
#include "config.h"
#include "exactly_once.h"
#include "headers.h"
#include "inflight.h"
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
    // relay.delivery = "exactly_once"
    T transactions_committed{0};
    T transactions_aborted{0};
    T checkpoint_rows_removed{0};  // removed at a term's start: a committed transaction had them
  };
  using Stats = Counters<int64_t>;

  // read_checkpoint is needed with relay.delivery = "exactly_once" (Run fails without it).
  Relay(const Config& config, OutboxStore& store, PublisherFactory make_publisher,
        CheckpointReader read_checkpoint = nullptr);

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
  using Clock = std::chrono::steady_clock;
  struct PendingDeadLetter {
    std::string error;
    bool in_flight = false;  // its copy is on the way to the dead-letter topic
  };

  // One pass: serve reports, remove acked rows, fetch and produce, or wait. False: leadership lost.
  bool Step(const std::atomic<bool>& stop);
  // The same in exactly-once mode: remove the last committed transaction's rows and fetch, then
  // one batch in one transaction, committed or aborted before it returns.
  bool StepExactlyOnce(const std::atomic<bool>& stop);
  // InitTransactions (fences older producers of the transactional.id, settles their last
  // transaction), then removes the rows of the last committed checkpoint without sending them.
  bool PrepareTransactions(const std::atomic<bool>& stop);
  bool Transact(std::vector<OutboxRow>& rows, const std::atomic<bool>& stop);
  bool ProduceCheckpoint();
  // Commits (or aborts) the open transaction and applies the outcome to the ledger.
  bool EndTransaction(bool commit, const std::atomic<bool>& stop);
  // on_sent = "retain": removes old sent rows now and then.
  bool CleanUpRetained();
  bool ProduceRows(std::vector<OutboxRow>& rows);
  bool ProducePending();
  // A topic Kafka refused (OnReport, ProduceRows): its rows from `id` on wait, the others go on.
  void HoldTopic(const std::string& topic, int64_t id, const std::string& error);
  // Whether ProduceRows skips `row` (its topic is held); remembers it as waiting. A held topic's
  // row past the dead-letter bound is dead-lettered instead (and not skipped: it is gone).
  bool SkipForHeldTopic(const OutboxRow& row);
  // The lowest waiting id of the held topics due for another try, if any.
  std::optional<int64_t> HeldTopicsDue(Clock::time_point now) const;
  // A persisted report of a held topic's row above its lowest waiting id: not removed, it goes
  // again after the waiting rows (per-key order).
  bool BehindHeldRow(const InFlightLedger::Entry& e) const;
  void PublishHeldTopics();
  // Moves the rows DeadLetterRow queued to outbox.dead_letters. A row that PostgreSQL refuses to
  // move, even with a plain ASCII error text, is set aside for the rest of the term (logged,
  // left in the outbox, skipped by later fetches of this term) so that it cannot stop the others.
  bool MoveDeadLetters();
  // Produces one message, waiting out a full local queue. On Permanent (poison) and on any other
  // failure the caller decides; a Fatal one has already started HandleFatal.
  Status ProduceOne(const OutgoingMessage& m, InFlightLedger::Entry entry);
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
  // An admin command put rows back below the fetch position (OutboxStore::TakeRescanRequest), or
  // a held topic is due for another try: once nothing is in flight, fetch again from
  // rescan_from_, clear the admin request read (rescan_request_), release the due topics.
  bool Rescan();
  // After a fetch: takes an admin command's rescan request and the held topics whose retry is
  // due, and sets where the rescan fetches from (never above `rows`, which are not produced now).
  // True if a rescan is due; the rescan request stays to be cleared with the value read.
  bool RescanDue(const std::vector<OutboxRow>& rows);
  void HandleFatal(const std::string& reason);
  // Fails everything in flight and waits for the reports; no row is removed afterwards.
  void Abandon();
  void LoseLeadership(const Status& why);
  // Nothing to fetch: poll again soon, or (notify = true) sleep on LISTEN.
  bool IdleWait(const std::atomic<bool>& stop);
  // A round found `rows` rows: measures the arrival rate for IdleWait.
  void RowsArrived(size_t rows);
  // Rows arrived: leave the sleeping state, so publish() stops notifying.
  bool Wake();
  void Drain();
  void WaitInterruptibly(Millis d, const std::atomic<bool>& stop);
  // While leading: keeps the session alive (OutboxStore::KeepLeading); false if leadership is lost.
  bool KeepLeading();
  void PublishLeadership(bool leading);
  bool StoreOk(const Status& s);

  // Constant after construction.
  const Config& config_;
  OutboxStore& store_;
  PublisherFactory make_publisher_;
  CheckpointReader read_checkpoint_;
  const std::string transactional_id_;  // empty in at-least-once mode

  PublisherPtr publisher_;
  bool leading_ = false;
  mutable std::mutex session_mu_;
  std::optional<LeaderSession> session_;  // GUARDED_BY(session_mu_): published for other threads
  InFlightLedger ledger_;  // tokens, reports awaited, per-key barriers, marks, rewind, suspects
  std::unique_ptr<ExactlyOnce> exactly_once_;  // the strategy; null in at-least-once mode
  std::string incarnation_;                    // the outbox's, read at the start of each term
  int checkpoint_failures_ = 0;                // failed checkpoint reads in a row, this term
  std::optional<int64_t> rescan_from_;         // where the next rescan fetches from, not yet done
  std::optional<int64_t> rescan_request_;      // the admin request it serves, as read (cleared so)
  std::string last_failure_;
  bool fatal_ = false;
  bool abandoning_ = false;                            // reports only count as acks, nothing else
  std::map<int64_t, PendingDeadLetter> dead_letters_;  // poison rows awaiting their topic copy
  std::deque<std::pair<int64_t, std::string>> to_dead_letter_;  // to move at the next safe point
  std::set<int64_t> set_aside_;  // poison rows that could not be dead-lettered in this term
  // A topic Kafka refuses: its rows wait in the outbox (skipped by ProduceRows, fetched again
  // from `lowest` when the back-off ends) while other topics flow (docs/design.md, section 3).
  struct TopicHold {
    std::string error;
    Clock::time_point since;     // first refusal: the dead-letter bound counts from here
    Clock::time_point retry_at;  // when its rows are fetched again
    Backoff backoff;
    std::optional<int64_t>
        lowest{};           // the lowest id waiting (skipped or refused) since the last try
    int64_t highest = 0;    // the highest
    bool retrying = false;  // fetched again: its rows are produced (until refused again)
    // The bound passed at the last try: its rows up to this id are dead-lettered.
    std::optional<int64_t> dead_letter_through{};
  };
  std::map<std::string, TopicHold> held_topics_;
  std::vector<OutboxRow> pending_rows_;  // fetched, produced during the next round
  std::optional<std::chrono::steady_clock::time_point> idle_since_;
  bool asleep_ = false;  // outbox.relay_state.sleeping is set
  // When the last round that found rows ended, and the arrival rate it measured (rows per second
  // since the one before; negative: not known yet).
  std::optional<std::chrono::steady_clock::time_point> last_rows_at_;
  double arrival_rate_ = -1;
  std::chrono::steady_clock::time_point next_cleanup_;
  int64_t retained_removed_ = 0;  // by the cleanup run under way (CleanUpRetained)
  Backoff backoff_;
  OnceLogger pg_log_{"PostgreSQL"};
  OnceLogger kafka_log_{"Kafka delivery"};
  bool standby_logged_ = false;
  Counters<std::atomic<int64_t>> stats_;  // written by the relay thread, read by any
  RelayMetrics metrics_;                  // written by the relay thread, read by any
};

}  // namespace outboxd
