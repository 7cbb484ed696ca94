#include "status_report.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iomanip>
#include <sstream>
#include <vector>

#include "migrate.h"
#include "prepared_store.h"

namespace outboxd {
namespace {

// "outboxd pid 123 on host-a (PostgreSQL backend pid 456 from 10.0.0.5)" from a row of
// (application_name, backend pid, client address); an older outboxd named only "outboxd".
std::string LeaderLine(const pg::PgResult& row) {
  const std::string app(row.Get(0, 0));
  const std::string backend = "PostgreSQL backend pid " + std::string(row.Get(0, 1)) + " from " +
                              std::string(row.Get(0, 2));
  const std::string host_key = " host=", pid_key = " pid=";
  auto host_at = app.find(host_key), pid_at = app.find(pid_key);
  if (app.rfind("outboxd", 0) != 0 || host_at == std::string::npos || pid_at == std::string::npos ||
      pid_at < host_at) {
    return app + " (its own pid unknown; " + backend + ")";
  }
  std::string host = app.substr(host_at + host_key.size(), pid_at - host_at - host_key.size());
  std::string pid = app.substr(pid_at + pid_key.size());
  return "outboxd pid " + pid + " on " + host + " (" + backend + ")";
}

// Seconds as "3.2s", "4m05s", "2h13m", "3d04h".
std::string Age(double seconds) {
  std::ostringstream s;
  if (seconds < 0) seconds = 0;
  auto whole = static_cast<long long>(seconds);
  if (seconds < 60) {
    s << std::fixed << std::setprecision(1) << seconds << "s";
  } else if (whole < 3600) {
    s << whole / 60 << "m" << std::setw(2) << std::setfill('0') << whole % 60 << "s";
  } else if (whole < 86400) {
    s << whole / 3600 << "h" << std::setw(2) << std::setfill('0') << (whole % 3600) / 60 << "m";
  } else {
    s << whole / 86400 << "d" << std::setw(2) << std::setfill('0') << (whole % 86400) / 3600 << "h";
  }
  return s.str();
}

void PrintTable(std::ostream& out, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()));
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    out << "  ";
    for (size_t i = 0; i < row.size(); ++i) {
      out << row[i];
      if (i + 1 < row.size()) out << std::string(widths[i] - row[i].size() + 2, ' ');
    }
    out << "\n";
  }
}

}  // namespace

std::string InstanceApplicationName() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) std::snprintf(host, sizeof(host), "unknown");
  std::string pid = std::to_string(getpid());
  // application_name holds at most 63 bytes: shorten the host name, never the pid.
  std::string name = "outboxd host=" + std::string(host);
  const size_t room = 63 - (std::string(" pid=").size() + pid.size());
  if (name.size() > room) name.resize(room);
  return name + " pid=" + pid;
}

Status WriteStatusReport(pg::Connection& conn, const Config& config, std::ostream& out,
                         int max_prepared_rows) {
  if (Status s = CheckSchemaCurrent(conn); !s.ok()) return s;
  auto backlog = conn.Query(
      "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 "
      "FROM outbox.messages WHERE sent_at IS NULL");
  if (!backlog.ok()) return backlog.status();
  auto dead = conn.Query("SELECT count(*) FROM outbox.dead_letters");
  if (!dead.ok()) return dead.status();
  pg::Params lock;
  lock.Add(config.leadership.lock_id);
  auto leader = conn.Query(
      "SELECT a.application_name, a.pid, coalesce(host(a.client_addr), 'local socket') "
      "FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
      "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
      "(SELECT oid FROM pg_database WHERE datname = current_database()) "
      "AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = $1::bigint",
      lock);
  if (!leader.ok()) return leader.status();

  out << "leader:        "
      << (leader->rows() ? LeaderLine(*leader) : "none (no outboxd instance leads)") << "\n";
  int64_t waiting = backlog->GetInt(0, 0);
  out << "backlog:       " << waiting << " message(s)";
  if (waiting > 0) out << ", oldest " << Age(std::stod(std::string(backlog->Get(0, 1))));
  out << "\n";
  out << "dead letters:  " << dead->GetInt(0, 0) << "\n";

  auto states = conn.Query(
      "SELECT count(*) FILTER (WHERE state = 'prepared'), "
      "count(*) FILTER (WHERE state = 'committed'), "
      "count(*) FILTER (WHERE state = 'rolled_back'), "
      "count(*) FILTER (WHERE state = 'dead_lettered') FROM outbox.prepared");
  if (!states.ok()) return states.status();
  const CheckbackConfig& cb = config.checkback;
  out << "half messages: " << states->GetInt(0, 0) << " prepared, " << states->GetInt(0, 1)
      << " committed, " << states->GetInt(0, 2) << " rolled back, " << states->GetInt(0, 3)
      << " dead-lettered (settled ones are kept " << FormatDuration(cb.settled_retention) << ")\n";
  out << "check-back:    ";
  if (!cb.enabled || cb.checker == CheckerKind::kNone) {
    out << (cb.enabled ? "checker none" : "disabled")
        << ": prepared messages wait for the application\n";
  } else {
    out << "checker " << (cb.checker == CheckerKind::kHttp ? "http" : "sql") << ", first after "
        << FormatDuration(cb.transaction_timeout) << ", every " << FormatDuration(cb.check_interval)
        << ", at most " << cb.max_checks << " checks, then "
        << (cb.final_action == FinalAction::kRollback ? "rollback" : "dead_letter") << "\n";
  }
  if (states->GetInt(0, 0) == 0) return Status::Ok();

  pg::Params p;
  p.Add(IntervalLiteral(cb.transaction_timeout)).Add(int64_t{max_prepared_rows});
  auto rows = conn.Query(
      "SELECT id, topic, coalesce(key, '(no key)'), "
      "extract(epoch FROM now() - created_at)::float8, check_count, "
      "extract(epoch FROM CASE WHEN check_count = 0 "
      "  THEN greatest(next_check_at, created_at + $1::interval) ELSE next_check_at END "
      "  - now())::float8 "
      "FROM outbox.prepared WHERE state = 'prepared' ORDER BY id LIMIT $2",
      p);
  if (!rows.ok()) return rows.status();
  std::vector<std::vector<std::string>> table = {
      {"ID", "TOPIC", "KEY", "AGE", "CHECKS", "NEXT CHECK"}};
  bool checking = cb.enabled && cb.checker != CheckerKind::kNone;
  for (int i = 0; i < rows->rows(); ++i) {
    double next = std::stod(std::string(rows->Get(i, 5)));
    int checks = static_cast<int>(rows->GetInt(i, 4));
    std::string next_text = !checking                 ? "-"
                            : checks >= cb.max_checks ? "final action due"
                            : next <= 0               ? "due"
                                                      : "in " + Age(next);
    table.push_back({std::string(rows->Get(i, 0)), std::string(rows->Get(i, 1)),
                     std::string(rows->Get(i, 2)), Age(std::stod(std::string(rows->Get(i, 3)))),
                     std::to_string(checks), next_text});
  }
  out << "\nprepared messages (oldest first):\n";
  PrintTable(out, table);
  if (states->GetInt(0, 0) > rows->rows()) {
    out << "  ... and " << states->GetInt(0, 0) - rows->rows() << " more\n";
  }
  return Status::Ok();
}

}  // namespace outboxd
