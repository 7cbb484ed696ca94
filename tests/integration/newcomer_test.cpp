// A newcomer's commands through the binary: migrate as the relay role, migrate --wait,
// check-config on librdkafka properties, --version, status.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <regex>
#include <string>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::seconds;

// A login role granted outbox_relay, dropped at the end.
struct RelayLogin {
  const TestDatabase& db;
  std::string name = UniqueName("relay");
  explicit RelayLogin(const TestDatabase& d) : db(d) {
    db.Exec("CREATE ROLE " + name + " LOGIN IN ROLE outbox_relay");
  }
  ~RelayLogin() {
    try {
      db.Exec("DROP ROLE IF EXISTS " + name);
    } catch (const std::exception& e) {
      std::cerr << "drop role: " << e.what() << "\n";
    }
  }
  std::string conninfo() const { return db.conninfo() + " user=" + name; }
};

class NewcomerIntegration : public ServicesTest {};

// The README's unit runs `outboxd migrate` as the outboxd role before every start: on a current
// schema it must succeed without CREATE on the database.
TEST_F(NewcomerIntegration, MigrateAsTheRelayRoleOnACurrentSchemaSucceeds) {
  RelayLogin relay(*db_);
  OutboxdProcess as_relay(services_, *db_, "", "", relay.conninfo());
  auto [rc, out] = RunOutboxd({"migrate", "--config", as_relay.config_path()});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("0 migration(s) applied"), std::string::npos) << out;
}

// On an empty database the relay role may not create the ledger: the message names that step,
// not a migration.
TEST_F(NewcomerIntegration, MigrateNamesTheStepThatFailed) {
  TestDatabase empty(services_, /*migrate=*/false);
  // The roles are cluster-wide: outbox_relay exists from the fixture's database.
  RelayLogin relay(empty);
  OutboxdProcess as_relay(services_, empty, "", "", relay.conninfo());
  auto [rc, out] = RunOutboxd({"migrate", "--config", as_relay.config_path()});
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("creating the ledger outbox.schema_migrations failed: "), std::string::npos)
      << out;
  EXPECT_EQ(out.find("migration 001_outbox.sql failed"), std::string::npos) << out;
}

// Without --wait a PostgreSQL that does not answer fails at once; with --wait=DURATION migrate
// retries for that long, then fails naming the wait.
TEST_F(NewcomerIntegration, MigrateWaitRetriesForABoundedTime) {
  // Port 1 on loopback: nothing listens, connecting is refused at once.
  OutboxdProcess nowhere(services_, *db_, "", "", "host=127.0.0.1 port=1 dbname=x");
  auto t0 = std::chrono::steady_clock::now();
  auto [rc, out] = RunOutboxd({"migrate", "--config", nowhere.config_path()});
  auto no_wait = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(rc, 1) << out;
  EXPECT_LT(no_wait, seconds(1)) << out;

  t0 = std::chrono::steady_clock::now();
  auto [rc2, out2] = RunOutboxd({"migrate", "--wait=2s", "--config", nowhere.config_path()});
  auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(rc2, 1) << out2;
  EXPECT_NE(out2.find("(waited 2s for it to answer)"), std::string::npos) << out2;
  EXPECT_GE(waited, seconds(2)) << out2;
  EXPECT_LT(waited, seconds(5)) << out2;
  // Once PostgreSQL answers, --wait changes nothing.
  OutboxdProcess reachable(services_, *db_);
  auto [rc3, out3] = RunOutboxd({"migrate", "--wait", "--config", reachable.config_path()});
  EXPECT_EQ(rc3, 0) << out3;
}

// `outboxd status` names the leading outboxd by its own host and pid (a process whose command line
// is that outboxd's), and PostgreSQL's backend pid apart.
TEST_F(NewcomerIntegration, StatusShowsTheLeadersOwnHostAndPid) {
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("leading the outbox", seconds(20))) << outboxd.Log();
  auto [rc, out] = RunOutboxd({"status", "--config", outboxd.config_path()});
  ASSERT_EQ(rc, 0) << out;
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      out, m, std::regex(R"(leader: +outboxd pid (\d+) on (\S+) \(PostgreSQL backend pid (\d+) )")))
      << out;
  EXPECT_EQ(m[2].str(), std::string(host).substr(0, m[2].str().size())) << out;
  std::ifstream cmdline("/proc/" + m[1].str() + "/cmdline");
  std::string args((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
  EXPECT_NE(args.find(outboxd.config_path()), std::string::npos)
      << "pid " << m[1] << " is not the outboxd started here: " << args << "\n"
      << out;
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = " + m[3].str() +
                        " AND application_name LIKE 'outboxd host=%'"),
            "1")
      << out;
  outboxd.Kill(SIGTERM);
  EXPECT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();
}

// check-config asks librdkafka about each property (without connecting): a misspelt name or a
// bad value exits 2 naming file, line and key.
TEST(NewcomerBinary, CheckConfigValidatesLibrdkafkaProperties) {
  const std::string base =
      "[postgres]\nconninfo = \"host=127.0.0.1 dbname=x\"\n"                 // lines 1-2
      "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[kafka.properties]\n";  // lines 3-5
  for (const auto& [line, key] :
       {std::pair<std::string, std::string>{"\"linger.msx\" = 2", "linger.msx"},
        {"\"linger.ms\" = \"abc\"", "linger.ms"}}) {
    std::string file = TestFile("props", base + line + "\n");
    auto [rc, out] = RunOutboxd({"check-config", "--config", file});
    EXPECT_EQ(rc, 2) << line << ": " << out;
    EXPECT_NE(out.find(file + ":6: kafka.properties.\"" + key + "\": "), std::string::npos)
        << line << ": " << out;
  }
  auto [ok_rc, ok_out] =
      RunOutboxd({"check-config", "--config", TestFile("ok", base + "\"linger.ms\" = 5\n")});
  EXPECT_EQ(ok_rc, 0) << ok_out;
}

TEST(NewcomerBinary, VersionFlagAndCommandPrintTheVersion) {
  for (const char* arg : {"--version", "-V", "version"}) {
    auto [rc, out] = RunOutboxd({arg});
    EXPECT_EQ(rc, 0) << arg << ": " << out;
    EXPECT_EQ(out.rfind("outboxd ", 0), 0u) << arg << ": " << out;
  }
}

// With PostgreSQL and Kafka both down at start, outboxd says each once: the start-up check of
// the Kafka properties connects nowhere, librdkafka's CONFWARN about enable.gapless.guarantee (set
// on purpose) is not shown, and the PostgreSQL line is one line without a doubled prefix.
TEST(NewcomerBinary, StartWithBothServicesDownIsQuiet) {
  std::string config = TestFile("down",
                                "[postgres]\nconninfo = \"host=127.0.0.1 port=1 dbname=x\"\n"
                                "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n"
                                "[backoff]\ninitial = \"20ms\"\nmax = \"100ms\"\n"
                                "[admin]\nlisten = \"\"\n");  // the default port may be taken
  std::string log = TestFile("down-log", "");
  // Three seconds of retries, then SIGTERM.
  std::string cmd = std::string("timeout -s TERM 3 ") + OUTBOXD_BINARY + " run --config '" +
                    config + "' >'" + log + "' 2>&1";
  int status = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(status)) << status;
  std::ifstream in(log);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::string all;
  int pg = 0, kafka = 0;
  for (const auto& l : lines) {
    all += l + "\n";
    pg += l.find("PostgreSQL") != std::string::npos;
    kafka += l.find("kafka") != std::string::npos;
  }
  EXPECT_EQ(pg, 1) << all;
  EXPECT_EQ(kafka, 1) << all;  // the start line names the bootstrap servers; nothing else
  EXPECT_EQ(all.find("PostgreSQL: PostgreSQL"), std::string::npos) << all;
  EXPECT_EQ(all.find("CONFWARN"), std::string::npos) << all;
  EXPECT_NE(all.find("Connection refused; Is the server running"), std::string::npos) << all;
  EXPECT_LE(lines.size(), 4u) << all;  // starting, PostgreSQL unavailable, (stopping lines)
}

}  // namespace
}  // namespace outboxd::testing
