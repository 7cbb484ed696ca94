#include "admin_commands.h"

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

#include "duration.h"
#include "migrate.h"
#include "prepared_store.h"

namespace outboxd {
namespace {

using Json = nlohmann::ordered_json;

std::string Dump(const Json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string JoinIds(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t id : ids) s += (s.empty() ? "" : ", ") + std::to_string(id);
  return s;
}

// Runs `body` inside BEGIN ... COMMIT; rolls back on any error.
template <typename Body>
Status InTransaction(pg::Connection& conn, Body body) {
  if (Status s = conn.Exec("BEGIN"); !s.ok()) return s;
  Status s = body();
  if (!s.ok()) {
    (void)conn.Exec("ROLLBACK");
    return s;
  }
  return conn.Exec("COMMIT");
}

// The put-back generation of a command that puts rows back (schema 010): bumped before any row is
// touched, in the command's transaction, and stamped on each row it puts back. A fetch that does
// not see this command's rows saw a lower generation, so an exactly-once recovery never takes a
// row put back here for the one an earlier checkpoint carried (docs/design.md, section 10).
Result<int64_t> NextPutBackGeneration(pg::Connection& conn) {
  auto r = conn.Query("UPDATE outbox.relay_state SET put_back = put_back + 1 RETURNING put_back");
  if (!r.ok()) return r.status();
  if (r->rows() != 1) return Status::Invalid("outbox.relay_state has no row");
  return r->GetInt(0, 0);
}

// Inside the transaction that put rows back from `lowest` on: the running relay's request to
// rescan from there, and a wake-up in case it sleeps.
Status RequestRescan(pg::Connection& conn, int64_t lowest) {
  pg::Params p;
  p.Add(lowest);
  auto r = conn.Query(
      "UPDATE outbox.relay_state SET rescan_from = least(coalesce(rescan_from, $1), $1)", p);
  if (!r.ok()) return r.status();
  return conn.Exec("SELECT pg_notify('outbox', '')");
}

std::vector<int64_t> IdColumn(const pg::PgResult& r) {
  std::vector<int64_t> ids;
  for (int i = 0; i < r.rows(); ++i) ids.push_back(r.GetInt(i, 0));
  std::sort(ids.begin(), ids.end());
  return ids;
}

// All or nothing: the ids asked for that `done` lacks.
std::vector<int64_t> Missing(const std::vector<int64_t>& asked, const std::vector<int64_t>& done) {
  std::set<int64_t> have(done.begin(), done.end());
  std::vector<int64_t> missing;
  for (int64_t id : std::set<int64_t>(asked.begin(), asked.end())) {
    if (!have.count(id)) missing.push_back(id);
  }
  return missing;
}

}  // namespace

Status ListDeadLetters(pg::Connection& conn, int limit, CommandOutput out) {
  if (Status s = CheckSchemaCurrent(conn); !s.ok()) return s;
  pg::Params p;
  p.Add(int64_t{limit});
  auto r = conn.Query(
      "SELECT id, topic, key, headers::text, "
      "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
      "to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), error, "
      "coalesce(length(payload), -1), count(*) OVER () "
      "FROM outbox.dead_letters ORDER BY id LIMIT $1",
      p);
  if (!r.ok()) return r.status();
  auto total = conn.Query("SELECT count(*) FROM outbox.dead_letters");
  if (!total.ok()) return total.status();
  const int64_t count = total->GetInt(0, 0);
  if (out.json) {
    Json list = Json::array();
    for (int i = 0; i < r->rows(); ++i) {
      Json d;
      d["id"] = r->GetInt(i, 0);
      d["topic"] = std::string(r->Get(i, 1));
      d["key"] = r->IsNull(i, 2) ? Json(nullptr) : Json(std::string(r->Get(i, 2)));
      d["headers"] = Json::parse(std::string(r->Get(i, 3)), nullptr, false);
      d["payload_bytes"] = r->GetInt(i, 7) < 0 ? Json(nullptr) : Json(r->GetInt(i, 7));
      d["created_at"] = std::string(r->Get(i, 4));
      d["failed_at"] = std::string(r->Get(i, 5));
      d["error"] = std::string(r->Get(i, 6));
      list.push_back(std::move(d));
    }
    Json j;
    j["total"] = count;
    j["dead_letters"] = std::move(list);
    out.out << Dump(j);
    return Status::Ok();
  }
  out.out << count << " dead letter(s)";
  if (count > r->rows()) out.out << ", the first " << r->rows() << " shown";
  out.out << "\n";
  for (int i = 0; i < r->rows(); ++i) {
    out.out << "  " << r->Get(i, 0) << "  topic " << r->Get(i, 1) << "  key "
            << (r->IsNull(i, 2) ? "(none)" : std::string(r->Get(i, 2))) << "  failed "
            << r->Get(i, 5) << "\n      " << r->Get(i, 6) << "\n";
  }
  return Status::Ok();
}

Status RequeueDeadLetters(pg::Connection& conn, const std::vector<int64_t>& ids, bool all,
                          CommandOutput out) {
  if (Status s = CheckSchemaCurrent(conn); !s.ok()) return s;
  std::vector<int64_t> moved;
  Status s = InTransaction(conn, [&]() -> Status {
    auto generation = NextPutBackGeneration(conn);
    if (!generation.ok()) return generation.status();
    pg::Params p;
    p.Add(pg::ArrayLiteral(ids)).Add(std::string(all ? "true" : "false")).Add(*generation);
    // In id order, with the original id (the outbox-id header) and created_at.
    auto r = conn.Query(R"sql(
WITH moved AS (DELETE FROM outbox.dead_letters WHERE $2::boolean OR id = ANY($1::bigint[])
               RETURNING id, topic, key, payload, headers, created_at)
INSERT INTO outbox.messages (id, topic, key, payload, headers, created_at, put_back)
SELECT id, topic, key, payload, headers, created_at, $3 FROM moved ORDER BY id
RETURNING id)sql",
                        p);
    if (!r.ok()) return r.status();
    moved = IdColumn(*r);
    if (!all) {
      if (auto missing = Missing(ids, moved); !missing.empty()) {
        return Status::Invalid("not in outbox.dead_letters: " + JoinIds(missing) +
                               " (nothing was requeued)");
      }
    }
    if (moved.empty()) return Status::Ok();
    return RequestRescan(conn, moved.front());
  });
  if (!s.ok()) return s;
  if (out.json) {
    Json j;
    j["requeued"] = moved;
    out.out << Dump(j);
  } else {
    out.out << "requeued " << moved.size() << " dead letter(s)"
            << (moved.empty() ? "" : ": " + JoinIds(moved)) << "\n";
  }
  return Status::Ok();
}

Status DropDeadLetters(pg::Connection& conn, const std::vector<int64_t>& ids, CommandOutput out) {
  if (Status s = CheckSchemaCurrent(conn); !s.ok()) return s;
  std::vector<int64_t> dropped;
  Status s = InTransaction(conn, [&]() -> Status {
    pg::Params p;
    p.Add(pg::ArrayLiteral(ids));
    auto r =
        conn.Query("DELETE FROM outbox.dead_letters WHERE id = ANY($1::bigint[]) RETURNING id", p);
    if (!r.ok()) return r.status();
    dropped = IdColumn(*r);
    if (auto missing = Missing(ids, dropped); !missing.empty()) {
      return Status::Invalid("not in outbox.dead_letters: " + JoinIds(missing) +
                             " (nothing was dropped)");
    }
    return Status::Ok();
  });
  if (!s.ok()) return s;
  if (out.json) {
    Json j;
    j["dropped"] = dropped;
    out.out << Dump(j);
  } else {
    out.out << "dropped " << dropped.size() << " dead letter(s): " << JoinIds(dropped) << "\n";
  }
  return Status::Ok();
}

Status Replay(pg::Connection& conn, const Config& config, const ReplayRange& range,
              CommandOutput out) {
  if (config.relay.on_sent != OnSent::kRetain) {
    return Status::Invalid(
        "replay needs relay.on_sent = \"retain\": with \"delete\" sent rows are gone");
  }
  if (!range.from_id && !range.since) return Status::Invalid("replay: give --since or --from-id");
  if (Status s = CheckSchemaCurrent(conn); !s.ok()) return s;
  pg::Params p;
  p.Add(range.from_id.value_or(INT64_MIN)).Add(range.to_id.value_or(INT64_MAX));
  std::string since_sql = "true";
  if (range.since) {
    if (auto d = ParseDuration(*range.since)) {
      p.Add(IntervalLiteral(*d));
      since_sql = "created_at >= now() - $3::interval";
    } else {
      p.Add(*range.since);
      since_sql = "created_at >= $3::timestamptz";
    }
  }
  int64_t count = 0, lowest = 0, highest = 0;
  Status s = InTransaction(conn, [&]() -> Status {
    auto generation = NextPutBackGeneration(conn);
    if (!generation.ok()) return generation.status();
    pg::Params with_generation = p;
    with_generation.Add(*generation);
    const std::string generation_param = range.since ? "$4" : "$3";
    auto r = conn.Query(
        "WITH r AS (UPDATE outbox.messages SET sent_at = NULL, put_back = " + generation_param +
            "::bigint WHERE sent_at IS NOT NULL "
            "AND id BETWEEN $1 AND $2 AND " +
            since_sql +
            " RETURNING id) SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM r",
        with_generation);
    if (!r.ok()) return r.status();
    count = r->GetInt(0, 0);
    lowest = r->GetInt(0, 1);
    highest = r->GetInt(0, 2);
    if (count == 0) return Status::Ok();
    return RequestRescan(conn, lowest);
  });
  if (!s.ok()) return s;
  if (out.json) {
    Json j;
    j["replayed"] = count;
    j["from_id"] = count ? Json(lowest) : Json(nullptr);
    j["to_id"] = count ? Json(highest) : Json(nullptr);
    out.out << Dump(j);
  } else if (count == 0) {
    out.out << "replay: no sent row matches (rows older than relay.retention are gone)\n";
  } else {
    out.out << "replay: " << count << " sent row(s), ids " << lowest << " to " << highest
            << ", will be sent again\n";
  }
  return Status::Ok();
}

Status WriteStatusJson(pg::Connection& conn, const Config& config, std::ostream& out) {
  if (Status s = CheckSchemaCurrent(conn); !s.ok()) return s;
  pg::Params lock;
  lock.Add(config.leadership.lock_id);
  auto r = conn.Query(R"sql(
SELECT
  (SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL),
  coalesce((SELECT extract(epoch FROM now() - min(created_at))
              FROM outbox.messages WHERE sent_at IS NULL), 0)::float8,
  (SELECT count(*) FROM outbox.dead_letters),
  (SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((l.classid::bigint << 32) | l.objid::bigint) = $1::bigint LIMIT 1),
  (SELECT count(*) FROM outbox.prepared WHERE state = 'prepared'),
  (SELECT count(*) FROM outbox.prepared WHERE state = 'committed'),
  (SELECT count(*) FROM outbox.prepared WHERE state = 'rolled_back'),
  (SELECT count(*) FROM outbox.prepared WHERE state = 'dead_lettered'),
  (SELECT rescan_from FROM outbox.relay_state))sql",
                      lock);
  if (!r.ok()) return r.status();
  Json j;
  j["leader"] = r->IsNull(0, 3) ? Json(nullptr) : Json(std::string(r->Get(0, 3)));
  j["backlog"] = r->GetInt(0, 0);
  j["oldest_unsent_age_seconds"] = std::stod(std::string(r->Get(0, 1)));
  j["dead_letters"] = r->GetInt(0, 2);
  j["half_messages"] = {{"prepared", r->GetInt(0, 4)},
                        {"committed", r->GetInt(0, 5)},
                        {"rolled_back", r->GetInt(0, 6)},
                        {"dead_lettered", r->GetInt(0, 7)}};
  j["rescan_requested_from"] = r->IsNull(0, 8) ? Json(nullptr) : Json(r->GetInt(0, 8));
  out << Dump(j);
  return Status::Ok();
}

}  // namespace outboxd
