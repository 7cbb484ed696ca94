// The producer settings outboxd applies (kafka/producer.h), without a broker.
#include "kafka/producer.h"

#include <gtest/gtest.h>

namespace outboxd {
namespace {

TEST(ProducerProperties, OneRequestInFlightByDefault) {
  KafkaConfig c;
  c.bootstrap_servers = "127.0.0.1:1";
  auto p = ProducerProperties(c);
  EXPECT_EQ(p.at("max.in.flight.requests.per.connection"), "1");
  EXPECT_EQ(p.at("enable.idempotence"), "true");
  EXPECT_EQ(p.at("acks"), "all");
  EXPECT_TRUE(ProducerPropertyWarnings(c).empty());
}

TEST(ProducerProperties, MoreRequestsInFlightAreTheUsersChoiceWithAWarning) {
  for (const char* name : {"max.in.flight.requests.per.connection", "max.in.flight"}) {
    KafkaConfig c;
    c.bootstrap_servers = "127.0.0.1:1";
    c.properties[name] = "5";
    auto p = ProducerProperties(c);
    EXPECT_EQ(p.at(name), "5") << name;
    EXPECT_EQ(p.size(), ProducerProperties(KafkaConfig{}).size()) << "alias and name both set";
    auto warnings = ProducerPropertyWarnings(c);
    ASSERT_EQ(warnings.size(), 1u) << name;
    EXPECT_NE(warnings[0].find("out of order"), std::string::npos) << warnings[0];
  }
  KafkaConfig one;
  one.properties["max.in.flight"] = "1";
  EXPECT_TRUE(ProducerPropertyWarnings(one).empty());
}

}  // namespace
}  // namespace outboxd
