// outboxd to the project's PostgreSQL over TLS (scripts/pg.sh runs it with ssl = on and the
// server certificate of scripts/certs.sh): with sslmode=verify-full every connection outboxd opens
// is TLS (the server's pg_stat_ssl says so, not outboxd) and every row is delivered; an untrusted
// CA and a host name the certificate does not name each log libpq's clear error and deliver
// nothing; a restart with the right setting delivers every row.
#include <csignal>
#include <cstdio>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::seconds;

std::string CertsDir() {
  std::string cmd = std::string(OUTBOXD_SOURCE_DIR) + "/scripts/certs.sh dir";
  FILE* p = popen(cmd.c_str(), "r");
  char line[1024] = {0};
  if (p == nullptr) return "";
  if (fgets(line, sizeof(line), p) == nullptr) line[0] = '\0';
  pclose(p);
  std::string dir(line);
  while (!dir.empty() && dir.back() == '\n') dir.pop_back();
  return dir;
}

class SecurePostgres : public ServicesTest {
 protected:
  std::string Tls(const std::string& ca, const std::string& host = "") const {
    std::string c = db_->conninfo() + " sslmode=verify-full sslrootcert=" + CertsDir() + "/" + ca;
    if (!host.empty()) c += " host=" + host + " hostaddr=127.0.0.1";
    return c;
  }
  size_t OutboxRows() const {
    return std::stoul(db_->Scalar("SELECT count(*) FROM outbox.messages"));
  }

  // Starts with `bad`: libpq's `error` in the log, nothing arrives, every row stays; then the
  // TLS conninfo that is right delivers them all.
  void ExpectErrorThenRecovery(const std::string& bad, const std::string& error) {
    ExpectedMessages expected = PublishMany(20, 4, topic_);
    {
      OutboxdProcess outboxd(services_, *db_, "", "", bad);
      outboxd.Start();
      EXPECT_TRUE(outboxd.WaitForLog(error, seconds(30))) << outboxd.Log().substr(0, 4000);
      Consumer witness(services_, topic_);
      EXPECT_TRUE(witness.ReadFor(std::chrono::milliseconds(2000)).empty());
      EXPECT_EQ(OutboxRows(), expected.size());
      outboxd.Kill(SIGTERM);
      outboxd.Wait(seconds(15));
    }
    OutboxdProcess outboxd(services_, *db_, "", "", Tls("ca.pem"));
    outboxd.Start();
    Consumer witness(services_, topic_);
    EXPECT_TRUE(witness.ReadUntilIds(Ids(expected), seconds(30))) << outboxd.Log().substr(0, 4000);
    DeliveryCheck check = CheckDelivery(expected, witness.records(), kPartitions);
    EXPECT_TRUE(check.ok()) << check.Summary();
    EXPECT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, seconds(10)));
  }
};

TEST_F(SecurePostgres, VerifyFullDeliversAndEveryConnectionOfOutboxdIsTls) {
  ExpectedMessages expected = PublishMany(30, 5, topic_);
  OutboxdProcess outboxd(services_, *db_, "", "", Tls("ca.pem", "localhost"));
  outboxd.Start();
  Consumer witness(services_, topic_);
  ASSERT_TRUE(witness.ReadUntilIds(Ids(expected), seconds(30))) << outboxd.Log().substr(0, 4000);
  DeliveryCheck check = CheckDelivery(expected, witness.records(), kPartitions);
  EXPECT_TRUE(check.ok()) << check.Summary();
  const std::string sql =
      "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_activity a "
      "JOIN pg_stat_ssl s USING (pid) WHERE a.datname = '" +
      db_->name() + "' AND a.application_name <> 'outboxd-test' AND a.pid <> pg_backend_pid()";
  std::string tls_of_all;
  EXPECT_TRUE(WaitFor(
      [&] {
        tls_of_all = db_->Scalar(sql);
        return tls_of_all != "0/0";
      },
      seconds(10)));
  auto slash = tls_of_all.find('/');
  ASSERT_NE(slash, std::string::npos) << tls_of_all;
  EXPECT_EQ(tls_of_all.substr(0, slash), tls_of_all.substr(slash + 1))
      << "connections of outboxd with TLS / all: " << tls_of_all;
  outboxd.Kill(SIGTERM);
  EXPECT_EQ(outboxd.Wait(seconds(15)), 0);
}

TEST_F(SecurePostgres, UntrustedCaIsAClearErrorThenARestartDeliversAll) {
  ExpectErrorThenRecovery(Tls("other-ca.pem"), "certificate verify failed");
}

TEST_F(SecurePostgres, HostNameMismatchIsAClearErrorThenARestartDeliversAll) {
  ExpectErrorThenRecovery(Tls("ca.pem", "wrong.example"), "does not match host name");
}

}  // namespace
}  // namespace outboxd::testing
