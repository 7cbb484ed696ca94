// outboxd against the secured broker of `scripts/kafka.sh start secure` (a ctest fixture starts it
// once for this binary and stops it after): delivery over SASL_SSL and over SSL with a client
// certificate; a wrong SASL password and an untrusted CA each give a clear error in the log and
// deliver nothing, and after a restart with the right setting everything arrives. The witness
// consumer reads the broker's PLAINTEXT listener, which outboxd is never given. Every log of these
// tests is searched for the passwords used. A server certificate for another host name is refused
// until the broker presents the right one again; outboxd, still running, then delivers every row.
#include <cstdio>
#include <cstdlib>
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
