#include "config.h"
#include "kafka/producer.h"

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>
#include <toml.hpp>

namespace outboxd {
namespace {

constexpr const char* kMinimal = R"(
[postgres]
conninfo = "host=127.0.0.1 dbname=x"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
)";

std::string ErrorOf(const std::string& text) {
  auto c = ParseConfig(text, "test.toml");
  EXPECT_FALSE(c.ok());
  return c.ok() ? "" : c.status().message();
}

TEST(Config, MinimalFileGetsDocumentedDefaults) {
  auto c = ParseConfig(kMinimal, "test.toml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  RelayConfig defaults;
  EXPECT_EQ(c->relay.batch_size, defaults.batch_size);
  EXPECT_EQ(c->relay.on_sent, OnSent::kDelete);
  EXPECT_TRUE(c->relay.notify);
  EXPECT_EQ(c->relay.shutdown_timeout, Millis(10'000));
  EXPECT_EQ(c->log.level, "info");
}

// config/outboxd.toml shows every default: loading it must give exactly the built-in defaults.
TEST(Config, ExampleFileMatchesBuiltInDefaults) {
  setenv("OUTBOXD_PG_PORT", "55432", 1);
  setenv("OUTBOXD_KAFKA_PORT", "59092", 1);
  auto c = LoadConfig(std::string(OUTBOXD_SOURCE_DIR) + "/config/outboxd.toml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  Config d;
  EXPECT_EQ(c->postgres.conninfo, "host=127.0.0.1 port=55432 dbname=outboxd user=postgres");
  EXPECT_EQ(c->kafka.bootstrap_servers, "127.0.0.1:59092");
  // The [kafka.properties] shown are exactly outboxd's own producer defaults.
  KafkaConfig bare;
  bare.bootstrap_servers = "127.0.0.1:59092";
  EXPECT_EQ(ProducerProperties(c->kafka), ProducerProperties(bare));
  EXPECT_EQ(c->relay.batch_size, d.relay.batch_size);
  EXPECT_EQ(c->log.format, d.log.format);
  EXPECT_EQ(c->admin.listen, d.admin.listen);
  EXPECT_EQ(c->admin.query_timeout, d.admin.query_timeout);
  EXPECT_EQ(c->relay.max_in_flight, d.relay.max_in_flight);
  EXPECT_EQ(c->relay.notify, d.relay.notify);
  EXPECT_EQ(c->relay.poll_interval, d.relay.poll_interval);
  EXPECT_EQ(c->relay.idle_poll_interval, d.relay.idle_poll_interval);
  EXPECT_EQ(c->relay.idle_grace, d.relay.idle_grace);
  EXPECT_EQ(c->relay.topic_unavailable_dead_letter_after,
            d.relay.topic_unavailable_dead_letter_after);
  EXPECT_EQ(c->relay.on_sent, d.relay.on_sent);
  EXPECT_EQ(c->relay.retention, d.relay.retention);
  EXPECT_EQ(c->relay.cleanup_interval, d.relay.cleanup_interval);
  EXPECT_EQ(c->relay.shutdown_timeout, d.relay.shutdown_timeout);
  EXPECT_EQ(c->relay.dead_letter_topic, d.relay.dead_letter_topic);
  EXPECT_EQ(c->relay.delivery, d.relay.delivery);
  EXPECT_EQ(c->relay.checkpoint_topic, d.relay.checkpoint_topic);
  EXPECT_EQ(c->relay.transactional_id, d.relay.transactional_id);
  EXPECT_EQ(c->backoff.initial, d.backoff.initial);
  EXPECT_EQ(c->backoff.max, d.backoff.max);
  EXPECT_EQ(c->leadership.lock_id, d.leadership.lock_id);
  EXPECT_EQ(c->leadership.retry_interval, d.leadership.retry_interval);
  EXPECT_EQ(c->leadership.session_timeout, d.leadership.session_timeout);
  EXPECT_EQ(c->leadership.keepalive_idle, d.leadership.keepalive_idle);
  EXPECT_EQ(c->leadership.keepalive_interval, d.leadership.keepalive_interval);
  EXPECT_EQ(c->leadership.keepalive_count, d.leadership.keepalive_count);
  EXPECT_EQ(c->leadership.tcp_user_timeout, d.leadership.tcp_user_timeout);
  EXPECT_EQ(c->checkback.enabled, d.checkback.enabled);
  EXPECT_EQ(c->checkback.checker, d.checkback.checker);
  EXPECT_EQ(c->checkback.transaction_timeout, d.checkback.transaction_timeout);
  EXPECT_EQ(c->checkback.check_interval, d.checkback.check_interval);
  EXPECT_EQ(c->checkback.max_checks, d.checkback.max_checks);
  EXPECT_EQ(c->checkback.final_action, d.checkback.final_action);
  EXPECT_EQ(c->checkback.final_topic, d.checkback.final_topic);
  EXPECT_EQ(c->checkback.http_url, d.checkback.http_url);
  EXPECT_EQ(c->checkback.http_timeout, d.checkback.http_timeout);
  EXPECT_EQ(c->checkback.sql_conninfo, d.checkback.sql_conninfo);
  EXPECT_EQ(c->checkback.sql_query, d.checkback.sql_query);
  EXPECT_EQ(c->checkback.sql_timeout, d.checkback.sql_timeout);
  EXPECT_EQ(c->checkback.batch_size, d.checkback.batch_size);
  EXPECT_EQ(c->checkback.poll_interval, d.checkback.poll_interval);
  EXPECT_EQ(c->checkback.settled_retention, d.checkback.settled_retention);
  EXPECT_EQ(c->log.level, d.log.level);
}

// RocketMQ's defaults: first check after 6 s, every 30 s, at most 15 checks, then roll back.
TEST(Config, CheckbackDefaultsAreRocketMqs) {
  CheckbackConfig d;
  EXPECT_EQ(d.transaction_timeout, Millis(6000));
  EXPECT_EQ(d.check_interval, Millis(30'000));
  EXPECT_EQ(d.max_checks, 15);
  EXPECT_EQ(d.final_action, FinalAction::kRollback);
}

TEST(Config, CheckbackSettingsAreReadAndChecked) {
  auto c = ParseConfig(std::string(kMinimal) +
                           "[checkback]\nchecker = \"http\"\nhttp_url = \"http://app:8080/check\"\n"
                           "transaction_timeout = \"200ms\"\nmax_checks = 3\n"
                           "final_action = \"dead_letter\"\nfinal_topic = \"half-dlq\"\n",
                       "t");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->checkback.checker, CheckerKind::kHttp);
  EXPECT_EQ(c->checkback.http_url, "http://app:8080/check");
  EXPECT_EQ(c->checkback.transaction_timeout, Millis(200));
  EXPECT_EQ(c->checkback.max_checks, 3);
  EXPECT_EQ(c->checkback.final_action, FinalAction::kDeadLetter);
  EXPECT_EQ(c->checkback.final_topic, "half-dlq");

  std::string base = std::string(kMinimal) + "[checkback]\n";
  EXPECT_EQ(
      ErrorOf(base + "max_check = 3\n").rfind("test.toml:7: checkback.max_check: unknown key", 0),
      0u);
  EXPECT_EQ(ErrorOf(base + "max_checks = \"3\"\n")
                .rfind("test.toml:7: checkback.max_checks: expected an integer", 0),
            0u);
  EXPECT_NE(ErrorOf(base + "checker = \"grpc\"\n").find("checkback.checker: expected"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "checker = \"http\"\n").find("checkback.http_url: required"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "checker = \"sql\"\n").find("checkback.sql_query: required"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "final_topic = \"x\"\n").find("test.toml:7: checkback.final_topic"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "http_url = \"ftp://x\"\n").find("checkback.http_url: expected"),
            std::string::npos);
}

TEST(Config, LeadershipSettingsAreReadAndChecked) {
  auto c = ParseConfig(std::string(kMinimal) +
                           "[leadership]\nsession_timeout = \"6s\"\nkeepalive_idle = \"2s\"\n"
                           "keepalive_interval = \"1s\"\nkeepalive_count = 2\n"
                           "tcp_user_timeout = \"5s\"\n",
                       "t");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->leadership.session_timeout, Millis(6000));
  EXPECT_EQ(c->leadership.keepalive_idle, Millis(2000));
  EXPECT_EQ(c->leadership.keepalive_interval, Millis(1000));
  EXPECT_EQ(c->leadership.keepalive_count, 2);
  EXPECT_EQ(c->leadership.tcp_user_timeout, Millis(5000));

  std::string base = std::string(kMinimal) + "[leadership]\n";
  EXPECT_NE(ErrorOf(base + "keepalive_idle = \"1500ms\"\n")
                .find("test.toml:7: leadership.keepalive_idle: must be whole seconds"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "session_timeout = \"500ms\"\n")
                .find("leadership.session_timeout: must be at least 1s"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "keepalive_count = 0\n").find("leadership.keepalive_count: must be"),
            std::string::npos);
}

TEST(Config, UnknownKeyNamesFileLineAndKey) {
  std::string text = std::string(kMinimal) + "[relay]\nbatch_size = 10\nbatch_szie = 5\n";
  EXPECT_EQ(ErrorOf(text).rfind("test.toml:8: relay.batch_szie: unknown key", 0), 0u)
      << ErrorOf(text);
}

TEST(Config, WrongTypeNamesFileLineAndKey) {
  std::string text = std::string(kMinimal) + "[relay]\nbatch_size = \"many\"\n";
  EXPECT_EQ(ErrorOf(text).rfind("test.toml:7: relay.batch_size: expected an integer", 0), 0u)
      << ErrorOf(text);
}

TEST(Config, BadDurationAndEnumAreErrors) {
  EXPECT_NE(ErrorOf(std::string(kMinimal) + "[relay]\npoll_interval = \"soon\"\n")
                .find("relay.poll_interval: not a duration"),
            std::string::npos);
  EXPECT_NE(ErrorOf(std::string(kMinimal) + "[relay]\non_sent = \"archive\"\n")
                .find("relay.on_sent: expected \"delete\" or \"retain\""),
            std::string::npos);
}

TEST(Config, MissingRequiredKeys) {
  EXPECT_NE(ErrorOf("[kafka]\nbootstrap_servers = \"x:1\"\n").find("postgres.conninfo: required"),
            std::string::npos);
  EXPECT_NE(ErrorOf("[postgres]\nconninfo = \"dbname=x\"\n").find("kafka.bootstrap_servers"),
            std::string::npos);
}

// The keys the parser knows in `section` ("" = the top level), as its unknown-key error lists them.
std::set<std::string> KnownKeys(const std::string& section) {
  const std::string pg = "[postgres]\nconninfo = \"host=127.0.0.1 dbname=x\"\n";
  const std::string kafka = "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n";
  const std::string probe = "zz_probe = 1\n";
  std::string text = section.empty()         ? probe + pg + kafka
                     : section == "postgres" ? pg + probe + kafka
                     : section == "kafka"    ? pg + kafka + probe
                                             : pg + kafka + "[" + section + "]\n" + probe;
  std::string e = ErrorOf(text);
  const std::string marker = "known here: ";
  size_t from = e.find(marker);
  size_t to = e.rfind(')');
  EXPECT_NE(from, std::string::npos) << section << ": " << e;
  std::set<std::string> keys;
  if (from == std::string::npos || to == std::string::npos) return keys;
  std::stringstream list(e.substr(from + marker.size(), to - from - marker.size()));
  for (std::string key; std::getline(list, key, ',');) {
    keys.insert(key.substr(key.find_first_not_of(' ')));
  }
  return keys;
}

// Settings the parser knows that the TOML text does not show, as "section.key".
std::set<std::string> MissingSettings(const std::string& text) {
  std::istringstream in(text);
  toml::value file = toml::parse(in, "example.toml");
  std::set<std::string> missing;
  for (const std::string& section : KnownKeys("")) {
    if (!file.as_table().count(section)) {
      missing.insert(section);
      continue;
    }
    for (const std::string& key : KnownKeys(section)) {
      if (!file.at(section).as_table().count(key)) missing.insert(section + "." + key);
    }
  }
  return missing;
}

// config/outboxd.toml lists every setting (a missing line would still load as the default).
TEST(Config, ExampleFileShowsEverySetting) {
  std::ifstream in(std::string(OUTBOXD_SOURCE_DIR) + "/config/outboxd.toml");
  std::stringstream text;
  text << in.rdbuf();
  ASSERT_FALSE(text.str().empty());
  EXPECT_EQ(MissingSettings(text.str()), std::set<std::string>{});
  EXPECT_GE(KnownKeys("relay").size(), 11u);  // the probe itself works
  // And the check notices a line taken out.
  std::string without = text.str();
  size_t line = without.find("\nmax_in_flight = ");
  ASSERT_NE(line, std::string::npos);
  without.erase(line + 1, without.find('\n', line + 1) - line);
  EXPECT_EQ(MissingSettings(without), std::set<std::string>{"relay.max_in_flight"});
}

TEST(Config, InvalidConninfoIsCaughtWithoutConnecting) {
  std::string e =
      ErrorOf("[postgres]\nconninfo = \"hots=x\"\n[kafka]\nbootstrap_servers=\"a:1\"\n");
  EXPECT_EQ(e.rfind("test.toml:2: postgres.conninfo:", 0), 0u) << e;
}

TEST(Config, KafkaPropertiesThatBreakGuaranteesAreRefused) {
  for (const char* line :
       {"\"enable.idempotence\" = false", "acks = \"1\"", "partitioner = \"consistent\"",
        "\"bootstrap.servers\" = \"x:1\"", "\"message.timeout.ms\" = 30000",
        "\"enable.gapless.guarantee\" = false", "\"transactional.id\" = \"outboxd-1\"",
        "\"delivery.timeout.ms\" = 30000", "\"request.required.acks\" = 1"}) {
    std::string text = std::string(kMinimal) + "[kafka.properties]\n" + line + "\n";
    EXPECT_NE(ErrorOf(text).find("test.toml:7: kafka.properties."), std::string::npos) << line;
  }
  auto ok = ParseConfig(std::string(kMinimal) +
                            "[kafka.properties]\n\"linger.ms\" = 20\n"
                            "\"compression.type\" = \"lz4\"\n",
                        "t");
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->kafka.properties.at("linger.ms"), "20");
}

TEST(Config, EnvironmentInterpolation) {
  setenv("OUTBOXD_TEST_SECRET", "s3cret", 1);
  auto c = ParseConfig(
      "[postgres]\nconninfo = \"dbname=x password=${OUTBOXD_TEST_SECRET}\"\n"
      "[kafka]\nbootstrap_servers = \"b:1\"\n",
      "t");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->postgres.conninfo, "dbname=x password=s3cret");
  unsetenv("OUTBOXD_TEST_UNSET");
  EXPECT_NE(
      ErrorOf("[postgres]\nconninfo = \"dbname=${OUTBOXD_TEST_UNSET}\"\n")
          .find(
              "test.toml:2: postgres.conninfo: environment variable OUTBOXD_TEST_UNSET is not set"),
      std::string::npos);
}

TEST(Config, SyntaxErrorNamesFileAndLine) {
  std::string e = ErrorOf("[postgres]\nconninfo = \n");
  EXPECT_EQ(e.rfind("test.toml:2:", 0), 0u) << e;
}

TEST(Config, DeliveryModes) {
  auto eo = ParseConfig(std::string(kMinimal) +
                            "[relay]\ndelivery = \"exactly_once\"\n"
                            "checkpoint_topic = \"cp\"\ntransactional_id = \"orders\"\n",
                        "t");
  ASSERT_TRUE(eo.ok()) << eo.status().message();
  EXPECT_EQ(eo->relay.delivery, Delivery::kExactlyOnce);
  EXPECT_EQ(eo->relay.checkpoint_topic, "cp");
  EXPECT_EQ(TransactionalId(*eo), "orders");
  std::string e = ErrorOf(std::string(kMinimal) + "[relay]\ndelivery = \"twice\"\n");
  EXPECT_NE(e.find("test.toml:7: relay.delivery: expected \"at_least_once\" or \"exactly_once\""),
            std::string::npos)
      << e;
  e = ErrorOf(std::string(kMinimal) + "[relay]\ncheckpoint_topic = \"\"\n");
  EXPECT_NE(e.find("relay.checkpoint_topic: must not be empty"), std::string::npos) << e;
}

// The sections [delay], [inbox] and [doctor]: the example file shows the defaults.
TEST(Config, ExampleFileMatchesDelayInboxDoctorDefaults) {
  setenv("OUTBOXD_PG_PORT", "55432", 1);
  setenv("OUTBOXD_KAFKA_PORT", "59092", 1);
  auto c = LoadConfig(std::string(OUTBOXD_SOURCE_DIR) + "/config/outboxd.toml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  Config d;
  EXPECT_EQ(c->delay.enabled, d.delay.enabled);
  EXPECT_EQ(c->delay.poll_interval, d.delay.poll_interval);
  EXPECT_EQ(c->delay.batch_size, d.delay.batch_size);
  EXPECT_EQ(c->inbox.retention, d.inbox.retention);
  EXPECT_EQ(c->inbox.cleanup_interval, d.inbox.cleanup_interval);
  EXPECT_EQ(c->doctor.startup_check, d.doctor.startup_check);
  EXPECT_EQ(c->doctor.max_unsent_age, d.doctor.max_unsent_age);
  EXPECT_EQ(c->doctor.long_transaction, d.doctor.long_transaction);
  EXPECT_EQ(c->doctor.kafka_timeout, d.doctor.kafka_timeout);
  auto zero = ParseConfig(std::string(kMinimal) + "[inbox]\nretention = \"0s\"\n", "t");
  ASSERT_TRUE(zero.ok()) << zero.status().message();
  EXPECT_EQ(zero->inbox.retention, Millis(0));
  EXPECT_NE(ErrorOf(std::string(kMinimal) + "[delay]\nbatch_size = 0\n").find("delay.batch_size"),
            std::string::npos);
}

}  // namespace
}  // namespace outboxd

namespace outboxd {
namespace {

// Found by tests/fuzz/config_fuzz.cpp: toml11 recursed into a deeply nested array or inline
// table until the stack overflowed (a crash, not exit 2). Strings and comments don't count.
TEST(Config, DeepNestingIsRefusedWithFileAndLine) {
  for (const std::string& nested : {std::string(100000, '[') + std::string(100000, ']'), [] {
                                      std::string s;
                                      for (int i = 0; i < 50000; ++i) s += "{a=";
                                      s += "1";
                                      for (int i = 0; i < 50000; ++i) s += "}";
                                      return s;
                                    }()}) {
    std::string msg = ErrorOf(std::string(kMinimal) + "[relay]\nbatch_size = " + nested + "\n");
    EXPECT_EQ(msg.rfind("test.toml:7: arrays or inline tables nested deeper than 32", 0), 0u)
        << msg.substr(0, 200);
  }
  auto ok =
      ParseConfig(std::string(kMinimal) + "# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n" +
                      "[kafka.properties]\n\"client.id\" = \"" + std::string(40, '[') + "\"\n",
                  "test.toml");
  EXPECT_TRUE(ok.ok()) << ok.status().message();
}

}  // namespace
}  // namespace outboxd

namespace outboxd {
namespace {

TEST(Config, TopicUnavailableDeadLetterBoundIsReadAndChecked) {
  auto c = ParseConfig(
      std::string(kMinimal) + "[relay]\ntopic_unavailable_dead_letter_after = \"10m\"\n",
      "test.toml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->relay.topic_unavailable_dead_letter_after, Millis(600'000));
  EXPECT_EQ(Config().relay.topic_unavailable_dead_letter_after, Millis(0)) << "0: never";
  const std::string error =
      ErrorOf(std::string(kMinimal) + "[relay]\ntopic_unavailable_dead_letter_after = \"soon\"\n");
  EXPECT_NE(error.find("test.toml"), std::string::npos) << error;
  EXPECT_NE(error.find("relay.topic_unavailable_dead_letter_after: not a duration"),
            std::string::npos)
      << error;
}

}  // namespace
}  // namespace outboxd
