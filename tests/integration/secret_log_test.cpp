// No secret in anything outboxd prints, against the real services: the PostgreSQL password from a
// file, Kafka secrets from the environment and from a file, librdkafka's and outboxd's debug
// output on, messages delivered; then every line of the log, of `status` and of a configuration
// error is searched for each secret.
#include <csignal>
#include <cstdlib>
#include <fstream>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::seconds;

constexpr const char* kPgPassword = "Pg-File-S3cret-9f2c";
constexpr const char* kSaslPassword = "Sasl-Env-S3cret-41aa";
constexpr const char* kKeyPassword = "Key-File-S3cret-77d0";

class SecretLogIntegration : public ServicesTest {};

TEST_F(SecretLogIntegration, NoSecretInAnyLogLineStatusOrError) {
  const std::string pg_file = TestFile(UniqueName("pgpass"), std::string(kPgPassword) + "\n");
  const std::string key_file = TestFile(UniqueName("keypass"), kKeyPassword);
  setenv("OUTBOXD_TEST_SASL_PASSWORD", kSaslPassword, 1);
  // The project's PostgreSQL trusts local TCP connections, so the password is sent but not needed;
  // librdkafka keeps the SASL and key passwords in its configuration (and debug dump) although the
  // local broker speaks plaintext.
  const std::string extra =
      "[kafka.properties]\n\"debug\" = \"all\"\n\"sasl.username\" = \"outboxd\"\n"
      "\"sasl.password\" = \"${OUTBOXD_TEST_SASL_PASSWORD}\"\n"
      "[kafka.property_files]\n\"ssl.key.password\" = \"" +
      key_file + "\"\n[log]\nlevel = \"trace\"\n";
  const std::string conninfo = db_->conninfo() + " password=" + kPgPassword;
  ExpectedMessages expected = PublishMany(20, 4, topic_);
  OutboxdProcess outboxd(services_, *db_, "", extra, conninfo);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(expected), seconds(30))) << outboxd.Log().substr(0, 5000);
  outboxd.Kill(SIGTERM);
  EXPECT_EQ(outboxd.Wait(seconds(15)), 0);
  const std::string log = outboxd.Log();
  EXPECT_GT(log.size(), 10'000u) << "librdkafka's debug output is missing: the test shows nothing";

  // A second configuration: the password from the file, a status report, and a syntax error on
  // the line that holds a password.
  const std::string with_file = TestFile(
      UniqueName("withfile") + ".toml",
      "[postgres]\nconninfo = \"" + db_->conninfo() + "\"\npassword_file = \"" + pg_file +
          "\"\n[kafka]\nbootstrap_servers = \"" + services_.kafka_bootstrap + "\"\n" + extra);
  auto [status_rc, status_out] = RunOutboxd({"status", "--config", with_file});
  EXPECT_EQ(status_rc, 0) << status_out;
  auto [check_rc, check_out] = RunOutboxd({"check-config", "--config", with_file});
  EXPECT_EQ(check_rc, 0) << check_out;
  const std::string broken = TestFile(
      UniqueName("broken") + ".toml",
      "[postgres]\nconninfo = \"host=x password=" + std::string(kPgPassword) + "\" oops\n");
  auto [broken_rc, broken_out] = RunOutboxd({"check-config", "--config", broken});
  EXPECT_EQ(broken_rc, 2) << broken_out;
  const std::string unreachable =
      TestFile(UniqueName("unreachable") + ".toml",
               "[postgres]\nconninfo = \"host=127.0.0.1 port=1 connect_timeout=2 password=" +
                   std::string(kPgPassword) + "\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n");
  auto [down_rc, down_out] = RunOutboxd({"status", "--config", unreachable});
  EXPECT_EQ(down_rc, 1) << down_out;

  for (const auto& [name, text] :
       std::vector<std::pair<std::string, std::string>>{{"run log", log},
                                                        {"status", status_out},
                                                        {"check-config", check_out},
                                                        {"syntax error", broken_out},
                                                        {"status, PostgreSQL down", down_out}}) {
    for (const char* secret : {kPgPassword, kSaslPassword, kKeyPassword}) {
      size_t at = text.find(secret);
      EXPECT_EQ(at, std::string::npos)
          << name << " shows " << secret << ": ..."
          << text.substr(at == std::string::npos ? 0 : (at > 200 ? at - 200 : 0), 400) << "...";
    }
  }
}

}  // namespace
}  // namespace outboxd::testing
