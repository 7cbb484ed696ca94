#include "metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace outboxd {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);  // first bound >= value
  buckets_[static_cast<size_t>(it - bounds_.begin())].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Take() const {
  Snapshot s;
  s.bounds = bounds_;
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(running);
  }
  s.count = running;  // +Inf equals the count by construction
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

void ErrorCounts::Add(int code) {
  if (code < kMin || code >= kMax) {
    other_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  counts_[static_cast<size_t>(code - kMin)].fetch_add(1, std::memory_order_relaxed);
}

std::vector<std::pair<int, int64_t>> ErrorCounts::Take() const {
  std::vector<std::pair<int, int64_t>> out;
  for (int code = kMin; code < kMax; ++code) {
    int64_t n = counts_[static_cast<size_t>(code - kMin)].load(std::memory_order_relaxed);
    if (n > 0) out.emplace_back(code, n);
  }
  if (int64_t n = other_.load(std::memory_order_relaxed); n > 0) out.emplace_back(kMax, n);
  return out;
}

int64_t SteadyNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

RelayMetrics::RelayMetrics()
    : fetch_seconds(RoundTripBuckets()),
      remove_seconds(RoundTripBuckets()),
      commit_to_ack_seconds(LatencyBuckets()) {
  Beat();
}

void RelayMetrics::Beat() { heartbeat_ms.store(SteadyNowMs(), std::memory_order_relaxed); }

void RelayMetrics::SetPostgresError(const std::string& error) {
  std::lock_guard l(error_mu_);
  postgres_error_ = error;
}

std::string RelayMetrics::postgres_error() const {
  std::lock_guard l(error_mu_);
  return postgres_error_;
}

void RelayMetrics::SetHeldTopics(std::vector<HeldTopic> held) {
  std::lock_guard l(error_mu_);
  held_ = std::move(held);
}

std::vector<RelayMetrics::HeldTopic> RelayMetrics::held_topics() const {
  std::lock_guard l(error_mu_);
  return held_;
}

std::vector<double> RoundTripBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};
}

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
}

namespace {

// The text format's escaping: the backslash and the newline always, the double quote in label
// values only (a HELP text keeps it).
std::string Escape(const std::string& v, bool quote) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string Exposition::EscapeLabelValue(const std::string& v) { return Escape(v, true); }

std::string Exposition::EscapeHelp(const std::string& v) { return Escape(v, false); }

std::string Exposition::FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  } else {
    std::snprintf(buf, sizeof(buf), "%.9g", v);
  }
  return buf;
}

void Exposition::Family(const std::string& name, const std::string& type, const std::string& help) {
  out_ += "# HELP " + name + " " + EscapeHelp(help) + "\n";
  out_ += "# TYPE " + name + " " + type + "\n";
}

void Exposition::Sample(const std::string& name, double value, const Labels& labels) {
  out_ += name;
  if (!labels.empty()) {
    out_ += "{";
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i) out_ += ",";
      out_ += labels[i].first + "=\"" + EscapeLabelValue(labels[i].second) + "\"";
    }
    out_ += "}";
  }
  out_ += " " + FormatValue(value) + "\n";
}

void Exposition::HistogramSeries(const std::string& name, const Histogram::Snapshot& s,
                                 const Labels& labels) {
  for (size_t i = 0; i <= s.bounds.size(); ++i) {
    Labels l = labels;
    l.emplace_back("le", i < s.bounds.size() ? FormatValue(s.bounds[i]) : "+Inf");
    Sample(name + "_bucket", static_cast<double>(s.cumulative[i]), l);
  }
  Sample(name + "_sum", s.sum, labels);
  Sample(name + "_count", static_cast<double>(s.count), labels);
}

}  // namespace outboxd
