// Hostile messages against the real broker: sizes at and above the limits, topic names Kafka
// refuses or treats as another topic, headers JSON of every awkward shape, a key of 1 MiB. Each is
// delivered or dead-lettered with its reason, and healthy rows written before, between and after
// them all arrive (an independent consumer is the witness).
#include <algorithm>
#include <cctype>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::seconds;

class HostileMessageIntegration : public ServicesTest {
 protected:
  // A committed row written by the superuser (publish() refuses some of these shapes itself).
  int64_t Insert(const std::string& topic, const std::string& key_sql,
                 const std::string& payload_sql, const std::string& headers_json) {
    return std::stoll(db_->Scalar(
        "INSERT INTO outbox.messages (topic, key, payload, headers) VALUES ('" + topic + "', " +
        key_sql + ", " + payload_sql + ", '" + headers_json + "') RETURNING id"));
  }
  // Healthy rows on the test's topic, one per key k0..k4.
  ExpectedMessages Healthy(const std::string& tag) {
    ExpectedMessages out;
    for (int i = 0; i < 5; ++i) {
      const std::string key = "k" + std::to_string(i), value = tag + "-" + std::to_string(i);
      out[Insert(topic_, "'" + key + "'", "'" + value + "'", "{}")] = {key, value, {}};
    }
    return out;
  }
  std::string DeadLetterError(int64_t id) {
    return db_->Scalar("SELECT error FROM outbox.dead_letters WHERE id = " + std::to_string(id));
  }
};

TEST_F(HostileMessageIntegration, EachIsDeliveredOrDeadLetteredWithItsReasonAndTheRestFlows) {
  // librdkafka refuses a message above its message.max.bytes (1,000,000 by default), which is
  // below the broker's (1,048,588 by default): so "just under" means under the producer's limit.
  constexpr size_t kProducerLimit = 1'000'000, kBrokerLimit = 1'048'588;
  ExpectedMessages healthy = Healthy("before");
  const int64_t just_under = Insert(
      topic_, "'under'",
      "convert_to(repeat('u', " + std::to_string(kProducerLimit - 1000) + "), 'UTF8')", "{}");
  const int64_t at_broker_limit =
      Insert(topic_, "'at'",
             "convert_to(repeat('a', " + std::to_string(kBrokerLimit) + "), 'UTF8')", "{}");
  const int64_t two_mib =
      Insert(topic_, "'big'", "convert_to(repeat('b', 2 * 1024 * 1024), 'UTF8')", "{}");
  const int64_t big_key = Insert(topic_, "repeat('K', 1024 * 1024)", "'v'", "{}");
  ExpectedMessages middle = Healthy("middle");
  // Topic names: characters Kafka refuses, 250 characters (the limit is 249), and the same name
  // in upper case (a different topic for Kafka: delivered there). Each with its own key: rows of
  // one key go out in order, whatever their topics.
  std::string upper = topic_;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  CreateTopic(services_, upper, 1);  // the broker does not create topics on first use
  topics_.push_back(upper);          // deleted at the end
  const int64_t bad_chars = Insert("bad topic!", "'bad'", "'v'", "{}");
  const int64_t too_long = Insert(std::string(250, 'x'), "'long'", "'v'", "{}");
  const int64_t other_case = Insert(upper, "'upper'", "'to the upper-case topic'", "{}");
  // Headers: an array and a string (not objects: poison); nested and non-string values are
  // carried as their JSON text.
  const int64_t array_headers = Insert(topic_, "'h'", "'v'", "[\"a\", \"b\"]");
  const int64_t string_headers = Insert(topic_, "'h'", "'v'", "\"just a string\"");
  const int64_t odd_headers =
      Insert(topic_, "'k0'", "'odd headers'",
             "{\"nested\": {\"a\": [1, {\"b\": null}]}, \"n\": 1.50, \"t\": true, \"z\": null}");
  ExpectedMessages after = Healthy("after");

  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  ExpectedMessages expected = healthy;
  expected.insert(middle.begin(), middle.end());
  expected.insert(after.begin(), after.end());
  expected[just_under] = {"under", std::string(kProducerLimit - 1000, 'u'), {}};
  expected[odd_headers] = {"k0",
                           "odd headers",
                           {{"n", "1.50"},
                            {"t", "true"},
                            {"z", std::nullopt},
                            {"nested", "{\"a\": [1, {\"b\": null}]}"}}};
  Consumer consumer(services_, topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(expected), seconds(60))) << outboxd.Log();
  DeliveryCheck check = CheckDelivery(expected, consumer.records(), kPartitions);
  EXPECT_TRUE(check.ok()) << check.Summary();
  Consumer other(services_, upper);
  ASSERT_TRUE(other.ReadUntilIds({other_case}, seconds(30))) << outboxd.Log();

  // Everything else is dead-lettered, each with its reason, and the outbox is empty.
  ASSERT_TRUE(WaitFor([&] { return db_->Scalar("SELECT count(*) FROM outbox.messages") == "0"; },
                      seconds(60)))
      << db_->Scalar("SELECT string_agg(id || ' ' || left(topic, 20), ', ') FROM outbox.messages")
      << "\n"
      << outboxd.Log();
  const std::vector<std::pair<int64_t, std::string>> dead = {
      {at_broker_limit, "too large"},   {two_mib, "too large"},
      {big_key, "too large"},           {bad_chars, "invalid topic name"},
      {too_long, "invalid topic name"}, {array_headers, "JSON object"},
      {string_headers, "JSON object"}};
  for (const auto& [id, reason] : dead) {
    const std::string error = DeadLetterError(id);
    EXPECT_NE(error.find(reason), std::string::npos) << id << ": \"" << error << "\"";
  }
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.dead_letters"), std::to_string(dead.size()))
      << db_->Scalar("SELECT string_agg(id || ': ' || error, E'\\n') FROM outbox.dead_letters");
}

}  // namespace
}  // namespace outboxd::testing
