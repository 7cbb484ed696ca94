// The admin room without services: the exposition format, lock-free histograms, the listener's
// endpoints over a relay that runs on fakes, hostile requests refused cleanly, [admin] and [log]
// settings, and JSON log lines.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <nlohmann/json.hpp>

#include "../support/fakes.h"
#include "admin_server.h"
#include "config.h"
#include "log_json.h"
#include "metrics.h"
#include "relay.h"

namespace outboxd {
namespace {

using testing::FakeBroker;
using testing::FakeFactory;
using testing::FakeStore;

TEST(Exposition, HelpTypeAndEscapedLabels) {
  Exposition e;
  e.Family("outboxd_x_total", "counter", "A help text with a \\ and a\nnewline.");
  e.Sample("outboxd_x_total", 3, {{"error", "a \"quoted\"\\ value\n"}});
  EXPECT_EQ(e.text(),
            "# HELP outboxd_x_total A help text with a \\\\ and a\\nnewline.\n"
            "# TYPE outboxd_x_total counter\n"
            "outboxd_x_total{error=\"a \\\"quoted\\\"\\\\ value\\n\"} 3\n");
}

TEST(Exposition, HistogramBucketsAreCumulativeAndEndAtCount) {
  Histogram h({0.01, 0.1, 1});
  for (double v : {0.005, 0.01, 0.05, 0.5, 5.0, 50.0}) h.Observe(v);
  Exposition e;
  e.Family("h_seconds", "histogram", "h");
  e.HistogramSeries("h_seconds", h.Take(), {{"statement", "fetch"}});
  EXPECT_NE(e.text().find("h_seconds_bucket{statement=\"fetch\",le=\"0.01\"} 2\n"),
            std::string::npos)
      << e.text();
  EXPECT_NE(e.text().find("h_seconds_bucket{statement=\"fetch\",le=\"0.1\"} 3\n"),
            std::string::npos);
  EXPECT_NE(e.text().find("h_seconds_bucket{statement=\"fetch\",le=\"1\"} 4\n"), std::string::npos);
  EXPECT_NE(e.text().find("h_seconds_bucket{statement=\"fetch\",le=\"+Inf\"} 6\n"),
            std::string::npos);
  EXPECT_NE(e.text().find("h_seconds_count{statement=\"fetch\"} 6\n"), std::string::npos);
  EXPECT_NE(e.text().find("h_seconds_sum{statement=\"fetch\"} 55.565\n"), std::string::npos);
}

TEST(Histogram, ObservationsFromOneThreadWhileAnotherReads) {
  Histogram h(RoundTripBuckets());
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int i = 0; i < 200'000; ++i) h.Observe(0.001 * (i % 100));
    done = true;
  });
  uint64_t last = 0;
  while (!done) {
    auto s = h.Take();
    ASSERT_GE(s.count, last);  // never goes down
    for (size_t i = 1; i < s.cumulative.size(); ++i)
      ASSERT_GE(s.cumulative[i], s.cumulative[i - 1]);
    last = s.count;
  }
  writer.join();
  EXPECT_EQ(h.Take().count, 200'000u);
}

// A relay on fakes, with the admin listener on a free loopback port. The database gauges point at
// a port where nothing listens: /metrics must still answer, saying so.
class AdminServerTest : public ::testing::Test {
 protected:
  static Config MakeConfig() {
    Config c = testing::FastRelayConfig();
    c.admin.listen = "127.0.0.1:0";
    c.postgres.conninfo = "host=127.0.0.1 port=1 dbname=none connect_timeout=2";
    return c;
  }
  void StartRelay() {
    relay_thread_ = std::thread([this] { (void)relay_.Run(stop_); });
  }
  void SetUp() override { ASSERT_TRUE(admin_.Start().ok()); }
  void TearDown() override {
    store_.StallFetches(false);  // a test that failed while the relay was stalled
    stop_ = true;
    if (relay_thread_.joinable()) relay_thread_.join();
    admin_.Stop();
  }
  httplib::Result Get(const std::string& path) {
    httplib::Client c("127.0.0.1", admin_.port());
    c.set_read_timeout(10, 0);
    return c.Get(path.c_str());
  }
  // Sends raw bytes; returns the head of the server's answer ("" if it closed without one).
  std::string Raw(const std::string& request) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(admin_.port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    size_t sent = 0;
    while (sent < request.size()) {
      ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;  // the server closed on us: fine, read its answer
      sent += static_cast<size_t>(n);
    }
    // Until the end of the response's head, or the server closed (no SHUT_WR: cpp-httplib drops
    // a request whose client half-closed).
    std::string out;
    char buf[4096];
    while (out.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    close(fd);
    return out;
  }
  static std::string StatusLine(const std::string& response) {
    return response.substr(0, response.find("\r\n"));
  }

  const Config config_ = MakeConfig();  // the relay and the listener keep references
  FakeStore store_;
  FakeBroker broker_;
  Relay relay_{config_, store_, FakeFactory(broker_, store_)};
  AdminServer admin_{config_, relay_, nullptr};
  std::atomic<bool> stop_{false};
  std::thread relay_thread_;
};

TEST_F(AdminServerTest, MetricsListEveryFamilyWithHelpAndType) {
  for (int64_t id = 1; id <= 30; ++id) store_.Add(id, "t", "k" + std::to_string(id % 3), "v");
  StartRelay();
  ASSERT_TRUE(testing::Eventually([&] { return relay_.stats().marked_sent == 30; }));
  auto r = Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  for (const char* family :
       {"outboxd_messages_produced_total", "outboxd_messages_acknowledged_total",
        "outboxd_messages_removed_total", "outboxd_messages_resent_total",
        "outboxd_messages_dead_lettered_total", "outboxd_in_flight_messages",
        "outboxd_delivery_errors_total", "outboxd_database_round_trip_seconds",
        "outboxd_commit_to_ack_seconds", "outboxd_leader", "outboxd_leadership_changes_total",
        "outboxd_producer_rebuilds_total", "outboxd_checkback_calls_total",
        "outboxd_unproven_reports_total", "outboxd_database_scrape_success"}) {
    EXPECT_NE(r->body.find(std::string("# HELP ") + family + " "), std::string::npos) << family;
    EXPECT_NE(r->body.find(std::string("# TYPE ") + family + " "), std::string::npos) << family;
  }
  EXPECT_NE(r->body.find("outboxd_messages_acknowledged_total 30\n"), std::string::npos) << r->body;
  EXPECT_NE(r->body.find("outboxd_messages_removed_total 30\n"), std::string::npos);
  EXPECT_NE(r->body.find("outboxd_leader 1\n"), std::string::npos);
  EXPECT_NE(r->body.find("outboxd_leadership_changes_total{change=\"acquired\"} 1\n"),
            std::string::npos);
  // The fake store answers in no time, but every fetch round trip was counted.
  EXPECT_EQ(r->body.find("outboxd_database_round_trip_seconds_count{statement=\"fetch\"} 0\n"),
            std::string::npos);
  // No database here: its gauges are left out, and the scrape says so.
  EXPECT_NE(r->body.find("outboxd_database_scrape_success 0\n"), std::string::npos);
  EXPECT_EQ(r->body.find("outboxd_backlog_messages"), std::string::npos);
}

TEST_F(AdminServerTest, ProbesAnswerJsonWithTheReason) {
  auto ready = Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);  // the relay has not started
  auto j = nlohmann::json::parse(ready->body);
  EXPECT_EQ(j["status"], "not ready");
  EXPECT_EQ(j["role"], "starting");
  EXPECT_FALSE(j["reason"].get<std::string>().empty());

  store_.SetLeaderElsewhere(true);
  StartRelay();
  ASSERT_TRUE(testing::Eventually([&] {
    auto r = Get("/readyz");
    return r && r->status == 200 && nlohmann::json::parse(r->body)["role"] == "standby";
  }));
  store_.SetLeaderElsewhere(false);
  ASSERT_TRUE(testing::Eventually([&] {
    auto r = Get("/readyz");
    return r && r->status == 200 && nlohmann::json::parse(r->body)["role"] == "leader";
  }));
  auto health = Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(nlohmann::json::parse(health->body)["status"], "ok");
}

// The PostgreSQL error the relay retries after is in /readyz's reason (with any password hidden),
// and gone once it connected.
TEST_F(AdminServerTest, ReadinessNamesThePostgresErrorWhileItRetries) {
  store_.FailNext(
      1000000, Status::Unavailable("PostgreSQL: connection failed: FATAL:  password authentication "
                                   "failed for user \"outboxd\" password=hunter22"));
  StartRelay();
  std::string reason;
  ASSERT_TRUE(testing::Eventually([&] {
    auto r = Get("/readyz");
    if (!r || r->status != 503) return false;
    reason = nlohmann::json::parse(r->body)["reason"].get<std::string>();
    return reason.find("password authentication failed") != std::string::npos;
  })) << reason;
  EXPECT_EQ(reason.find("hunter22"), std::string::npos) << reason;
  store_.FailNext(0);
  ASSERT_TRUE(testing::Eventually([&] {
    auto r = Get("/readyz");
    return r && r->status == 200 && nlohmann::json::parse(r->body)["role"] == "leader" &&
           r->body.find("password authentication") == std::string::npos;
  }));
}

// The leader's deliveries fail (every report a retriable error, as while the brokers are
// unreachable): /readyz answers 503 and says Kafka is failing, then 200 again once deliveries
// succeed. In the Kubernetes manifest (deploy/kubernetes) three failures 5 s apart take the pod
// out of its Services' endpoints; nothing restarts it.
TEST_F(AdminServerTest, ReadinessIs503WhileKafkaDeliveriesFail) {
  std::atomic<bool> kafka_down{true};
  broker_.decide = [&](const testing::Sent&) {
    return kafka_down ? DeliveryReport::Outcome::kRetriable : DeliveryReport::Outcome::kPersisted;
  };
  for (int64_t id = 1; id <= 30; ++id) store_.Add(id, "t", "k" + std::to_string(id % 3), "v");
  StartRelay();
  std::string body;
  ASSERT_TRUE(testing::Eventually([&] {
    auto r = Get("/readyz");
    if (!r) return false;
    body = r->body;
    return r->status == 503 && nlohmann::json::parse(r->body)["role"] == "leader";
  })) << body;
  auto j = nlohmann::json::parse(body);
  EXPECT_EQ(j["status"], "not ready");
  EXPECT_NE(j["reason"].get<std::string>().find("Kafka deliveries are failing"), std::string::npos)
      << body;
  EXPECT_EQ(store_.Remaining().size(), 30u) << "rows were removed while Kafka failed";
  auto health = Get("/healthz");  // failing deliveries do not make the process unhealthy
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  kafka_down = false;
  ASSERT_TRUE(testing::Eventually([&] {
    auto r = Get("/readyz");
    return r && r->status == 200 && nlohmann::json::parse(r->body)["role"] == "leader";
  }));
  EXPECT_TRUE(testing::Eventually([&] { return store_.Remaining().empty(); }));
}

// The relay thread stops looping (a fetch that never returns): /healthz answers 200 until the
// heartbeat is 30 s old, then 503 with the reason, and 200 once the relay loops again. The
// threshold is fixed (admin_server.cpp), so this test waits it out. In the Kubernetes manifest
// (deploy/kubernetes) the liveness probe then fails three times 10 s apart and the kubelet
// restarts the container.
TEST_F(AdminServerTest, LivenessIs503WhenTheRelayHasNotLoopedFor30Seconds) {
  StartRelay();
  ASSERT_TRUE(testing::Eventually([&] { return store_.fetches() > 0; }));
  store_.StallFetches(true);
  ASSERT_TRUE(testing::Eventually([&] { return store_.stalled_fetches() > 0; }));
  const auto stalled_at = std::chrono::steady_clock::now();
  auto early = Get("/healthz");
  ASSERT_TRUE(early);
  EXPECT_EQ(early->status, 200) << early->body;
  std::string body;
  ASSERT_TRUE(testing::Eventually(
      [&] {
        auto r = Get("/healthz");
        if (!r || r->status != 503) return false;
        body = r->body;
        return true;
      },
      Millis(45'000)))
      << "still healthy 45 s after the relay stopped looping";
  EXPECT_GE(std::chrono::steady_clock::now() - stalled_at, Millis(29'000))
      << "failing before the heartbeat was 30 s old: " << body;
  auto j = nlohmann::json::parse(body);
  EXPECT_EQ(j["status"], "failing");
  EXPECT_GT(j["relay_heartbeat_age_seconds"].get<double>(), 30.0);
  EXPECT_NE(j["reason"].get<std::string>().find("has not looped"), std::string::npos) << body;
  store_.StallFetches(false);
  EXPECT_TRUE(testing::Eventually([&] {
    auto r = Get("/healthz");
    return r && r->status == 200;
  }));
}

TEST_F(AdminServerTest, HostileRequestsAreRefusedAndTheListenerStaysUp) {
  EXPECT_EQ(StatusLine(Raw("GARBAGE\r\n\r\n")), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(StatusLine(Raw("GET /metrics HTTP/9.9 extra\r\n\r\n")), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(StatusLine(Raw("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")),
            "HTTP/1.1 405 Method Not Allowed");
  EXPECT_EQ(StatusLine(Raw("DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n")),
            "HTTP/1.1 405 Method Not Allowed");
  EXPECT_EQ(StatusLine(Raw("GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")),
            "HTTP/1.1 413 Payload Too Large");
  // A huge request line, a huge header, and many headers: refused, never served.
  std::string long_uri = Raw("GET /" + std::string(100'000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(long_uri.empty() || long_uri.rfind("HTTP/1.1 4", 0) == 0) << StatusLine(long_uri);
  std::string big_header =
      Raw("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(100'000, 'b') + "\r\n\r\n");
  EXPECT_TRUE(big_header.empty() || big_header.rfind("HTTP/1.1 4", 0) == 0)
      << StatusLine(big_header);
  std::string many = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 500; ++i) many += "X-H" + std::to_string(i) + ": v\r\n";
  std::string many_headers = Raw(many + "\r\n");
  EXPECT_EQ(StatusLine(many_headers), "HTTP/1.1 431 Request Header Fields Too Large");
  EXPECT_EQ(many_headers.find("outboxd_"), std::string::npos);
  EXPECT_EQ(StatusLine(Raw("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")), "HTTP/1.1 404 Not Found");
  // Still serving.
  auto r = Get("/healthz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(AdminServer, ABusyPortIsAnErrorNotACrash) {
  Config config = testing::FastRelayConfig();
  config.admin.listen = "127.0.0.1:0";
  FakeStore store;
  FakeBroker broker;
  Relay relay(config, store, FakeFactory(broker, store));
  AdminServer first(config, relay, nullptr);
  ASSERT_TRUE(first.Start().ok());
  Config second_config = config;
  second_config.admin.listen = "127.0.0.1:" + std::to_string(first.port());
  second_config.path = "busy.toml";
  AdminServer second(second_config, relay, nullptr);
  Status s = second.Start();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cannot listen on 127.0.0.1:" + std::to_string(first.port())),
            std::string::npos)
      << s.message();
  // It names the setting that moves the port, and the file that holds it.
  EXPECT_NE(s.message().find("set [admin] listen in busy.toml"), std::string::npos) << s.message();
}

TEST(AdminConfig, ListenAndLogFormat) {
  const std::string base =
      "[postgres]\nconninfo = \"host=x\"\n[kafka]\nbootstrap_servers = \"k:9092\"\n";
  auto c = ParseConfig(base, "t.toml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->admin.listen, "127.0.0.1:9464");
  EXPECT_EQ(c->log.format, LogFormat::kText);
  c = ParseConfig(base + "[admin]\nlisten = \"\"\n[log]\nformat = \"json\"\n", "t.toml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->admin.listen, "");
  EXPECT_EQ(c->log.format, LogFormat::kJson);
  c = ParseConfig(base + "[admin]\nlisten = \"[::1]:9464\"\n", "t.toml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  for (const char* bad :
       {"9464", "localhost", "127.0.0.1:", ":9464", "127.0.0.1:99999", "::1:80"}) {
    auto r = ParseConfig(base + "[admin]\nlisten = \"" + bad + "\"\n", "t.toml");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().message().rfind("t.toml:6: admin.listen:", 0), 0u) << r.status().message();
  }
  auto r = ParseConfig(base + "[log]\nformat = \"xml\"\n", "t.toml");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "t.toml:6: log.format: expected \"text\" or \"json\", got \"xml\"");
}

TEST(JsonLog, OneObjectPerLineWithFields) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_formatter(MakeJsonFormatter());
  spdlog::logger logger("json-test", sink);
  logger.set_level(spdlog::level::info);
  {
    ScopedLogFields fields({{"message_id", "42"}, {"topic", "orders"}, {"error", "bad \"x\"\n"}});
    logger.warn("message {} moved to outbox.dead_letters", 42);
  }
  logger.info("plain \xff line");  // not UTF-8: still one valid JSON line
  std::istringstream lines(out.str());
  std::string line;
  std::vector<nlohmann::json> objects;
  while (std::getline(lines, line)) objects.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(objects.size(), 2u) << out.str();
  EXPECT_EQ(objects[0]["level"], "warning");
  EXPECT_EQ(objects[0]["message"], "message 42 moved to outbox.dead_letters");
  EXPECT_EQ(objects[0]["message_id"], 42);
  EXPECT_EQ(objects[0]["topic"], "orders");
  EXPECT_EQ(objects[0]["error"], "bad \"x\"\n");
  EXPECT_EQ(objects[0]["time"].get<std::string>().size(),
            std::string("2026-12-01T23:59:01.123Z").size());
  EXPECT_EQ(objects[1]["level"], "info");
  EXPECT_FALSE(objects[1].contains("message_id"));
}

}  // namespace
}  // namespace outboxd
