// Helpers for tests against real services: a fresh database per test, a fresh Kafka topic per
// test, the outboxd binary run as a user runs it, a Kafka consumer, and a delivery checker.
// Service addresses come from the environment (scripts/services.sh env); when a service is not
// reachable the test is skipped, except under CI=true, where it fails.
#pragma once

#include <librdkafka/rdkafka.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "pg/connection.h"

namespace outboxd::testing {

struct Services {
  std::string pg_admin_conninfo;  // a superuser connection to the `postgres` database
  std::string pg_host = "127.0.0.1";
  std::string pg_port;
  std::string kafka_bootstrap;
  // Empty when both services answer; otherwise what is missing.
  static std::string Check(Services* out);
};

// Call first in every integration test: skips (or, under CI=true, fails) without the services.
#define OUTBOXD_REQUIRE_SERVICES(services)                                                \
  do {                                                                                    \
    std::string missing_ = ::outboxd::testing::Services::Check(&(services));              \
    if (!missing_.empty()) {                                                              \
      if (::outboxd::testing::InCi()) FAIL() << "service missing under CI: " << missing_; \
      GTEST_SKIP() << "service missing (run scripts/services.sh start): " << missing_;    \
    }                                                                                     \
  } while (0)

bool InCi();
// A short unique name for this test: letters, digits and '_'.
std::string UniqueName(const std::string& prefix);

// A database created for one test, with the outbox schema migrated; dropped at the end.
class TestDatabase {
 public:
  explicit TestDatabase(const Services& s, bool migrate = true);
  ~TestDatabase();
  const std::string& name() const { return name_; }
  std::string conninfo() const;
  pg::Connection Connect() const;
  // Runs SQL and returns the first column of the first row as text ("" if none).
  std::string Scalar(const std::string& sql) const;
  void Exec(const std::string& sql) const;

 private:
  const Services& services_;
  std::string name_;
};

struct Record {
  int32_t partition = 0;
  int64_t offset = 0;
  std::optional<std::string> key;
  std::optional<std::string> value;
  std::vector<std::pair<std::string, std::optional<std::string>>> headers;
  std::optional<std::string> Header(const std::string& name) const;
  int64_t outbox_id() const;
};

// Creates a topic with `partitions` partitions and replication factor `replicas`.
void CreateTopic(const Services& s, const std::string& topic, int partitions, int replicas = 1);

// Reads every partition of a topic from the beginning.
class Consumer {
 public:
  Consumer(const Services& s, const std::string& topic);
  ~Consumer();
  // Reads until `count` records in total were received or `timeout` passed; returns all so far.
  const std::vector<Record>& ReadUntil(size_t count, std::chrono::milliseconds timeout);
  // Reads for `d` (to show that nothing more arrives).
  const std::vector<Record>& ReadFor(std::chrono::milliseconds d);
  const std::vector<Record>& records() const { return records_; }

 private:
  void PollOnce(int timeout_ms);
  rd_kafka_t* rk_ = nullptr;
  std::vector<Record> records_;
};

// Per key: ids expected but never seen, ids seen more than once, and ids whose first arrival
// came after a higher id of the same key.
struct DeliveryCheck {
  size_t expected = 0;
  size_t received = 0;
  size_t lost = 0;
  size_t duplicates = 0;
  size_t out_of_order = 0;
  size_t unexpected = 0;  // ids that were never committed
  std::string Summary() const;
};
DeliveryCheck CheckDelivery(const std::map<int64_t, std::optional<std::string>>& expected_keys,
                            const std::vector<Record>& records);

// A Kafka broker that never answers: a socket on 127.0.0.1 that listens and accepts nothing, so
// the kernel completes each connection and every request waits forever. For stalled deliveries.
class SilentBroker {
 public:
  SilentBroker();
  ~SilentBroker();
  SilentBroker(const SilentBroker&) = delete;
  SilentBroker& operator=(const SilentBroker&) = delete;
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// The outboxd binary, started with a configuration file written for the test.
class OutboxdProcess {
 public:
  // `extra_toml` is appended to a config with [postgres] and [kafka] filled in; sections it names
  // must not repeat those two (use `relay_toml` for [relay] keys).
  OutboxdProcess(const Services& s, const TestDatabase& db, const std::string& relay_toml = "",
                 const std::string& extra_toml = "");
  ~OutboxdProcess();
  // Start() runs the binary inside this network namespace (`ip netns exec`), from now on.
  void SetNetworkNamespace(const std::string& name) { netns_ = name; }
  void Start();
  void Kill(int signal);
  // Waits for the process to exit; its exit code (128+signal if killed), or nullopt on timeout.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  bool running();
  std::string Log() const;
  bool WaitForLog(const std::string& text, std::chrono::milliseconds timeout) const;
  const std::string& config_path() const { return config_path_; }

 private:
  std::string config_path_;
  std::string log_path_;
  std::string netns_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

// A fixture: the services (or a skip/failure without them), a fresh migrated database and a fresh
// topic with 3 partitions for each test.
class ServicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    OUTBOXD_REQUIRE_SERVICES(services_);
    db_.emplace(services_);
    topic_ = UniqueName("t");
    CreateTopic(services_, topic_, 3);
  }

  Services services_;
  std::optional<TestDatabase> db_;
  std::string topic_;
};

// Runs the outboxd binary with arguments; returns exit code and combined output.
std::pair<int, std::string> RunOutboxd(const std::vector<std::string>& args);

// Polls `cond` until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout);

}  // namespace outboxd::testing
