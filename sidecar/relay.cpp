#include "relay.h"

#include <algorithm>
#include <thread>

#include <spdlog/spdlog.h>

#include "log_json.h"
#include "text.h"

namespace outboxd {

using Clock = std::chrono::steady_clock;

// outbox.dead_letters.error keeps at most this many bytes of an error text.
constexpr size_t kMaxErrorBytes = 2000;

Relay::Relay(const Config& config, OutboxStore& store, PublisherFactory make_publisher)
    : config_(config),
      store_(store),
      make_publisher_(std::move(make_publisher)),
      backoff_(config.backoff.initial, config.backoff.max) {}

Relay::Stats Relay::stats() const {
  Stats s;
  s.produced = stats_.produced.load();
  s.acknowledged = stats_.acknowledged.load();
  s.marked_sent = stats_.marked_sent.load();
  s.dead_lettered = stats_.dead_lettered.load();
  s.rewinds = stats_.rewinds.load();
  s.producer_rebuilds = stats_.producer_rebuilds.load();
  s.leadership_terms = stats_.leadership_terms.load();
  s.unproven_reports = stats_.unproven_reports.load();
  return s;
}

Status Relay::Run(const std::atomic<bool>& stop) {
  using State = RelayMetrics::State;
  auto set_state = [this](State st) { metrics_.state.store(static_cast<int>(st)); };
  while (!stop) {
    metrics_.Beat();
    if (!leading_) {
      Status s = store_.Lead();
      if (s.ok()) {
        pg_log_.Recovered();
        backoff_.Reset();  // the next outage starts from backoff.initial again
        leading_ = true;
        set_state(State::kLeading);
        PublishLeadership(true);
        standby_logged_ = false;
        ++stats_.leadership_terms;
        idle_since_.reset();
        next_cleanup_ = Clock::now();
        spdlog::info("leading the outbox: delivering messages");
        continue;
      }
      if (s.code() == Status::Code::kNotLeader) {
        pg_log_.Recovered();
        set_state(State::kStandby);
        if (!standby_logged_) spdlog::info("standing by: {}", s.message());
        standby_logged_ = true;
        WaitInterruptibly(config_.leadership.retry_interval, stop);
      } else {
        set_state(State::kUnavailable);
        pg_log_.Failure(s.message());
        WaitInterruptibly(backoff_.Next(), stop);
      }
      continue;
    }
    if (!publisher_) {
      metrics_.kafka_ok.store(false);
      auto p = make_publisher_();
      if (!p.ok()) {
        if (p.status().code() == Status::Code::kInvalid) return p.status();
        kafka_log_.Failure(p.status().message());
        WaitInterruptibly(backoff_.Next(), stop);
        continue;
      }
      publisher_ = std::move(*p);
    }
    Step(stop);
  }
  if (leading_) Drain();
  return Status::Ok();
}

bool Relay::StoreOk(const Status& s) {
  if (s.ok()) return true;
  LoseLeadership(s);
  return false;
}

std::optional<LeaderSession> Relay::leader_session() const {
  std::lock_guard l(session_mu_);
  return session_;
}

void Relay::PublishLeadership(bool leading) {
  std::lock_guard l(session_mu_);
  session_ = leading ? std::optional<LeaderSession>(store_.Session()) : std::nullopt;
}

bool Relay::KeepLeading() { return leading_ && StoreOk(store_.KeepLeading()); }

bool Relay::Step(const std::atomic<bool>& stop) {
  ServeReports(Millis(0));
  metrics_.kafka_ok.store(publisher_ != nullptr && !fatal_ && !kafka_log_.failing(),
                          std::memory_order_relaxed);
  if (!leading_) return false;
  // Stalled on Kafka (max_in_flight reached, recovering, backing off) the relay may send nothing
  // for long: without a statement PostgreSQL would end the session (idle_session_timeout).
  if (!KeepLeading()) return false;
  if (!fatal_) {
    if (auto reason = publisher_->FatalError()) HandleFatal(*reason);
  }
  if (!MoveDeadLetters()) return false;
  if (rewind_to_ || fatal_) return Recover(stop);
  if (rescan_from_) return Rescan();

  auto now = Clock::now();
  if (config_.relay.on_sent == OnSent::kRetain && now >= next_cleanup_) {
    next_cleanup_ = now + config_.relay.cleanup_interval;
    auto removed = store_.RemoveSentBefore(config_.relay.retention);
    if (!StoreOk(removed.status())) return false;
    if (*removed > 0) spdlog::info("removed {} sent rows older than the retention", *removed);
  }
  if (isolated_in_flight_) {
    ServeReports(Millis(1));  // a suspect travels alone: nothing else until its report
    return FlushMarks(false);
  }
  if (!ProduceDeadLetterCopies()) return false;
  if (static_cast<int>(in_flight_.size() + pending_rows_.size()) + config_.relay.batch_size >
      config_.relay.max_in_flight) {
    if (!pending_rows_.empty()) return ProducePending();
    ServeReports(Millis(1));
    return FlushMarks(false);
  }
  // One round trip removes what was acknowledged and fetches the next rows; the previous batch is
  // produced and reports are served while PostgreSQL works on it.
  std::vector<int64_t> marks;
  marks.swap(to_mark_);
  const size_t marked = marks.size();
  const auto round_start = Clock::now();
  if (!StoreOk(store_.StartRound(std::move(marks)))) return false;
  if (!ProducePending()) return false;
  while (!store_.RoundReady(Millis(1))) {
    ServeReports(Millis(0));
    if (!leading_) return false;
  }
  std::vector<OutboxRow> rows;
  if (!StoreOk(store_.FinishRound(&rows))) return false;
  metrics_.fetch_seconds.Observe(std::chrono::duration<double>(Clock::now() - round_start).count());
  stats_.marked_sent += static_cast<int64_t>(marked);
  if (auto from = store_.TakeRescanRequest()) {
    // Not produced now: the rescan fetches these again, after what is in flight.
    rescan_from_ = rows.empty() ? *from : std::min(*from, rows.front().id);
    if (!Wake()) return false;
    return Rescan();
  }
  if (rows.empty()) return IdleWait(stop);
  if (!Wake()) return false;
  pending_rows_ = std::move(rows);
  if (static_cast<int>(pending_rows_.size()) < config_.relay.batch_size) {
    // Caught up: send these now, then let the next rows gather for a moment instead of asking
    // PostgreSQL again at once (back-to-back rounds of a few rows cost the application's commits).
    if (!ProducePending()) return false;
    auto until = Clock::now() + config_.relay.idle_poll_interval;
    while (leading_ && Clock::now() < until) {
      ServeReports(std::chrono::duration_cast<Millis>(until - Clock::now()));
    }
  }
  return leading_;
}

bool Relay::ProducePending() {
  if (pending_rows_.empty()) return true;
  std::vector<OutboxRow> rows;
  rows.swap(pending_rows_);
  return ProduceRows(rows);
}

bool Relay::MoveDeadLetters() {
  while (!to_dead_letter_.empty()) {
    auto [id, error] = to_dead_letter_.front();
    Status s = store_.DeadLetter(id, error);
    if (s.code() == Status::Code::kInvalid) {
      // Refused on a healthy connection (say, a character the database's encoding lacks):
      // once more with a plain ASCII error text, then set the row aside for this term.
      spdlog::warn("message {}: outbox.dead_letters refused it ({}); trying a plain ASCII error",
                   id, s.message());
      s = store_.DeadLetter(id, AsciiEscaped(error));
      if (s.code() == Status::Code::kInvalid) {
        ScopedLogFields fields({{"message_id", std::to_string(id)}, {"error", s.message()}});
        spdlog::error(
            "message {} cannot be moved to outbox.dead_letters ({}): it stays in the outbox and "
            "is skipped until the next leadership term; its error: {}",
            id, s.message(), AsciiEscaped(error));
        set_aside_.insert(id);
        to_dead_letter_.pop_front();
        dead_letters_.erase(id);
        continue;
      }
    }
    if (!StoreOk(s)) return false;
    to_dead_letter_.pop_front();
    dead_letters_.erase(id);
    ++stats_.dead_lettered;
    LogWith(spdlog::level::warn, {{"message_id", std::to_string(id)}, {"error", error}},
            "message {} moved to outbox.dead_letters: {}", id, error);
  }
  return true;
}

bool Relay::ProduceRows(std::vector<OutboxRow>& rows) {
  for (size_t i = 0; i < rows.size(); ++i) {
    OutboxRow& row = rows[i];
    if (!leading_) return false;
    if (rewind_to_ || fatal_ || isolated_in_flight_) {
      Failure(row.id);  // this row and the rest of the batch are fetched again after recovery
      break;
    }
    if (dead_letters_.count(row.id)) continue;  // on its way to the dead-letter topic
    if (set_aside_.count(row.id)) continue;     // poison that could not be dead-lettered
    auto headers = MessageHeaders(row);
    if (!headers.ok()) {
      Poison(row.id, headers.status().message());
      continue;
    }
    bool isolate = suspects_.count(row.id) > 0;
    if (isolate && !in_flight_.empty()) {
      Failure(row.id);  // a suspect goes alone: wait until nothing else is in flight
      break;
    }
    OutgoingMessage m{&row.topic, &row.key, &row.payload, &*headers};
    Status s = ProduceOne(m, InFlight{row.id, row.key, false, isolate, row.created_at_us});
    if (s.code() == Status::Code::kPermanent) {
      Poison(row.id, s.message());  // refused by the producer itself: certainly this row
    } else if (!s.ok()) {
      if (leading_) Failure(row.id);  // (leadership lost meanwhile: nothing to rewind)
      break;
    } else if (isolate) {
      isolated_in_flight_ = true;
    }
  }
  return leading_;
}

Status Relay::ProduceOne(const OutgoingMessage& m, InFlight entry) {
  const uint64_t token = next_token_++;
  for (;;) {
    if (!leading_ || !publisher_) return Status::Unavailable("not leading");
    Status s = publisher_->Produce(m, token);
    switch (s.code()) {
      case Status::Code::kOk:
        in_flight_.emplace(token, std::move(entry));
        metrics_.in_flight.store(static_cast<int64_t>(in_flight_.size()),
                                 std::memory_order_relaxed);
        ++stats_.produced;
        return s;
      case Status::Code::kQueueFull:
        ServeReports(Millis(5));  // the local queue drains as reports arrive
        if (!KeepLeading()) return Status::Unavailable("not leading");
        continue;
      case Status::Code::kPermanent:
        return s;
      case Status::Code::kFatal:
        HandleFatal(s.message());
        return s;
      default:
        last_failure_ = s.message();
        return s;
    }
  }
}

void Relay::ServeReports(Millis timeout) {
  metrics_.Beat();
  if (!publisher_) return;
  std::vector<DeliveryReport> reports;
  publisher_->Poll(timeout, &reports);
  for (const DeliveryReport& r : reports) OnReport(r);
}

void Relay::OnReport(const DeliveryReport& report) {
  auto it = in_flight_.find(report.token);
  if (it == in_flight_.end()) {
    spdlog::error("delivery report for an unknown message (token {})", report.token);
    return;
  }
  InFlight e = std::move(it->second);
  in_flight_.erase(it);
  metrics_.in_flight.store(static_cast<int64_t>(in_flight_.size()), std::memory_order_relaxed);
  using Outcome = DeliveryReport::Outcome;

  // Only proof removes a row: a "persisted" report must also carry the offset the broker wrote
  // it at. Without one it may be an implicit ack of a batch the broker never wrote.
  DeliveryReport r = report;
  if (r.outcome == Outcome::kPersisted && !r.proven()) {
    ++stats_.unproven_reports;
    if (!abandoning_) ++metrics_.resent;
    LogWith(spdlog::level::warn,
            {{"message_id", std::to_string(e.id)}, {"error", "persisted report without an offset"}},
            "broker report without an offset for message {}: sending it again", e.id);
    r.outcome = Outcome::kRetriable;
    r.error = "a persisted report without an offset";
  }

  if (e.isolated) isolated_in_flight_ = false;
  if (e.dead_letter_copy) {
    auto pending = dead_letters_.find(e.id);
    std::string error = pending == dead_letters_.end() ? "" : pending->second.error;
    if (r.outcome == Outcome::kPersisted) {
      DeadLetterRow(e.id, error);
    } else if (r.outcome == Outcome::kPermanent && !abandoning_) {
      DeadLetterRow(e.id, error + "; the dead-letter topic refused it too: " + r.error);
    } else if (pending != dead_letters_.end()) {
      pending->second.in_flight = false;  // produced again later
    }
    return;
  }
  if (report.outcome != Outcome::kPersisted) metrics_.delivery_errors.Add(report.error_code);
  if (r.outcome == Outcome::kPersisted) {
    ++stats_.acknowledged;
    if (e.created_at_us > 0) {
      const auto now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
      metrics_.commit_to_ack_seconds.Observe(static_cast<double>(now_us - e.created_at_us) / 1e6);
    }
    if (kafka_log_.failing() && !abandoning_) {
      kafka_log_.Recovered();
      backoff_.Reset();
    }
    suspects_.erase(e.id);
    if (e.key) {
      auto failed = failed_keys_.find(*e.key);
      if (failed != failed_keys_.end() && failed->second < e.id) {
        ++metrics_.resent;
        Failure(e.id);  // an earlier row of this key failed: this one goes again after it
        return;
      }
    }
    if (to_mark_.empty()) first_unmarked_ = Clock::now();
    to_mark_.push_back(e.id);
    return;
  }
  if (abandoning_) return;  // the row stays in the outbox
  if (r.outcome == Outcome::kPermanent && e.isolated) {
    suspects_.erase(e.id);
    Poison(e.id, r.error);  // refused while alone in its request: it is the poison
    return;
  }
  if (r.outcome == Outcome::kPermanent) {
    // The broker refuses whole requests: this row may only have shared one with the poison.
    if (suspects_.insert(e.id).second) {
      LogWith(spdlog::level::info, {{"message_id", std::to_string(e.id)}, {"error", r.error}},
              "message {} refused by the broker ({}): sending it again alone", e.id, r.error);
    }
  }
  last_failure_ = r.error;
  if (report.outcome != Outcome::kPersisted) ++metrics_.resent;  // (unproven: counted above)
  Failure(e.id);
  if (e.key) failed_keys_.try_emplace(*e.key, e.id);
}

void Relay::Poison(int64_t id, const std::string& error) {
  if (config_.relay.dead_letter_topic.empty()) {
    DeadLetterRow(id, error);
    return;
  }
  dead_letters_.try_emplace(id, PendingDeadLetter{error, false});
}

bool Relay::ProduceDeadLetterCopies() {
  const std::string& topic = config_.relay.dead_letter_topic;
  for (auto it = dead_letters_.begin(); it != dead_letters_.end() && leading_;) {
    auto& [id, pending] = *it;
    if (pending.in_flight) {
      ++it;
      continue;
    }
    auto row = store_.FetchRow(id);
    if (!StoreOk(row.status())) return false;
    if (!*row) {  // gone meanwhile
      it = dead_letters_.erase(it);
      continue;
    }
    auto parsed = MessageHeaders(**row);
    Headers headers = parsed.ok() ? std::move(*parsed) : IdentityHeaders(**row);
    headers.emplace_back("outbox-error", pending.error);
    headers.emplace_back("outbox-topic", (*row)->topic);
    OutgoingMessage m{&topic, &(*row)->key, &(*row)->payload, &headers};
    Status s = ProduceOne(m, InFlight{id, (*row)->key, /*dead_letter_copy=*/true, false});
    if (s.ok()) {
      pending.in_flight = true;
    } else if (s.code() == Status::Code::kPermanent) {
      int64_t dead = id;
      std::string error = pending.error + "; the dead-letter topic refused it too: " + s.message();
      ++it;
      DeadLetterRow(dead, error);
      continue;
    } else {
      break;  // the producer is not well: try again on a later pass
    }
    ++it;
  }
  return leading_;
}

void Relay::DeadLetterRow(int64_t id, const std::string& error) {
  // Moved at the next safe point (MoveDeadLetters): a fetch may be on the connection now.
  // PostgreSQL's text must be valid UTF-8: the error may quote row bytes or a broker message.
  to_dead_letter_.emplace_back(id, ValidUtf8Prefix(error, kMaxErrorBytes));
}

bool Relay::FlushMarks(bool force) {
  if (to_mark_.empty()) return true;
  if (!force && static_cast<int>(to_mark_.size()) < config_.relay.batch_size &&
      !in_flight_.empty() && Clock::now() - first_unmarked_ < Millis(5)) {
    return true;
  }
  const auto started = Clock::now();
  if (!StoreOk(store_.MarkSent(to_mark_))) return false;
  metrics_.remove_seconds.Observe(std::chrono::duration<double>(Clock::now() - started).count());
  stats_.marked_sent += static_cast<int64_t>(to_mark_.size());
  to_mark_.clear();
  return true;
}

void Relay::HandleFatal(const std::string& reason) {
  if (fatal_) return;
  fatal_ = true;
  last_failure_ = "fatal producer error: " + reason;
  ScopedLogFields fields({{"error", reason}});
  spdlog::error("kafka producer unusable ({}): rebuilding it and re-sending unacknowledged rows",
                reason);
  publisher_->PurgeAll();  // their reports come back as failures; no row is removed for them
}

bool Relay::Recover(const std::atomic<bool>& stop) {
  if (!pending_rows_.empty()) {
    Failure(pending_rows_.front().id);  // fetched, not produced: fetched again after the rewind
    pending_rows_.clear();
  }
  if (!in_flight_.empty()) {
    ServeReports(Millis(10));  // every report must be in before the rows are fetched again
    return leading_;
  }
  if (!FlushMarks(true) || !MoveDeadLetters()) return false;
  if (fatal_) {
    publisher_.reset();  // Run builds a new one
    fatal_ = false;
    ++stats_.producer_rebuilds;
  }
  if (rewind_to_) {
    kafka_log_.Failure(last_failure_);
    store_.Rewind(*rewind_to_);
    ++stats_.rewinds;
    spdlog::debug("re-fetching from id {}", *rewind_to_);
  }
  rewind_to_.reset();
  failed_keys_.clear();
  WaitInterruptibly(backoff_.Next(), stop);
  return true;
}

bool Relay::Rescan() {
  if (!in_flight_.empty()) {
    ServeReports(Millis(10));  // every report first: nothing in flight may be fetched again
    return leading_;
  }
  if (!FlushMarks(true) || !MoveDeadLetters()) return false;
  if (rewind_to_) return true;  // a failure meanwhile: Recover rewinds first, then this
  const int64_t from = *rescan_from_;
  store_.Rewind(from);
  if (!StoreOk(store_.ClearRescanRequest(from))) return false;
  rescan_from_.reset();
  spdlog::info("rescanning the outbox from id {}: rows were put back by an admin command", from);
  return true;
}

void Relay::Abandon() {
  if (publisher_ && !in_flight_.empty()) {
    publisher_->PurgeAll();
    abandoning_ = true;
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (!in_flight_.empty() && Clock::now() < deadline) {
      std::vector<DeliveryReport> reports;
      publisher_->Poll(Millis(10), &reports);
      for (const DeliveryReport& r : reports) OnReport(r);
    }
    abandoning_ = false;
    // Purging in-flight requests leaves the idempotent producer's sequence state unknown.
    publisher_.reset();
    ++stats_.producer_rebuilds;
  }
  in_flight_.clear();
  metrics_.in_flight.store(0, std::memory_order_relaxed);
  rewind_to_.reset();
  failed_keys_.clear();
  fatal_ = false;
  isolated_in_flight_ = false;
  for (auto& [id, pending] : dead_letters_) pending.in_flight = false;
}

void Relay::LoseLeadership(const Status& why) {
  if (!leading_) return;
  leading_ = false;
  ++metrics_.leadership_losses;
  metrics_.state.store(static_cast<int>(RelayMetrics::State::kUnavailable));
  PublishLeadership(false);
  LogWith(spdlog::level::warn, {{"error", why.message()}}, "stopped delivering: {}", why.message());
  Abandon();
  to_mark_.clear();  // acknowledged but not removed: sent again by the next leader (duplicates)
  pending_rows_.clear();
  rescan_from_.reset();  // the next term starts from the beginning anyway
  to_dead_letter_.clear();
  dead_letters_.clear();
  set_aside_.clear();  // the next term tries them once more
  suspects_.clear();
  store_.Disconnect();
  idle_since_.reset();
  asleep_ = false;  // the next leader clears the flag when it takes over
}

bool Relay::IdleWait(const std::atomic<bool>& stop) {
  auto now = Clock::now();
  if (!idle_since_) idle_since_ = now;
  if (!in_flight_.empty() || !to_mark_.empty() || now - *idle_since_ < config_.relay.idle_grace) {
    if (in_flight_.empty()) {
      WaitInterruptibly(config_.relay.idle_poll_interval, stop);
    } else {
      ServeReports(config_.relay.idle_poll_interval);
    }
    return leading_;
  }
  if (!config_.relay.notify) {
    WaitInterruptibly(config_.relay.poll_interval, stop);
    return true;
  }
  if (!asleep_) {
    // From now on publish() notifies. Step fetches once more at once, for rows that committed
    // before the flag was visible.
    if (!StoreOk(store_.SetSleeping(true))) return false;
    asleep_ = true;
    return true;
  }
  auto wake_at = now + config_.relay.poll_interval;
  while (!stop && Clock::now() < wake_at) {
    auto left = std::chrono::duration_cast<Millis>(wake_at - Clock::now());
    auto notified = store_.WaitForNotify(std::min(left, Millis(100)));
    metrics_.Beat();
    if (!StoreOk(notified.status())) return false;
    if (*notified) break;
    if (!KeepLeading()) return false;
  }
  return true;
}

bool Relay::Wake() {
  idle_since_.reset();
  if (!asleep_) return true;
  asleep_ = false;
  return StoreOk(store_.SetSleeping(false));
}

void Relay::Drain() {
  auto deadline = Clock::now() + config_.relay.shutdown_timeout;
  if (!in_flight_.empty()) {
    spdlog::info("stopping: waiting up to {} for {} unacknowledged messages",
                 FormatDuration(config_.relay.shutdown_timeout), in_flight_.size());
  }
  while (leading_ && publisher_ && !in_flight_.empty() && Clock::now() < deadline) {
    ServeReports(Millis(10));
    FlushMarks(false);
    KeepLeading();
  }
  if (!leading_) return;
  size_t left = in_flight_.size();
  pending_rows_.clear();  // fetched, not produced: they stay in the outbox
  Abandon();              // persisted reports that arrive while purging are still removed below
  FlushMarks(true);
  MoveDeadLetters();
  if (leading_) (void)Wake();  // nobody listens any more: publish() must not notify
  if (left > 0) {
    spdlog::warn("{} messages were not acknowledged in time; they stay in the outbox", left);
  }
  PublishLeadership(false);
  metrics_.state.store(static_cast<int>(RelayMetrics::State::kStarting));
  spdlog::info("stopped: {} messages delivered in this run", stats_.marked_sent.load());
}

void Relay::WaitInterruptibly(Millis d, const std::atomic<bool>& stop) {
  auto until = Clock::now() + d;
  while (!stop && Clock::now() < until) {
    auto left = std::chrono::duration_cast<Millis>(until - Clock::now());
    std::this_thread::sleep_for(std::min(left, Millis(50)));
    metrics_.Beat();
    if (leading_ && !KeepLeading()) return;
  }
}

}  // namespace outboxd
