// In-memory OutboxStore and Publisher for the relay's unit tests. Thread-safe: the relay runs on
// its own thread while the test body adds rows and reads results.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "outbox_store.h"
#include "publisher.h"

namespace outboxd::testing {

// The delivery reports a producer gave the relay: which (topic, outbox id) the broker persisted.
// FakeStore::MarkSent asks it for proof before it removes a row. It also keeps where each record
// that counts was stored (topic, partition, offset): a record outside a transaction once its report
// is persisted, a record of a transaction only once that transaction committed. librdkafka's mock
// cluster writes no transaction markers, so its readers see aborted records too: a test judges
// what a read_committed consumer of a real broker would see by keeping only these.
class ReportWitness {
 public:
  struct Location {
    std::string topic;
    int32_t partition = -1;
    int64_t offset = -1;
    auto operator<=>(const Location&) const = default;
  };
  void Persisted(const std::string& topic, int64_t id) {
    std::lock_guard l(mu_);
    persisted_.emplace(topic, id);
  }
  bool Has(const std::string& topic, int64_t id) {
    std::lock_guard l(mu_);
    return persisted_.count({topic, id}) > 0;
  }
  void Stored(Location where) {
    std::lock_guard l(mu_);
    stored_.insert(std::move(where));
  }
  bool Counts(const Location& where) {
    std::lock_guard l(mu_);
    return stored_.count(where) > 0;
  }

 private:
  std::mutex mu_;
  std::set<std::pair<std::string, int64_t>> persisted_;  // GUARDED_BY(mu_)
  std::set<Location> stored_;                            // GUARDED_BY(mu_)
};

// A Publisher that passes everything to `inner` and tells the witness about persisted reports.
// The outbox id is read from the message's first header ("outbox-id"), as the relay sets it.
class WitnessedPublisher : public Publisher {
 public:
  WitnessedPublisher(PublisherPtr inner, ReportWitness& witness)
      : inner_(std::move(inner)), witness_(witness) {}
  Status Produce(const OutgoingMessage& m, uint64_t token) override {
    Status s = inner_->Produce(m, token);
    if (!s.ok()) return s;
    if (m.headers->empty()) {  // not a row (the exactly-once checkpoint record)
      sent_[token] = {*m.topic, std::nullopt};
      return s;
    }
    const auto& first = m.headers->at(0);
    if (first.first != "outbox-id" || !first.second) {
      return Status::Invalid("test witness: the first header is not outbox-id");
    }
    sent_[token] = {*m.topic, std::stoll(*first.second)};
    return s;
  }
  void Poll(Millis timeout, std::vector<DeliveryReport>* reports) override {
    size_t before = reports->size();
    inner_->Poll(timeout, reports);
    for (size_t i = before; i < reports->size(); ++i) {
      auto it = sent_.find((*reports)[i].token);
      if (it == sent_.end()) continue;
      const DeliveryReport& r = (*reports)[i];
      if (r.proven()) {  // persisted with an offset: the only proof
        ReportWitness::Location where{it->second.first, r.partition, r.offset};
        if (in_transaction_) {
          in_transaction_proofs_.push_back({it->second, std::move(where)});  // if it commits
        } else {
          Prove(it->second, std::move(where));
        }
      }
      sent_.erase(it);
    }
  }
  std::optional<std::string> FatalError() override { return inner_->FatalError(); }
  void PurgeAll() override { inner_->PurgeAll(); }
  // Transactions: a persisted report proves delivery only once its transaction commits. After an
  // abort it proves nothing, and neither after a commit that failed (fatally, or fenced): its
  // outcome is unknown to the relay, which must remove nothing for it. The next producer's
  // InitTransactions settles it: on the mock cluster, whose coordinator never served the refused
  // EndTxn, it aborts; the tests judge that case (they read checkpoints with CommittedCheckpoints).
  Status InitTransactions(Millis timeout) override { return inner_->InitTransactions(timeout); }
  Status BeginTransaction() override {
    Status s = inner_->BeginTransaction();
    if (s.ok()) in_transaction_ = true;
    return s;
  }
  Status CommitTransaction(Millis timeout) override {
    Status s = inner_->CommitTransaction(timeout);
    if (s.ok()) {
      EndTransaction(/*committed=*/true);
    } else if (s.code() == Status::Code::kFatal) {
      EndTransaction(/*committed=*/false);
    }
    return s;
  }
  Status AbortTransaction(Millis timeout) override {
    Status s = inner_->AbortTransaction(timeout);
    if (s.ok() || s.code() == Status::Code::kFatal) EndTransaction(/*committed=*/false);
    return s;
  }

 private:
  using Row =
      std::pair<std::string, std::optional<int64_t>>;  // topic, outbox id (none: checkpoint)
  void Prove(const Row& row, ReportWitness::Location where) {
    if (row.second) witness_.Persisted(row.first, *row.second);
    witness_.Stored(std::move(where));
  }
  void EndTransaction(bool committed) {
    if (committed) {
      for (auto& [row, where] : in_transaction_proofs_) Prove(row, std::move(where));
    }
    in_transaction_proofs_.clear();
    in_transaction_ = false;
  }

  PublisherPtr inner_;
  ReportWitness& witness_;
  bool in_transaction_ = false;
  std::vector<std::pair<Row, ReportWitness::Location>> in_transaction_proofs_;
  std::map<uint64_t, Row> sent_;  // token -> topic, outbox id
};

// Wraps every publisher `make` builds in a WitnessedPublisher.
inline PublisherFactory Witnessed(PublisherFactory make, ReportWitness& witness) {
  return [make = std::move(make), &witness]() -> Result<PublisherPtr> {
    auto p = make();
    if (!p.ok()) return p.status();
    return PublisherPtr(new WitnessedPublisher(std::move(*p), witness));
  };
}

// MarkSent refuses (and records) an id for which the witness saw no persisted report on the
// row's topic: build the relay's publishers with Witnessed(..., store.witness()).
class FakeStore : public OutboxStore {
 public:
  ReportWitness& witness() { return witness_; }
  // Ids MarkSent was asked to remove without a persisted report (it refused them).
  std::vector<int64_t> Unproven() {
    std::lock_guard l(mu_);
    return unproven_;
  }
  // Calls of Lead() so far, whatever they returned.
  int lead_attempts() {
    std::lock_guard l(mu_);
    return lead_attempts_;
  }
  // Once `removed` rows were removed, the next `n` calls of FetchBatch or MarkSent fail (a
  // connection lost mid-stream); injected_mid_stream() counts them.
  void FailAfterRemoved(size_t removed, int n) {
    std::lock_guard l(mu_);
    fail_after_removed_ = removed;
    fail_mid_stream_ = n;
  }
  // Once `removed` rows were removed, the next `n` calls of MarkSent that carry ids fail (the
  // removal after a delivery is lost: a crash between the Kafka ack or commit and the removal).
  void FailRemovalsAfter(size_t removed, int n) {
    std::lock_guard l(mu_);
    fail_removals_after_ = removed;
    fail_removals_ = n;
  }
  int injected_removal_failures() {
    std::lock_guard l(mu_);
    return injected_removal_failures_;
  }
  int injected_mid_stream() {
    std::lock_guard l(mu_);
    return injected_mid_stream_;
  }
  // Rows still in the outbox when the first mid-stream failure hit.
  size_t rows_at_first_injection() {
    std::lock_guard l(mu_);
    return rows_at_first_injection_;
  }
  // A committed row; ids must be added in increasing order unless `late` commits are simulated.
  void Add(int64_t id, std::string topic, std::optional<std::string> key,
           std::optional<std::string> payload, std::string headers = "{}") {
    std::lock_guard l(mu_);
    rows_[id] =
        OutboxRow{id, std::move(topic), std::move(key), std::move(payload), std::move(headers)};
  }
  void FailNext(int n, Status s = Status::Unavailable("injected: connection lost")) {
    std::lock_guard l(mu_);
    fail_next_ = n;
    failure_ = s;
  }
  void SetLeaderElsewhere(bool v) {
    std::lock_guard l(mu_);
    other_leader_ = v;
  }
  std::set<int64_t> Remaining() {
    std::lock_guard l(mu_);
    std::set<int64_t> out;
    for (auto& [id, r] : rows_) out.insert(id);
    return out;
  }
  std::vector<int64_t> Removed() {
    std::lock_guard l(mu_);
    return removed_;
  }
  std::map<int64_t, std::string> DeadLetters() {
    std::lock_guard l(mu_);
    return dead_;
  }
  int leads() {
    std::lock_guard l(mu_);
    return leads_;
  }
  // DeadLetter(id, ...) fails as a refused statement would, whatever the error text.
  void RefuseDeadLetter(int64_t id) {
    std::lock_guard l(mu_);
    refused_dead_letters_.insert(id);
  }
  int dead_letter_attempts() {
    std::lock_guard l(mu_);
    return dead_letter_attempts_;
  }
  // Calls of MarkSent with ids (the statements PostgreSQL would run) and of FetchBatch so far.
  int removal_statements() {
    std::lock_guard l(mu_);
    return removal_statements_;
  }
  int fetches() {
    std::lock_guard l(mu_);
    return fetches_;
  }

  // An admin command's request (outbox.relay_state.rescan_from): rows from `from` on were put
  // back. Every fetch sees it until ClearRescanRequest clears it with the same value, as the
  // statement `WHERE rescan_from = $1` does.
  void RequestRescan(int64_t from) {
    std::lock_guard l(mu_);
    rescan_from_ = rescan_from_ ? std::min(*rescan_from_, from) : from;
  }
  std::optional<int64_t> rescan_request() {
    std::lock_guard l(mu_);
    return rescan_from_;
  }
  std::optional<int64_t> TakeRescanRequest() override {
    std::lock_guard l(mu_);
    auto seen = rescan_seen_;
    rescan_seen_.reset();
    return seen;
  }
  Status ClearRescanRequest(int64_t from) override {
    std::lock_guard l(mu_);
    if (rescan_from_ == from) rescan_from_.reset();
    return Status::Ok();
  }

  Status Lead() override {
    std::lock_guard l(mu_);
    ++lead_attempts_;
    if (Status s = Inject(); !s.ok()) return s;
    if (other_leader_) return Status::NotLeader("held elsewhere");
    if (!leader_) {
      leader_ = true;
      ++leads_;
      fetched_.clear();
    }
    return Status::Ok();
  }
  void Disconnect() override {
    std::lock_guard l(mu_);
    leader_ = false;
  }
  Status KeepLeading() override {
    std::lock_guard l(mu_);
    if (!leader_) return Status::NotLeader("not leading");
    return Inject();
  }
  LeaderSession Session() const override { return LeaderSession{1, 1, "fake"}; }
  // While set, FetchBatch does not return (a statement that hangs): the relay thread stops looping.
  // stalled_fetches() counts the calls that waited.
  void StallFetches(bool stall) { stall_fetches_ = stall; }
  int stalled_fetches() const { return stalled_fetches_; }
  Status FetchBatch(std::vector<OutboxRow>* rows) override {
    if (stall_fetches_) {
      ++stalled_fetches_;
      while (stall_fetches_) std::this_thread::sleep_for(Millis(5));
    }
    std::lock_guard l(mu_);
    ++fetches_;
    rows->clear();
    if (Status s = Inject(); !s.ok()) return s;
    if (Status s = InjectMidStream(); !s.ok()) return s;
    rescan_seen_ = rescan_from_;
    for (auto& [id, r] : rows_) {
      if (fetched_.count(id)) continue;
      fetched_.insert(id);
      rows->push_back(r);
      if (rows->size() >= 100) break;
    }
    return Status::Ok();
  }
  void Rewind(int64_t first_unacked) override {
    std::lock_guard l(mu_);
    fetched_.erase(fetched_.lower_bound(first_unacked), fetched_.end());
  }
  Status MarkSent(const std::vector<int64_t>& ids) override {
    std::lock_guard l(mu_);
    if (!ids.empty()) ++removal_statements_;
    if (Status s = Inject(); !s.ok()) return s;
    if (Status s = InjectMidStream(); !s.ok()) return s;
    if (!ids.empty() && fail_removals_ > 0 && removed_.size() >= fail_removals_after_) {
      --fail_removals_;
      ++injected_removal_failures_;
      return Status::Unavailable("injected: connection lost before the removal");
    }
    std::vector<int64_t> unproven;
    for (int64_t id : ids) {
      auto it = rows_.find(id);
      if (it != rows_.end() && !witness_.Has(it->second.topic, id)) unproven.push_back(id);
    }
    if (!unproven.empty()) {
      unproven_.insert(unproven_.end(), unproven.begin(), unproven.end());
      return Status::Invalid("fake store: no persisted report for id " +
                             std::to_string(unproven.front()));
    }
    for (int64_t id : ids) {
      rows_.erase(id);
      removed_.push_back(id);
    }
    return Status::Ok();
  }
  Status DeadLetter(int64_t id, const std::string& error) override {
    std::lock_guard l(mu_);
    if (Status s = Inject(); !s.ok()) return s;
    ++dead_letter_attempts_;
    // As PostgreSQL refuses text that is not UTF-8 (SQLSTATE 22021) on a healthy connection.
    if (!IsUtf8(error)) return Status::Invalid("invalid byte sequence for encoding \"UTF8\"");
    if (refused_dead_letters_.count(id)) return Status::Invalid("injected: dead letter refused");
    rows_.erase(id);
    dead_[id] = error;
    return Status::Ok();
  }
  Result<std::optional<OutboxRow>> FetchRow(int64_t id) override {
    std::lock_guard l(mu_);
    auto it = rows_.find(id);
    if (it == rows_.end()) return std::optional<OutboxRow>();
    return std::optional<OutboxRow>(it->second);
  }
  Status SetSleeping(bool sleeping) override {
    if (sleeping) ++sleeps;
    return Status::Ok();
  }
  std::atomic<int> sleeps{0};  // times the relay set the sleeping flag
  Result<bool> WaitForNotify(Millis timeout) override {
    std::this_thread::sleep_for(std::min(timeout, Millis(2)));
    return false;
  }
  Result<int64_t> RemoveSentBefore(Millis) override { return int64_t{0}; }

 private:
  // Well-formed UTF-8 without NUL (shortest forms, no surrogates, at most U+10FFFF).
  static bool IsUtf8(const std::string& s) {
    for (size_t i = 0; i < s.size();) {
      auto c = static_cast<unsigned char>(s[i]);
      size_t n = c == 0           ? 0
                 : c < 0x80       ? 1
                 : (c >> 5) == 6  ? 2
                 : (c >> 4) == 14 ? 3
                 : (c >> 3) == 30 ? 4
                                  : 0;
      if (n == 0 || i + n > s.size()) return false;
      uint32_t cp = n == 1 ? c : c & (0x7F >> n);
      for (size_t k = 1; k < n; ++k) {
        auto b = static_cast<unsigned char>(s[i + k]);
        if ((b & 0xC0) != 0x80) return false;
        cp = (cp << 6) | (b & 0x3F);
      }
      static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
      if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
      i += n;
    }
    return true;
  }
  Status Inject() {
    if (fail_next_ > 0) {
      --fail_next_;
      return failure_;
    }
    return Status::Ok();
  }
  Status InjectMidStream() {
    if (fail_mid_stream_ > 0 && removed_.size() >= fail_after_removed_) {
      if (injected_mid_stream_ == 0) rows_at_first_injection_ = rows_.size();
      --fail_mid_stream_;
      ++injected_mid_stream_;
      return Status::Unavailable("injected mid-stream: connection lost");
    }
    return Status::Ok();
  }

  std::mutex mu_;
  std::atomic<bool> stall_fetches_{false};
  std::atomic<int> stalled_fetches_{0};
  size_t fail_removals_after_ = 0;  // GUARDED_BY(mu_), with the two below
  int fail_removals_ = 0;
  int injected_removal_failures_ = 0;
  std::map<int64_t, OutboxRow> rows_;   // GUARDED_BY(mu_)
  std::set<int64_t> fetched_;           // GUARDED_BY(mu_)
  std::optional<int64_t> rescan_from_;  // GUARDED_BY(mu_): the request in relay_state
  std::optional<int64_t> rescan_seen_;  // GUARDED_BY(mu_): what the last fetch read
  std::vector<int64_t> removed_;        // GUARDED_BY(mu_)
  std::map<int64_t, std::string> dead_;
  std::set<int64_t> refused_dead_letters_;
  int dead_letter_attempts_ = 0;
  int removal_statements_ = 0;  // GUARDED_BY(mu_)
  int fetches_ = 0;             // GUARDED_BY(mu_)
  int fail_next_ = 0;
  Status failure_;
  bool leader_ = false;
  bool other_leader_ = false;
  int leads_ = 0;
  int lead_attempts_ = 0;
  ReportWitness witness_;
  std::vector<int64_t> unproven_;
  size_t fail_after_removed_ = 0;
  int fail_mid_stream_ = 0;
  int injected_mid_stream_ = 0;
  size_t rows_at_first_injection_ = 0;
};

// What the fake broker did with a message.
struct Sent {
  std::string topic;
  std::optional<std::string> key;
  std::optional<std::string> payload;
  Headers headers;
  DeliveryReport::Outcome outcome;
  int64_t outbox_id() const { return std::stoll(*headers.at(0).second); }
};

class FakeBroker {
 public:
  // Decides each message's outcome when its report is served; default: persisted.
  std::function<DeliveryReport::Outcome(const Sent&)> decide;
  std::function<Status(const Sent&)> on_produce;  // a non-ok Status is returned by Produce
  size_t queue_capacity = 1'000'000;
  // Reports of outbox ids from this one on wait, with everything queued behind them (as behind a
  // slow partition); set before the relay starts, or inside on_produce / decide (under mu_).
  int64_t hold_from = INT64_MAX;
  std::atomic<bool> hold_reports{false};  // reports wait (as if the broker were slow or down)
  // Reports this persisted message without an offset and without storing it, as librdkafka's
  // implicit ack does for a batch the broker never wrote.
  std::function<bool(const Sent&)> implicit_ack;
  int64_t next_offset = 0;  // GUARDED_BY(mu_)

  std::vector<Sent> Log() {
    std::lock_guard l(mu_);
    return log_;
  }
  // Persisted messages in the order the broker stored them.
  std::vector<Sent> Persisted() {
    std::vector<Sent> out;
    for (auto& s : Log()) {
      if (s.outcome == DeliveryReport::Outcome::kPersisted) out.push_back(s);
    }
    return out;
  }
  std::atomic<int> producers_built{0};
  std::atomic<int> zero_timeout_polls{0};  // Poll calls that may not wait (a spinning caller)
  std::mutex mu_;
  std::vector<Sent> log_;
};

class FakePublisher : public Publisher {
 public:
  explicit FakePublisher(FakeBroker& broker) : broker_(broker) {}

  Status Produce(const OutgoingMessage& m, uint64_t token) override {
    if (fatal_) return Status::Fatal(*fatal_);
    std::lock_guard l(broker_.mu_);
    if (queue_.size() >= broker_.queue_capacity) return Status::QueueFull("queue full");
    Sent s{*m.topic, *m.key, *m.payload, *m.headers, DeliveryReport::Outcome::kPersisted};
    if (broker_.on_produce) {
      Status st = broker_.on_produce(s);
      if (!st.ok()) {
        if (st.code() == Status::Code::kFatal) fatal_ = st.message();
        return st;
      }
    }
    queue_.push_back({token, s});
    return Status::Ok();
  }
  void Poll(Millis timeout, std::vector<DeliveryReport>* reports) override {
    if (timeout.count() == 0) ++broker_.zero_timeout_polls;
    bool any = false;
    {
      std::lock_guard l(broker_.mu_);
      while (!queue_.empty() &&
             (purged_ ||
              (!broker_.hold_reports && queue_.front().second.outbox_id() < broker_.hold_from))) {
        auto [token, s] = queue_.front();
        queue_.pop_front();
        s.outcome =
            purged_ ? DeliveryReport::Outcome::kRetriable
                    : (broker_.decide ? broker_.decide(s) : DeliveryReport::Outcome::kPersisted);
        DeliveryReport r{token, s.outcome, purged_ ? "purged" : "injected"};
        if (s.outcome == DeliveryReport::Outcome::kPersisted) {
          if (broker_.implicit_ack && broker_.implicit_ack(s)) {
            s.outcome = DeliveryReport::Outcome::kRetriable;  // never stored, yet reported so
          } else {
            r.offset = broker_.next_offset++;
          }
        }
        broker_.log_.push_back(s);
        reports->push_back(std::move(r));
        any = true;
      }
      if (queue_.empty()) purged_ = false;
    }
    if (!any) std::this_thread::sleep_for(std::min(timeout, Millis(1)));
  }
  std::optional<std::string> FatalError() override { return fatal_; }
  void PurgeAll() override {
    std::lock_guard l(broker_.mu_);
    purged_ = true;
  }

 private:
  FakeBroker& broker_;
  std::deque<std::pair<uint64_t, Sent>> queue_;
  std::optional<std::string> fatal_;
  bool purged_ = false;
};

// Publishers on the fake broker, witnessed for `store` (its MarkSent needs their reports).
inline PublisherFactory FakeFactory(FakeBroker& broker, FakeStore& store) {
  return Witnessed(
      [&broker]() -> Result<PublisherPtr> {
        ++broker.producers_built;
        return PublisherPtr(new FakePublisher(broker));
      },
      store.witness());
}

// A relay config for tests: small batches, short polls and back-offs.
inline Config FastRelayConfig() {
  Config c;
  c.relay.batch_size = 100;
  c.relay.max_in_flight = 1000;
  c.relay.idle_grace = Millis(1);
  c.relay.idle_poll_interval = Millis(1);
  c.relay.poll_interval = Millis(5);
  c.relay.shutdown_timeout = Millis(200);
  c.backoff.initial = Millis(1);
  c.backoff.max = Millis(5);
  c.leadership.retry_interval = Millis(5);
  return c;
}

// Polls `cond` until it holds or `timeout` passes.
inline bool Eventually(const std::function<bool()>& cond, Millis timeout = Millis(5000)) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(Millis(2));
  }
  return cond();
}

}  // namespace outboxd::testing
