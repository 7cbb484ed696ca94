// Metrics: lock-free counters and histograms that the relay thread writes and the admin listener
// reads, and the Prometheus text exposition format (version 0.0.4) they are written in.
// Writers use relaxed atomics only: reading never blocks the relay thread, and a scrape may see
// one histogram a few observations ahead of another (never a bucket count going down).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace outboxd {

// A histogram with fixed upper bounds (seconds, ascending); one atomic per bucket.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // per bound, then +Inf (== count)
    uint64_t count = 0;
    double sum = 0;
  };
  Snapshot Take() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1 (the last: +Inf)
  std::atomic<double> sum_{0};
};

// Delivery reports that failed, by librdkafka error code (rd_kafka_resp_err_t), lock-free.
class ErrorCounts {
 public:
  void Add(int code);
  // (code, count) for every code seen at least once.
  std::vector<std::pair<int, int64_t>> Take() const;

 private:
  static constexpr int kMin = -200;  // librdkafka's internal errors start at -200
  static constexpr int kMax = 200;   // broker errors are small positive numbers
  std::array<std::atomic<int64_t>, kMax - kMin> counts_{};
  std::atomic<int64_t> other_{0};  // outside the range
};

// What the relay thread publishes beyond its counters (Relay::Stats), for the admin listener.
struct RelayMetrics {
  enum class State : int { kStarting = 0, kStandby = 1, kLeading = 2, kUnavailable = 3 };

  Histogram fetch_seconds;          // one fetch round trip (with the removals sent alongside)
  Histogram remove_seconds;         // one removal round trip sent on its own
  Histogram commit_to_ack_seconds;  // the row's created_at to its broker acknowledgement
  ErrorCounts delivery_errors;
  std::atomic<int64_t> in_flight{0};  // produced, report not yet served
  std::atomic<int64_t> resent{0};     // reports after which the row goes again
  std::atomic<int64_t> leadership_losses{0};
  std::atomic<int> state{static_cast<int>(State::kStarting)};
  std::atomic<bool> kafka_ok{false};  // a producer exists and deliveries are not failing
  // The relay thread's last sign of life (steady clock, milliseconds): set on every pass.
  std::atomic<int64_t> heartbeat_ms{0};

  RelayMetrics();
  void Beat();
  State state_value() const { return static_cast<State>(state.load(std::memory_order_relaxed)); }

  // The PostgreSQL error the relay is retrying after ("" once it connected), for /readyz. Set on
  // a failure or a recovery only, never on the hot path: a mutex is fine here.
  void SetPostgresError(const std::string& error);
  std::string postgres_error() const;

  // Topics Kafka refuses (missing, or not authorized): their messages wait in the outbox while
  // the others flow. Set when the set changes only, never on the hot path.
  struct HeldTopic {
    std::string topic;
    std::string error;
    int64_t since_ms = 0;  // steady clock, milliseconds: the first refusal
  };
  void SetHeldTopics(std::vector<HeldTopic> held);
  std::vector<HeldTopic> held_topics() const;

 private:
  mutable std::mutex error_mu_;
  std::string postgres_error_;   // GUARDED_BY(error_mu_)
  std::vector<HeldTopic> held_;  // GUARDED_BY(error_mu_)
};

int64_t SteadyNowMs();

// Builds a text exposition. Each family gets its # HELP and # TYPE lines once, before its samples.
class Exposition {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  // type: "counter", "gauge" or "histogram".
  void Family(const std::string& name, const std::string& type, const std::string& help);
  void Sample(const std::string& name, double value, const Labels& labels = {});
  // A whole histogram family with one series (or one per label set).
  void HistogramSeries(const std::string& name, const Histogram::Snapshot& s,
                       const Labels& labels = {});
  const std::string& text() const { return out_; }

  static std::string EscapeLabelValue(const std::string& v);
  static std::string EscapeHelp(const std::string& v);
  static std::string FormatValue(double v);

 private:
  std::string out_;
};

// The default buckets: database round trips (1 ms .. 10 s) and commit-to-ack latency
// (1 ms .. 5 min).
std::vector<double> RoundTripBuckets();
std::vector<double> LatencyBuckets();

}  // namespace outboxd
