#include "scan_window.h"

#include <algorithm>
#include <charconv>

namespace outboxd {

std::optional<Snapshot> Snapshot::Parse(std::string_view text) {
  Snapshot s;
  auto number = [&](std::string_view& in, uint64_t* out) {
    auto [ptr, ec] = std::from_chars(in.data(), in.data() + in.size(), *out);
    if (ec != std::errc()) return false;
    in.remove_prefix(ptr - in.data());
    return true;
  };
  std::string_view in = text;
  if (!number(in, &s.xmin) || in.empty() || in[0] != ':') return std::nullopt;
  in.remove_prefix(1);
  if (!number(in, &s.xmax) || in.empty() || in[0] != ':') return std::nullopt;
  in.remove_prefix(1);
  while (!in.empty()) {
    uint64_t xid;
    if (!number(in, &xid)) return std::nullopt;
    s.running.push_back(xid);
    if (!in.empty()) {
      if (in[0] != ',') return std::nullopt;
      in.remove_prefix(1);
    }
  }
  std::sort(s.running.begin(), s.running.end());
  s.next_xid = s.xmax;
  return s;
}

bool Snapshot::MayRun(uint64_t xid) const {
  return xid >= xmax || std::binary_search(running.begin(), running.end(), xid);
}

void ScanWindow::Carve(int64_t id) {
  for (size_t i = 0; i < gaps_.size(); ++i) {
    Gap& g = gaps_[i];
    if (id < g.first || id > g.last) continue;
    if (g.first == g.last) {
      gaps_.erase(gaps_.begin() + static_cast<long>(i));
    } else if (id == g.first) {
      ++g.first;
    } else if (id == g.last) {
      --g.last;
    } else {
      // Both halves keep every owner and the open xid range: any of them may commit either.
      Gap upper{id + 1, g.last, g.owners, g.open_from, g.open_to};
      g.last = id - 1;
      gaps_.insert(gaps_.begin() + static_cast<long>(i) + 1, std::move(upper));
    }
    return;
  }
}

bool ScanWindow::Apply(const Snapshot& snap, const std::vector<int64_t>& late_ids, bool late_full,
                       const std::vector<int64_t>& fresh_ids) {
  for (int64_t id : late_ids) Carve(id);
  if (late_full) return false;  // more late rows wait; keep every gap and owner as it is

  // Owners that finished before `snap` have shown all their rows to this fetch.
  for (Gap& g : gaps_) {
    std::erase_if(g.owners, [&](uint64_t xid) { return !snap.MayRun(xid); });
    if (g.open_from < g.open_to && g.open_from < snap.xmax) {
      // The part of the open range below xmax is now known: keep only the listed ones.
      for (uint64_t xid : snap.running) {
        if (xid >= g.open_from && xid < g.open_to) g.owners.push_back(xid);
      }
      g.open_from = std::min(snap.xmax, g.open_to);
    }
  }
  std::erase_if(gaps_, [](const Gap& g) { return g.settled(); });

  if (!snap.running.empty() || snap.next_xid > snap.xmax) {
    int64_t expected = hi_ + 1;
    for (int64_t id : fresh_ids) {
      if (id > expected) {
        gaps_.push_back(Gap{expected, id - 1, snap.running, snap.xmax, snap.next_xid});
      }
      expected = id + 1;
    }
  }
  if (!fresh_ids.empty()) hi_ = fresh_ids.back();
  return true;
}

void ScanWindow::Rewind(int64_t first_unfetched) {
  if (first_unfetched - 1 >= hi_) return;
  hi_ = first_unfetched - 1;
  std::erase_if(gaps_, [&](const Gap& g) { return g.first > hi_; });
  for (Gap& g : gaps_) g.last = std::min(g.last, hi_);
}

void ScanWindow::Reset() {
  hi_ = 0;
  gaps_.clear();
}

std::string ScanWindow::GapStarts() const {
  std::string out = "{";
  for (const Gap& g : gaps_) out += (out.size() > 1 ? "," : "") + std::to_string(g.first);
  return out + "}";
}

std::string ScanWindow::GapEnds() const {
  std::string out = "{";
  for (const Gap& g : gaps_) out += (out.size() > 1 ? "," : "") + std::to_string(g.last);
  return out + "}";
}

}  // namespace outboxd
