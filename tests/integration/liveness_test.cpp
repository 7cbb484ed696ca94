// Delivery goes on around what one topic or one admin request would stop: a row for a topic the
// broker does not have (auto.create.topics.enable=false, as production brokers run), and a rescan
// request read while an unsent row lies below it. Real PostgreSQL, real Kafka, the outboxd binary.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include <gtest/gtest.h>

#include "../support/integration.h"
#include "pg/connection.h"

namespace outboxd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// librdkafka declares a topic missing after topic.metadata.propagation.max.ms (30 s by default)
// and looks at it again every topic.metadata.refresh.interval.ms (5 min): shorter here, so a test
// sees both in seconds. What outboxd does with the refusal does not depend on them.
constexpr const char* kFastTopicMetadata =
    "[kafka.properties]\n"
    "\"topic.metadata.propagation.max.ms\" = 2000\n"
    "\"topic.metadata.refresh.interval.ms\" = 1000\n";

// Status and body of GET `path` on the admin listener; status 0 when it does not answer.
std::pair<int, std::string> Get(int port, const std::string& path) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(2, 0);
  c.set_read_timeout(10, 0);
  auto r = c.Get(path.c_str());
  return r ? std::make_pair(r->status, r->body) : std::make_pair(0, std::string());
}

class LivenessIntegration : public ServicesTest {
 protected:
  int64_t Count(const std::string& sql) { return std::stoll(db_->Scalar(sql)); }
  int64_t Publish(const std::string& topic, const std::string& key, const std::string& value) {
    return std::stoll(
        db_->Scalar("SELECT outbox.publish('" + topic + "', '" + key + "', '" + value + "')"));
  }

  // Writes `n` rows to topic_ one by one (keys key-0..key-4), and one row to `stray_topic` after
  // the first fifth of them; the stray row's id goes to *stray_id. Returns what must arrive on
  // topic_.
  ExpectedMessages SteadyWritesWithOneStray(int n, const std::string& stray_topic,
                                            int64_t* stray_id) {
    ExpectedMessages expected;
    for (int i = 0; i < n; ++i) {
      if (i == n / 5) *stray_id = Publish(stray_topic, "stray-key", "stray");
      const std::string key = "key-" + std::to_string(i % 5);
      const std::string value = "payload-" + std::to_string(i);
      expected[Publish(topic_, key, value)] = ExpectedMessage{key, value, {}};
      std::this_thread::sleep_for(milliseconds(10));
    }
    return expected;
  }

  // All of `expected` arrived on topic_ (in per-key order, nothing lost), and markers written
  // last arrived after them.
  void ExpectAllArrived(Consumer& consumer, ExpectedMessages expected, const OutboxdProcess& p) {
    ExpectedMessages markers = PublishMarkers(topic_);
    expected.insert(markers.begin(), markers.end());
    ASSERT_TRUE(consumer.ReadUntilIds(Ids(expected), seconds(60)))
        << "rows of the existing topic stopped behind the row for a missing topic\n"
        << p.Log();
    DeliveryCheck check = CheckDelivery(expected, consumer.records(), kPartitions);
    EXPECT_EQ(check.lost, 0u) << check.Summary();
    EXPECT_EQ(check.out_of_order, 0u) << check.Summary();
  }

  // The row for the missing topic, stray_id, waited (not lost, not dead-lettered); once the topic
  // exists it arrives and leaves the outbox.
  void ExpectStrayDeliveredOnceTheTopicExists(const std::string& missing, int64_t stray_id,
                                              const OutboxdProcess& p) {
    EXPECT_EQ(Count("SELECT count(*) FROM outbox.messages WHERE id = " + std::to_string(stray_id)),
              1)
        << "the row for the missing topic is not in the outbox\n"
        << p.Log();
    EXPECT_EQ(Count("SELECT count(*) FROM outbox.dead_letters"), 0);
    CreateTopic(services_, missing, 1);
    topics_.push_back(missing);
    Consumer late(services_, missing);
    ASSERT_TRUE(late.ReadUntilIds({stray_id}, seconds(60)))
        << "the waiting row never arrived once its topic existed\n"
        << p.Log();
    EXPECT_EQ(late.records().front().value, "stray");
    EXPECT_TRUE(
        WaitFor([&] { return Count("SELECT count(*) FROM outbox.messages") == 0; }, seconds(20)))
        << p.Log();
  }
};

TEST_F(LivenessIntegration, RowForAMissingTopicWaitsWhileTheOtherTopicFlows) {
  const std::string missing = UniqueName("missing");
  const int port = FreePort();
  OutboxdProcess outboxd(services_, *db_, "",
                         std::string(kFastTopicMetadata) +
                             "[admin]\nlisten = \"127.0.0.1:" + std::to_string(port) + "\"\n");
  outboxd.Start();
  Consumer consumer(services_, topic_);
  int64_t stray_id = 0;
  // 6 s of writes: the stray row is refused after about 2 s, so later writes show the flow.
  ExpectedMessages expected = SteadyWritesWithOneStray(500, missing, &stray_id);
  ExpectAllArrived(consumer, expected, outboxd);
  EXPECT_TRUE(outboxd.WaitForLog("topic \"" + missing + "\" refused by Kafka", seconds(20)))
      << outboxd.Log();
  // The metric names the topic; the leader stays ready (every other topic flows) and says why.
  const std::string series = "outboxd_topic_refused_seconds{topic=\"" + missing + "\"}";
  EXPECT_NE(Get(port, "/metrics").second.find(series), std::string::npos);
  auto ready = Get(port, "/readyz");
  EXPECT_EQ(ready.first, 200) << ready.second;
  EXPECT_NE(ready.second.find("refused_topics"), std::string::npos) << ready.second;
  EXPECT_NE(ready.second.find(missing), std::string::npos) << ready.second;

  ExpectStrayDeliveredOnceTheTopicExists(missing, stray_id, outboxd);
  EXPECT_TRUE(outboxd.WaitForLog("topic \"" + missing + "\" accepts messages again", seconds(20)))
      << outboxd.Log();
  EXPECT_EQ(Get(port, "/metrics").second.find(series), std::string::npos);
}

TEST_F(LivenessIntegration, RowForAMissingTopicIsDeadLetteredAfterTheBound) {
  const std::string missing = UniqueName("missing");
  OutboxdProcess outboxd(services_, *db_, "topic_unavailable_dead_letter_after = \"3s\"",
                         kFastTopicMetadata);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  int64_t stray_id = 0;
  ExpectedMessages expected = SteadyWritesWithOneStray(300, missing, &stray_id);
  ExpectAllArrived(consumer, expected, outboxd);
  ASSERT_TRUE(
      WaitFor([&] { return Count("SELECT count(*) FROM outbox.dead_letters") == 1; }, seconds(60)))
      << outboxd.Log();
  const std::string error =
      db_->Scalar("SELECT error FROM outbox.dead_letters WHERE id = " + std::to_string(stray_id));
  EXPECT_NE(error.find(missing), std::string::npos) << error;
  EXPECT_NE(error.find("topic_unavailable_dead_letter_after"), std::string::npos) << error;
  EXPECT_EQ(Count("SELECT count(*) FROM outbox.messages"), 0);
}

TEST_F(LivenessIntegration, ExactlyOnceRowForAMissingTopicWaitsWhileTheOtherTopicCommits) {
  const std::string missing = UniqueName("missing");
  OutboxdProcess outboxd(services_, *db_, "delivery = \"exactly_once\"", kFastTopicMetadata);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  int64_t stray_id = 0;
  ExpectedMessages expected = SteadyWritesWithOneStray(500, missing, &stray_id);
  ExpectAllArrived(consumer, expected, outboxd);
  EXPECT_TRUE(outboxd.WaitForLog("topic \"" + missing + "\" refused by Kafka", seconds(20)))
      << outboxd.Log();
  ExpectStrayDeliveredOnceTheTopicExists(missing, stray_id, outboxd);
}

// An open transaction takes id u; a poison row p > u is dead-lettered; outboxd stops; the operator
// requeues p (the rescan request is p); u commits; outboxd starts. Its first fetch returns u
// below the request: the request must still be cleared with the value read, and both arrive.
TEST_F(LivenessIntegration, RequeueBelowWhichAnUnsentRowCommitsDeliversBoth) {
  auto outboxd = std::make_unique<OutboxdProcess>(services_, *db_);
  outboxd->Start();
  pg::Connection open_tx = db_->Connect();
  ASSERT_TRUE(open_tx.Exec("BEGIN").ok());
  auto u_row = open_tx.Query("SELECT outbox.publish('" + topic_ + "', 'u', 'late commit')");
  ASSERT_TRUE(u_row.ok());
  const int64_t u = u_row->GetInt(0, 0);
  const int64_t p = std::stoll(
      db_->Scalar("INSERT INTO outbox.messages (topic, key, payload, headers) VALUES ('" + topic_ +
                  "', 'p', 'poison', '\"not an object\"') RETURNING id"));
  ASSERT_GT(p, u);
  ASSERT_TRUE(
      WaitFor([&] { return Count("SELECT count(*) FROM outbox.dead_letters") == 1; }, seconds(30)))
      << outboxd->Log();
  outboxd->Kill(SIGTERM);
  ASSERT_EQ(outboxd->Wait(seconds(30)), 0);

  db_->Exec("UPDATE outbox.dead_letters SET headers = '{}'");
  auto requeued = RunOutboxd(
      {"dead-letters", "requeue", std::to_string(p), "--config", outboxd->config_path()});
  ASSERT_EQ(requeued.first, 0) << requeued.second;
  ASSERT_TRUE(open_tx.Exec("COMMIT").ok());

  outboxd->Start();
  Consumer consumer(services_, topic_);
  EXPECT_TRUE(consumer.ReadUntilIds({u, p}, seconds(30)))
      << "neither the late row nor the requeued one arrived\n"
      << outboxd->Log();
  EXPECT_TRUE(
      WaitFor([&] { return Count("SELECT count(*) FROM outbox.messages") == 0; }, seconds(20)))
      << outboxd->Log();
  EXPECT_EQ(db_->Scalar("SELECT coalesce(rescan_from::text, 'none') FROM outbox.relay_state"),
            "none");
}

}  // namespace
}  // namespace outboxd::testing
