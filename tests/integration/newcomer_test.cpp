// A newcomer's commands through the binary: migrate as the relay role, migrate --wait.

#include <chrono>
#include <iostream>
#include <string>

#include <gtest/gtest.h>

#include "migrate.h"
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

}  // namespace
}  // namespace outboxd::testing
