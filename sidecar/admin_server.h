// AdminServer: the admin HTTP listener ([admin] listen): Prometheus /metrics, /healthz, /readyz.
// It runs on its own threads (cpp-httplib's, a small pool) and never touches the relay's state
// but through lock-free reads (Relay::stats(), Relay::metrics(), CheckBack::stats()). What only
// the database knows (backlog, oldest unsent age, dead letters, half messages by state, the
// oldest transaction that holds the scan floor back, whether any instance leads) is queried on
// the listener's own PostgreSQL connection, each query bounded by [admin] query_timeout; the
// relay thread never runs these queries. Requests: GET (or HEAD) only, no body, small headers;
// anything else is refused with a 4xx status and the connection closed.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "checkback.h"
#include "config.h"
#include "pg/connection.h"
#include "relay.h"
#include "status.h"

namespace httplib {
class Server;
}

namespace outboxd {

class AdminServer {
 public:
  // `checkback` may be null (check-back disabled). Both must outlive the server.
  AdminServer(const Config& config, const Relay& relay, const CheckBack* checkback);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds [admin] listen and starts serving; an error if the address cannot be bound.
  Status Start();
  void Stop();
  // The bound port (useful with port 0); 0 before Start.
  int port() const { return port_; }

  // The bodies the endpoints serve (also for tests): status code and body.
  std::string Metrics();
  std::pair<int, std::string> Health() const;
  std::pair<int, std::string> Readiness() const;

 private:
  // The database gauges, appended to `out`; false (and nothing appended) when the query failed.
  bool DatabaseMetrics(std::string* out);

  // Constant after construction.
  const Config& config_;
  const Relay& relay_;
  const CheckBack* checkback_;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  std::mutex db_mu_;
  std::optional<pg::Connection> db_;  // GUARDED_BY(db_mu_): the gauges' own connection
};

}  // namespace outboxd
