// ScanWindow: which outbox ids the next fetch must look at, so that no committed row is ever
// skipped and no row is fetched twice while it is in flight. Pure logic; OutboxStore runs the SQL.
//
// Every fetch returns "fresh" rows (id > hi, in id order, LIMIT n) and "late" rows (ids inside the
// recorded gaps), both read under one snapshot S. An id between the old hi and the newest fresh id
// that was not returned is a gap: its transaction was running at S (it had its xid before it took
// the id, see schema/001), aborted, or the row is already gone. Each gap range keeps the xids that
// were running at S; once none of them runs any more, the late branch of that same fetch has
// returned every row the range will ever hold, and the range is dropped. A long transaction thus
// keeps only its own ids in the window, and the fresh scan always starts at hi, past the dead rows.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace outboxd {

// pg_current_snapshot() as text: "xmin:xmax:xip,xip,...", plus the next xid to be assigned.
// Note that xmax is latestCompletedXid + 1, not the next xid: a transaction that took its xid after
// the last one to complete is running but not listed in xip. Such xids lie in [xmax, next_xid).
struct Snapshot {
  uint64_t xmin = 0;
  uint64_t xmax = 0;
  uint64_t next_xid = 0;          // at or after the snapshot; >= xmax
  std::vector<uint64_t> running;  // sorted, all < xmax
  static std::optional<Snapshot> Parse(std::string_view text);
  // Whether `xid` may still be running: listed in xip, or at or above xmax.
  bool MayRun(uint64_t xid) const;
};

class ScanWindow {
 public:
  struct Gap {
    int64_t first;                 // inclusive
    int64_t last;                  // inclusive
    std::vector<uint64_t> owners;  // xids that may still commit a row in [first, last] ...
    uint64_t open_from = 0;        // ... and every xid in [open_from, open_to)
    uint64_t open_to = 0;
    bool settled() const { return owners.empty() && open_from >= open_to; }
  };

  int64_t hi() const { return hi_; }
  const std::vector<Gap>& gaps() const { return gaps_; }

  // After a fetch under `snap`: the late ids returned (any order), whether the late branch hit its
  // limit, and the fresh ids returned (ascending). Returns false when the fresh rows must be
  // dropped (the late branch was cut short: taking fresh rows first could reorder a key).
  bool Apply(const Snapshot& snap, const std::vector<int64_t>& late_ids, bool late_full,
             const std::vector<int64_t>& fresh_ids);

  // Forget everything from `first_unfetched` on: the next fetch returns those rows again.
  void Rewind(int64_t first_unfetched);
  // Start from the beginning (a new connection or leadership term).
  void Reset();

  // The fetch parameters as PostgreSQL array literals: "{a,b}" of gap starts and ends.
  std::string GapStarts() const;
  std::string GapEnds() const;

 private:
  void Carve(int64_t id);

  int64_t hi_ = 0;
  std::vector<Gap> gaps_;  // disjoint, ascending, all <= hi_
};

}  // namespace outboxd
