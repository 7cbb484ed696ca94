#include "admin_server.h"

#include <httplib.h>
#include <librdkafka/rdkafka.h>
#include <sys/socket.h>

#include <chrono>
#include <thread>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "metrics.h"
#include "secrets.h"

namespace outboxd {
namespace {

constexpr size_t kMaxHeaders = 64;         // more is refused (431)
constexpr size_t kMaxHeaderBytes = 8192;   // all header names and values together
constexpr int kThreads = 2;                // requests served at once
constexpr int kIoTimeoutSeconds = 2;       // a client that sends or reads slower is dropped
constexpr int64_t kStuckAfterMs = 30'000;  // the relay thread silent this long: not live

std::string ErrorName(int code) {
  if (code == 0) return "UNKNOWN";
  return rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(code));
}

std::string StateName(RelayMetrics::State s) {
  switch (s) {
    case RelayMetrics::State::kLeading:
      return "leader";
    case RelayMetrics::State::kStandby:
      return "standby";
    case RelayMetrics::State::kUnavailable:
      return "postgres_unavailable";
    case RelayMetrics::State::kStarting:
      break;
  }
  return "starting";
}

std::string JsonBody(const nlohmann::json& j) { return j.dump() + "\n"; }

}  // namespace

AdminServer::AdminServer(const Config& config, const Relay& relay, const CheckBack* checkback)
    : config_(config), relay_(relay), checkback_(checkback) {}

AdminServer::~AdminServer() { Stop(); }

Status AdminServer::Start() {
  auto address = ParseListenAddress(config_.admin.listen);
  if (!address) return Status::Invalid("admin.listen: not host:port: " + config_.admin.listen);
  server_ = std::make_unique<httplib::Server>();
  httplib::Server& s = *server_;
  s.new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  s.set_read_timeout(kIoTimeoutSeconds, 0);
  s.set_write_timeout(kIoTimeoutSeconds, 0);
  s.set_keep_alive_timeout(kIoTimeoutSeconds);
  s.set_keep_alive_max_count(10);
  s.set_payload_max_length(0);  // no endpoint takes a body
  // SO_REUSEADDR (a restart may bind at once) but not cpp-httplib's default SO_REUSEPORT, with
  // which a second outboxd on this host would share the port and answer half the scrapes.
  s.set_socket_options([](int fd) {
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  // Refuse what no endpoint serves before any handler runs: other methods, a body, large headers.
  s.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    size_t bytes = 0;
    for (const auto& [name, value] : req.headers) bytes += name.size() + value.size();
    if (req.headers.size() > kMaxHeaders || bytes > kMaxHeaderBytes) {
      res.status = 431;
    } else if (req.method != "GET" && req.method != "HEAD") {
      res.status = 405;
      res.set_header("Allow", "GET, HEAD");
    } else if (!req.body.empty() || req.has_header("Transfer-Encoding") ||
               (req.has_header("Content-Length") &&
                req.get_header_value("Content-Length") != "0")) {
      // (cpp-httplib does not read a GET's body: refuse it here, and close the connection so
      // that the unread body is never taken for the next request)
      res.status = 413;
    } else {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    res.set_header("Connection", "close");
    res.set_content("refused\n", "text/plain");
    return httplib::Server::HandlerResponse::Handled;
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(Metrics(), "text/plain; version=0.0.4; charset=utf-8");
  });
  s.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
    auto [code, body] = Health();
    res.status = code;
    res.set_content(body, "application/json");
  });
  s.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    auto [code, body] = Readiness();
    res.status = code;
    res.set_content(body, "application/json");
  });
  s.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) res.set_content(std::to_string(res.status) + "\n", "text/plain");
  });

  if (address->port == 0) {
    port_ = s.bind_to_any_port(address->host);
    if (port_ <= 0) port_ = 0;
  } else if (s.bind_to_port(address->host, address->port)) {
    port_ = address->port;
  }
  if (port_ == 0) {
    server_.reset();
    // Most often another outboxd (a demo, a second instance) holds the default port: say which
    // setting moves it.
    return Status::Unavailable(
        "admin listener: cannot listen on " + config_.admin.listen +
        " (address in use, or not an address of this host): set [admin] listen in " +
        (config_.path.empty() ? std::string("the configuration") : config_.path) +
        " to a free host:port (\"127.0.0.1:0\" picks one) or to \"\" to turn it off");
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  // cpp-httplib's stop() does nothing before the loop runs: a Stop() right after Start() would
  // leave the thread listening and the join waiting forever. Wait until it runs.
  for (int i = 0; i < 5000 && !server_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  spdlog::info("admin listener on {}:{} (/metrics, /healthz, /readyz)", address->host, port_);
  return Status::Ok();
}

void AdminServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

std::pair<int, std::string> AdminServer::Health() const {
  const int64_t age_ms = SteadyNowMs() - relay_.metrics().heartbeat_ms.load();
  nlohmann::json j;
  j["relay_heartbeat_age_seconds"] = static_cast<double>(age_ms) / 1000.0;
  if (age_ms > kStuckAfterMs) {
    j["status"] = "failing";
    j["reason"] = "the relay thread has not looped for " + std::to_string(age_ms / 1000) + "s";
    return {503, JsonBody(j)};
  }
  j["status"] = "ok";
  return {200, JsonBody(j)};
}

std::pair<int, std::string> AdminServer::Readiness() const {
  const RelayMetrics& m = relay_.metrics();
  const RelayMetrics::State state = m.state_value();
  nlohmann::json j;
  j["role"] = StateName(state);
  auto answer = [&](bool ready, const std::string& reason) -> std::pair<int, std::string> {
    j["status"] = ready ? "ready" : "not ready";
    if (!reason.empty()) j["reason"] = reason;
    return {ready ? 200 : 503, JsonBody(j)};
  };
  switch (state) {
    case RelayMetrics::State::kLeading:
      if (!m.kafka_ok.load()) {
        return answer(false,
                      "leading, but Kafka deliveries are failing or the producer is "
                      "being built (see the log)");
      }
      if (auto held = m.held_topics(); !held.empty()) {
        // Still ready: only these topics' messages wait, every other topic flows.
        for (const auto& h : held)
          j["refused_topics"].push_back({{"topic", h.topic}, {"error", h.error}});
        return answer(true,
                      "leading; Kafka refuses " + std::to_string(held.size()) +
                          " topic(s), whose messages wait in the outbox (see refused_topics)");
      }
      return answer(true, "");
    case RelayMetrics::State::kStandby:
      return answer(true,
                    "standing by: another instance leads; connected to PostgreSQL and ready to "
                    "take over (a standby does not connect to Kafka until it leads)");
    case RelayMetrics::State::kUnavailable: {
      const std::string error = m.postgres_error();
      return answer(false, "PostgreSQL unavailable or leadership lost; retrying" +
                               (error.empty() ? std::string() : ": " + Redact(error)));
    }
    case RelayMetrics::State::kStarting:
      break;
  }
  return answer(false, "starting or stopping");
}

bool AdminServer::DatabaseMetrics(std::string* out) {
  std::lock_guard l(db_mu_);
  if (!db_ || !db_->healthy()) {
    db_.reset();
    auto c = pg::Connection::Open(config_.postgres.conninfo, "outboxd admin",
                                  SessionTcpSettings(config_.leadership));
    if (!c.ok()) {
      spdlog::debug("admin listener: database gauges unavailable: {}", c.status().message());
      return false;
    }
    Status s = c->Exec("SET statement_timeout = '" +
                       std::to_string(config_.admin.query_timeout.count()) + "ms'");
    if (!s.ok()) return false;
    db_.emplace(std::move(*c));
  }
  pg::Params lock;
  lock.Add(config_.leadership.lock_id);
  auto r = db_->Query(R"sql(
SELECT
  (SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL),
  coalesce((SELECT extract(epoch FROM now() - min(created_at)) FROM
     (SELECT created_at FROM outbox.messages WHERE sent_at IS NULL ORDER BY id LIMIT 1000) o), 0)
     ::float8,
  (SELECT count(*) FROM outbox.dead_letters),
  coalesce((SELECT extract(epoch FROM now() - min(xact_start)) FROM pg_stat_activity
             WHERE backend_xid IS NOT NULL AND datname = current_database()
               AND pid <> pg_backend_pid()), 0)::float8,
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((classid::bigint << 32) | objid::bigint) = $1::bigint),
  (SELECT count(*) FROM outbox.prepared WHERE state = 'prepared'),
  (SELECT count(*) FROM outbox.prepared WHERE state = 'committed'),
  (SELECT count(*) FROM outbox.prepared WHERE state = 'rolled_back'),
  (SELECT count(*) FROM outbox.prepared WHERE state = 'dead_lettered'))sql",
                      lock);
  if (!r.ok()) {
    spdlog::debug("admin listener: database gauges unavailable: {}", r.status().message());
    if (!db_->healthy()) db_.reset();
    return false;
  }
  auto num = [&](int col) { return std::stod(std::string(r->Get(0, col))); };
  Exposition e;
  e.Family("outboxd_backlog_messages", "gauge",
           "Unsent rows in outbox.messages (committed, not yet acknowledged by Kafka).");
  e.Sample("outboxd_backlog_messages", num(0));
  e.Family("outboxd_oldest_unsent_age_seconds", "gauge",
           "Age of the oldest unsent row (its created_at); 0 when the backlog is empty.");
  e.Sample("outboxd_oldest_unsent_age_seconds", num(1));
  e.Family("outboxd_dead_letters", "gauge", "Rows in outbox.dead_letters.");
  e.Sample("outboxd_dead_letters", num(2));
  e.Family("outboxd_oldest_transaction_age_seconds", "gauge",
           "Age of the oldest running transaction of this database that has a transaction id: "
           "it may still commit an outbox row below the fetch position and holds the scan "
           "floor back.");
  e.Sample("outboxd_oldest_transaction_age_seconds", num(3));
  e.Family("outboxd_outbox_leader_present", "gauge",
           "1 when some outboxd instance holds this outbox's leadership lock (seen in "
           "pg_locks), else 0.");
  e.Sample("outboxd_outbox_leader_present", num(4) > 0 ? 1 : 0);
  e.Family("outboxd_half_messages", "gauge", "Rows of outbox.prepared by state.");
  const char* states[] = {"prepared", "committed", "rolled_back", "dead_lettered"};
  for (int i = 0; i < 4; ++i) e.Sample("outboxd_half_messages", num(5 + i), {{"state", states[i]}});
  *out += e.text();
  return true;
}

std::string AdminServer::Metrics() {
  const Relay::Stats st = relay_.stats();
  const RelayMetrics& m = relay_.metrics();
  Exposition e;
  e.Family("outboxd_build_info", "gauge", "The running outboxd's version.");
  e.Sample("outboxd_build_info", 1, {{"version", OUTBOXD_VERSION}});
  auto counter = [&](const std::string& name, const std::string& help, int64_t v) {
    e.Family(name, "counter", help);
    e.Sample(name, static_cast<double>(v));
  };
  counter("outboxd_messages_produced_total",
          "Messages handed to the Kafka producer (including repeats).", st.produced);
  counter("outboxd_messages_acknowledged_total",
          "Delivery reports that persisted a message (acks=all).", st.acknowledged);
  counter("outboxd_messages_removed_total",
          "Rows removed (or marked sent, on_sent = retain) after their acknowledgement.",
          st.marked_sent);
  counter("outboxd_messages_resent_total",
          "Delivery reports after which the row is produced again (a failure, an unproven "
          "report, or an earlier row of its key failed).",
          m.resent.load());
  counter("outboxd_messages_dead_lettered_total", "Rows moved to outbox.dead_letters.",
          st.dead_lettered);
  counter("outboxd_unproven_reports_total",
          "Persisted delivery reports without an offset (possible implicit acks); their rows are "
          "sent again.",
          st.unproven_reports);
  counter("outboxd_rewinds_total", "Times the relay went back to re-fetch after a failure.",
          st.rewinds);
  counter("outboxd_producer_rebuilds_total", "Kafka producers rebuilt after a fatal error.",
          st.producer_rebuilds);

  e.Family("outboxd_delivery_errors_total", "counter",
           "Failed delivery reports by librdkafka error name.");
  for (const auto& [code, n] : m.delivery_errors.Take()) {
    e.Sample("outboxd_delivery_errors_total", static_cast<double>(n), {{"error", ErrorName(code)}});
  }
  e.Family("outboxd_in_flight_messages", "gauge", "Produced messages awaiting their report.");
  e.Sample("outboxd_in_flight_messages", static_cast<double>(m.in_flight.load()));

  const RelayMetrics::State state = m.state_value();
  e.Family("outboxd_leader", "gauge", "1 while this instance leads the outbox, else 0.");
  e.Sample("outboxd_leader", state == RelayMetrics::State::kLeading ? 1 : 0);
  e.Family("outboxd_relay_state", "gauge", "The relay's state: 1 for the current one.");
  for (auto s : {RelayMetrics::State::kStarting, RelayMetrics::State::kStandby,
                 RelayMetrics::State::kLeading, RelayMetrics::State::kUnavailable}) {
    e.Sample("outboxd_relay_state", s == state ? 1 : 0, {{"state", StateName(s)}});
  }
  e.Family("outboxd_leadership_changes_total", "counter",
           "Leadership terms this instance started (acquired) and ended (lost).");
  e.Sample("outboxd_leadership_changes_total", static_cast<double>(st.leadership_terms),
           {{"change", "acquired"}});
  e.Sample("outboxd_leadership_changes_total", static_cast<double>(m.leadership_losses.load()),
           {{"change", "lost"}});
  e.Family("outboxd_relay_heartbeat_age_seconds", "gauge",
           "Seconds since the relay thread last looped (/healthz fails above 30).");
  e.Sample("outboxd_relay_heartbeat_age_seconds",
           static_cast<double>(SteadyNowMs() - m.heartbeat_ms.load()) / 1000.0);
  e.Family("outboxd_topic_refused_seconds", "gauge",
           "Per topic Kafka refuses (it does not exist, or outboxd may not write it): seconds "
           "since the first refusal. Its messages wait in the outbox; other topics flow.");
  for (const auto& held : m.held_topics()) {
    e.Sample("outboxd_topic_refused_seconds",
             static_cast<double>(SteadyNowMs() - held.since_ms) / 1000.0, {{"topic", held.topic}});
  }

  e.Family("outboxd_database_round_trip_seconds", "histogram",
           "PostgreSQL round trips of the relay: fetch (with the removals sent alongside) and "
           "remove (sent alone).");
  e.HistogramSeries("outboxd_database_round_trip_seconds", m.fetch_seconds.Take(),
                    {{"statement", "fetch"}});
  e.HistogramSeries("outboxd_database_round_trip_seconds", m.remove_seconds.Take(),
                    {{"statement", "remove"}});
  e.Family("outboxd_commit_to_ack_seconds", "histogram",
           "From a row's created_at (its transaction's start) to the broker's acknowledgement.");
  e.HistogramSeries("outboxd_commit_to_ack_seconds", m.commit_to_ack_seconds.Take());

  e.Family(
      "outboxd_checkback_calls_total", "counter",
      "Check-back questions answered, by verdict (unknown includes timeouts and bad answers).");
  CheckBack::Stats cb = checkback_ ? checkback_->stats() : CheckBack::Stats{};
  e.Sample("outboxd_checkback_calls_total", static_cast<double>(cb.committed),
           {{"verdict", "commit"}});
  e.Sample("outboxd_checkback_calls_total", static_cast<double>(cb.rolled_back),
           {{"verdict", "rollback"}});
  e.Sample("outboxd_checkback_calls_total", static_cast<double>(cb.unknown),
           {{"verdict", "unknown"}});
  e.Sample("outboxd_checkback_calls_total", static_cast<double>(cb.ignored),
           {{"verdict", "ignored"}});
  counter("outboxd_checkback_final_actions_total",
          "Half messages settled by the final action after max_checks.", cb.final_actions);

  std::string text = e.text();
  const auto started = std::chrono::steady_clock::now();
  const bool db_ok = DatabaseMetrics(&text);
  Exposition tail;
  tail.Family("outboxd_database_scrape_success", "gauge",
              "1 when the database gauges (backlog, ages, dead letters, half messages) were read.");
  tail.Sample("outboxd_database_scrape_success", db_ok ? 1 : 0);
  tail.Family("outboxd_database_scrape_duration_seconds", "gauge",
              "How long the database gauges' queries took.");
  tail.Sample("outboxd_database_scrape_duration_seconds",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return text + tail.text();
}

}  // namespace outboxd
