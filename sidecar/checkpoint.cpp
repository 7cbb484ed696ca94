#include "checkpoint.h"

#include <algorithm>
#include <charconv>
#include <string_view>

namespace outboxd {

namespace {

constexpr std::string_view kMagic = "outboxd-checkpoint v1";
// A range wider than this is refused: a checkpoint carries one transaction's rows.
constexpr int64_t kMaxRange = 10'000'000;

void Normalize(std::vector<int64_t>* ids) {
  std::sort(ids->begin(), ids->end());
  ids->erase(std::unique(ids->begin(), ids->end()), ids->end());
}

bool ParseId(std::string_view s, int64_t* out) {
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

bool ParseRanges(std::string_view text, std::vector<int64_t>* out) {
  if (text.empty()) return true;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string_view part = text.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    // A range "a-b"; ids may be negative only in theory (bigserial starts at 1): refuse them.
    size_t dash = part.find('-');
    int64_t first = 0, last = 0;
    if (dash == std::string_view::npos) {
      if (!ParseId(part, &first)) return false;
      last = first;
    } else if (!ParseId(part.substr(0, dash), &first) || !ParseId(part.substr(dash + 1), &last)) {
      return false;
    }
    if (first < 0 || last < first || last - first > kMaxRange) return false;
    for (int64_t id = first; id <= last; ++id) out->push_back(id);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return true;
}

}  // namespace

std::string IdRanges(const std::vector<int64_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(ids[i]);
    if (j > i) out += '-' + std::to_string(ids[j]);
    i = j + 1;
  }
  return out;
}

std::string EncodeCheckpoint(Checkpoint c) {
  Normalize(&c.sent);
  Normalize(&c.dead);
  std::string text = std::string(kMagic) + " outbox=" + c.outbox + " sent=" + IdRanges(c.sent) +
                     " dead=" + IdRanges(c.dead);
  if (c.put_back != 0) text += " put_back=" + std::to_string(c.put_back);
  return text;
}

Result<Checkpoint> ParseCheckpoint(const std::string& text) {
  std::string_view t(text);
  auto invalid = [&] { return Status::Invalid("not an outboxd checkpoint: \"" + text + "\""); };
  if (t.substr(0, kMagic.size()) != kMagic) return invalid();
  t.remove_prefix(kMagic.size());
  constexpr std::string_view kOutbox = " outbox=", kSent = " sent=", kDead = " dead=",
                             kPutBack = " put_back=";
  if (t.substr(0, kOutbox.size()) != kOutbox) return invalid();
  t.remove_prefix(kOutbox.size());
  size_t sent_at = t.find(kSent);
  if (sent_at == std::string_view::npos) return invalid();
  Checkpoint c;
  c.outbox = std::string(t.substr(0, sent_at));
  if (c.outbox.find(' ') != std::string::npos) return invalid();
  t.remove_prefix(sent_at + kSent.size());
  size_t dead_at = t.find(kDead);
  if (dead_at == std::string_view::npos) return invalid();
  std::string_view dead = t.substr(dead_at + kDead.size());
  // Optional (a record written before schema 010, or without put-backs): generation 0.
  size_t put_back_at = dead.find(kPutBack);
  if (put_back_at != std::string_view::npos) {
    if (!ParseId(dead.substr(put_back_at + kPutBack.size()), &c.put_back)) return invalid();
    dead = dead.substr(0, put_back_at);
  }
  if (!ParseRanges(t.substr(0, dead_at), &c.sent) || !ParseRanges(dead, &c.dead)) {
    return invalid();
  }
  Normalize(&c.sent);
  Normalize(&c.dead);
  return c;
}

}  // namespace outboxd
