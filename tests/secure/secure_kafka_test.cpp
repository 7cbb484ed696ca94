// outboxd against the secured broker of `scripts/kafka.sh start secure` (a ctest fixture starts it
// once for this binary and stops it after): delivery over SASL_SSL and over SSL with a client
// certificate; a wrong SASL password and an untrusted CA each give a clear error in the log and
// deliver nothing, and after a restart with the right setting everything arrives. The witness
// consumer reads the broker's PLAINTEXT listener, which outboxd is never given. Every log of these
// tests is searched for the passwords used. A server certificate for another host name is refused
// until the broker presents the right one again; outboxd, still running, then delivers every row.
#include <functional>

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

}  // namespace
}  // namespace outboxd::testing
