// outboxd's log while Kafka is down: one line per kind of error, not one per reconnect attempt,
// and one line when Kafka is reachable again. The producer runs against librdkafka's mock cluster.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "../support/log_counter.h"
#include "../support/mock_cluster.h"
#include "kafka/producer.h"

namespace outboxd {
namespace {

using Clock = std::chrono::steady_clock;

// Produces one message and polls until its report (or `timeout`); the report's outcome.
std::optional<DeliveryReport::Outcome> ProduceAndWait(Publisher& p, const std::string& topic,
                                                      uint64_t token, Millis timeout) {
  OutgoingMessage m;
  std::optional<std::string> key = "k", payload = "v";
  Headers headers;
  m.topic = &topic;
  m.key = &key;
  m.payload = &payload;
  m.headers = &headers;
  if (!p.Produce(m, token).ok()) return std::nullopt;
  auto until = Clock::now() + timeout;
  std::vector<DeliveryReport> reports;
  while (Clock::now() < until) {
    p.Poll(Millis(20), &reports);
    for (const auto& r : reports) {
      if (r.token == token) return r.outcome;
    }
  }
  return std::nullopt;
}

TEST(KafkaLog, AnOutageIsOneLinePerKindAndRecoveryIsOneLine) {
  testing::LogCounter log;
  testing::MockCluster cluster(/*brokers=*/1);
  const std::string topic = "quiet";
  ASSERT_NO_FATAL_FAILURE(cluster.CreateTopic(topic, 1));

  KafkaConfig kc;
  kc.bootstrap_servers = cluster.bootstraps();
  // Reconnect often, so that the outage below holds many attempts.
  kc.properties = {{"reconnect.backoff.ms", "10"}, {"reconnect.backoff.max.ms", "50"}};
  auto publisher = KafkaPublisher::Create(kc);
  ASSERT_TRUE(publisher.ok()) << publisher.status().message();
  ASSERT_EQ(ProduceAndWait(**publisher, topic, 1, Millis(10'000)),
            DeliveryReport::Outcome::kPersisted);
  EXPECT_EQ(log.Count(spdlog::level::warn, ""), 0) << log.Dump(spdlog::level::warn);

  ASSERT_EQ(rd_kafka_mock_broker_set_down(cluster.get(), 1), RD_KAFKA_RESP_ERR_NO_ERROR);
  // Two seconds of attempts while the message waits.
  EXPECT_EQ(ProduceAndWait(**publisher, topic, 2, Millis(2000)), std::nullopt);
  const int said = log.Count(spdlog::level::warn, "");
  const int attempts = log.Count(spdlog::level::trace, "kafka");
  ASSERT_EQ(rd_kafka_mock_broker_set_up(cluster.get(), 1), RD_KAFKA_RESP_ERR_NO_ERROR);
  std::vector<DeliveryReport> reports;
  bool acked = false;
  for (auto until = Clock::now() + Millis(10'000); !acked && Clock::now() < until;) {
    (*publisher)->Poll(Millis(20), &reports);
    for (const auto& r : reports)
      acked |= r.token == 2 && r.outcome == DeliveryReport::Outcome::kPersisted;
  }
  ASSERT_TRUE(acked);

  EXPECT_GE(attempts, 6) << "the outage was too short to show repeats:\n"
                         << log.Dump(spdlog::level::trace);
  EXPECT_GE(said, 1) << "the outage was not said at all";
  EXPECT_LE(said, 3) << "one line per kind of error, not per attempt:\n"
                     << log.Dump(spdlog::level::warn);
  EXPECT_EQ(log.Count(spdlog::level::info, "kafka: reachable again after "), 1)
      << log.Dump(spdlog::level::info);
  EXPECT_EQ(log.Count(spdlog::level::warn, "enable.gapless.guarantee"), 0)
      << log.Dump(spdlog::level::warn);
}

}  // namespace
}  // namespace outboxd
