// RAII over libpq: Connection owns a PGconn, PgResult owns a PGresult. libpq errors are mapped to
// Status in one place (Connection::Check). Move-only; one thread uses a Connection at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <libpq-fe.h>

#include "duration.h"
#include "status.h"

namespace outboxd::pg {

struct ConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnDeleter>;
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

class PgResult {
 public:
  explicit PgResult(ResultPtr r) : r_(std::move(r)) {}
  int rows() const { return PQntuples(r_.get()); }
  bool IsNull(int row, int col) const { return PQgetisnull(r_.get(), row, col) != 0; }
  std::string_view Get(int row, int col) const {
    return {PQgetvalue(r_.get(), row, col), static_cast<size_t>(PQgetlength(r_.get(), row, col))};
  }
  // A binary-format int8 or int4 column.
  int64_t GetBinaryInt(int row, int col) const;
  // A text-format integer column.
  int64_t GetInt(int row, int col) const;
  // Rows touched by INSERT/UPDATE/DELETE.
  int64_t Affected() const;

 private:
  ResultPtr r_;
};

// A parameter list for PQexecParams / PQexecPrepared: all text format; nullopt is SQL NULL.
class Params {
 public:
  Params& Add(std::string value);
  Params& AddNull();
  Params& Add(int64_t value) { return Add(std::to_string(value)); }
  int size() const { return static_cast<int>(values_.size()); }
  std::vector<const char*> Pointers() const;

 private:
  std::vector<std::string> values_;
  std::vector<bool> nulls_;
};

// How fast each end of a connection gives up on a dead peer: TCP keepalives (a probe after
// `keepalive_idle` of silence, then every `keepalive_interval`, `keepalive_count` unanswered
// probes end it) and TCP_USER_TIMEOUT (data unacknowledged this long ends it).
struct TcpSettings {
  Millis keepalive_idle{4000};
  Millis keepalive_interval{2000};
  int keepalive_count = 3;
  Millis user_timeout{10'000};
};

class Connection {
 public:
  // Connects (blocking, bounded by connect_timeout) with `tcp` on both ends: libpq's own socket
  // (settings in `conninfo` take precedence) and the server's (tcp_keepalives_* and
  // tcp_user_timeout, set for this session), so that PostgreSQL too notices a dead client in
  // seconds, not hours, and ends its session.
  static Result<Connection> Open(const std::string& conninfo, const std::string& application_name,
                                 const TcpSettings& tcp = TcpSettings());

  Connection(Connection&&) = default;
  Connection& operator=(Connection&&) = default;

  // Runs one or more statements without parameters.
  Status Exec(const std::string& sql);
  // Runs a statement with text parameters; results in text (binary_results = false) or binary.
  Result<PgResult> Query(const std::string& sql, const Params& params = Params(),
                         bool binary_results = false);
  // Prepares once per connection; ExecPrepared runs it.
  Status Prepare(const std::string& name, const std::string& sql);
  // The same, with the parameters' types given (a query need not use every parameter).
  Status Prepare(const std::string& name, const std::string& sql, const std::vector<Oid>& types);
  Result<PgResult> ExecPrepared(const std::string& name, const Params& params,
                                bool binary_results = false);

  // Pipeline mode (libpq 14+): several prepared statements sent at once, answered in order, so
  // the caller can work while the server does. Send, then poll PipelineReady (non-blocking with a
  // zero timeout), then FinishPipeline for the results (it waits if needed). Nothing else may run
  // on the connection in between.
  struct Statement {
    std::string name;
    Params params;
    bool binary_results = false;
  };
  Status SendPipeline(const std::vector<Statement>& statements);
  bool PipelineReady(Millis timeout);
  Result<std::vector<PgResult>> FinishPipeline();

  // Waits until the server sent something (a notification) or the timeout passed, then reads it.
  // Returns the number of notifications received; an error if the connection broke.
  Result<int> WaitForNotifications(Millis timeout);
  // Notifications already received, without waiting.
  Result<int> DrainNotifications();

  bool healthy() const { return conn_ && PQstatus(conn_.get()) == CONNECTION_OK; }
  bool in_pipeline() const { return in_pipeline_; }
  PGconn* raw() { return conn_.get(); }

 private:
  explicit Connection(ConnPtr conn) : conn_(std::move(conn)) {}
  // Maps a libpq result to a Status: OK statuses pass, the rest carry SQLSTATE and message.
  Result<PgResult> Check(PGresult* raw);

  ConnPtr conn_;
  // The pipeline in progress: results read so far, and whether its sync point arrived.
  std::vector<PgResult> pipeline_results_;
  std::string pipeline_error_;
  bool pipeline_done_ = false;
  int pipeline_syncs_expected_ = 0;  // one sync point per statement
  bool in_pipeline_ = false;
};

// "{1,2,3}": a text array literal for `= ANY($1::bigint[])`.
std::string ArrayLiteral(const std::vector<int64_t>& values);
// libpq error text without the trailing newline.
std::string Trim(std::string s);

}  // namespace outboxd::pg
