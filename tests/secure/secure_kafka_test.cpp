// outboxd against the secured broker of `scripts/kafka.sh start secure` (a ctest fixture starts it
// once for this binary and stops it after): delivery over SASL_SSL and over SSL with a client
// certificate; a wrong SASL password and an untrusted CA each give a clear error in the log and
// deliver nothing, and after a restart with the right setting everything arrives. The witness
// consumer reads the broker's PLAINTEXT listener, which outboxd is never given. Every log of these
// tests is searched for the passwords used.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::seconds;

struct SecureBroker {
  std::string plaintext, sasl_ssl, ssl, user, password_file, password, certs;
};

// The addresses and files from `scripts/kafka.sh env secure` (same OUTBOXD_SECURE_KAFKA_PORT).
SecureBroker ReadSecureEnv() {
  SecureBroker b;
  std::string cmd = std::string(OUTBOXD_SOURCE_DIR) + "/scripts/kafka.sh env secure 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return b;
  char line[1024];
  while (fgets(line, sizeof(line), p) != nullptr) {
    std::string l(line);
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
    auto eq = l.find('=');
    if (l.rfind("export ", 0) != 0 || eq == std::string::npos) continue;
    std::string k = l.substr(7, eq - 7), v = l.substr(eq + 1);
    if (k == "OUTBOXD_SECURE_KAFKA_PLAINTEXT") b.plaintext = v;
    if (k == "OUTBOXD_SECURE_KAFKA_SASL_SSL") b.sasl_ssl = v;
    if (k == "OUTBOXD_SECURE_KAFKA_SSL") b.ssl = v;
    if (k == "OUTBOXD_SECURE_KAFKA_SCRAM_USER") b.user = v;
    if (k == "OUTBOXD_SECURE_KAFKA_SCRAM_PASSWORD_FILE") b.password_file = v;
    if (k == "OUTBOXD_CERTS") b.certs = v;
  }
  pclose(p);
  std::ifstream pw(b.password_file);
  std::getline(pw, b.password);
  return b;
}

// True when the broker answers metadata on `bootstrap` (plaintext) within 5 s.
bool Answers(const std::string& bootstrap) {
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

constexpr const char* kWrongPassword = "Wrong-Sasl-Pw-5e1b7c";

class SecureKafka : public ServicesTest {
 protected:
  void SetUp() override {
    OUTBOXD_REQUIRE_SERVICES(services_);
    broker_ = ReadSecureEnv();
    std::string missing;
    if (broker_.plaintext.empty() || broker_.password.empty()) {
      missing = "scripts/kafka.sh env secure gave no broker or password";
    } else if (!Answers(broker_.plaintext)) {
      missing = "secure Kafka at " + broker_.plaintext;
    }
    if (!missing.empty()) {
      if (InCi()) FAIL() << "secure Kafka missing under CI: " << missing;
      GTEST_SKIP() << "secure Kafka missing (scripts/kafka.sh start secure): " << missing;
    }
    // The witness, CreateTopic and the topic cleanup use the PLAINTEXT listener.
    services_.kafka_bootstrap = broker_.plaintext;
    db_.emplace(services_);
    topic_ = NewTopic("sec", kPartitions);
  }
  void TearDown() override {
    // No password in any log of this test (the right one, and the wrong one of the negative tests).
    for (const auto& [name, text] : logs_) {
      for (const std::string& secret : {broker_.password, std::string(kWrongPassword)}) {
        if (secret.empty()) continue;
        size_t at = text.find(secret);
        EXPECT_EQ(at, std::string::npos)
            << name << " shows a password: ..."
            << text.substr(at == std::string::npos ? 0 : (at > 200 ? at - 200 : 0), 400) << "...";
      }
    }
    ServicesTest::TearDown();
  }

  // [kafka] settings for SASL_SSL with the password read from `password_file`.
  std::string SaslToml(const std::string& password_file) const {
    return "bootstrap_servers = \"" + broker_.sasl_ssl +
           "\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n"
           "\"sasl.mechanism\" = \"PLAIN\"\n\"sasl.username\" = \"" +
           broker_.user + "\"\n\"ssl.ca.location\" = \"" + broker_.certs +
           "/ca.pem\"\n[kafka.property_files]\n\"sasl.password\" = \"" + password_file + "\"\n";
  }
  // [kafka] settings for SSL with the client certificate, trusting `ca`.
  std::string MtlsToml(const std::string& ca) const {
    return "bootstrap_servers = \"" + broker_.ssl +
           "\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"" +
           broker_.certs + "/" + ca + "\"\n\"ssl.certificate.location\" = \"" + broker_.certs +
           "/client.pem\"\n\"ssl.key.location\" = \"" + broker_.certs + "/client.key\"\n";
  }
  // Writes a full configuration for `kafka_toml` and starts outboxd with it (log kept for
  // TearDown).
  std::unique_ptr<OutboxdProcess> Run(const std::string& kafka_toml) {
    // OutboxdProcess writes a configuration for the plain broker; this test's replaces it.
    auto p = std::make_unique<OutboxdProcess>(services_, *db_);
    std::ofstream(p->config_path())
        << "[postgres]\nconninfo = \"" << db_->conninfo()
        << "\"\n[relay]\nidle_grace = \"50ms\"\nshutdown_timeout = \"1s\"\n[backoff]\n"
           "initial = \"50ms\"\nmax = \"1s\"\n[leadership]\n"
           "retry_interval = \"200ms\"\n[kafka]\n"
        << kafka_toml;
    p->Start();
    return p;
  }
  void Keep(const std::string& name, const OutboxdProcess& p) { logs_.emplace_back(name, p.Log()); }
  size_t OutboxRows() const {
    return std::stoul(db_->Scalar("SELECT count(*) FROM outbox.messages"));
  }

  // Delivers over `kafka_toml`; every row arrives once checked by the witness.
  void ExpectDelivery(const std::string& kafka_toml) {
    ExpectedMessages expected = PublishMany(30, 5, topic_);
    auto outboxd = Run(kafka_toml);
    Consumer witness(services_, topic_);
    EXPECT_TRUE(witness.ReadUntilIds(Ids(expected), seconds(30))) << outboxd->Log().substr(0, 4000);
    DeliveryCheck check = CheckDelivery(expected, witness.records(), kPartitions);
    EXPECT_TRUE(check.ok()) << check.Summary();
    EXPECT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, seconds(10)));
    outboxd->Kill(SIGTERM);
    EXPECT_EQ(outboxd->Wait(seconds(15)), 0);
    Keep("delivering run", *outboxd);
  }

  // Starts with `bad_toml`: the log names `error` and nothing arrives; then a restart with
  // `good_toml` delivers every row, the ones written during the failure included.
  void ExpectErrorThenRecovery(const std::string& bad_toml, const std::string& error,
                               const std::string& good_toml) {
    ExpectedMessages expected = PublishMany(20, 4, topic_);
    auto bad = Run(bad_toml);
    EXPECT_TRUE(bad->WaitForLog(error, seconds(30))) << bad->Log().substr(0, 4000);
    ExpectedMessages more = PublishMany(10, 4, topic_);
    expected.insert(more.begin(), more.end());
    Consumer witness(services_, topic_);
    // While it fails for several retries, nothing reaches the topic and every row stays.
    EXPECT_TRUE(bad->running());
    EXPECT_TRUE(witness.ReadFor(std::chrono::milliseconds(3000)).empty());
    EXPECT_EQ(OutboxRows(), expected.size());
    bad->Kill(SIGTERM);
    EXPECT_EQ(bad->Wait(seconds(15)), 0);
    Keep("failing run", *bad);
    auto good = Run(good_toml);
    EXPECT_TRUE(witness.ReadUntilIds(Ids(expected), seconds(30))) << good->Log().substr(0, 4000);
    DeliveryCheck check = CheckDelivery(expected, witness.records(), kPartitions);
    EXPECT_TRUE(check.ok()) << check.Summary();
    EXPECT_EQ(check.lost, 0u);
    EXPECT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, seconds(10)));
    good->Kill(SIGTERM);
    EXPECT_EQ(good->Wait(seconds(15)), 0);
    Keep("fixed run", *good);
  }

  SecureBroker broker_;
  std::vector<std::pair<std::string, std::string>> logs_;
};

TEST_F(SecureKafka, DeliversOverSaslSsl) { ExpectDelivery(SaslToml(broker_.password_file)); }

TEST_F(SecureKafka, DeliversOverMutualTls) { ExpectDelivery(MtlsToml("ca.pem")); }

TEST_F(SecureKafka, WrongSaslPasswordIsAClearErrorThenARestartDeliversAll) {
  const std::string wrong = TestFile(UniqueName("wrongpw"), std::string(kWrongPassword) + "\n");
  ExpectErrorThenRecovery(SaslToml(wrong), "SASL authentication error",
                          SaslToml(broker_.password_file));
}

TEST_F(SecureKafka, UntrustedCaIsAClearErrorThenARestartDeliversAll) {
  ExpectErrorThenRecovery(MtlsToml("other-ca.pem"), "certificate verify failed",
                          MtlsToml("ca.pem"));
}

}  // namespace
}  // namespace outboxd::testing
