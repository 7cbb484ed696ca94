#include "inflight.h"

#include <algorithm>

namespace outboxd {

void InFlightLedger::Add(uint64_t token, Entry entry) {
  if (entry.isolated) isolated_in_flight_ = true;
  in_flight_.emplace(token, std::move(entry));
}

std::optional<InFlightLedger::Entry> InFlightLedger::Take(uint64_t token) {
  auto it = in_flight_.find(token);
  if (it == in_flight_.end()) return std::nullopt;
  Entry e = std::move(it->second);
  in_flight_.erase(it);
  if (e.isolated) isolated_in_flight_ = false;
  return e;
}

namespace {

// Order is per topic and key: the barrier's map key names both (the topic's length first, so no
// two pairs give the same string).
std::string BarrierKey(const InFlightLedger::Entry& entry) {
  return std::to_string(entry.topic.size()) + ':' + entry.topic + *entry.key;
}

}  // namespace

bool InFlightLedger::Acknowledge(const Entry& entry, Clock::time_point now) {
  suspects_.erase(entry.id);
  if (entry.key) {
    auto failed = failed_keys_.find(BarrierKey(entry));
    if (failed != failed_keys_.end() && failed->second < entry.id) {
      Rewind(entry.id);  // an earlier row of this key failed: this one goes again after it
      return false;
    }
  }
  if (to_mark_.empty()) first_unmarked_ = now;
  to_mark_.push_back(entry.id);
  return true;
}

void InFlightLedger::Fail(const Entry& entry) {
  Rewind(entry.id);
  if (!entry.key) return;
  // Reports of different partitions interleave: a higher id of the key may fail first.
  auto [it, fresh] = failed_keys_.try_emplace(BarrierKey(entry), entry.id);
  if (!fresh) it->second = std::min(it->second, entry.id);
}

void InFlightLedger::StartAttempt() {
  rewind_to_.reset();
  failed_keys_.clear();
}

std::vector<int64_t> InFlightLedger::TakeMarks() {
  std::vector<int64_t> out;
  out.swap(to_mark_);
  return out;
}

bool InFlightLedger::MarksDue(size_t batch_size, Clock::time_point now,
                              Clock::duration max_wait) const {
  if (to_mark_.empty()) return false;
  return to_mark_.size() >= batch_size || in_flight_.empty() || now - first_unmarked_ >= max_wait;
}

void InFlightLedger::Forget() {
  in_flight_.clear();
  isolated_in_flight_ = false;
  StartAttempt();
}

}  // namespace outboxd
