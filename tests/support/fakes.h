// In-memory OutboxStore and Publisher for the relay's unit tests. Thread-safe: the relay runs on
// its own thread while the test body adds rows and reads results.
#pragma once

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "outbox_store.h"
#include "publisher.h"

namespace outboxd::testing {

class FakeStore : public OutboxStore {
 public:
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

  Status Lead() override {
    std::lock_guard l(mu_);
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
  Status FetchBatch(std::vector<OutboxRow>* rows) override {
    std::lock_guard l(mu_);
    rows->clear();
    if (Status s = Inject(); !s.ok()) return s;
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
    if (Status s = Inject(); !s.ok()) return s;
    for (int64_t id : ids) {
      rows_.erase(id);
      removed_.push_back(id);
    }
    return Status::Ok();
  }
  Status DeadLetter(int64_t id, const std::string& error) override {
    std::lock_guard l(mu_);
    if (Status s = Inject(); !s.ok()) return s;
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
  Status SetSleeping(bool) override { return Status::Ok(); }
  Result<bool> WaitForNotify(Millis timeout) override {
    std::this_thread::sleep_for(std::min(timeout, Millis(2)));
    return false;
  }
  Result<int64_t> RemoveSentBefore(Millis) override { return int64_t{0}; }

 private:
  Status Inject() {
    if (fail_next_ > 0) {
      --fail_next_;
      return failure_;
    }
    return Status::Ok();
  }

  std::mutex mu_;
  std::map<int64_t, OutboxRow> rows_;  // GUARDED_BY(mu_)
  std::set<int64_t> fetched_;          // GUARDED_BY(mu_)
  std::vector<int64_t> removed_;       // GUARDED_BY(mu_)
  std::map<int64_t, std::string> dead_;
  int fail_next_ = 0;
  Status failure_;
  bool leader_ = false;
  bool other_leader_ = false;
  int leads_ = 0;
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
  bool hold_reports = false;  // reports wait (as if the broker were slow or down)

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
  int producers_built = 0;
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
    bool any = false;
    {
      std::lock_guard l(broker_.mu_);
      while (!queue_.empty() && (!broker_.hold_reports || purged_)) {
        auto [token, s] = queue_.front();
        queue_.pop_front();
        s.outcome =
            purged_ ? DeliveryReport::Outcome::kRetriable
                    : (broker_.decide ? broker_.decide(s) : DeliveryReport::Outcome::kPersisted);
        broker_.log_.push_back(s);
        reports->push_back({token, s.outcome, purged_ ? "purged" : "injected"});
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

inline PublisherFactory FakeFactory(FakeBroker& broker) {
  return [&broker]() -> Result<PublisherPtr> {
    ++broker.producers_built;
    return PublisherPtr(new FakePublisher(broker));
  };
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
