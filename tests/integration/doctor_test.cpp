// Doctor against real PostgreSQL and Kafka: each verdict it prints, both ways. Every test turns
// one setting or state to the side that must be reported (a risk or a warning) and back, and
// checks the finding's verdict each time: a verdict inverted or never given fails here.
// (tests/scripts/doctor_clusters.sh checks the command's exit codes and the 3-broker cluster.)
#include <librdkafka/rdkafka.h>

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "../support/integration.h"
#include "config.h"
#include "doctor.h"

namespace outboxd {
namespace {

using testing::ServicesTest;
using testing::TestDatabase;

// Sets configs of a topic (AlterConfigs: the topic's other dynamic configs return to defaults).
void SetTopicConfigs(const testing::Services& s, const std::string& topic,
                     const std::map<std::string, std::string>& configs) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", s.kafka_bootstrap.c_str(), err, sizeof(err));
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  ASSERT_NE(rk, nullptr) << err;
  rd_kafka_ConfigResource_t* res =
      rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic.c_str());
  for (const auto& [k, v] : configs) rd_kafka_ConfigResource_set_config(res, k.c_str(), v.c_str());
  rd_kafka_queue_t* q = rd_kafka_queue_new(rk);
  rd_kafka_AlterConfigs(rk, &res, 1, nullptr, q);
  rd_kafka_event_t* ev = rd_kafka_queue_poll(q, 30'000);
  std::string error = ev == nullptr              ? "AlterConfigs timed out"
                      : rd_kafka_event_error(ev) ? rd_kafka_event_error_string(ev)
                                                 : "";
  if (ev && error.empty()) {
    size_t n = 0;
    const rd_kafka_ConfigResource_t** rs =
        rd_kafka_AlterConfigs_result_resources(rd_kafka_event_AlterConfigs_result(ev), &n);
    if (n == 1 && rd_kafka_ConfigResource_error(rs[0])) {
      error = rd_kafka_ConfigResource_error_string(rs[0]);
    }
  }
  if (ev) rd_kafka_event_destroy(ev);
  rd_kafka_queue_destroy(q);
  rd_kafka_ConfigResource_destroy(res);
  rd_kafka_destroy(rk);
  ASSERT_EQ(error, "");
}

class DoctorIntegration : public ServicesTest {
 protected:
  Config DoctorConfig() const {
    Config c;
    c.postgres.conninfo = db_->conninfo();
    c.kafka.bootstrap_servers = services_.kafka_bootstrap;
    c.doctor.kafka_timeout = Millis(10'000);
    return c;
  }
  DoctorReport Run(const Config& c, std::vector<std::string> topics = {}) {
    return RunDoctor(c, topics);
  }
  // The one finding of `check` about `subject`; a test failure (and a stand-in) without one.
  static Finding The(const DoctorReport& r, const std::string& subject, const std::string& check) {
    const Finding* found = nullptr;
    int n = 0;
    for (const Finding& f : r.findings) {
      if (f.subject == subject && f.check == check) {
        found = &f;
        ++n;
      }
    }
    EXPECT_EQ(n, 1) << "findings of " << subject << " / " << check << " in:\n" << r.Text();
    return found ? *found : Finding{"", subject, check, "(none)", Health::kInfo, "", ""};
  }
  static bool Has(const DoctorReport& r, const std::string& subject, const std::string& check) {
    for (const Finding& f : r.findings) {
      if (f.subject == subject && f.check == check) return true;
    }
    return false;
  }
  // Runs SQL on the server as the superuser (outside the test's database).
  void Admin(const std::string& sql) const {
    auto c = pg::Connection::Open(services_.pg_admin_conninfo, "doctor test");
    ASSERT_TRUE(c.ok()) << c.status().message();
    auto r = c->Query(sql);
    ASSERT_TRUE(r.ok()) << sql << ": " << r.status().message();
  }
  // `setting` as a new session sees it.
  std::string Setting(const std::string& setting) const {
    return db_->Scalar("SELECT current_setting('" + setting + "')");
  }
  // ALTER SYSTEM SET setting = value and a reload; RESET and a reload at the end of the test.
  void SetServer(const std::string& setting, const std::string& value) {
    Admin("ALTER SYSTEM SET " + setting + " = '" + value + "'");
    Admin("SELECT pg_reload_conf()");
    reset_.push_back(setting);
    ASSERT_TRUE(
        testing::WaitFor([&] { return Setting(setting) == value; }, std::chrono::seconds(10)))
        << setting << " did not become " << value;
  }
  void TearDown() override {
    for (const auto& setting : reset_) Admin("ALTER SYSTEM RESET " + setting);
    if (!reset_.empty()) Admin("SELECT pg_reload_conf()");
    for (const auto& role : roles_) Admin("DROP ROLE IF EXISTS " + role);
    ServicesTest::TearDown();
  }

  std::vector<std::string> reset_;
  std::vector<std::string> roles_;
};

// fsync off: committed transactions (outbox rows with them) can be lost in a crash: a risk, with
// the fix. On: ok. full_page_writes off is a risk too (it is reported only then).
TEST_F(DoctorIntegration, FsyncAndFullPageWritesVerdictsFollowTheServer) {
  const Config c = DoctorConfig();
  ASSERT_EQ(Setting("fsync"), "on");
  DoctorReport on = Run(c);
  EXPECT_EQ(The(on, "server", "fsync").verdict, Health::kOk);
  EXPECT_FALSE(Has(on, "server", "full_page_writes"));

  SetServer("fsync", "off");
  SetServer("full_page_writes", "off");
  DoctorReport off = Run(c);
  const Finding fsync = The(off, "server", "fsync");
  EXPECT_EQ(fsync.verdict, Health::kRisk) << off.Text();
  EXPECT_EQ(fsync.value, "off");
  EXPECT_NE(fsync.fix.find("fsync = on"), std::string::npos) << fsync.fix;
  EXPECT_EQ(The(off, "server", "full_page_writes").verdict, Health::kRisk);
  EXPECT_TRUE(off.at_risk());
  EXPECT_NE(off.Text().find("RISK  server: fsync = off"), std::string::npos) << off.Text();
}

// synchronous_commit off for an application's role (a login member of outbox_writer): a commit
// the application saw can vanish in a crash: a risk naming the role. on and local: ok.
TEST_F(DoctorIntegration, SynchronousCommitVerdictPerApplicationRole) {
  const std::string role = testing::UniqueName("doctor_app");
  Admin("CREATE ROLE " + role + " LOGIN");
  roles_.push_back(role);
  Admin("GRANT outbox_writer TO " + role);
  const Config c = DoctorConfig();
  EXPECT_EQ(The(Run(c), "role " + role, "synchronous_commit").verdict, Health::kOk);

  db_->Exec("ALTER ROLE " + role + " IN DATABASE " + db_->name() + " SET synchronous_commit = off");
  DoctorReport off = Run(c);
  const Finding f = The(off, "role " + role, "synchronous_commit");
  EXPECT_EQ(f.verdict, Health::kRisk) << off.Text();
  EXPECT_EQ(f.value, "off");
  EXPECT_TRUE(off.at_risk());

  db_->Exec("ALTER ROLE " + role + " IN DATABASE " + db_->name() +
            " SET synchronous_commit = local");
  EXPECT_EQ(The(Run(c), "role " + role, "synchronous_commit").verdict, Health::kOk);
}

// No synchronous standby here: the replication finding is a warning (losing this server's disk
// loses undelivered messages); a transaction open longer than doctor.long_transaction is one
// too, and ok once it ended.
TEST_F(DoctorIntegration, ReplicationAndLongTransactionVerdicts) {
  Config c = DoctorConfig();
  c.doctor.long_transaction = Millis(1000);
  DoctorReport before = Run(c);
  EXPECT_EQ(The(before, "server", "replication").verdict, Health::kWarn);
  EXPECT_NE(The(before, "server", "oldest open transaction").verdict, Health::kWarn)
      << before.Text();

  pg::Connection open = db_->Connect();
  ASSERT_TRUE(open.Query("BEGIN").ok());
  ASSERT_TRUE(open.Query("SELECT pg_current_xact_id()").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // older than long_transaction
  DoctorReport during = Run(c);
  const Finding f = The(during, "server", "oldest open transaction");
  EXPECT_EQ(f.verdict, Health::kWarn) << during.Text();
  EXPECT_NE(f.fix.find("pg_terminate_backend"), std::string::npos);
  ASSERT_TRUE(open.Query("COMMIT").ok());
  EXPECT_NE(The(Run(c), "server", "oldest open transaction").verdict, Health::kWarn);
}

// The outbox's own state: an unsent message older than doctor.max_unsent_age, a delayed message
// overdue, a dead letter, a half message past its checks: each a risk, each ok without it.
TEST_F(DoctorIntegration, OutboxVerdicts) {
  Config c = DoctorConfig();
  c.doctor.max_unsent_age = Millis(60'000);
  DoctorReport clean = Run(c, {topic_});
  EXPECT_EQ(The(clean, "messages", "oldest unsent").verdict, Health::kOk);
  EXPECT_EQ(The(clean, "delayed", "waiting").verdict, Health::kOk);
  EXPECT_EQ(The(clean, "dead_letters", "dead letters").verdict, Health::kOk);
  EXPECT_EQ(The(clean, "prepared", "past their checks").verdict, Health::kOk);

  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'v'::bytea)");
  EXPECT_EQ(The(Run(c, {topic_}), "messages", "oldest unsent").verdict, Health::kOk)
      << "a fresh message is not stale";
  db_->Exec("UPDATE outbox.messages SET created_at = now() - interval '2 minutes'");
  db_->Exec(
      "INSERT INTO outbox.delayed (id, topic, key, payload, deliver_at, due_at) VALUES "
      "(outbox.next_message_id(), '" +
      topic_ + "', 'k', 'v', now() - interval '5 minutes', now() - interval '5 minutes')");
  db_->Exec(
      "INSERT INTO outbox.dead_letters (id, topic, key, payload, headers, created_at, error) "
      "VALUES (outbox.next_message_id(), '" +
      topic_ + "', 'k', 'v', '{}', now(), 'refused')");
  db_->Exec("SELECT outbox.prepare('" + topic_ + "', 'k', 'v'::bytea)");
  db_->Exec("UPDATE outbox.prepared SET check_count = " + std::to_string(c.checkback.max_checks));
  DoctorReport bad = Run(c, {topic_});
  EXPECT_EQ(The(bad, "messages", "oldest unsent").verdict, Health::kRisk) << bad.Text();
  EXPECT_EQ(The(bad, "delayed", "waiting").verdict, Health::kRisk);
  EXPECT_EQ(The(bad, "dead_letters", "dead letters").verdict, Health::kRisk);
  EXPECT_EQ(The(bad, "prepared", "past their checks").verdict, Health::kRisk);
  EXPECT_EQ(The(bad, "messages", "backlog").value, "1 unsent");
  EXPECT_TRUE(bad.at_risk());
}

// Per topic: replication factor 1 and min.insync.replicas 1 are risks; min.insync.replicas equal
// to the replication factor a warning; unclean leader election a risk, its absence ok; a topic
// that does not exist on a broker that does not create topics a risk. (The ok side of the
// replication verdicts needs three brokers: tests/scripts/doctor_clusters.sh.)
TEST_F(DoctorIntegration, TopicVerdicts) {
  const Config c = DoctorConfig();
  DoctorReport rf1 = Run(c, {topic_});
  EXPECT_EQ(The(rf1, topic_, "replication factor").verdict, Health::kRisk) << rf1.Text();
  EXPECT_EQ(The(rf1, topic_, "min.insync.replicas").verdict, Health::kRisk);
  EXPECT_EQ(The(rf1, topic_, "unclean.leader.election.enable").verdict, Health::kOk);

  SetTopicConfigs(services_, topic_,
                  {{"min.insync.replicas", "2"}, {"unclean.leader.election.enable", "true"}});
  bool changed = testing::WaitFor(
      [&] {
        return The(Run(c, {topic_}), topic_, "unclean.leader.election.enable").value == "true";
      },
      std::chrono::seconds(20));
  ASSERT_TRUE(changed) << "the topic's configs did not change";
  DoctorReport altered = Run(c, {topic_});
  EXPECT_EQ(The(altered, topic_, "min.insync.replicas").verdict, Health::kWarn) << altered.Text();
  EXPECT_EQ(The(altered, topic_, "unclean.leader.election.enable").verdict, Health::kRisk);

  const std::string missing = testing::UniqueName("doctor_missing");
  DoctorReport absent = Run(c, {missing});
  const Finding exists = The(absent, missing, "exists");
  EXPECT_EQ(exists.verdict, Health::kRisk) << absent.Text();
  EXPECT_NE(exists.fix.find("kafka-topics.sh --create --topic " + missing), std::string::npos);
  EXPECT_EQ(The(absent, "broker 1", "topic auto-creation").verdict, Health::kOk) << absent.Text();

  // One broker: replication factor 3 is impossible (said as information; the topics' own
  // verdicts carry the risk). The broker's flush settings are shown as they are: the project's
  // broker keeps Kafka's default, which leaves fsync to the OS.
  const Finding brokers = The(rf1, "cluster", "brokers");
  EXPECT_EQ(brokers.value, "1") << rf1.Text();
  EXPECT_EQ(brokers.verdict, Health::kInfo);
  EXPECT_NE(brokers.detail.find("fewer than 3 brokers"), std::string::npos) << brokers.detail;
  const Finding flush = The(rf1, "broker 1", "log.flush.*");
  EXPECT_EQ(flush.verdict, Health::kInfo) << rf1.Text();
  EXPECT_NE(flush.value.find("log.flush.interval.messages=9223372036854775807"), std::string::npos)
      << flush.value;
  EXPECT_NE(flush.detail.find("leaves fsync to the OS"), std::string::npos) << flush.detail;
}

// Neither service answering is a risk of its own.
TEST_F(DoctorIntegration, UnreachableServicesAreRisks) {
  Config c = DoctorConfig();
  c.postgres.conninfo = "host=127.0.0.1 port=1 dbname=none connect_timeout=2";
  c.kafka.bootstrap_servers = "127.0.0.1:1";
  c.doctor.kafka_timeout = Millis(2000);
  DoctorReport r = Run(c);
  EXPECT_EQ(The(r, "server", "reachable").verdict, Health::kRisk) << r.Text();
  EXPECT_EQ(The(r, "127.0.0.1:1", "reachable").verdict, Health::kRisk);
  EXPECT_TRUE(r.at_risk());
}

}  // namespace
}  // namespace outboxd
