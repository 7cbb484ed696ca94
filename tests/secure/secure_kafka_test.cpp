// outboxd against the secured broker of `scripts/kafka.sh start secure` (a ctest fixture starts it
// once for this binary and stops it after): delivery over SASL_SSL and over SSL with a client
// certificate; a wrong SASL password and an untrusted CA each give a clear error in the log and
// deliver nothing, and after a restart with the right setting everything arrives. The witness
// consumer reads the broker's PLAINTEXT listener, which outboxd is never given. Every log of these
// tests is searched for the passwords used. A server certificate for another host name is refused
// until the broker presents the right one again; outboxd, still running, then delivers every row.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <regex>

#include <gtest/gtest.h>

#include "secure_support.h"

namespace outboxd::testing {
namespace {

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

// The SSL listener presents a certificate of the trusted CA that names another host
// (wrong.example, not 127.0.0.1): librdkafka's host name check refuses it. The broker's keystore is
// swapped at run time (a dynamic listener setting), so outboxd keeps running through the fix.
TEST_F(SecureKafka, HostNameMismatchIsAClearErrorUntilTheRightCertificateIsBack) {
  const std::string setting = "listener.name.ssl.ssl.keystore.location";
  auto present = [&](const std::string& keystore, const std::string& name) {
    ASSERT_EQ(SetBrokerConfigs(broker_.plaintext, {{setting, broker_.certs + "/" + keystore}}), "");
    std::string subject;
    ASSERT_TRUE(WaitFor(
        [&] {
          subject = PresentedSubject(broker_.ssl);
          return subject.find("CN = " + name) != std::string::npos;
        },
        std::chrono::seconds(20)))
        << "the SSL listener still presents " << subject;
  };
  struct Restore {
    std::function<void()> f;
    ~Restore() { f(); }
  } restore{[&] { present("server-keystore.pem", "localhost"); }};
  present("wrong-name-keystore.pem", "wrong.example");
  ExpectErrorUntilFixed(MtlsToml("ca.pem"), "", "mismatch (the certificate does not name the host",
                        [&] { present("server-keystore.pem", "localhost"); });
}

// Certificate rotation on the Kafka side: librdkafka 2.0.2 reads ssl.ca.location (and the client
// certificate and key) when the producer is created. A CA file replaced while outboxd runs is not
// used, however often librdkafka reconnects (at most every 500 ms here); a restart uses it.
TEST_F(SecureKafka, ReplacedCaFileIsUsedOnlyAfterARestart) {
  namespace fs = std::filesystem;
  const std::string ca = TestFile(UniqueName("kafkaca"), "");
  fs::copy_file(broker_.certs + "/other-ca.pem", ca, fs::copy_options::overwrite_existing);
  const std::string toml = MtlsToml(ca) + "\"reconnect.backoff.max.ms\" = \"500\"\n";
  ExpectedMessages expected = PublishMany(10, 2, topic_);
  auto outboxd = Run(toml);
  ASSERT_TRUE(
      outboxd->WaitForLog("unable to get local issuer certificate", std::chrono::seconds(30)))
      << outboxd->Log().substr(0, 4000);
  fs::copy_file(broker_.certs + "/ca.pem", ca + ".new");
  fs::rename(ca + ".new", ca);  // the right CA now
  Consumer witness(services_, topic_);
  EXPECT_TRUE(witness.ReadFor(std::chrono::milliseconds(4000)).empty())
      << "librdkafka used the replaced CA file without a restart: update the README";
  EXPECT_EQ(OutboxRows(), expected.size());
  outboxd->Kill(SIGTERM);
  EXPECT_EQ(outboxd->Wait(std::chrono::seconds(15)), 0);
  Keep("running through the replacement", *outboxd);
  auto restarted = Run(toml);
  EXPECT_TRUE(witness.ReadUntilIds(Ids(expected), std::chrono::seconds(30)))
      << restarted->Log().substr(0, 4000);
  EXPECT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, std::chrono::seconds(10)));
  restarted->Kill(SIGTERM);
  EXPECT_EQ(restarted->Wait(std::chrono::seconds(15)), 0);
  Keep("restarted", *restarted);
}

// SCRAM-SHA-512 from outboxd. Debian's librdkafka 2.0.2 is refused by Kafka 4.x ("invalid
// credentials" with the right password: its SCRAM nonce bug, fixed in 2.6.1). The same outboxd
// binary run with a newer librdkafka (scripts/rdkafka-wheel.sh fetches the one the confluent-kafka
// wheel on PyPI bundles; LD_LIBRARY_PATH for outboxd only) delivers over SASL_SSL with SCRAM.
// Skipped when the library cannot be fetched, except under CI=true.
TEST_F(SecureKafka, DeliversOverSaslScramWithANewerLibrdkafka) {
  std::string dir;
  {
    std::string cmd = std::string(OUTBOXD_SOURCE_DIR) + "/scripts/rdkafka-wheel.sh ensure";
    FILE* p = popen(cmd.c_str(), "r");
    char line[1024];
    while (p != nullptr && fgets(line, sizeof(line), p) != nullptr) dir = line;
    if (p == nullptr || pclose(p) != 0) dir.clear();
    while (!dir.empty() && dir.back() == '\n') dir.pop_back();
  }
  if (dir.empty()) {
    if (InCi()) FAIL() << "scripts/rdkafka-wheel.sh could not fetch a newer librdkafka under CI";
    GTEST_SKIP() << "no newer librdkafka (scripts/rdkafka-wheel.sh failed: offline?)";
  }
  const char* old = std::getenv("LD_LIBRARY_PATH");
  const std::string saved = old ? old : "";
  setenv("LD_LIBRARY_PATH", dir.c_str(), 1);  // for the children: this process keeps its own
  struct Restore {
    bool had;
    std::string value;
    ~Restore() { had ? setenv("LD_LIBRARY_PATH", value.c_str(), 1) : unsetenv("LD_LIBRARY_PATH"); }
  } restore{old != nullptr, saved};
  auto [rc, version] = RunOutboxd({"version"});
  ASSERT_EQ(rc, 0) << version;
  std::smatch m;
  ASSERT_TRUE(
      std::regex_search(version, m, std::regex("librdkafka ([0-9]+)\\.([0-9]+)\\.([0-9]+)")))
      << version;
  const int major = std::stoi(m[1]), minor = std::stoi(m[2]), patch = std::stoi(m[3]);
  ASSERT_TRUE(major > 2 || (major == 2 && (minor > 6 || (minor == 6 && patch >= 1))))
      << "outboxd runs with " << m[0] << ", not 2.6.1 or later";
  ExpectDelivery(SaslToml(broker_.password_file, broker_.user, "SCRAM-SHA-512"));
}

}  // namespace
}  // namespace outboxd::testing
