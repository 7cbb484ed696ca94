#include "connection.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

namespace outboxd::pg {

int64_t PgResult::GetBinaryInt(int row, int col) const {
  const auto* p = reinterpret_cast<const unsigned char*>(PQgetvalue(r_.get(), row, col));
  int len = PQgetlength(r_.get(), row, col);
  uint64_t v = 0;
  for (int i = 0; i < len; ++i) v = (v << 8) | p[i];
  if (len == 4) return static_cast<int32_t>(static_cast<uint32_t>(v));
  return static_cast<int64_t>(v);
}

int64_t PgResult::GetInt(int row, int col) const { return std::stoll(std::string(Get(row, col))); }

int64_t PgResult::Affected() const {
  const char* n = PQcmdTuples(r_.get());
  return (n == nullptr || *n == '\0') ? 0 : std::stoll(n);
}

Params& Params::Add(std::string value) {
  values_.push_back(std::move(value));
  nulls_.push_back(false);
  return *this;
}

Params& Params::AddNull() {
  values_.emplace_back();
  nulls_.push_back(true);
  return *this;
}

std::vector<const char*> Params::Pointers() const {
  std::vector<const char*> out;
  out.reserve(values_.size());
  for (size_t i = 0; i < values_.size(); ++i)
    out.push_back(nulls_[i] ? nullptr : values_[i].c_str());
  return out;
}

// libpq's messages end in a newline and may span lines ("...failed: Connection refused\n\tIs the
// server running..."): one log line each, the parts joined with "; ".
std::string OneLine(const std::string& s) {
  std::string out;
  bool pending_break = false;
  for (char c : s) {
    if (c == '\n' || c == '\r') {
      pending_break = true;
    } else if (pending_break && (c == '\t' || c == ' ')) {
      continue;
    } else {
      if (pending_break && !out.empty()) out += "; ";
      pending_break = false;
      out += c;
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

std::string ArrayLiteral(const std::vector<int64_t>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(values[i]);
  }
  out += '}';
  return out;
}

Result<Connection> Connection::Open(const std::string& conninfo,
                                    const std::string& application_name, const TcpSettings& tcp) {
  auto seconds = [](Millis d) { return std::to_string(std::max<int64_t>(1, d.count() / 1000)); };
  const std::string idle = seconds(tcp.keepalive_idle);
  const std::string interval = seconds(tcp.keepalive_interval);
  const std::string count = std::to_string(tcp.keepalive_count);
  const std::string user_timeout = std::to_string(tcp.user_timeout.count());
  // Defaults first; the user's conninfo (expanded from "dbname") overrides any of them.
  const char* keys[] = {"connect_timeout",     "keepalives",       "keepalives_idle",
                        "keepalives_interval", "keepalives_count", "tcp_user_timeout",
                        "application_name",    "dbname",           nullptr};
  const char* values[] = {"10",
                          "1",
                          idle.c_str(),
                          interval.c_str(),
                          count.c_str(),
                          user_timeout.c_str(),
                          application_name.c_str(),
                          conninfo.c_str(),
                          nullptr};
  ConnPtr conn(PQconnectdbParams(keys, values, /*expand_dbname=*/1));
  if (!conn) return Status::Unavailable("PostgreSQL: out of memory");
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return Status::Unavailable("PostgreSQL: " + OneLine(PQerrorMessage(conn.get())));
  }
  // Server notices (e.g. "already exists, skipping") go to the debug log, not to stderr.
  PQsetNoticeProcessor(
      conn.get(),
      [](void*, const char* message) { spdlog::debug("PostgreSQL: {}", OneLine(message)); },
      nullptr);
  Connection c(std::move(conn));
  // The server's end of the socket: without these it uses the OS defaults (first keepalive probe
  // after 2 hours), so a client whose host or network died keeps its session, and its locks,
  // that long. Ignored by the server on a Unix socket.
  Status s =
      c.Exec("SET tcp_keepalives_idle = " + idle + "; SET tcp_keepalives_interval = " + interval +
             "; SET tcp_keepalives_count = " + count + "; SET tcp_user_timeout = " + user_timeout);
  if (!s.ok()) return s;
  // No JIT compilation: PostgreSQL compiles (and, above jit_inline_above_cost, inlines and
  // optimizes) a statement whose estimated cost passes jit_above_cost, at every execution, and a
  // prepared statement's generic plan keeps the estimate it was made with. outboxd's statements
  // read a few rows by index; compiling the fetch took 1.2 s of CPU against its 0.4 ms run, so a
  // plan that looks expensive made the relay deliver one batch per second: enable_seqscan = off
  // adds 1e10 to a plan that must scan outbox.relay_state
  // (tests/integration/relay_session_test.cpp), and retain mode's cleanup estimates more than
  // 100,000 at about 3 million retained rows.
  s = c.Exec("SET jit = off");
  if (!s.ok()) return s;
  return c;
}

Result<PgResult> Connection::Check(PGresult* raw) {
  ResultPtr r(raw);
  if (!r) return Status::Unavailable("PostgreSQL: " + OneLine(PQerrorMessage(conn_.get())));
  ExecStatusType st = PQresultStatus(r.get());
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return PgResult(std::move(r));
  const char* state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
  std::string msg = "PostgreSQL: " + OneLine(PQresultErrorMessage(r.get()));
  if (state != nullptr) msg += " (SQLSTATE " + std::string(state) + ")";
  // A broken connection, a server shutting down (57P*) or a connection failure (08*) is transient.
  if (!healthy() ||
      (state && (std::strncmp(state, "57P", 3) == 0 || std::strncmp(state, "08", 2) == 0))) {
    return Status::Unavailable(msg);
  }
  return Status::Invalid(msg);
}

Status Connection::Exec(const std::string& sql) {
  auto r = Check(PQexec(conn_.get(), sql.c_str()));
  return r.status();
}

Result<PgResult> Connection::Query(const std::string& sql, const Params& params,
                                   bool binary_results) {
  auto ptrs = params.Pointers();
  return Check(PQexecParams(conn_.get(), sql.c_str(), params.size(), nullptr, ptrs.data(), nullptr,
                            nullptr, binary_results ? 1 : 0));
}

Status Connection::Prepare(const std::string& name, const std::string& sql) {
  return Check(PQprepare(conn_.get(), name.c_str(), sql.c_str(), 0, nullptr)).status();
}

Status Connection::Prepare(const std::string& name, const std::string& sql,
                           const std::vector<Oid>& types) {
  return Check(PQprepare(conn_.get(), name.c_str(), sql.c_str(), static_cast<int>(types.size()),
                         types.data()))
      .status();
}

Result<PgResult> Connection::ExecPrepared(const std::string& name, const Params& params,
                                          bool binary_results) {
  auto ptrs = params.Pointers();
  return Check(PQexecPrepared(conn_.get(), name.c_str(), params.size(), ptrs.data(), nullptr,
                              nullptr, binary_results ? 1 : 0));
}

Status Connection::SendPipeline(const std::vector<Statement>& statements) {
  pipeline_results_.clear();
  pipeline_error_.clear();
  pipeline_done_ = false;
  pipeline_syncs_expected_ = 0;
  if (PQenterPipelineMode(conn_.get()) != 1) {
    return Status::Unavailable("PostgreSQL: cannot enter pipeline mode: " +
                               OneLine(PQerrorMessage(conn_.get())));
  }
  in_pipeline_ = true;
  for (const Statement& st : statements) {
    auto ptrs = st.params.Pointers();
    // A sync point after each statement: each runs in its own implicit transaction, as it would
    // outside a pipeline. (In one shared transaction a DELETE's xid would become the "now" of a
    // later statement's age(), which the scan window relies on to read the next xid.)
    if (PQsendQueryPrepared(conn_.get(), st.name.c_str(), st.params.size(), ptrs.data(), nullptr,
                            nullptr, st.binary_results ? 1 : 0) != 1 ||
        PQpipelineSync(conn_.get()) != 1) {
      return Status::Unavailable("PostgreSQL: " + OneLine(PQerrorMessage(conn_.get())));
    }
    ++pipeline_syncs_expected_;
  }
  if (PQflush(conn_.get()) != 0) {
    return Status::Unavailable("PostgreSQL: " + OneLine(PQerrorMessage(conn_.get())));
  }
  return Status::Ok();
}

bool Connection::PipelineReady(Millis timeout) {
  for (int pass = 0; pass < 2 && !pipeline_done_; ++pass) {
    if (PQconsumeInput(conn_.get()) == 0) {
      pipeline_error_ = "PostgreSQL: " + OneLine(PQerrorMessage(conn_.get()));
      pipeline_done_ = true;
      break;
    }
    while (!pipeline_done_ && PQisBusy(conn_.get()) == 0) {
      PGresult* raw = PQgetResult(conn_.get());
      if (raw == nullptr) continue;  // the end of one statement's results
      if (PQresultStatus(raw) == PGRES_PIPELINE_SYNC) {
        PQclear(raw);
        pipeline_done_ = --pipeline_syncs_expected_ <= 0;
        continue;
      }
      auto r = Check(raw);
      if (r.ok()) {
        pipeline_results_.push_back(std::move(*r));
      } else if (pipeline_error_.empty()) {
        pipeline_error_ = r.status().message();
      }
    }
    if (pipeline_done_ || pass == 1 || timeout.count() == 0) break;
    pollfd pfd{PQsocket(conn_.get()), POLLIN, 0};
    ::poll(&pfd, 1, static_cast<int>(timeout.count()));
  }
  return pipeline_done_;
}

Result<std::vector<PgResult>> Connection::FinishPipeline() {
  while (!PipelineReady(Millis(1000))) {
  }
  if (in_pipeline_) {
    PQexitPipelineMode(conn_.get());
    in_pipeline_ = false;
  }
  if (!pipeline_error_.empty()) {
    bool broken = !healthy();
    return broken ? Status::Unavailable(pipeline_error_) : Status::Invalid(pipeline_error_);
  }
  return std::move(pipeline_results_);
}

Result<int> Connection::DrainNotifications() {
  if (PQconsumeInput(conn_.get()) == 0) {
    return Status::Unavailable("PostgreSQL: " + OneLine(PQerrorMessage(conn_.get())));
  }
  int count = 0;
  while (PGnotify* n = PQnotifies(conn_.get())) {
    PQfreemem(n);
    ++count;
  }
  return count;
}

Result<int> Connection::WaitForNotifications(Millis timeout) {
  auto drained = DrainNotifications();
  if (!drained.ok() || *drained > 0) return drained;
  pollfd pfd{PQsocket(conn_.get()), POLLIN, 0};
  int rc = ::poll(&pfd, 1, static_cast<int>(timeout.count()));
  if (rc < 0 && errno != EINTR) return Status::Unavailable(std::string("poll: ") + strerror(errno));
  return DrainNotifications();
}

}  // namespace outboxd::pg
