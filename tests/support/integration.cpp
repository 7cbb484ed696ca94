#include "integration.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <tuple>

#include <gtest/gtest.h>

#include "migrate.h"

namespace outboxd::testing {
namespace {

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : fallback;
}

// This process's directory for configs and logs; removed when the process exits (a failing test
// prints the log it needs), unless OUTBOXD_KEEP_TEST_FILES is set.
std::string TempDir() {
  struct Dir {
    std::string path;
    Dir() {
      std::string base = Env("TMPDIR", "/tmp") + "/outboxd-tests-XXXXXX";
      std::vector<char> buf(base.begin(), base.end());
      buf.push_back('\0');
      if (mkdtemp(buf.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
      path = buf.data();
    }
    ~Dir() {
      std::error_code ignored;
      if (Env("OUTBOXD_KEEP_TEST_FILES", "").empty()) std::filesystem::remove_all(path, ignored);
    }
  };
  static Dir dir;
  return dir.path;
}

}  // namespace

bool InCi() { return Env("CI", "") == "true" || Env("CI", "") == "1"; }

std::string UniqueName(const std::string& prefix) {
  static std::atomic<int> counter{0};
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string test = info ? info->name() : "t";
  std::string out = prefix + "_";
  for (char c : test) {
    if (std::isalnum(static_cast<unsigned char>(c))) out += static_cast<char>(std::tolower(c));
    if (out.size() > 40) break;
  }
  return out + "_" + std::to_string(getpid()) + "_" + std::to_string(counter++);
}

std::string Services::Check(Services* out) {
  out->pg_port = Env("OUTBOXD_PG_PORT", "55432");
  out->pg_admin_conninfo = Env("OUTBOXD_TEST_PG_ADMIN", "host=127.0.0.1 port=" + out->pg_port +
                                                            " dbname=postgres user=postgres");
  out->kafka_bootstrap =
      Env("OUTBOXD_KAFKA_BOOTSTRAP", "127.0.0.1:" + Env("OUTBOXD_KAFKA_PORT", "59092"));
  std::string missing;
  auto conn = pg::Connection::Open(out->pg_admin_conninfo + " connect_timeout=3", "outboxd-test");
  if (!conn.ok()) missing += "PostgreSQL (" + conn.status().message() + ") ";
  // Kafka: ask for metadata with a short timeout.
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", out->kafka_bootstrap.c_str(), err, sizeof(err));
  rd_kafka_conf_set(conf, "log_level", "0", err, sizeof(err));
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  const rd_kafka_metadata_t* md = nullptr;
  if (rk == nullptr || rd_kafka_metadata(rk, 0, nullptr, &md, 5000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    missing += "Kafka at " + out->kafka_bootstrap;
  }
  if (md) rd_kafka_metadata_destroy(md);
  if (rk) rd_kafka_destroy(rk);
  return missing;
}

TestDatabase::TestDatabase(const Services& s, bool migrate)
    : services_(s), name_(UniqueName("it")) {
  auto admin = pg::Connection::Open(s.pg_admin_conninfo, "outboxd-test");
  if (!admin.ok()) throw std::runtime_error(admin.status().message());
  Status st = admin->Exec("CREATE DATABASE " + name_);
  if (!st.ok()) throw std::runtime_error(st.message());
  if (migrate) {
    // The migrations create cluster-wide roles (outbox_writer, ...) when they are missing; two
    // tests migrating at once on a fresh cluster would both try. One at a time, across processes.
    st = admin->Exec("SELECT pg_advisory_lock(7104251)");
    if (!st.ok()) throw std::runtime_error(st.message());
    pg::Connection c = Connect();
    auto applied = ApplyMigrations(c);
    (void)admin->Exec("SELECT pg_advisory_unlock(7104251)");
    if (!applied.ok()) throw std::runtime_error(applied.status().message());
  }
}

TestDatabase::~TestDatabase() {
  auto admin = pg::Connection::Open(services_.pg_admin_conninfo, "outboxd-test");
  if (admin.ok()) (void)admin->Exec("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
}

std::string TestDatabase::conninfo() const {
  return "host=" + services_.pg_host + " port=" + services_.pg_port + " dbname=" + name_ +
         " user=postgres";
}

pg::Connection TestDatabase::Connect() const {
  auto c = pg::Connection::Open(conninfo(), "outboxd-test");
  if (!c.ok()) throw std::runtime_error(c.status().message());
  return std::move(*c);
}

std::string TestDatabase::Scalar(const std::string& sql) const {
  pg::Connection c = Connect();
  auto r = c.Query(sql);
  if (!r.ok()) throw std::runtime_error(r.status().message() + " in: " + sql);
  if (r->rows() == 0 || r->IsNull(0, 0)) return "";
  return std::string(r->Get(0, 0));
}

void TestDatabase::Exec(const std::string& sql) const {
  pg::Connection c = Connect();
  Status s = c.Exec(sql);
  if (!s.ok()) throw std::runtime_error(s.message() + " in: " + sql);
}

std::optional<std::string> Record::Header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return v;
  }
  return std::nullopt;
}

int64_t Record::outbox_id() const {
  auto h = Header("outbox-id");
  return h ? std::stoll(*h) : -1;
}

// Returns once every partition has a leader; `replicas` -1 takes the broker's default. The
// project's brokers, like production ones, do not auto-create topics: a test creates each topic it
// writes to.
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

bool BrokerAnswers(const std::string& bootstrap) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof(err));
  rd_kafka_conf_set(conf, "log_level", "0", err, sizeof(err));
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == nullptr) return false;
  const rd_kafka_metadata_t* md = nullptr;
  bool ok = rd_kafka_metadata(rk, 0, nullptr, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR;
  if (md) rd_kafka_metadata_destroy(md);
  rd_kafka_destroy(rk);
  return ok;
}

void CreateTopic(const Services& s, const std::string& topic, int partitions, int replicas) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", s.kafka_bootstrap.c_str(), err, sizeof(err));
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == nullptr) throw std::runtime_error(err);
  rd_kafka_NewTopic_t* nt =
      rd_kafka_NewTopic_new(topic.c_str(), partitions, replicas, err, sizeof(err));
  rd_kafka_queue_t* q = rd_kafka_queue_new(rk);
  rd_kafka_CreateTopics(rk, &nt, 1, nullptr, q);
  rd_kafka_event_t* ev = rd_kafka_queue_poll(q, 30000);
  std::string error;
  if (ev == nullptr) {
    error = "CreateTopics timed out";
  } else if (rd_kafka_event_error(ev)) {
    error = rd_kafka_event_error_string(ev);
  } else {
    size_t n;
    const rd_kafka_topic_result_t** res =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
    if (n == 1 && rd_kafka_topic_result_error(res[0]))
      error = rd_kafka_topic_result_error_string(res[0]);
  }
  if (ev) rd_kafka_event_destroy(ev);
  rd_kafka_queue_destroy(q);
  rd_kafka_NewTopic_destroy(nt);
  // Wait until the leaders are known, so the first produce does not race topic creation.
  bool ready = false;
  for (int i = 0; i < 100 && error.empty() && !ready; ++i) {
    rd_kafka_topic_t* t = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
    const rd_kafka_metadata_t* md = nullptr;
    if (rd_kafka_metadata(rk, 0, t, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        md->topic_cnt == 1 && md->topics[0].err == 0 && md->topics[0].partition_cnt == partitions) {
      ready = true;
      for (int p = 0; p < md->topics[0].partition_cnt; ++p)
        ready &= md->topics[0].partitions[p].leader >= 0;
    }
    if (md) rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (error.empty() && !ready)
    error = "a partition still has no leader after 100 metadata requests";
  rd_kafka_destroy(rk);
  if (!error.empty()) throw std::runtime_error("create topic " + topic + ": " + error);
}

Consumer::Consumer(const Services& s, const std::string& topic) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", s.kafka_bootstrap.c_str(), err, sizeof(err));
  rd_kafka_conf_set(conf, "group.id", ("checker-" + topic).c_str(), err, sizeof(err));
  rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err));
  rd_kafka_conf_set(conf, "enable.partition.eof", "false", err, sizeof(err));
  rk_ = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
  if (rk_ == nullptr) throw std::runtime_error(err);
  rd_kafka_poll_set_consumer(rk_);
  // Assign every partition from the beginning (no group rebalancing).
  rd_kafka_topic_t* t = rd_kafka_topic_new(rk_, topic.c_str(), nullptr);
  const rd_kafka_metadata_t* md = nullptr;
  int partitions = 0;
  for (int i = 0; i < 100 && partitions == 0; ++i) {
    if (rd_kafka_metadata(rk_, 0, t, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        md->topic_cnt == 1) {
      partitions = md->topics[0].partition_cnt;
    }
    if (md) rd_kafka_metadata_destroy(md);
    md = nullptr;
    if (partitions == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  rd_kafka_topic_destroy(t);
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk_, list);
  rd_kafka_topic_partition_list_destroy(list);
}

Consumer::~Consumer() {
  if (rk_) {
    rd_kafka_consumer_close(rk_);
    rd_kafka_destroy(rk_);
  }
}

void Consumer::PollOnce(int timeout_ms) {
  rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, timeout_ms);
  if (m == nullptr) return;
  if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    Record r;
    r.partition = m->partition;
    r.offset = m->offset;
    if (m->key) r.key = std::string(static_cast<const char*>(m->key), m->key_len);
    if (m->payload) r.value = std::string(static_cast<const char*>(m->payload), m->len);
    rd_kafka_headers_t* hdrs = nullptr;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      const char* name;
      const void* value;
      size_t size;
      for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &size) == 0; ++i) {
        r.headers.emplace_back(name, value ? std::optional<std::string>(
                                                 std::string(static_cast<const char*>(value), size))
                                           : std::nullopt);
      }
    }
    records_.push_back(std::move(r));
  }
  rd_kafka_message_destroy(m);
}

const std::vector<Record>& Consumer::ReadUntil(size_t count, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (records_.size() < count && std::chrono::steady_clock::now() < until) PollOnce(100);
  return records_;
}

const std::vector<Record>& Consumer::ReadFor(std::chrono::milliseconds d) {
  auto until = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < until) PollOnce(100);
  return records_;
}

bool Consumer::ReadUntilIds(const std::set<int64_t>& ids, std::chrono::milliseconds timeout) {
  std::set<int64_t> missing = ids;
  for (const Record& r : records_) missing.erase(r.outbox_id());
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!missing.empty() && std::chrono::steady_clock::now() < until) {
    size_t before = records_.size();
    PollOnce(100);
    for (size_t i = before; i < records_.size(); ++i) missing.erase(records_[i].outbox_id());
  }
  return missing.empty();
}

std::string DeliveryCheck::Summary() const {
  std::ostringstream s;
  s << "expected " << expected << ", received " << received << ": lost " << lost << ", duplicates "
    << duplicates << ", out of order " << out_of_order << ", unexpected " << unexpected
    << ", mismatched " << mismatched << ", wrong partition " << wrong_partition;
  for (const auto& e : examples) s << "\n  " << e;
  return s.str();
}

int32_t Murmur2(const std::string& key) {
  // org.apache.kafka.common.utils.Utils.murmur2, in 32-bit unsigned arithmetic.
  const auto* data = reinterpret_cast<const uint8_t*>(key.data());
  const uint32_t length = static_cast<uint32_t>(key.size());
  const uint32_t m = 0x5bd1e995;
  const int r = 24;
  uint32_t h = 0x9747b28c ^ length;
  for (uint32_t i = 0; i < length / 4; ++i) {
    uint32_t k = data[i * 4] | (data[i * 4 + 1] << 8) | (data[i * 4 + 2] << 16) |
                 (static_cast<uint32_t>(data[i * 4 + 3]) << 24);
    k *= m;
    k ^= k >> r;
    k *= m;
    h *= m;
    h ^= k;
  }
  const uint32_t tail = length & ~3u;
  switch (length % 4) {
    case 3:
      h ^= static_cast<uint32_t>(data[tail + 2]) << 16;
      [[fallthrough]];
    case 2:
      h ^= static_cast<uint32_t>(data[tail + 1]) << 8;
      [[fallthrough]];
    case 1:
      h ^= data[tail];
      h *= m;
  }
  h ^= h >> 13;
  h *= m;
  h ^= h >> 15;
  return static_cast<int32_t>(h);
}

int32_t JavaPartition(const std::string& key, int partitions) {
  return (Murmur2(key) & 0x7fffffff) % partitions;  // Utils.toPositive(murmur2) % partitions
}

DeliveryCheck CheckDelivery(const ExpectedMessages& expected, const std::vector<Record>& records,
                            int partitions) {
  DeliveryCheck c;
  c.expected = expected.size();
  c.received = records.size();
  auto note = [&](const std::string& what) {
    if (c.examples.size() < 10) c.examples.push_back(what);
  };
  std::vector<const Record*> sorted;
  for (const Record& r : records) sorted.push_back(&r);
  std::sort(sorted.begin(), sorted.end(), [](const Record* a, const Record* b) {
    return std::tie(a->partition, a->offset) < std::tie(b->partition, b->offset);
  });
  std::set<int64_t> seen;
  std::map<std::optional<std::string>, int64_t> highest_first_copy;  // per expected key
  for (const Record* r : sorted) {
    int64_t id = r->outbox_id();
    auto e = expected.find(id);
    if (e == expected.end()) {
      ++c.unexpected;
      note("unexpected record, outbox-id " + std::to_string(id));
      continue;
    }
    const ExpectedMessage& want = e->second;
    auto headers = want.headers;
    headers.insert(headers.begin(), {"outbox-id", std::to_string(id)});
    // outbox-created-at (the row's created_at, microseconds) follows outbox-id: present and a
    // number; its exact value is the row's, which the test did not record.
    auto got = r->headers;
    bool created_at = got.size() >= 2 && got[1].first == "outbox-created-at" && got[1].second &&
                      !got[1].second->empty() &&
                      got[1].second->find_first_not_of("0123456789") == std::string::npos;
    if (created_at) got.erase(got.begin() + 1);
    if (r->key != want.key || r->value != want.value || !created_at || got != headers) {
      ++c.mismatched;
      note("record " + std::to_string(id) + " differs from its row (key " +
           r->key.value_or("<null>") + ", value " + r->value.value_or("<null>").substr(0, 40) +
           ")");
    }
    if (want.key && r->partition != JavaPartition(*want.key, partitions)) {
      ++c.wrong_partition;
      note("record " + std::to_string(id) + " in partition " + std::to_string(r->partition) +
           ", murmur2 says " + std::to_string(JavaPartition(*want.key, partitions)));
    }
    if (!seen.insert(id).second) {
      ++c.duplicates;
      continue;
    }
    if (!want.key) continue;  // no key, no order
    auto [it, first] = highest_first_copy.try_emplace(want.key, id);
    if (first) continue;
    if (it->second > id) {
      ++c.out_of_order;
      note("key " + *want.key + ": " + std::to_string(id) + " first arrived after " +
           std::to_string(it->second));
    } else {
      it->second = id;
    }
  }
  for (const auto& [id, want] : expected) {
    if (!seen.count(id)) {
      ++c.lost;
      note("lost: " + std::to_string(id));
    }
  }
  return c;
}

ExpectedMessages ServicesTest::PublishMarkers(const std::string& topic, int partitions) {
  ExpectedMessages out;
  std::set<int32_t> covered;
  pg::Connection c = db_->Connect();
  for (int i = 0; static_cast<int>(covered.size()) < partitions; ++i) {
    std::string key = "marker-" + std::to_string(i);
    if (!covered.insert(JavaPartition(key, partitions)).second) continue;
    auto r = c.Query("SELECT outbox.publish('" + topic + "', '" + key + "', 'marker')");
    if (!r.ok()) throw std::runtime_error(r.status().message());
    out[r->GetInt(0, 0)] = ExpectedMessage{key, "marker", {}};
  }
  return out;
}

std::set<int64_t> Ids(const ExpectedMessages& m) {
  std::set<int64_t> ids;
  for (const auto& [id, e] : m) ids.insert(id);
  return ids;
}

void DeleteTopic(const Services& s, const std::string& topic) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", s.kafka_bootstrap.c_str(), err, sizeof(err));
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == nullptr) return;
  rd_kafka_DeleteTopic_t* dt = rd_kafka_DeleteTopic_new(topic.c_str());
  rd_kafka_queue_t* q = rd_kafka_queue_new(rk);
  rd_kafka_DeleteTopics(rk, &dt, 1, nullptr, q);
  rd_kafka_event_t* ev = rd_kafka_queue_poll(q, 10000);
  if (ev) rd_kafka_event_destroy(ev);
  rd_kafka_queue_destroy(q);
  rd_kafka_DeleteTopic_destroy(dt);
  rd_kafka_destroy(rk);
}

ExpectedMessages ServicesTest::PublishMany(int n, int keys, const std::string& topic) {
  pg::Connection c = db_->Connect();
  std::string key = keys > 0 ? "'key-' || (i % " + std::to_string(keys) + ")" : "NULL::text";
  auto r =
      c.Query("SELECT outbox.publish('" + topic + "', " + key +
              ", 'payload-' || i, jsonb_build_object('n', i::text)), " + key +
              ", 'payload-' || i, i::text FROM generate_series(1, " + std::to_string(n) + ") AS i");
  if (!r.ok()) throw std::runtime_error(r.status().message());
  ExpectedMessages out;
  for (int i = 0; i < r->rows(); ++i) {
    ExpectedMessage& m = out[r->GetInt(i, 0)];
    if (!r->IsNull(i, 1)) m.key = std::string(r->Get(i, 1));
    m.value = std::string(r->Get(i, 2));
    m.headers = {{"n", std::string(r->Get(i, 3))}};
  }
  return out;
}

SilentBroker::SilentBroker() {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::listen(fd_, 128) != 0 ||
      ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    throw std::runtime_error(std::string("SilentBroker: ") + strerror(errno));
  }
  port_ = ntohs(addr.sin_port);
}

SilentBroker::~SilentBroker() {
  if (fd_ >= 0) ::close(fd_);
}

OutboxdProcess::OutboxdProcess(const Services& s, const TestDatabase& db,
                               const std::string& relay_toml, const std::string& extra_toml,
                               const std::string& conninfo) {
  std::string base = TempDir() + "/" + UniqueName("outboxd");
  config_path_ = base + ".toml";
  log_path_ = base + ".log";
  auto sets = [](const std::string& toml, const std::string& what) {
    return toml.find(what) != std::string::npos;
  };
  std::ofstream out(config_path_);
  out << "[postgres]\nconninfo = \"" << (conninfo.empty() ? db.conninfo() : conninfo) << "\"\n"
      << "[kafka]\nbootstrap_servers = \"" << s.kafka_bootstrap << "\"\n"
      << "[relay]\n"
      << (sets(relay_toml, "idle_grace") ? "" : "idle_grace = \"50ms\"\n") << relay_toml << "\n"
      << (sets(extra_toml, "[backoff]") ? "" : "[backoff]\ninitial = \"50ms\"\nmax = \"1s\"\n")
      << (sets(extra_toml, "[leadership]") ? "" : "[leadership]\nretry_interval = \"200ms\"\n")
      << extra_toml
      << "\n"
      // Several instances run on this host: each admin listener takes a free port. Last:
      // extra_toml may begin with keys of the [leadership] section above.
      << (sets(extra_toml, "[admin]") ? "" : "[admin]\nlisten = \"127.0.0.1:0\"\n");
}

OutboxdProcess::~OutboxdProcess() {
  if (pid_ > 0 && !exit_code_) {
    Kill(SIGKILL);
    Wait(std::chrono::seconds(10));
  }
}

void OutboxdProcess::Start() {
  exit_code_.reset();
  pid_ = fork();
  if (pid_ == 0) {
    int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    if (!netns_.empty()) {
      // ip netns exec enters the namespace and execs outboxd: pid_ is outboxd's own.
      execlp("ip", "ip", "netns", "exec", netns_.c_str(), OUTBOXD_BINARY, "run", "--config",
             config_path_.c_str(), nullptr);
      _exit(127);
    }
    execl(OUTBOXD_BINARY, OUTBOXD_BINARY, "run", "--config", config_path_.c_str(), nullptr);
    _exit(127);
  }
}

void OutboxdProcess::Kill(int signal) {
  if (pid_ > 0 && !exit_code_) ::kill(pid_, signal);
}

std::optional<int> OutboxdProcess::Wait(std::chrono::milliseconds timeout) {
  if (exit_code_) return exit_code_;
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_code_;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return std::nullopt;
}

bool OutboxdProcess::running() { return pid_ > 0 && !Wait(std::chrono::milliseconds(0)); }

std::string OutboxdProcess::Log() const {
  std::ifstream in(log_path_);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool OutboxdProcess::WaitForLog(const std::string& text, std::chrono::milliseconds timeout) const {
  return WaitFor([&] { return Log().find(text) != std::string::npos; }, timeout);
}

std::string TestFile(const std::string& name, const std::string& content) {
  std::string path = TempDir() + "/" + UniqueName(name);
  std::ofstream(path) << content;
  return path;
}

std::pair<int, std::string> RunOutboxd(const std::vector<std::string>& args) {
  std::string cmd = OUTBOXD_BINARY;
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return cond();
}

}  // namespace outboxd::testing
