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

// A loopback port nobody listens on right now (the kernel's choice).
int FreePort();
// True when a broker answers metadata at `bootstrap` within 5 s.
bool BrokerAnswers(const std::string& bootstrap);

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
  // Reads until a record of every id in `ids` was received or `timeout` passed; true if all were.
  bool ReadUntilIds(const std::set<int64_t>& ids, std::chrono::milliseconds timeout);
  const std::vector<Record>& records() const { return records_; }

 private:
  void PollOnce(int timeout_ms);
  rd_kafka_t* rk_ = nullptr;
  std::vector<Record> records_;
};

// What one committed row must become in Kafka.
struct ExpectedMessage {
  std::optional<std::string> key;
  std::optional<std::string> value;
  // The row's headers in the order Kafka carries them (key order), after "outbox-id".
  std::vector<std::pair<std::string, std::optional<std::string>>> headers;
};
// By the id that outbox.publish() returned in a transaction that committed.
using ExpectedMessages = std::map<int64_t, ExpectedMessage>;

// What a consumer of the topic saw, compared with what committed. Records are taken per
// partition in offset order; a record is a "first copy" the first time its outbox-id appears.
struct DeliveryCheck {
  size_t expected = 0;
  size_t received = 0;
  size_t lost = 0;             // committed, never seen
  size_t duplicates = 0;       // further copies (allowed: at least once)
  size_t out_of_order = 0;     // per expected key, a first copy after a higher id's first copy
  size_t unexpected = 0;       // records whose outbox-id was never committed (or missing)
  size_t mismatched = 0;       // records whose key, value or headers differ from the row
  size_t wrong_partition = 0;  // keyed records not in the partition murmur2 maps the key to
  std::vector<std::string> examples;  // the first few problems, for the failure message
  bool ok() const {
    return lost == 0 && out_of_order == 0 && unexpected == 0 && mismatched == 0 &&
           wrong_partition == 0;
  }
  std::string Summary() const;
};
// `partitions`: the topic's partition count (for the murmur2 check of keyed records).
DeliveryCheck CheckDelivery(const ExpectedMessages& expected, const std::vector<Record>& records,
                            int partitions);

// The ids of `m`.
std::set<int64_t> Ids(const ExpectedMessages& m);

// Kafka's Java client's murmur2 (Utils.murmur2), and its partition for a key:
// toPositive(murmur2(key)) % partitions.
int32_t Murmur2(const std::string& key);
int32_t JavaPartition(const std::string& key, int partitions);

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
  // The test defaults (relay.idle_grace 50 ms, [backoff], [leadership] retry_interval 200 ms,
  // [admin] listen on a free port)
  // are left out where `relay_toml` / `extra_toml` set them. `conninfo` replaces the database's.
  OutboxdProcess(const Services& s, const TestDatabase& db, const std::string& relay_toml = "",
                 const std::string& extra_toml = "", const std::string& conninfo = "");
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

// Deletes a topic (best effort: a test's topics are removed when it ends).
void DeleteTopic(const Services& s, const std::string& topic);

// A fixture: the services (or a skip/failure without them), a fresh migrated database and a fresh
// topic with kPartitions partitions for each test; topics made with NewTopic are deleted at the
// end, with the test's database.
class ServicesTest : public ::testing::Test {
 protected:
  static constexpr int kPartitions = 3;
  void SetUp() override {
    OUTBOXD_REQUIRE_SERVICES(services_);
    db_.emplace(services_);
    topic_ = NewTopic("t", kPartitions);
  }
  void TearDown() override {
    for (const auto& t : topics_) DeleteTopic(services_, t);
  }
  std::string NewTopic(const std::string& prefix, int partitions) {
    std::string t = UniqueName(prefix);
    CreateTopic(services_, t, partitions);
    topics_.push_back(t);
    return t;
  }
  // Publishes n rows in one committed statement: key "key-<i % keys>" (NULL when keys is 0),
  // value "payload-<i>", header {"n": "<i>"}. Returns what must arrive, by the ids publish()
  // returned.
  ExpectedMessages PublishMany(int n, int keys, const std::string& topic);
  // One committed row per partition of `topic` (keys that murmur2 maps to each), written after
  // everything else the test wrote. The relay produces in id order and a partition keeps it, so
  // once they all arrived, whatever else was coming arrived before them: a bound for negative
  // checks ("nothing else arrives") without a fixed wait.
  ExpectedMessages PublishMarkers(const std::string& topic, int partitions = kPartitions);

  Services services_;
  std::optional<TestDatabase> db_;
  std::string topic_;
  std::vector<std::string> topics_;
};

// Writes a file under this process's temporary directory; returns its path.
std::string TestFile(const std::string& name, const std::string& content);

// Runs the outboxd binary with arguments; returns exit code and combined output.
std::pair<int, std::string> RunOutboxd(const std::vector<std::string>& args);

// Polls `cond` until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout);

}  // namespace outboxd::testing
