#include "checkback.h"

#include <spdlog/spdlog.h>

#include "log_json.h"

namespace outboxd {

using Clock = std::chrono::steady_clock;

namespace {

constexpr Millis kCleanupEvery{60'000};
constexpr size_t kMaxWarnedRemembered = 100'000;

const char* SettlementWord(Settlement s) {
  switch (s) {
    case Settlement::kCommit:
      return "committed";
    case Settlement::kRollback:
      return "rolled back";
    case Settlement::kDeadLetter:
      return "dead-lettered";
  }
  return "settled";
}

// lock_timeout: the application holds the prepared row (it is settling it right now).
bool IsLockTimeout(const Status& s) { return s.message().find("55P03") != std::string::npos; }

}  // namespace

CheckBack::CheckBack(const CheckbackConfig& config, PreparedStore& store, CheckerPtr checker,
                     LeaderFn leader)
    : config_(config), store_(store), checker_(std::move(checker)), leader_(std::move(leader)) {}

CheckBack::~CheckBack() { Stop(); }

void CheckBack::Start(const std::atomic<bool>& stop) {
  thread_.Start(stop, [this] { Loop(); });
}

void CheckBack::Stop() { thread_.Stop(); }

void CheckBack::Loop() {
  spdlog::info("check-back: checker {}, first check after {}, every {}, at most {} checks",
               config_.checker == CheckerKind::kHttp  ? "http " + config_.http_url
               : config_.checker == CheckerKind::kSql ? std::string("sql")
                                                      : std::string("none (no checks)"),
               FormatDuration(config_.transaction_timeout), FormatDuration(config_.check_interval),
               config_.max_checks);
  bool was_leading = false;
  while (!thread_.stopping()) {
    if (!leader_()) {
      if (was_leading) spdlog::info("check-back paused: not leading the outbox");
      was_leading = false;
      if (connected_) store_.Disconnect();
      connected_ = false;
      thread_.SleepFor(config_.poll_interval);
      continue;
    }
    was_leading = true;
    auto handled = RunOnce();
    if (!handled.ok() && handled.status().code() == Status::Code::kNotLeader) {
      // Deposed while the relay has not noticed yet (it may be waiting on Kafka): stay silent.
      if (!warned_deposed_) spdlog::warn("check-back paused: {}", handled.status().message());
      warned_deposed_ = true;
      thread_.SleepFor(config_.poll_interval);
      continue;
    }
    warned_deposed_ = false;
    if (!handled.ok()) {
      pg_log_.Failure(handled.status().message());
      thread_.SleepFor(backoff_.Next());
      continue;
    }
    pg_log_.Recovered();
    backoff_.Reset();
    // A full batch: more may be due right away.
    if (*handled < config_.batch_size) thread_.SleepFor(config_.poll_interval);
  }
}

Result<int> CheckBack::RunOnce() {
  const std::optional<LeaderSession> leader = leader_();
  if (!leader) return Status::NotLeader("check-back: this instance does not lead the outbox");
  if (Status s = store_.Connect(); !s.ok()) {
    connected_ = false;
    return s;
  }
  connected_ = true;
  if (Status s = ProveLeading(*leader); !s.ok()) return s;
  if (Clock::now() >= next_cleanup_) {
    auto removed = store_.RemoveSettledBefore(config_.settled_retention);
    if (!removed.ok()) return removed.status();
    // A full batch: more are due, and the next round goes on with them (a round per poll_interval
    // or less), so that the removal keeps up with the rate half messages settle at.
    next_cleanup_ = *removed >= kRemoveSettledBatch ? Clock::now() : Clock::now() + kCleanupEvery;
    if (*removed > 0) spdlog::info("check-back: removed {} settled half messages", *removed);
  }
  if (!checker_) return 0;
  auto due = store_.FetchDue(config_.transaction_timeout, config_.batch_size);
  if (!due.ok()) return due.status();
  int handled = 0;
  for (const PreparedMessage& m : *due) {
    if (thread_.stop_requested() || leader_() != leader) break;
    if (Status s = Handle(m, *leader); !s.ok()) return s;
    ++handled;
  }
  if (warned_.size() > kMaxWarnedRemembered) warned_.clear();
  return handled;
}

Status CheckBack::ProveLeading(const LeaderSession& leader) {
  auto leading = store_.Leading(leader);
  if (!leading.ok()) return leading.status();
  if (!*leading) {
    return Status::NotLeader(
        "this instance's relay session no longer holds the outbox lock (another instance may "
        "lead)");
  }
  return Status::Ok();
}

Status CheckBack::Handle(const PreparedMessage& m, const LeaderSession& leader) {
  // [log] format = "json": this message's lines carry its id and topic.
  ScopedLogFields fields({{"message_id", std::to_string(m.id)}, {"topic", m.topic}});
  if (m.check_count >= config_.max_checks) {
    spdlog::warn("half message {} (topic {}): no verdict after {} checks: {}", m.id, m.topic,
                 m.check_count,
                 config_.final_action == FinalAction::kRollback ? "rolling back"
                 : config_.final_topic.empty()                  ? "dead-lettering"
                                               : "dead-lettering to topic " + config_.final_topic);
    return Apply(m,
                 config_.final_action == FinalAction::kRollback ? Settlement::kRollback
                                                                : Settlement::kDeadLetter,
                 SettledBy::kMaxChecks, leader);
  }
  // A round may last long (a slow checker): ask only while still leading.
  if (Status s = ProveLeading(leader); !s.ok()) return s;
  ++counts_.checks;
  CheckAnswer answer = checker_->Check(m);
  spdlog::debug("half message {}: check {} answered {}{}{}", m.id, m.check_count + 1,
                VerdictName(answer.verdict), answer.detail.empty() ? "" : ": ", answer.detail);
  if (answer.verdict == Verdict::kUnknown) {
    ++counts_.unknown;
    if (!answer.detail.empty() && warned_.insert(m.id).second) {
      LogWith(spdlog::level::warn,
              {{"message_id", std::to_string(m.id)}, {"topic", m.topic}, {"error", answer.detail}},
              "half message {}: check failed, counted as unknown (said once per message): {}", m.id,
              answer.detail);
    }
    auto counted = store_.RecordUnknown(m.id, config_.check_interval, leader);
    if (!counted.ok() && IsLockTimeout(counted.status())) {
      spdlog::debug("half message {}: busy (locked by the application); checked again", m.id);
      return Status::Ok();
    }
    if (!counted.ok()) return counted.status();
    if (!*counted) {
      ++counts_.ignored;
      spdlog::debug("half message {}: settled meanwhile; unknown answer ignored", m.id);
    }
    return Status::Ok();
  }
  return Apply(m, answer.verdict == Verdict::kCommit ? Settlement::kCommit : Settlement::kRollback,
               SettledBy::kCheck, leader);
}

Status CheckBack::Apply(const PreparedMessage& m, Settlement settlement, SettledBy by,
                        const LeaderSession& leader) {
  auto settled =
      store_.Settle(m.id, settlement, by,
                    settlement == Settlement::kDeadLetter ? config_.final_topic : "", leader);
  if (!settled.ok()) {
    // A lock timeout: the application holds the row (it is settling it). Next round decides.
    if (IsLockTimeout(settled.status())) {
      spdlog::debug("half message {}: busy (locked by the application); checked again later", m.id);
      return Status::Ok();
    }
    return settled.status();
  }
  warned_.erase(m.id);
  if (!*settled) {
    ++counts_.ignored;
    spdlog::debug("half message {}: already settled; check-back verdict {} ignored", m.id,
                  SettlementWord(settlement));
    return Status::Ok();
  }
  if (by == SettledBy::kMaxChecks) {
    ++counts_.final_actions;
  } else if (settlement == Settlement::kCommit) {
    ++counts_.committed;
  } else {
    ++counts_.rolled_back;
  }
  spdlog::info("half message {} (topic {}) {} by {}", m.id, m.topic, SettlementWord(settlement),
               by == SettledBy::kCheck ? "check-back" : "the final action after max_checks");
  return Status::Ok();
}

}  // namespace outboxd
