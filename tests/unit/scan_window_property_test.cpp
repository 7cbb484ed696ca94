// ScanWindow against a model of PostgreSQL: random interleavings of sessions that take a
// transaction id, then message ids (schema/001: the xid before the id), commit or abort, while a
// relay fetches with a small LIMIT under snapshots built as PostgreSQL builds them (xmax is the
// latest completed xid + 1; xids at or above it run unlisted) and removes what it fetched some
// steps later, or rewinds after a failed delivery. Checked: every committed id is fetched exactly
// once in the term (once more after a rewind that asks for it), never an id of an aborted
// transaction. Seeded; OUTBOXD_PROPERTY_SEED=<n> replays one seed.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "scan_window.h"

namespace outboxd {
namespace {

enum class XactState { kRunning, kCommitted, kAborted };

struct Session {
  std::optional<uint64_t> xid;
};

struct Row {
  uint64_t xid;
  bool deleted = false;
};

class Model {
 public:
  explicit Model(uint64_t seed) : rng_(seed) {}

  // Runs `steps` random actions, then lets every transaction end and fetches until done.
  // Returns an empty string when the window behaved, else what went wrong (with a trace).
  std::string Run(int steps) {
    for (int i = 0; i < steps && failure_.empty(); ++i) Step();
    for (size_t s = 0; s < sessions_.size(); ++s) End(s, Pick(2) == 0);
    sessions_.clear();
    for (int i = 0; i < 1000 && failure_.empty(); ++i) {
      RemoveFetched(true);
      if (!Fetch() && window_.gaps().empty()) break;
    }
    if (!failure_.empty()) return failure_;
    for (auto& [id, row] : rows_) {
      int n = fetched_.count(id) ? fetched_[id] : 0;
      if (xacts_[row.xid] == XactState::kCommitted && n != 1) {
        return Fail("committed id " + std::to_string(id) + " (xid " + std::to_string(row.xid) +
                    ") fetched " + std::to_string(n) + " times");
      }
    }
    return "";
  }

 private:
  uint64_t Pick(uint64_t n) { return rng_() % n; }

  void Step() {
    switch (Pick(9)) {
      case 0:
        if (sessions_.size() < 5) sessions_.push_back(Session{});
        break;
      case 1:  // a transaction takes its xid (an earlier write, or the id default's first step)
        if (!sessions_.empty()) TakeXid(Pick(sessions_.size()));
        break;
      case 2:
      case 3:
        if (!sessions_.empty()) TakeId(Pick(sessions_.size()));
        break;
      case 4:
        if (!sessions_.empty()) {
          size_t s = Pick(sessions_.size());
          End(s, Pick(4) != 0);
          sessions_.erase(sessions_.begin() + static_cast<long>(s));
        }
        break;
      case 5:
      case 6:
        Fetch();
        break;
      case 7:
        RemoveFetched(Pick(2) == 0);
        break;
      case 8:
        if (!in_flight_.empty() && Pick(3) == 0) RewindAfterFailure();
        break;
    }
  }

  void TakeXid(size_t s) {
    if (sessions_[s].xid) return;
    uint64_t xid = next_xid_++;
    sessions_[s].xid = xid;
    xacts_[xid] = XactState::kRunning;
    Log("xid " + std::to_string(xid));
  }

  void TakeId(size_t s) {
    TakeXid(s);  // outbox.next_message_id(): pg_current_xact_id() before nextval
    int64_t id = next_id_++;
    rows_[id] = Row{*sessions_[s].xid};
    Log("xid " + std::to_string(*sessions_[s].xid) + " takes id " + std::to_string(id));
  }

  void End(size_t s, bool commit) {
    if (!sessions_[s].xid) return;
    uint64_t xid = *sessions_[s].xid;
    xacts_[xid] = commit ? XactState::kCommitted : XactState::kAborted;
    latest_completed_ = std::max(latest_completed_, xid);
    Log((commit ? "commit " : "abort ") + std::to_string(xid));
  }

  bool Visible(int64_t id) {
    auto it = rows_.find(id);
    return it != rows_.end() && !it->second.deleted &&
           xacts_[it->second.xid] == XactState::kCommitted;
  }

  // One fetch as kFetchSql runs it (late rows per gap with LIMIT, fresh rows with LIMIT), then
  // the window's Apply, as PgOutboxStore::ReadFetch does. Returns whether it fetched anything.
  bool Fetch() {
    const int64_t limit = static_cast<int64_t>(1 + Pick(4));
    Snapshot snap;
    snap.xmax = latest_completed_ + 1;
    snap.next_xid = next_xid_;
    for (const Session& s : sessions_) {
      if (s.xid && *s.xid < snap.xmax) snap.running.push_back(*s.xid);
    }
    std::sort(snap.running.begin(), snap.running.end());
    snap.xmin = snap.running.empty() ? snap.xmax : snap.running.front();

    std::vector<int64_t> late, fresh;
    for (const ScanWindow::Gap& g : window_.gaps()) {
      int64_t n = 0;
      for (int64_t id = g.first; id <= g.last && n < limit; ++id) {
        if (Visible(id)) {
          late.push_back(id);
          ++n;
        }
      }
    }
    std::sort(late.begin(), late.end());
    if (static_cast<int64_t>(late.size()) > limit) late.resize(limit);
    for (auto it = rows_.upper_bound(window_.hi());
         it != rows_.end() && static_cast<int64_t>(fresh.size()) < limit; ++it) {
      if (Visible(it->first)) fresh.push_back(it->first);
    }
    const bool late_full = static_cast<int64_t>(late.size()) >= limit;
    std::ostringstream what;
    what << "fetch limit " << limit << " hi " << window_.hi() << " gaps " << window_.GapStarts()
         << ".." << window_.GapEnds() << " snapshot " << snap.xmin << ":" << snap.xmax << " next "
         << snap.next_xid << " running " << snap.running.size() << ": late";
    for (int64_t id : late) what << " " << id;
    what << " fresh";
    for (int64_t id : fresh) what << " " << id;
    if (!window_.Apply(snap, late, late_full, fresh)) fresh.clear();
    what << (fresh.empty() ? "" : " (taken)");
    Log(what.str());
    for (int64_t id : late) Deliver(id);
    for (int64_t id : fresh) Deliver(id);
    return !late.empty() || !fresh.empty();
  }

  void Deliver(int64_t id) {
    if (++fetched_[id] > 1 && failure_.empty()) {
      failure_ = Fail("id " + std::to_string(id) + " fetched twice");
    }
    if (xacts_[rows_[id].xid] != XactState::kCommitted && failure_.empty()) {
      failure_ = Fail("id " + std::to_string(id) + " of an uncommitted transaction fetched");
    }
    in_flight_.push_back(id);
  }

  // Acknowledged rows are removed (some or all of those fetched so far).
  void RemoveFetched(bool all) {
    size_t n = all ? in_flight_.size() : Pick(in_flight_.size() + 1);
    for (size_t i = 0; i < n; ++i) rows_[in_flight_[i]].deleted = true;
    in_flight_.erase(in_flight_.begin(), in_flight_.begin() + static_cast<long>(n));
  }

  // A delivery failed: as Relay::Recover does, every row before the first unacknowledged one
  // was acknowledged and removed, later ones may or may not have been; the window is rewound to
  // that row, and each row still present from there on must be fetched once more.
  void RewindAfterFailure() {
    std::sort(in_flight_.begin(), in_flight_.end());
    const int64_t first_unacked = in_flight_[Pick(in_flight_.size())];
    for (int64_t id : in_flight_) {
      if (id < first_unacked || (id > first_unacked && Pick(2) == 0)) {
        rows_[id].deleted = true;
      } else {
        fetched_[id] = 0;  // to be fetched again, exactly once
      }
    }
    in_flight_.clear();
    window_.Rewind(first_unacked);
    Log("rewind to " + std::to_string(first_unacked));
  }

  void Log(const std::string& line) {
    trace_.push_back(line);
    if (trace_.size() > 40) trace_.erase(trace_.begin());
  }

  std::string Fail(const std::string& what) {
    std::string out = what + "; last steps:\n";
    for (const std::string& line : trace_) out += "  " + line + "\n";
    return out;
  }

  std::mt19937_64 rng_;
  uint64_t next_xid_ = 100;
  uint64_t latest_completed_ = 99;
  int64_t next_id_ = 1;
  std::vector<Session> sessions_;
  std::map<uint64_t, XactState> xacts_;
  std::map<int64_t, Row> rows_;
  ScanWindow window_;
  std::map<int64_t, int> fetched_;
  std::vector<int64_t> in_flight_;
  std::vector<std::string> trace_;
  std::string failure_;
};

TEST(ScanWindowProperty, EveryCommittedIdIsFetchedOnceAndNoAbortedOne) {
  std::vector<uint64_t> seeds;
  if (const char* one = std::getenv("OUTBOXD_PROPERTY_SEED")) {
    seeds.push_back(std::strtoull(one, nullptr, 10));
  } else {
    for (uint64_t s = 1; s <= 3000; ++s) seeds.push_back(s);
  }
  for (uint64_t seed : seeds) {
    std::string failure = Model(seed).Run(300);
    ASSERT_TRUE(failure.empty()) << "seed " << seed << " (replay: OUTBOXD_PROPERTY_SEED=" << seed
                                 << "): " << failure;
  }
}

}  // namespace
}  // namespace outboxd
