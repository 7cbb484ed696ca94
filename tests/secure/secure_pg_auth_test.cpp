// outboxd authenticating to the project's PostgreSQL (scripts/pg.sh) as a production setup does:
// TLS with sslmode=verify-full and a scram-sha-256 password read from [postgres] password_file,
// or a client certificate (pg_hba.conf's `cert`). The roles only have TLS lines in pg_hba.conf
// (plain TCP is rejected for them), so a connection without TLS cannot succeed. A wrong password
// and an untrusted CA each show libpq's error in the log and in /readyz's reason, deliver nothing,
// keep every row, and are retried with back-off until they are fixed on the running process (the
// server's password changed, the CA file replaced); then every row arrives. Certificate files are
// read at each connection: replaced client certificate files are used from the next reconnect.
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::seconds;
namespace fs = std::filesystem;

// `export NAME=value` lines of a script's output, by name.
std::map<std::string, std::string> ScriptEnv(const std::string& script_args) {
  std::map<std::string, std::string> out;
  std::string cmd = std::string(OUTBOXD_SOURCE_DIR) + "/scripts/" + script_args + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char line[2048];
  while (fgets(line, sizeof(line), p) != nullptr) {
    std::string l(line);
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
    auto eq = l.find('=');
    if (l.rfind("export ", 0) != 0 || eq == std::string::npos) continue;
    out[l.substr(7, eq - 7)] = l.substr(eq + 1);
  }
  pclose(p);
  return out;
}

// The first line a script prints.
std::string ScriptLine(const std::string& script_args) {
  std::string cmd = std::string(OUTBOXD_SOURCE_DIR) + "/scripts/" + script_args + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  char line[2048] = {0};
  if (p == nullptr) return "";
  if (fgets(line, sizeof(line), p) == nullptr) line[0] = '\0';
  pclose(p);
  std::string s(line);
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

// Replaces `to` with a copy of `from` in one rename, as a Secret volume update does.
void ReplaceFile(const std::string& from, const std::string& to) {
  const std::string tmp = to + ".new";
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing);
  fs::permissions(tmp, fs::perms::owner_read | fs::perms::owner_write);
  fs::rename(tmp, to);
}

// /readyz of the admin listener that `log` names ("admin listener on 127.0.0.1:PORT"): the status
// and the reason.
std::optional<std::pair<int, std::string>> Readyz(const std::string& log) {
  std::smatch m;
  static const std::regex kListen("admin listener on 127\\.0\\.0\\.1:([0-9]+)");
  if (!std::regex_search(log, m, kListen)) return std::nullopt;
  httplib::Client c("127.0.0.1", std::stoi(m[1]));
  c.set_connection_timeout(2);
  c.set_read_timeout(2);
  auto r = c.Get("/readyz");
  if (!r) return std::nullopt;
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (j.is_discarded()) return std::make_pair(r->status, "not JSON: " + r->body);
  return std::make_pair(r->status, j.value("reason", std::string()));
}

class SecurePostgresAuth : public ServicesTest {
 protected:
  void SetUp() override {
    ServicesTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto env = ScriptEnv("pg.sh env");
    certs_ = ScriptLine("certs.sh dir");
    scram_user_ = env["OUTBOXD_PG_SCRAM_USER"];
    cert_user_ = env["OUTBOXD_PG_CERT_USER"];
    password_file_ = env["OUTBOXD_PG_SCRAM_PASSWORD_FILE"];
    password_ = ReadAll(password_file_);
    const std::string roles =
        db_->Scalar("SELECT count(*) FROM pg_roles WHERE rolname IN ('" + scram_user_ + "', '" +
                    cert_user_ + "', 'outboxd_scram_users')");
    if (scram_user_.empty() || password_.empty() || roles != "3" || certs_.empty()) {
      FAIL() << "scripts/pg.sh start did not set up the scram and cert roles (restart it): roles "
             << roles << ", password file '" << password_file_ << "'";
    }
    // Each test database's schema: the login roles run outboxd as members of outbox_relay.
    db_->Exec("GRANT outbox_relay TO " + scram_user_ + ", " + cert_user_);
  }
  void TearDown() override {
    for (const auto& [name, text] : logs_) {
      for (const std::string& secret : {password_, std::string(kWrongPassword)}) {
        size_t at = text.find(secret);
        EXPECT_EQ(at, std::string::npos) << name << " shows a password";
      }
    }
    for (const auto& role : roles_) db_->Exec("DROP ROLE IF EXISTS " + role);
    ServicesTest::TearDown();
  }

  std::string Conninfo(const std::string& user, const std::string& tls) const {
    return "host=localhost hostaddr=127.0.0.1 port=" + services_.pg_port +
           " dbname=" + db_->name() + " user=" + user + " sslmode=verify-full " + tls;
  }
  std::string CaOption(const std::string& ca_file) const { return "sslrootcert=" + ca_file; }
  std::string CertOptions(const std::string& dir, const std::string& prefix) const {
    return "sslcert=" + dir + "/" + prefix + ".pem sslkey=" + dir + "/" + prefix + ".key";
  }
  // Starts outboxd with `conninfo` and, if given, [postgres] password_file.
  std::unique_ptr<OutboxdProcess> Run(const std::string& conninfo,
                                      const std::string& password_file = "") {
    auto p = std::make_unique<OutboxdProcess>(services_, *db_, "", "", conninfo);
    if (!password_file.empty()) {
      std::ifstream in(p->config_path());
      std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      in.close();
      const std::string after = "conninfo = \"" + conninfo + "\"\n";
      config.insert(config.find(after) + after.size(),
                    "password_file = \"" + password_file + "\"\n");
      std::ofstream(p->config_path()) << config;
    }
    p->Start();
    return p;
  }
  size_t OutboxRows() const {
    return std::stoul(db_->Scalar("SELECT count(*) FROM outbox.messages"));
  }
  // "<TLS sessions>/<all sessions>" of `user` in this test's database (outboxd's connections).
  std::string TlsSessionsOf(const std::string& user, const std::string& extra = "") const {
    return db_->Scalar("SELECT count(*) FILTER (WHERE s.ssl" + extra +
                       ") || '/' || count(*) FROM " +
                       "pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = '" +
                       db_->name() + "' AND a.usename = '" + user + "'");
  }

  void ExpectDelivery(const std::string& conninfo, const std::string& password_file,
                      const std::string& user, const std::string& session_check) {
    ExpectedMessages expected = PublishMany(30, 5, topic_);
    auto outboxd = Run(conninfo, password_file);
    Consumer witness(services_, topic_);
    ASSERT_TRUE(witness.ReadUntilIds(Ids(expected), seconds(30))) << outboxd->Log().substr(0, 4000);
    DeliveryCheck check = CheckDelivery(expected, witness.records(), kPartitions);
    EXPECT_TRUE(check.ok()) << check.Summary();
    EXPECT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, seconds(10)));
    // The server's view: outboxd's sessions are this role's, every one over TLS (and, for the
    // certificate role, with the client certificate's name).
    std::string sessions;
    EXPECT_TRUE(WaitFor(
        [&] {
          sessions = TlsSessionsOf(user, session_check);
          auto slash = sessions.find('/');
          return sessions != "0/0" && sessions.substr(0, slash) == sessions.substr(slash + 1);
        },
        seconds(10)))
        << "TLS sessions of " << user << " / all: " << sessions;
    outboxd->Kill(SIGTERM);
    EXPECT_EQ(outboxd->Wait(seconds(15)), 0);
    logs_.emplace_back("delivering run", outboxd->Log());
  }

  // outboxd runs with a setting that fails with `error`: the log and /readyz name it, nothing
  // arrives, every row stays (more are written meanwhile). Then `fix` repairs it outside the
  // process; outboxd, retrying with back-off, connects and delivers every row.
  void ExpectRetriedUntilFixed(std::unique_ptr<OutboxdProcess> outboxd, const std::string& error,
                               const std::function<void()>& fix) {
    ExpectedMessages expected = PublishMany(20, 4, topic_);
    ASSERT_TRUE(outboxd->WaitForLog(error, seconds(30))) << outboxd->Log().substr(0, 4000);
    std::optional<std::pair<int, std::string>> ready;
    EXPECT_TRUE(WaitFor(
        [&] {
          ready = Readyz(outboxd->Log());
          return ready && ready->first == 503 && ready->second.find(error) != std::string::npos;
        },
        seconds(10)))
        << (ready ? ready->second : "no /readyz answer");
    ExpectedMessages more = PublishMany(10, 4, topic_);
    expected.insert(more.begin(), more.end());
    Consumer witness(services_, topic_);
    EXPECT_TRUE(witness.ReadFor(std::chrono::milliseconds(2000)).empty());
    EXPECT_TRUE(outboxd->running());
    EXPECT_EQ(OutboxRows(), expected.size());
    fix();
    EXPECT_TRUE(witness.ReadUntilIds(Ids(expected), seconds(30))) << outboxd->Log().substr(0, 4000);
    DeliveryCheck check = CheckDelivery(expected, witness.records(), kPartitions);
    EXPECT_TRUE(check.ok()) << check.Summary();
    EXPECT_EQ(check.lost, 0u);
    EXPECT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, seconds(10)));
    // Retried, not given up: the recovery line counts the attempts.
    std::smatch m;
    const std::string log = outboxd->Log();
    ASSERT_TRUE(std::regex_search(log, m,
                                  std::regex("PostgreSQL: recovered after [0-9.]+s and "
                                             "([0-9]+) retr")))
        << log.substr(0, 4000);
    EXPECT_GE(std::stoi(m[1]), 2);
    ready = Readyz(log);
    ASSERT_TRUE(ready);
    EXPECT_EQ(ready->first, 200) << ready->second;
    outboxd->Kill(SIGTERM);
    EXPECT_EQ(outboxd->Wait(seconds(15)), 0);
    logs_.emplace_back("failing, then fixed run", outboxd->Log());
  }

  // A login role of its own (a member of outboxd_scram_users, so pg_hba.conf asks it for a
  // scram-sha-256 password over TLS), dropped at the end.
  std::string NewScramRole(const std::string& password) {
    std::string role = UniqueName("scram");
    db_->Exec("CREATE ROLE " + role +
              " LOGIN IN ROLE outboxd_scram_users, outbox_relay PASSWORD '" + password + "'");
    roles_.push_back(role);
    return role;
  }

  static constexpr const char* kWrongPassword = "Wrong-Pg-Pw-8c2d41";
  std::string certs_, scram_user_, cert_user_, password_file_, password_;
  std::vector<std::string> roles_;
  std::vector<std::pair<std::string, std::string>> logs_;
};

TEST_F(SecurePostgresAuth, ScramPasswordFromFileOverVerifyFullDelivers) {
  ExpectDelivery(Conninfo(scram_user_, CaOption(certs_ + "/ca.pem")), password_file_, scram_user_,
                 "");
}

TEST_F(SecurePostgresAuth, ClientCertificateRoleDelivers) {
  ExpectDelivery(
      Conninfo(cert_user_, CaOption(certs_ + "/ca.pem") + " " + CertOptions(certs_, "pg-client")),
      "", cert_user_, " AND s.client_dn = '/CN=" + cert_user_ + "'");
}

TEST_F(SecurePostgresAuth, WithoutTlsTheRolesAreRefused) {
  // What a client that fell back to plain TCP would meet: pg_hba.conf rejects it.
  for (const std::string& user : {scram_user_, cert_user_}) {
    auto c =
        pg::Connection::Open("host=127.0.0.1 port=" + services_.pg_port + " dbname=" + db_->name() +
                                 " user=" + user + " sslmode=disable password=" + password_,
                             "outboxd-test");
    ASSERT_FALSE(c.ok()) << user;
    EXPECT_NE(c.status().message().find("no encryption"), std::string::npos)
        << c.status().message();
  }
}

TEST_F(SecurePostgresAuth, WrongPasswordIsRetriedWithBackoffUntilTheServerAcceptsIt) {
  const std::string role = NewScramRole(password_);
  const std::string wrong = TestFile(UniqueName("pgwrongpw"), std::string(kWrongPassword) + "\n");
  auto outboxd = Run(Conninfo(role, CaOption(certs_ + "/ca.pem")), wrong);
  ExpectRetriedUntilFixed(
      std::move(outboxd), "password authentication failed for user \"" + role + "\"", [&] {
        // The operator fixes the server's side; outboxd is not restarted.
        db_->Exec("ALTER ROLE " + role + " PASSWORD '" + std::string(kWrongPassword) + "'");
      });
}

TEST_F(SecurePostgresAuth, UntrustedCaIsRetriedUntilTheCaFileIsReplaced) {
  const std::string dir = TestFile(UniqueName("pgtls"), "");
  fs::remove(dir);
  fs::create_directory(dir);
  ReplaceFile(certs_ + "/other-ca.pem", dir + "/ca.pem");
  auto outboxd = Run(Conninfo(scram_user_, CaOption(dir + "/ca.pem")), password_file_);
  ExpectRetriedUntilFixed(std::move(outboxd), "certificate verify failed",
                          [&] { ReplaceFile(certs_ + "/ca.pem", dir + "/ca.pem"); });
}

TEST_F(SecurePostgresAuth, HostNameMismatchIsAClearErrorAndNotReady) {
  ExpectedMessages expected = PublishMany(10, 2, topic_);
  auto outboxd = Run("host=wrong.example hostaddr=127.0.0.1 port=" + services_.pg_port +
                         " dbname=" + db_->name() + " user=" + scram_user_ +
                         " sslmode=verify-full sslrootcert=" + certs_ + "/ca.pem",
                     password_file_);
  const std::string error = "does not match host name \"wrong.example\"";
  ASSERT_TRUE(outboxd->WaitForLog(error, seconds(30))) << outboxd->Log().substr(0, 4000);
  std::optional<std::pair<int, std::string>> ready;
  EXPECT_TRUE(WaitFor(
      [&] {
        ready = Readyz(outboxd->Log());
        return ready && ready->first == 503 && ready->second.find(error) != std::string::npos;
      },
      seconds(10)))
      << (ready ? ready->second : "no /readyz answer");
  Consumer witness(services_, topic_);
  EXPECT_TRUE(witness.ReadFor(std::chrono::milliseconds(2000)).empty());
  EXPECT_EQ(OutboxRows(), expected.size());
  outboxd->Kill(SIGTERM);
  EXPECT_EQ(outboxd->Wait(seconds(15)), 0);
  logs_.emplace_back("host name mismatch", outboxd->Log());
}

// Certificate rotation: libpq reads sslcert/sslkey/sslrootcert at each connection. The files are
// replaced while outboxd runs connected; its sessions are ended (as a server restart or a network
// failure would); the next connection presents the replaced certificate (an untrusted one: the
// server refuses it, nothing is delivered), and once the good files are back it delivers again.
TEST_F(SecurePostgresAuth, ReplacedClientCertificateFilesAreUsedFromTheNextReconnect) {
  const std::string dir = TestFile(UniqueName("pgrot"), "");
  fs::remove(dir);
  fs::create_directory(dir);
  auto install = [&](const std::string& prefix) {
    ReplaceFile(certs_ + "/" + prefix + ".pem", dir + "/client.pem");
    ReplaceFile(certs_ + "/" + prefix + ".key", dir + "/client.key");
  };
  install("pg-client");
  ExpectedMessages first = PublishMany(10, 2, topic_);
  auto outboxd =
      Run(Conninfo(cert_user_, CaOption(certs_ + "/ca.pem") + " " + CertOptions(dir, "client")));
  Consumer witness(services_, topic_);
  ASSERT_TRUE(witness.ReadUntilIds(Ids(first), seconds(30))) << outboxd->Log().substr(0, 4000);
  ASSERT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, seconds(10)));

  install("other-client");  // signed by a CA the server does not trust
  const std::string kill =
      "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
      "usename = '" +
      cert_user_ + "' AND datname = '" + db_->name() + "'";
  db_->Scalar(kill);
  ExpectedMessages second = PublishMany(10, 2, topic_);
  ASSERT_TRUE(outboxd->WaitForLog("unknown ca", seconds(30))) << outboxd->Log().substr(0, 4000);
  EXPECT_EQ(witness.ReadFor(std::chrono::milliseconds(2000)).size(), first.size());
  EXPECT_EQ(OutboxRows(), second.size());

  install("pg-client");
  ExpectedMessages all = first;
  all.insert(second.begin(), second.end());
  EXPECT_TRUE(witness.ReadUntilIds(Ids(all), seconds(30))) << outboxd->Log().substr(0, 4000);
  DeliveryCheck check = CheckDelivery(all, witness.records(), kPartitions);
  EXPECT_TRUE(check.ok()) << check.Summary();
  EXPECT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, seconds(10)));
  outboxd->Kill(SIGTERM);
  EXPECT_EQ(outboxd->Wait(seconds(15)), 0);
  logs_.emplace_back("rotation run", outboxd->Log());
}

}  // namespace
}  // namespace outboxd::testing
