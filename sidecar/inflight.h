// InFlightLedger: the relay's bookkeeping of what is on its way to Kafka and what may be removed.
// It hands out a token per produced message and keeps the message's row until its report; it
// applies the per-key barrier (once a row of a key failed in this attempt, a later row of that key
// is not removed even if acknowledged: it goes again, after it); it collects the acknowledged ids
// to remove, remembers the first id to fetch again (the rewind point), and the suspects (rows the
// broker refused together with others, each sent again alone). It knows nothing of Kafka or
// PostgreSQL. Owned and used by the relay thread only.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace outboxd {

class InFlightLedger {
 public:
  using Clock = std::chrono::steady_clock;

  // One produced message, until its report.
  struct Entry {
    int64_t id = 0;
    std::optional<std::string> key;
    bool dead_letter_copy = false;  // a copy on the dead-letter topic
    bool isolated = false;          // a suspect, sent with nothing else in flight
    int64_t created_at_us = 0;      // the row's created_at (commit-to-ack latency)
    std::string topic{};            // where it goes: order is per topic and key
  };

  // Tokens: one per Produce call, never reused; Add only for a message the producer accepted.
  uint64_t NextToken() { return next_token_++; }
  void Add(uint64_t token, Entry entry);
  // The entry of a report's token, no longer in flight; nullopt for a token never added (or taken).
  std::optional<Entry> Take(uint64_t token);
  bool empty() const { return in_flight_.empty(); }
  size_t size() const { return in_flight_.size(); }
  // A suspect travels alone: true from its Add until its Take.
  bool isolated_in_flight() const { return isolated_in_flight_; }

  // A proven acknowledgement of `entry` (taken). True: its id is queued for removal. False: an
  // earlier row of its key failed in this attempt, so this one is a failure too (sent again).
  bool Acknowledge(const Entry& entry, Clock::time_point now);
  // `entry` was not delivered: fetch again from its id, and hold back the later rows of its key.
  void Fail(const Entry& entry);
  // Fetch again from `id` (a row not produced, or not acknowledged), without a key barrier.
  void Rewind(int64_t id) { rewind_to_ = std::min(rewind_to_.value_or(id), id); }
  // The first id to fetch again, if anything failed in this attempt.
  const std::optional<int64_t>& rewind_to() const { return rewind_to_; }
  // A new attempt: the rewind point and the per-key barriers are forgotten.
  void StartAttempt();

  // Acknowledged ids not yet removed, in the order of their acknowledgements.
  const std::vector<int64_t>& marks() const { return to_mark_; }
  // Hands the marks over (to be removed) and empties them.
  std::vector<int64_t> TakeMarks();
  // Whether the marks are worth a statement now: a batch of them, nothing left in flight, or the
  // oldest waited `max_wait`.
  bool MarksDue(size_t batch_size, Clock::time_point now, Clock::duration max_wait) const;
  // How long the oldest mark has waited (zero without marks).
  Clock::duration MarksAge(Clock::time_point now) const {
    return to_mark_.empty() ? Clock::duration::zero() : now - first_unmarked_;
  }
  // Forgets the marks (leadership lost: the rows stay, the next leader sends them again).
  void DropMarks() { to_mark_.clear(); }

  bool IsSuspect(int64_t id) const { return suspects_.count(id) > 0; }
  // True if `id` was not a suspect before.
  bool AddSuspect(int64_t id) { return suspects_.insert(id).second; }
  void ClearSuspect(int64_t id) { suspects_.erase(id); }
  void ClearSuspects() { suspects_.clear(); }

  // Everything in flight is forgotten (its reports, if any, are for unknown tokens) and a new
  // attempt starts. Marks and suspects stay.
  void Forget();

 private:
  uint64_t next_token_ = 1;
  std::unordered_map<uint64_t, Entry> in_flight_;
  bool isolated_in_flight_ = false;
  std::vector<int64_t> to_mark_;  // acknowledged, not yet removed
  Clock::time_point first_unmarked_;
  // The current attempt's failures: the first id to fetch again, and per topic and key the lowest
  // failed id.
  std::optional<int64_t> rewind_to_;
  std::unordered_map<std::string, int64_t> failed_keys_;
  // Rows the broker refused in a request with others: each is sent again alone to tell.
  std::set<int64_t> suspects_;
};

}  // namespace outboxd
