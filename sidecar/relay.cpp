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

Relay::Relay(const Config& config, OutboxStore& store, PublisherFactory make_publisher,
             CheckpointReader read_checkpoint)
    : config_(config),
      store_(store),
      make_publisher_(std::move(make_publisher)),
      read_checkpoint_(std::move(read_checkpoint)),
      transactional_id_(TransactionalId(config)),
      backoff_(config.backoff.initial, config.backoff.max) {
  if (config.relay.delivery == Delivery::kExactlyOnce) {
    exactly_once_ = std::make_unique<ExactlyOnce>();
  }
}

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
  s.transactions_committed = stats_.transactions_committed.load();
  s.transactions_aborted = stats_.transactions_aborted.load();
  s.checkpoint_rows_removed = stats_.checkpoint_rows_removed.load();
  return s;
}

Status Relay::Run(const std::atomic<bool>& stop) {
  if (exactly_once_ && !read_checkpoint_) {
    return Status::Invalid("relay.delivery = \"exactly_once\" needs a checkpoint reader");
  }
  using State = RelayMetrics::State;
  auto set_state = [this](State st) { metrics_.state.store(static_cast<int>(st)); };
  while (!stop) {
    metrics_.Beat();
    if (!leading_) {
      Status s = store_.Lead();
      if (s.ok()) {
        pg_log_.Recovered();
        metrics_.SetPostgresError("");
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
        metrics_.SetPostgresError("");
        set_state(State::kStandby);
        if (!standby_logged_) spdlog::info("standing by: {}", s.message());
        standby_logged_ = true;
        WaitInterruptibly(config_.leadership.retry_interval, stop);
      } else {
        set_state(State::kUnavailable);
        pg_log_.Failure(s.message());
        metrics_.SetPostgresError(s.message());
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
    if (exactly_once_) {
      StepExactlyOnce(stop);
    } else {
      Step(stop);
    }
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
  if (ledger_.rewind_to() || fatal_) return Recover(stop);
  if (rescan_from_) return Rescan();

  if (!CleanUpRetained()) return false;
  if (ledger_.isolated_in_flight()) {
    ServeReports(Millis(1));  // a suspect travels alone: nothing else until its report
    return FlushMarks(false);
  }
  if (!ProduceDeadLetterCopies()) return false;
  if (static_cast<int>(ledger_.size() + pending_rows_.size()) + config_.relay.batch_size >
      config_.relay.max_in_flight) {
    if (!pending_rows_.empty()) return ProducePending();
    ServeReports(Millis(1));
    return FlushMarks(false);
  }
  // One round trip removes what was acknowledged and fetches the next rows; the previous batch is
  // produced and reports are served while PostgreSQL works on it. The removal is decoupled from
  // the fetch: it rides along once batch_size rows are acknowledged or the oldest waited
  // remove_interval, so that short rounds (low latency) are reads, not write transactions.
  std::vector<int64_t> marks;
  if (static_cast<int>(ledger_.marks().size()) >= config_.relay.batch_size ||
      (!ledger_.marks().empty() &&
       ledger_.MarksAge(Clock::now()) >= config_.relay.remove_interval)) {
    marks = ledger_.TakeMarks();
  }
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
  if (RescanDue(rows)) {
    // Not produced now: the rescan fetches these again, after what is in flight.
    if (!Wake()) return false;
    return Rescan();
  }
  if (rows.empty()) return IdleWait(stop);
  RowsArrived(rows.size());
  pending_rows_ = std::move(rows);
  if (static_cast<int>(pending_rows_.size()) < config_.relay.batch_size) {
    // Caught up: send these now (a relay woken by NOTIFY clears the flag after, not before), then
    // let the next rows gather for a moment instead of asking PostgreSQL again at once
    // (back-to-back rounds of a few rows cost the application's commits).
    if (!ProducePending()) return false;
    if (!Wake()) return false;
    auto until = Clock::now() + config_.relay.idle_poll_interval;
    while (leading_ && Clock::now() < until) {
      // Rounded up: the last fraction of a millisecond is a wait too, not a spin of Poll(0).
      ServeReports(std::chrono::ceil<Millis>(until - Clock::now()));
    }
  } else if (!Wake()) {
    return false;
  }
  return leading_;
}

bool Relay::CleanUpRetained() {
  auto now = Clock::now();
  if (config_.relay.on_sent != OnSent::kRetain || now < next_cleanup_) return true;
  auto removed = store_.RemoveSentBefore(config_.relay.retention);
  if (!StoreOk(removed.status())) return false;
  retained_removed_ += *removed;
  // A full batch: more are due. The next one runs at the next step, between rounds of delivery,
  // so that the removal keeps up with any rate the relay sends at.
  if (*removed >= kRemoveSentBatch) return true;
  next_cleanup_ = now + config_.relay.cleanup_interval;
  if (retained_removed_ > 0) {
    spdlog::info("removed {} sent rows older than the retention", retained_removed_);
  }
  retained_removed_ = 0;
  return true;
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
    if (ledger_.rewind_to() || fatal_ || ledger_.isolated_in_flight()) {
      ledger_.Rewind(
          row.id);  // this row and the rest of the batch are fetched again after recovery
      break;
    }
    if (dead_letters_.count(row.id)) continue;  // on its way to the dead-letter topic
    if (set_aside_.count(row.id)) continue;     // poison that could not be dead-lettered
    if (SkipForHeldTopic(row)) continue;        // its topic is refused: it waits
    auto headers = MessageHeaders(row);
    if (!headers.ok()) {
      Poison(row.id, headers.status().message());
      continue;
    }
    bool isolate = ledger_.IsSuspect(row.id);
    if (isolate && !ledger_.empty()) {
      ledger_.Rewind(row.id);  // a suspect goes alone: wait until nothing else is in flight
      break;
    }
    OutgoingMessage m{&row.topic, &row.key, &row.payload, &*headers};
    Status s = ProduceOne(
        m, InFlightLedger::Entry{row.id, row.key, false, isolate, row.created_at_us, row.topic});
    if (s.code() == Status::Code::kPermanent) {
      Poison(row.id, s.message());  // refused by the producer itself: certainly this row
    } else if (s.code() == Status::Code::kTopicUnavailable) {
      HoldTopic(row.topic, row.id, s.message());  // the rest of its topic waits, the others go
    } else if (!s.ok()) {
      if (leading_) ledger_.Rewind(row.id);  // (leadership lost meanwhile: nothing to rewind)
      break;
    }
  }
  return leading_;
}

Status Relay::ProduceOne(const OutgoingMessage& m, InFlightLedger::Entry entry) {
  const uint64_t token = ledger_.NextToken();
  for (;;) {
    if (!leading_ || !publisher_) return Status::Unavailable("not leading");
    Status s = publisher_->Produce(m, token);
    switch (s.code()) {
      case Status::Code::kOk:
        if (exactly_once_) exactly_once_->Carried(entry);
        ledger_.Add(token, std::move(entry));
        metrics_.in_flight.store(static_cast<int64_t>(ledger_.size()), std::memory_order_relaxed);
        ++stats_.produced;
        return s;
      case Status::Code::kQueueFull:
        ServeReports(Millis(5));  // the local queue drains as reports arrive
        if (!KeepLeading()) return Status::Unavailable("not leading");
        continue;
      case Status::Code::kPermanent:
      case Status::Code::kTopicUnavailable:
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
  if (exactly_once_ && exactly_once_->IsCheckpoint(report.token)) {
    if (!report.proven() && !report.error.empty()) last_failure_ = report.error;
    exactly_once_->CheckpointReported(report.proven());
    return;
  }
  auto taken = ledger_.Take(report.token);
  if (!taken) {
    spdlog::error("delivery report for an unknown message (token {})", report.token);
    return;
  }
  const InFlightLedger::Entry& e = *taken;
  metrics_.in_flight.store(static_cast<int64_t>(ledger_.size()), std::memory_order_relaxed);
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

  if (e.dead_letter_copy) {
    auto pending = dead_letters_.find(e.id);
    std::string error = pending == dead_letters_.end() ? "" : pending->second.error;
    if (exactly_once_ && r.outcome != Outcome::kPersisted) exactly_once_->Failed();
    if (r.outcome == Outcome::kPersisted && exactly_once_) {
      exactly_once_->Held(e);  // dead-lettered when (if) its transaction commits
    } else if (r.outcome == Outcome::kPersisted) {
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
    if (exactly_once_) {
      exactly_once_->Held(e);  // delivered only if its transaction commits
    } else if (BehindHeldRow(e)) {
      ++metrics_.resent;  // a row of its topic below it waits: it goes again after it
    } else if (!ledger_.Acknowledge(e, Clock::now())) {
      ++metrics_.resent;  // held back behind a failed row of its key: it goes again after it
    }
    auto held = held_topics_.find(e.topic);
    if (held != held_topics_.end() && held->second.retrying && !abandoning_) {
      LogWith(
          spdlog::level::info, {{"topic", e.topic}},
          "topic \"{}\" accepts messages again (refused for {})", e.topic,
          FormatDuration(std::chrono::duration_cast<Millis>(Clock::now() - held->second.since)));
      held_topics_.erase(held);
      PublishHeldTopics();
    }
    return;
  }
  if (exactly_once_) exactly_once_->Failed();
  if (abandoning_) return;  // the row stays in the outbox
  if (r.outcome == Outcome::kTopicUnavailable) {
    // Not a failure of the delivery: the topic's rows wait, the other topics go on (no rewind).
    HoldTopic(e.topic, e.id, r.error);
    ++metrics_.resent;
    return;
  }
  if (r.outcome == Outcome::kPermanent && e.isolated) {
    ledger_.ClearSuspect(e.id);
    Poison(e.id, r.error);  // refused while alone in its request: it is the poison
    return;
  }
  if (r.outcome == Outcome::kPermanent) {
    // The broker refuses whole requests: this row may only have shared one with the poison.
    if (ledger_.AddSuspect(e.id)) {
      LogWith(spdlog::level::info, {{"message_id", std::to_string(e.id)}, {"error", r.error}},
              "message {} refused by the broker ({}): sending it again alone", e.id, r.error);
    }
  }
  last_failure_ = r.error;
  if (report.outcome != Outcome::kPersisted) ++metrics_.resent;  // (unproven: counted above)
  ledger_.Fail(e);
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
    Status s = ProduceOne(
        m, InFlightLedger::Entry{id, (*row)->key, /*dead_letter_copy=*/true, false, 0, topic});
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
  if (ledger_.marks().empty()) return true;
  if (!force &&
      !ledger_.MarksDue(static_cast<size_t>(config_.relay.batch_size), Clock::now(), Millis(5))) {
    return true;
  }
  const auto started = Clock::now();
  if (!StoreOk(store_.MarkSent(ledger_.marks()))) return false;
  metrics_.remove_seconds.Observe(std::chrono::duration<double>(Clock::now() - started).count());
  stats_.marked_sent += static_cast<int64_t>(ledger_.TakeMarks().size());
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
    ledger_.Rewind(
        pending_rows_.front().id);  // fetched, not produced: fetched again after the rewind
    pending_rows_.clear();
  }
  if (!ledger_.empty()) {
    ServeReports(Millis(10));  // every report must be in before the rows are fetched again
    return leading_;
  }
  if (!FlushMarks(true) || !MoveDeadLetters()) return false;
  if (fatal_) {
    publisher_.reset();  // Run builds a new one
    fatal_ = false;
    ++stats_.producer_rebuilds;
    if (exactly_once_) {
      // The new one initializes; it reads the checkpoint only if a commit was cut off. The open
      // transaction's rows go again (they were fetched: without a rewind the scan would pass them).
      for (int64_t id : exactly_once_->ProducerRebuilt(ledger_)) {
        auto pending = dead_letters_.find(id);
        if (pending != dead_letters_.end()) pending->second.in_flight = false;
      }
    }
  }
  if (auto rewind_to = ledger_.rewind_to()) {
    kafka_log_.Failure(last_failure_);
    store_.Rewind(*rewind_to);
    ++stats_.rewinds;
    spdlog::debug("re-fetching from id {}", *rewind_to);
  }
  ledger_.StartAttempt();
  WaitInterruptibly(backoff_.Next(), stop);
  return true;
}

bool Relay::RescanDue(const std::vector<OutboxRow>& rows) {
  auto request = store_.TakeRescanRequest();
  auto held = HeldTopicsDue(Clock::now());
  if (!request && !held) return false;
  rescan_request_ = request;
  rescan_from_ = std::min(request.value_or(INT64_MAX), held.value_or(INT64_MAX));
  if (!rows.empty()) rescan_from_ = std::min(*rescan_from_, rows.front().id);
  return true;
}

bool Relay::Rescan() {
  if (!ledger_.empty()) {
    ServeReports(Millis(10));  // every report first: nothing in flight may be fetched again
    return leading_;
  }
  if (!FlushMarks(true) || !MoveDeadLetters()) return false;
  if (ledger_.rewind_to()) return true;  // a failure meanwhile: Recover rewinds first, then this
  const int64_t from = *rescan_from_;
  store_.Rewind(from);
  if (rescan_request_) {
    // Cleared with the value read: `from` may be lower (an unsent row below the request), and a
    // request left in place would stop every later round here again.
    if (!StoreOk(store_.ClearRescanRequest(*rescan_request_))) return false;
    spdlog::info("rescanning the outbox from id {}: rows were put back by an admin command", from);
  }
  rescan_from_.reset();
  rescan_request_.reset();
  const auto now = Clock::now();
  const Millis bound = config_.relay.topic_unavailable_dead_letter_after;
  for (auto& [topic, hold] : held_topics_) {
    // A topic refused again below `from` while the reports came in waits for the next turn.
    if (hold.retrying || now < hold.retry_at || !hold.lowest || *hold.lowest < from) continue;
    const bool dead_letter = bound.count() > 0 && now - hold.since >= bound;
    hold.dead_letter_through =
        dead_letter ? std::optional<int64_t>(hold.highest) : std::optional<int64_t>();
    LogWith(spdlog::level::info, {{"topic", topic}},
            "topic \"{}\": {} its waiting messages from id {}", topic,
            dead_letter ? "dead-lettering" : "trying again", *hold.lowest);
    hold.lowest.reset();
    hold.highest = 0;
    hold.retrying = true;
  }
  return true;
}

void Relay::HoldTopic(const std::string& topic, int64_t id, const std::string& error) {
  const auto now = Clock::now();
  auto [it, fresh] = held_topics_.try_emplace(
      topic, TopicHold{error, now, now, Backoff(config_.backoff.initial, config_.backoff.max)});
  TopicHold& hold = it->second;
  hold.lowest = std::min(hold.lowest.value_or(id), id);
  hold.highest = std::max(hold.highest, id);
  if (!fresh && !hold.retrying) return;  // another row refused in the same turn
  hold.retrying = false;
  hold.error = error;
  const Millis wait = hold.backoff.Next();
  hold.retry_at = now + wait;
  const auto level = fresh ? spdlog::level::warn : spdlog::level::debug;
  LogWith(level, {{"topic", topic}, {"message_id", std::to_string(id)}, {"error", error}},
          "topic \"{}\" refused by Kafka ({}): its messages from id {} wait in the outbox while "
          "other topics flow; trying again in {}",
          topic, error, *hold.lowest, FormatDuration(wait));
  if (fresh) PublishHeldTopics();
}

bool Relay::SkipForHeldTopic(const OutboxRow& row) {
  auto it = held_topics_.find(row.topic);
  if (it == held_topics_.end()) return false;
  TopicHold& hold = it->second;
  if (hold.dead_letter_through && row.id <= *hold.dead_letter_through) {
    Poison(row.id,
           "topic \"" + row.topic + "\" refused for " +
               FormatDuration(std::chrono::duration_cast<Millis>(Clock::now() - hold.since)) +
               " (relay.topic_unavailable_dead_letter_after): " + hold.error);
    return true;
  }
  if (hold.retrying) return false;
  hold.lowest = std::min(hold.lowest.value_or(row.id), row.id);
  hold.highest = std::max(hold.highest, row.id);
  return true;
}

std::optional<int64_t> Relay::HeldTopicsDue(Clock::time_point now) const {
  std::optional<int64_t> from;
  for (const auto& [topic, hold] : held_topics_) {
    if (hold.retrying || now < hold.retry_at || !hold.lowest) continue;
    from = std::min(from.value_or(*hold.lowest), *hold.lowest);
  }
  return from;
}

bool Relay::BehindHeldRow(const InFlightLedger::Entry& e) const {
  auto it = held_topics_.find(e.topic);
  return it != held_topics_.end() && it->second.lowest && *it->second.lowest < e.id;
}

void Relay::PublishHeldTopics() {
  std::vector<RelayMetrics::HeldTopic> held;
  for (const auto& [topic, hold] : held_topics_) {
    held.push_back({topic, hold.error,
                    std::chrono::duration_cast<Millis>(hold.since.time_since_epoch()).count()});
  }
  metrics_.SetHeldTopics(std::move(held));
}

void Relay::Abandon() {
  if (publisher_ && !ledger_.empty()) {
    publisher_->PurgeAll();
    abandoning_ = true;
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (!ledger_.empty() && Clock::now() < deadline) {
      std::vector<DeliveryReport> reports;
      publisher_->Poll(Millis(10), &reports);
      for (const DeliveryReport& r : reports) OnReport(r);
    }
    abandoning_ = false;
    // Purging in-flight requests leaves the idempotent producer's sequence state unknown.
    publisher_.reset();
    ++stats_.producer_rebuilds;
  }
  ledger_.Forget();
  metrics_.in_flight.store(0, std::memory_order_relaxed);
  fatal_ = false;
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
  if (exactly_once_) {
    // The next term starts with a new producer: InitTransactions settles any open transaction.
    publisher_.reset();
    exactly_once_->Reset();
  }
  ledger_.DropMarks();  // acknowledged but not removed: sent again by the next leader (duplicates)
  pending_rows_.clear();
  rescan_from_.reset();  // the next term starts from the beginning anyway
  to_dead_letter_.clear();
  dead_letters_.clear();
  set_aside_.clear();  // the next term tries them once more
  ledger_.ClearSuspects();
  store_.Disconnect();
  idle_since_.reset();
  asleep_ = false;  // the next leader clears the flag when it takes over
  last_rows_at_.reset();
  arrival_rate_ = -1;
}

void Relay::RowsArrived(size_t rows) {
  const auto now = Clock::now();
  if (last_rows_at_) {
    const double seconds = std::chrono::duration<double>(now - *last_rows_at_).count();
    arrival_rate_ = seconds > 0 ? static_cast<double>(rows) / seconds : 1e9;
  }
  last_rows_at_ = now;
}

bool Relay::IdleWait(const std::atomic<bool>& stop) {
  auto now = Clock::now();
  if (!idle_since_) idle_since_ = now;
  // Rows arrive slower than polling through the grace is worth: sleep now, and the next commit
  // notifies ("waking without a pause").
  const bool slow = config_.relay.notify && config_.relay.sleep_below_rate > 0 &&
                    arrival_rate_ >= 0 && arrival_rate_ < config_.relay.sleep_below_rate;
  if (!ledger_.empty() || !ledger_.marks().empty() ||
      (!slow && now - *idle_since_ < config_.relay.idle_grace)) {
    if (ledger_.empty()) {
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
  if (!ledger_.empty()) {
    spdlog::info("stopping: waiting up to {} for {} unacknowledged messages",
                 FormatDuration(config_.relay.shutdown_timeout), ledger_.size());
  }
  while (leading_ && publisher_ && !ledger_.empty() && Clock::now() < deadline) {
    ServeReports(Millis(10));
    FlushMarks(false);
    KeepLeading();
  }
  if (!leading_) return;
  size_t left = ledger_.size();
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
    auto left = std::chrono::ceil<Millis>(until - Clock::now());
    std::this_thread::sleep_for(std::min(left, Millis(50)));
    metrics_.Beat();
    if (leading_ && !KeepLeading()) return;
  }
}

}  // namespace outboxd

namespace outboxd {

namespace {

// How long a transaction may wait for its reports before the relay aborts it: the producer's
// transaction.timeout.ms (librdkafka's default 60 s), after which the broker aborts it anyway.
Millis TransactionTimeout(const Config& config) {
  auto it = config.kafka.properties.find("transaction.timeout.ms");
  if (it != config.kafka.properties.end()) {
    try {
      return Millis(std::stoll(it->second));
    } catch (const std::exception&) {
    }
  }
  return Millis(60'000);
}

// Failed reads of the checkpoint after which the relay stands down for a while.
constexpr int kCheckpointReadsPerTerm = 3;

// A newer producer with the same transactional.id took over: another instance leads.
bool Fenced(const std::string& error) {
  return error.find("FENCED") != std::string::npos ||
         error.find("INVALID_PRODUCER_EPOCH") != std::string::npos;
}

}  // namespace

bool Relay::StepExactlyOnce(const std::atomic<bool>& stop) {
  ServeReports(Millis(0));  // late reports of an aborted transaction
  if (!leading_) return false;
  if (!KeepLeading()) return false;
  if (!fatal_) {
    if (auto reason = publisher_->FatalError()) {
      if (Fenced(*reason)) {
        LoseLeadership(Status::NotLeader("fenced (" + *reason + "): another instance leads"));
        return false;
      }
      HandleFatal(*reason);
    }
  }
  if (!MoveDeadLetters()) return false;
  if (ledger_.rewind_to() || fatal_ || !ledger_.empty()) return Recover(stop);
  if (!exactly_once_->ready()) return PrepareTransactions(stop);
  if (!CleanUpRetained()) return false;

  // One round trip removes the rows of the last committed transaction and fetches the next batch.
  // The next transaction commits only after this removal committed in PostgreSQL: so the last
  // committed checkpoint always names every row that a crash may have left behind.
  std::vector<int64_t> marks = ledger_.TakeMarks();
  const size_t marked = marks.size();
  if (!StoreOk(store_.StartRound(std::move(marks)))) return false;
  while (!store_.RoundReady(Millis(10))) {
  }
  std::vector<OutboxRow> rows;
  if (!StoreOk(store_.FinishRound(&rows))) return false;
  stats_.marked_sent += static_cast<int64_t>(marked);
  if (RescanDue(rows)) {
    // Not produced now: the rescan fetches these again, after what is in flight.
    if (!Wake()) return false;
    return Rescan();
  }
  bool copies_waiting = false;
  for (const auto& [id, pending] : dead_letters_) copies_waiting |= !pending.in_flight;
  if (rows.empty() && !copies_waiting) return IdleWait(stop);
  if (!rows.empty() && !Wake()) return false;
  return Transact(rows, stop);
}

bool Relay::PrepareTransactions(const std::atomic<bool>& stop) {
  const auto started = Clock::now();
  if (!exactly_once_->initialized()) {
    Status s = publisher_->InitTransactions(config_.leadership.session_timeout * 2 / 5);
    if (s.code() == Status::Code::kFatal) {
      HandleFatal(s.message());
      return leading_;
    }
    if (!s.ok()) {  // retriable: the call resumes where it was
      kafka_log_.Failure(s.message());
      WaitInterruptibly(backoff_.Next(), stop);
      return leading_;
    }
    exactly_once_->SetInitialized();
  }
  // Every earlier transaction of this transactional.id is now committed or aborted.
  if (exactly_once_->checkpoint_applied()) {
    // A new producer in the same term whose last transaction never asked to commit: it was
    // aborted, and every committed one is the relay's own, its rows removed or marked. Reading
    // the checkpoint again would tell nothing new (docs/design.md, section 10).
    spdlog::info("exactly-once: new producer ready ({} ms); the checkpoint is already applied",
                 std::chrono::duration_cast<Millis>(Clock::now() - started).count());
    exactly_once_->SetReady();
    return true;
  }
  auto incarnation = store_.Incarnation();
  if (!StoreOk(incarnation.status())) return false;
  incarnation_ = *incarnation;
  auto checkpoint = read_checkpoint_(incarnation_);
  if (!checkpoint.ok()) {
    kafka_log_.Failure("reading the checkpoint: " + checkpoint.status().message());
    if (++checkpoint_failures_ < kCheckpointReadsPerTerm) {
      WaitInterruptibly(backoff_.Next(), stop);
      return leading_;
    }
    // Nothing is delivered without it, and the fault may be this instance's (its network, its
    // view of Kafka): give the lock up, and take it again only after a standby had its chance.
    checkpoint_failures_ = 0;
    LoseLeadership(Status::Unavailable(
        "the checkpoint could not be read in " + std::to_string(kCheckpointReadsPerTerm) +
        " attempts (" + checkpoint.status().message() + "): letting another instance try"));
    WaitInterruptibly(config_.leadership.retry_interval * 2, stop);
    return false;
  }
  checkpoint_failures_ = 0;
  const auto took = std::chrono::duration_cast<Millis>(Clock::now() - started).count();
  if (!*checkpoint) {
    spdlog::info("exactly-once: transactions ready ({} ms); no earlier checkpoint of this outbox",
                 took);
  } else {
    const Checkpoint& c = **checkpoint;
    // Rows an admin command put back after the checkpoint's fetch (a higher put-back generation)
    // are not the ones it carried: they stay and are sent.
    auto dead = store_.RemoveCheckpointed(
        c,
        "dead-lettered by a transaction committed before a restart (the error is in the copy's "
        "outbox-error header)");
    if (!StoreOk(dead.status())) return false;
    stats_.dead_lettered += *dead;
    stats_.checkpoint_rows_removed += static_cast<int64_t>(c.sent.size() + c.dead.size());
    spdlog::info(
        "exactly-once: transactions ready ({} ms); the last committed transaction carried {} rows "
        "({} dead-lettered): any of them still in the outbox were removed without sending them "
        "again",
        took, c.sent.size() + c.dead.size(), c.dead.size());
  }
  exactly_once_->SetReady();
  return true;
}

bool Relay::Transact(std::vector<OutboxRow>& rows, const std::atomic<bool>& stop) {
  Status s = publisher_->BeginTransaction();
  if (!s.ok()) {
    if (!rows.empty()) ledger_.Rewind(rows.front().id);
    last_failure_ = s.message();
    if (s.code() == Status::Code::kFatal) HandleFatal(s.message());
    return leading_;
  }
  exactly_once_->Begin();
  if (!ProduceDeadLetterCopies() || !ProduceRows(rows)) return false;
  if (fatal_) return leading_;  // the producer is gone with the transaction: Recover rebuilds it
  if (!exactly_once_->carries_anything()) return EndTransaction(/*commit=*/false, stop);
  if (!ProduceCheckpoint()) return EndTransaction(/*commit=*/false, stop);

  // Every report first: a message that failed makes the transaction abort.
  const auto give_up = Clock::now() + TransactionTimeout(config_);
  std::optional<Clock::time_point> stop_deadline;
  while (leading_ && (!ledger_.empty() || exactly_once_->awaiting_checkpoint())) {
    ServeReports(Millis(10));
    if (!KeepLeading()) return false;
    if (fatal_) return leading_;
    if (stop && !stop_deadline) stop_deadline = Clock::now() + config_.relay.shutdown_timeout;
    if ((stop_deadline && Clock::now() > *stop_deadline) || Clock::now() > give_up) {
      spdlog::warn(
          "exactly-once: the transaction's messages were not acknowledged in time: "
          "aborting it");
      exactly_once_->Failed();
      break;
    }
  }
  if (!leading_) return false;
  return EndTransaction(!exactly_once_->must_abort(), stop);
}

bool Relay::ProduceCheckpoint() {
  const std::optional<std::string> key = transactional_id_;
  Checkpoint c = exactly_once_->checkpoint();
  c.outbox = incarnation_;
  // The rows come from the last fetch (dead-letter copies from earlier ones, rows that no command
  // can put back while they wait in the outbox): none was put back after this generation.
  c.put_back = store_.PutBackGeneration();
  const std::optional<std::string> value = EncodeCheckpoint(std::move(c));
  const Headers headers;
  OutgoingMessage m{&config_.relay.checkpoint_topic, &key, &value, &headers};
  const uint64_t token = ledger_.NextToken();  // tracked by the strategy, not the ledger
  for (;;) {
    Status s = publisher_->Produce(m, token);
    if (s.ok()) {
      exactly_once_->SetCheckpointToken(token);
      return true;
    }
    if (s.code() == Status::Code::kQueueFull) {
      ServeReports(Millis(5));
      if (!KeepLeading()) return false;
      continue;
    }
    last_failure_ = "the checkpoint record: " + s.message();
    if (s.code() == Status::Code::kFatal) HandleFatal(s.message());
    exactly_once_->Failed();
    return false;
  }
}

bool Relay::EndTransaction(bool commit, const std::atomic<bool>& stop) {
  const auto give_up = Clock::now() + TransactionTimeout(config_);
  std::optional<Clock::time_point> stop_deadline;
  for (;;) {
    if (!leading_ || fatal_) return leading_;
    if (stop && !stop_deadline) stop_deadline = Clock::now() + config_.relay.shutdown_timeout;
    if (Clock::now() > give_up || (stop_deadline && Clock::now() > *stop_deadline)) {
      // The coordinator does not answer: give the producer up. Nothing is removed; the next
      // producer's InitTransactions settles this transaction and the checkpoint tells.
      HandleFatal(std::string("the transaction's ") + (commit ? "commit" : "abort") +
                  " did not finish in time: " + last_failure_);
      return leading_;
    }
    if (commit) exactly_once_->CommitRequested();
    Status s = commit ? publisher_->CommitTransaction(Millis(1000))
                      : publisher_->AbortTransaction(Millis(1000));
    if (s.ok()) break;
    if (s.code() == Status::Code::kUnavailable) {  // retriable (a timeout): it goes on
      last_failure_ = s.message();
      // The producer finishes a commit or an abort only once the reports of the messages it
      // flushes or purges are served, which only this thread does: serve them before trying again
      // (without this an abort with messages in flight timed out until the producer was given up).
      ServeReports(Millis(10));
      if (!KeepLeading()) return false;
      continue;
    }
    if (s.code() == Status::Code::kAbortRequired && commit) {
      last_failure_ = s.message();
      spdlog::warn("exactly-once: {}: aborting the transaction", s.message());
      commit = false;
      continue;
    }
    // Fatal (fenced by a newer producer of this transactional.id, or another fatal error): the
    // outcome is unknown here. Nothing is removed; the next producer's InitTransactions settles
    // it and the checkpoint tells what was committed.
    spdlog::error("exactly-once: {}", s.message());
    if (Fenced(s.message())) {
      LoseLeadership(Status::NotLeader("fenced by a newer producer with transactional.id " +
                                       transactional_id_ + ": another instance leads"));
      return false;
    }
    HandleFatal(s.message());
    return leading_;
  }
  if (commit) {
    for (int64_t id : exactly_once_->Committed(ledger_, Clock::now())) {
      auto pending = dead_letters_.find(id);
      DeadLetterRow(id, pending == dead_letters_.end() ? "" : pending->second.error);
    }
    ++stats_.transactions_committed;
    if (kafka_log_.failing()) {
      kafka_log_.Recovered();
      backoff_.Reset();
    }
  } else {
    for (int64_t id : exactly_once_->Aborted(ledger_)) {
      auto pending = dead_letters_.find(id);
      if (pending != dead_letters_.end()) pending->second.in_flight = false;
    }
    ++stats_.transactions_aborted;
  }
  return leading_;
}

}  // namespace outboxd
