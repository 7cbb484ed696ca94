// outboxd against a broker that creates topics on first use (auto.create.topics.enable=true, the
// `autocreate` broker of scripts/kafka.sh, started for this binary by a ctest fixture). Every
// other broker of the project runs as production ones do, without auto-creation; this test keeps
// the other kind covered: rows for a topic nobody created arrive whole and in key order, and
// `outboxd doctor` says the broker will create the topic rather than calling it missing.
#include <signal.h>

#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::seconds;

// OUTBOXD_KAFKA_BOOTSTRAP of `scripts/kafka.sh env autocreate` ("" if it printed none).
std::string AutoCreateBootstrap() {
  std::string cmd =
      std::string(OUTBOXD_SOURCE_DIR) + "/scripts/kafka.sh env autocreate 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  std::string bootstrap;
  const std::string prefix = "export OUTBOXD_KAFKA_BOOTSTRAP=";
  char line[1024];
  while (fgets(line, sizeof(line), p) != nullptr) {
    std::string l(line);
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
    if (l.rfind(prefix, 0) == 0) bootstrap = l.substr(prefix.size());
  }
  pclose(p);
  return bootstrap;
}

class AutoCreatedTopic : public ServicesTest {
 protected:
  void SetUp() override {
    OUTBOXD_REQUIRE_SERVICES(services_);
    services_.kafka_bootstrap = AutoCreateBootstrap();
    if (services_.kafka_bootstrap.empty() || !BrokerAnswers(services_.kafka_bootstrap)) {
      const std::string missing = "the autocreate broker (" + services_.kafka_bootstrap + ")";
      if (InCi()) FAIL() << "missing under CI: " << missing;
      GTEST_SKIP() << "missing (scripts/kafka.sh start autocreate): " << missing;
    }
    db_.emplace(services_);
  }
  int64_t Remaining() { return std::stoll(db_->Scalar("SELECT count(*) FROM outbox.messages")); }
};

TEST_F(AutoCreatedTopic, RowsForATopicNobodyCreatedArriveWholeAndInKeyOrder) {
  const std::string topic = UniqueName("auto");  // never created by the test
  topics_.push_back(topic);                      // deleted at the end
  ExpectedMessages expected = PublishMany(40, 5, topic);

  OutboxdProcess probe(services_, *db_);  // only for its configuration file
  auto [rc, doctor] = RunOutboxd({"doctor", "--config", probe.config_path()});
  EXPECT_NE(doctor.find("info  " + topic + ": exists = no (auto-created on first message)"),
            std::string::npos)
      << doctor;
  EXPECT_NE(doctor.find(": topic auto-creation = true"), std::string::npos) << doctor;

  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(60))) << outboxd.Log();
  Consumer consumer(services_, topic);
  EXPECT_TRUE(consumer.ReadUntilIds(Ids(expected), seconds(30))) << outboxd.Log();
  // The broker made the topic with its num.partitions (1).
  DeliveryCheck check = CheckDelivery(expected, consumer.records(), 1);
  EXPECT_TRUE(check.ok()) << check.Summary() << "\n" << outboxd.Log();
  outboxd.Kill(SIGTERM);
  EXPECT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();
}

}  // namespace
}  // namespace outboxd::testing
