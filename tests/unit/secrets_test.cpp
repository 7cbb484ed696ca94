// Secrets: ${VAR} and secret files in the configuration, and no secret in what outboxd prints.
#include "secrets.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "config.h"

namespace outboxd {
namespace {

constexpr const char* kKafka = "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n";

// A file under the test's temporary directory, removed at the end of the test.
class SecretFile {
 public:
  explicit SecretFile(const std::string& contents) {
    char path[] = "/tmp/outboxd-secret-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) throw std::runtime_error("mkstemp failed");
    close(fd);
    path_ = path;
    std::ofstream(path_, std::ios::binary) << contents;
  }
  ~SecretFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ErrorOf(const std::string& text) {
  auto c = ParseConfig(text, "test.toml");
  EXPECT_FALSE(c.ok()) << text;
  return c.ok() ? "" : c.status().message();
}

bool Has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

TEST(Secrets, PasswordsFromTheEnvironmentAreUsedAndKnownAsSecrets) {
  setenv("OUTBOXD_TEST_PG_PASSWORD", "pg-env-Pa55", 1);
  setenv("OUTBOXD_TEST_SASL_PASSWORD", "sasl-env-Pa55", 1);
  auto c = ParseConfig(
      "[postgres]\nconninfo = \"host=db user=relay password=${OUTBOXD_TEST_PG_PASSWORD}\"\n" +
          std::string(kKafka) +
          "[kafka.properties]\n\"sasl.password\" = \"${OUTBOXD_TEST_SASL_PASSWORD}\"\n"
          "\"sasl.username\" = \"outboxd\"\n",
      "test.toml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(ConninfoPassword(c->postgres.conninfo), "pg-env-Pa55");
  EXPECT_EQ(c->kafka.properties.at("sasl.password"), "sasl-env-Pa55");
  EXPECT_TRUE(Has(c->secrets, "pg-env-Pa55"));
  EXPECT_TRUE(Has(c->secrets, "sasl-env-Pa55"));
  EXPECT_FALSE(Has(c->secrets, "outboxd")) << "a user name is not a secret";
}

TEST(Secrets, PasswordFilesSetThePostgresPasswordAndKafkaProperties) {
  SecretFile pg("pg-file-Pa55 with 'quote' and \\ backslash\n");  // a Secret's trailing newline
  SecretFile sasl("sasl-file-Pa55\r\n");
  auto c = ParseConfig(
      "[postgres]\nconninfo = \"postgresql://relay:old-one@db:5433/outbox?sslmode=verify-full\"\n"
      "password_file = \"" +
          pg.path() + "\"\n" + kKafka + "[kafka.property_files]\n\"sasl.password\" = \"" +
          sasl.path() + "\"\n",
      "test.toml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(ConninfoPassword(c->postgres.conninfo), "pg-file-Pa55 with 'quote' and \\ backslash");
  // The rest of the URI survives the rewrite.
  EXPECT_NE(c->postgres.conninfo.find("host='db'"), std::string::npos) << c->postgres.conninfo;
  EXPECT_NE(c->postgres.conninfo.find("port='5433'"), std::string::npos);
  EXPECT_NE(c->postgres.conninfo.find("sslmode='verify-full'"), std::string::npos);
  EXPECT_EQ(c->kafka.properties.at("sasl.password"), "sasl-file-Pa55");
  EXPECT_TRUE(Has(c->secrets, "sasl-file-Pa55"));
  EXPECT_TRUE(Has(c->secrets, "old-one"));
}

TEST(Secrets, UnreadableOrEmptySecretFilesAreErrorsWithFileLineAndKey) {
  std::string msg =
      ErrorOf("[postgres]\nconninfo = \"host=db\"\npassword_file = \"/nonexistent/pg-password\"\n" +
              std::string(kKafka));
  EXPECT_NE(msg.find("test.toml:3: postgres.password_file: cannot read /nonexistent/pg-password"),
            std::string::npos)
      << msg;
  SecretFile empty("");
  msg = ErrorOf("[postgres]\nconninfo = \"host=db\"\n" + std::string(kKafka) +
                "[kafka.property_files]\n\"ssl.key.password\" = \"" + empty.path() + "\"\n");
  EXPECT_NE(msg.find("test.toml:6: kafka.property_files.\"ssl.key.password\": "), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("is empty"), std::string::npos) << msg;
  SecretFile one("x");
  msg = ErrorOf("[postgres]\nconninfo = \"host=db\"\n" + std::string(kKafka) +
                "[kafka.properties]\n\"sasl.password\" = \"y\"\n[kafka.property_files]\n"
                "\"sasl.password\" = \"" +
                one.path() + "\"\n");
  EXPECT_NE(msg.find("also set in [kafka.properties]"), std::string::npos) << msg;
}

// toml11 quotes the offending source line in a syntax error; libpq quotes a piece of a
// connection string it can't parse. Neither may show a password.
TEST(Secrets, ConfigurationErrorsNeverShowAPassword) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[postgres]\nconninfo = \"host=db password=Syntax-Pa55\" trailing\n", "Syntax-Pa55"},
      {"[kafka.properties]\n\"sasl.password\" = \"Unterminated-Pa55\n", "Unterminated-Pa55"},
      {"[kafka.properties]\n\"ssl.key.password\" = 'Literal-Pa55' x\n", "Literal-Pa55"},
      {"[postgres]\nconninfo = \"host=db password=Two Words-Pa55\"\n", "Words-Pa55"},
      {"[postgres]\nconninfo = \"postgresql://u:Uri-Pa55@db:badport/x\"\n", "Uri-Pa55"},
      {"[postgres]\nconninfo = \"host=db password=Later-Pa55\"\n" + std::string(kKafka) +
           "[relay]\nbatch_size = \"Later-Pa55\"\n",
       "Later-Pa55"},
  };
  for (const auto& [text, password] : cases) {
    std::string msg = ErrorOf(text);
    EXPECT_NE(msg.find("test.toml:"), std::string::npos) << msg;
    EXPECT_EQ(msg.find(password), std::string::npos) << msg;
  }
}

// Found by config_fuzz: a one-character secret was hidden inside the error's line number.
TEST(Secrets, AShortSecretDoesNotHideTheLineNumber) {
  std::string text = "[postgres]\nconninfo = \"host=db\"\n" + std::string(kKafka) +
                     "[kafka.properties]\n\"sasl.password\" = \"1\"\n";
  for (int i = 0; i < 8; ++i) text += "# padding\n";
  std::string msg = ErrorOf(text + "\"no.such.property\" = 1\n");
  EXPECT_EQ(msg.rfind("test.toml:15: kafka.properties.\"no.such.property\"", 0), 0u) << msg;
}

TEST(Secrets, RedactHidesRegisteredValuesAndPasswordShapedOnes) {
  RegisterSecrets({"Registered-Pa55"});
  EXPECT_EQ(Redact("auth with Registered-Pa55 failed"), "auth with [redacted] failed");
  EXPECT_EQ(Redact("host=db password='a b\\'c' user=x"), "host=db password=[redacted] user=x");
  EXPECT_EQ(Redact("host=db password=abc user=x"), "host=db password=[redacted] user=x");
  EXPECT_EQ(Redact("\"sasl.password\" = \"abc\""), "\"sasl.password\" = [redacted]");
  EXPECT_EQ(Redact("sasl.oauthbearer.client.secret=xyz"),
            "sasl.oauthbearer.client.secret=[redacted]");
  EXPECT_EQ(Redact("postgresql://relay:abc@db/x"), "postgresql://relay:[redacted]@db/x");
  EXPECT_EQ(Redact("https://checker:abc@app:8080/check"),
            "https://checker:[redacted]@app:8080/check");
  // A line of a megabyte (found by config_fuzz: a std::regex here overflowed the stack).
  EXPECT_EQ(Redact("\"sasl.password\" = \"" + std::string(1 << 20, 'x')),
            "\"sasl.password\" = [redacted]");
  // Ordinary text about passwords is left alone.
  EXPECT_EQ(Redact("FATAL: password authentication failed for user \"relay\""),
            "FATAL: password authentication failed for user \"relay\"");
  EXPECT_EQ(Redact("kafka.properties.\"sasl.password\": expected a string"),
            "kafka.properties.\"sasl.password\": expected a string");
}

TEST(Secrets, SecretKafkaPropertiesAreRecognised) {
  for (const char* name :
       {"sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
        "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config"}) {
    EXPECT_TRUE(IsSecretKafkaProperty(name)) << name;
  }
  for (const char* name : {"sasl.username", "security.protocol", "ssl.ca.location",
                           "ssl.certificate.location", "ssl.key.location"}) {
    EXPECT_FALSE(IsSecretKafkaProperty(name)) << name;
  }
  EXPECT_EQ(UrlPassword("http://u:p%40ss@host:1/x"), "p%40ss");
  EXPECT_EQ(UrlPassword("http://host:1/x@y"), "");
}

// Every line through spdlog's default logger, librdkafka's and libpq's included, is filtered.
TEST(Secrets, LogLinesAreRedacted) {
  std::ostringstream out;
  auto logger = std::make_shared<spdlog::logger>(
      "secrets-test", std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  RegisterSecrets({"Logged-Pa55"});
  InstallLogRedaction();
  InstallLogRedaction();  // twice is harmless
  spdlog::warn("kafka: sasl Logged-Pa55 and conninfo host=x password=Other-Pa55");
  spdlog::set_default_logger(previous);
  EXPECT_EQ(out.str().find("Pa55"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("kafka: sasl [redacted] and conninfo host=x password=[redacted]"),
            std::string::npos)
      << out.str();
}

}  // namespace
}  // namespace outboxd
