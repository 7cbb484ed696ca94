// The outbox schema over its versions, read straight from PostgreSQL and through the binary:
// `outboxd migrate` upgrades a database from every earlier version (with rows in it), the
// inbox's key is (consumer, outbox-id, outbox-created-at), the leader removes old inbox rows,
// and outboxd refuses to lead (and `outboxd doctor` says why) when the id sequence has a cache.
#include <signal.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "../support/integration.h"
#include "migrate.h"

namespace outboxd::testing {
namespace {

using std::chrono::seconds;

class SchemaIntegration : public ServicesTest {
 protected:
  // Applies the first `versions` embedded migrations as `outboxd migrate` of that version did.
  static void MigrateTo(const TestDatabase& db, size_t versions) {
    pg::Connection c = db.Connect();
    for (size_t i = 0; i < versions; ++i) {
      const Migration& m = EmbeddedMigrations()[i];
      ASSERT_TRUE(c.Exec("BEGIN").ok());
      ASSERT_TRUE(c.Exec("CREATE SCHEMA IF NOT EXISTS outbox").ok());
      ASSERT_TRUE(c.Exec("CREATE TABLE IF NOT EXISTS outbox.schema_migrations (version integer "
                         "PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL "
                         "DEFAULT now())")
                      .ok());
      Status s = c.Exec(m.sql);
      ASSERT_TRUE(s.ok()) << m.name << ": " << s.message();
      ASSERT_TRUE(c.Exec("INSERT INTO outbox.schema_migrations (version, name) VALUES (" +
                         std::to_string(m.version) + ", '" + m.name + "')")
                      .ok());
      ASSERT_TRUE(c.Exec("COMMIT").ok());
    }
  }
  static std::string MigrateConfig(const TestDatabase& db) {
    return TestFile(UniqueName("migrate") + ".toml", "[postgres]\nconninfo = \"" + db.conninfo() +
                                                         "\"\n[kafka]\nbootstrap_servers = \"" +
                                                         "127.0.0.1:1\"\n");
  }
};

// From every earlier version, with rows of that version's features waiting: the upgrade applies
// the rest, and the rows keep their meaning (a waiting delayed message still holds its key back,
// an inbox row written by id alone still turns that id away).
TEST_F(SchemaIntegration, MigrateUpgradesFromEveryEarlierVersion) {
  const auto& all = EmbeddedMigrations();
  ASSERT_GE(all.size(), 12u);
  for (size_t from = 1; from < all.size(); ++from) {
    SCOPED_TRACE("from version " + std::to_string(all[from - 1].version));
    TestDatabase db(services_, /*migrate=*/false);
    MigrateTo(db, from);
    if (HasFatalFailure()) return;
    const int version = all[from - 1].version;
    db.Exec("SELECT outbox.publish('" + topic_ + "', 'plain', 'v'::bytea)");
    if (version >= 2) db.Exec("SELECT outbox.prepare('" + topic_ + "', 'half', 'v'::bytea)");
    if (version >= 4) db.Exec("SELECT outbox.consume_once('billing', 4711)");
    if (version >= 5) {
      db.Exec("SELECT outbox.publish('" + topic_ +
              "', 'waiting', 'v'::bytea, '{}', now() + interval '1 hour')");
    }
    auto [rc, out] = RunOutboxd({"migrate", "--config", MigrateConfig(db)});
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find(std::to_string(all.size() - from) + " migration(s) applied"),
              std::string::npos)
        << out;
    EXPECT_EQ(db.Scalar("SELECT count(*) FROM outbox.schema_migrations"),
              std::to_string(all.size()));
    EXPECT_EQ(db.Scalar("SELECT count(*) FROM outbox.messages"), "1");
    if (version >= 4) {
      EXPECT_EQ(db.Scalar("SELECT outbox.consume_once('billing', 4711, 1765000000000000)"), "f")
          << "an inbox row written by id alone no longer turns its id away";
      EXPECT_EQ(db.Scalar("SELECT outbox.consume_once('billing', 4712, 1765000000000000)"), "t");
    }
    if (version >= 5) {
      EXPECT_EQ(db.Scalar("SELECT string_agg(key, ',') FROM outbox.delayed_keys"), "waiting");
      pg::Connection writer = db.Connect();
      ASSERT_TRUE(writer.Exec("BEGIN ISOLATION LEVEL REPEATABLE READ").ok());
      ASSERT_TRUE(
          writer.Exec("SELECT outbox.publish('" + topic_ + "', 'waiting', 'after'::text)").ok());
      ASSERT_TRUE(writer.Exec("COMMIT").ok());
      EXPECT_EQ(db.Scalar("SELECT count(*) FROM outbox.delayed WHERE key = 'waiting'"), "2");
    }
    // Every write function still works.
    db.Exec("SELECT outbox.publish('" + topic_ +
            "', 'k', 'v'::text, '{}', now() + "
            "interval '1 hour')");
    db.Exec("SELECT outbox.commit(outbox.prepare('" + topic_ + "', 'k2', 'v'::text))");
  }
}

// consume_once is true once per (consumer, outbox-id, outbox-created-at): the same id with
// another created_at is another message (an id that came back), so it is processed.
TEST_F(SchemaIntegration, InboxKeyIsTheIdAndCreatedAtPair) {
  auto once = [&](const std::string& consumer, const std::string& id, const std::string& created) {
    return db_->Scalar("SELECT outbox.consume_once('" + consumer + "', " + id + ", " + created +
                       ")");
  };
  EXPECT_EQ(once("billing", "7", "1765000000000001"), "t");
  EXPECT_EQ(once("billing", "7", "1765000000000001"), "f");  // a redelivery
  EXPECT_EQ(once("billing", "7", "1765000000999999"), "t");  // the id came back
  EXPECT_EQ(once("billing", "7", "1765000000999999"), "f");
  EXPECT_EQ(once("shipping", "7", "1765000000000001"), "t");
  // The id-only form keeps its meaning: one per id, whatever the created_at.
  EXPECT_EQ(db_->Scalar("SELECT outbox.consume_once('old', 9)"), "t");
  EXPECT_EQ(db_->Scalar("SELECT outbox.consume_once('old', 9)"), "f");
  EXPECT_EQ(once("old", "9", "1765000000000001"), "f");
  EXPECT_EQ(db_->Scalar("SELECT outbox.consume_once('billing', 7)"), "f");
  for (const std::string& bad : {std::string("NULL"), std::string("0")}) {
    Status s = db_->Connect().Exec("SELECT outbox.consume_once('billing', 8, " + bad + ")");
    EXPECT_NE(s.message().find("SQLSTATE 22023"), std::string::npos) << s.message();
  }
  // A consumer's role may call it.
  EXPECT_EQ(db_->Scalar("SELECT has_function_privilege('outbox_consumer', "
                        "'outbox.consume_once(text, bigint, bigint)', 'EXECUTE')"),
            "t");
}

// The leader removes inbox rows processed longer ago than inbox.retention, every
// inbox.cleanup_interval, and keeps the younger ones.
TEST_F(SchemaIntegration, LeaderRemovesInboxRowsOlderThanRetention) {
  db_->Exec(
      "INSERT INTO outbox.inbox (consumer, message_id, message_created_at, processed_at) "
      "SELECT 'billing', i, 1765000000000000 + i, now() - interval '2 hours' "
      "FROM generate_series(1, 25000) i");
  db_->Exec(
      "INSERT INTO outbox.inbox (consumer, message_id, message_created_at, processed_at) "
      "SELECT 'billing', i, 1765000000000000 + i, now() - interval '50 minutes' "
      "FROM generate_series(25001, 25010) i");
  OutboxdProcess outboxd(services_, *db_, "",
                         "[inbox]\nretention = \"1h\"\ncleanup_interval = \"1s\"\n");
  outboxd.Start();
  ASSERT_TRUE(WaitFor([&] { return db_->Scalar("SELECT count(*) FROM outbox.inbox") == "10"; },
                      seconds(30)))
      << db_->Scalar("SELECT count(*) FROM outbox.inbox") << "\n"
      << outboxd.Log();
  EXPECT_EQ(db_->Scalar("SELECT min(message_id) FROM outbox.inbox"), "25001");
  // In batches of 10,000: 25,000 rows take three.
  EXPECT_TRUE(outboxd.WaitForLog("inbox: removed 10000 rows older than", seconds(5)));
  EXPECT_TRUE(outboxd.WaitForLog("inbox: removed 5000 rows older than", seconds(5)));
  // A row that ages past the retention later goes at a later sweep.
  db_->Exec(
      "UPDATE outbox.inbox SET processed_at = now() - interval '61 minutes' "
      "WHERE message_id = 25001");
  EXPECT_TRUE(
      WaitFor([&] { return db_->Scalar("SELECT count(*) FROM outbox.inbox") == "9"; }, seconds(30)))
      << outboxd.Log();
}

// With a cached id sequence the scan window could skip rows: outboxd refuses to lead and says how
// to fix it, `outboxd doctor` reports it as a risk, and once fixed outboxd leads.
TEST_F(SchemaIntegration, RefusesToLeadWithACachedIdSequenceAndDoctorSaysSo) {
  db_->Exec("ALTER SEQUENCE outbox.messages_id_seq CACHE 20");
  ExpectedMessages expected = PublishMany(3, 1, topic_);
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  EXPECT_TRUE(outboxd.WaitForLog(
      "outbox.messages_id_seq has CACHE 20: with a cache, each session takes ids from its own "
      "block",
      seconds(20)))
      << outboxd.Log();
  EXPECT_TRUE(outboxd.WaitForLog("ALTER SEQUENCE outbox.messages_id_seq CACHE 1", seconds(1)));
  EXPECT_EQ(outboxd.Log().find("leading the outbox"), std::string::npos) << outboxd.Log();
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.messages"), "3");

  auto [rc, out] = RunOutboxd({"doctor", "--config", outboxd.config_path()});
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("RISK  messages_id_seq: cache = 20"), std::string::npos) << out;
  EXPECT_NE(out.find("fix: ALTER SEQUENCE outbox.messages_id_seq CACHE 1"), std::string::npos)
      << out;

  db_->Exec("ALTER SEQUENCE outbox.messages_id_seq CACHE 1");
  EXPECT_TRUE(outboxd.WaitForLog("leading the outbox", seconds(30))) << outboxd.Log();
  Consumer consumer(services_, topic_);
  EXPECT_TRUE(consumer.ReadUntilIds(Ids(expected), seconds(30))) << outboxd.Log();
  auto [rc2, out2] = RunOutboxd({"doctor", "--config", outboxd.config_path()});
  EXPECT_NE(out2.find("ok    messages_id_seq: cache = 1"), std::string::npos) << out2;
}

}  // namespace
}  // namespace outboxd::testing

namespace outboxd::testing {
namespace {

// Run once by ctest before the integration tests start in parallel (the fixture pg_roles in
// tests/CMakeLists.txt): the migrations create cluster-wide roles when they are missing, and on a
// fresh cluster two tests that migrate outside TestDatabase's lock (`outboxd migrate` on an empty
// database) would both try to create them.
TEST(ClusterRoles, ExistBeforeTheTestsRunInParallel) {
  Services services;
  OUTBOXD_REQUIRE_SERVICES(services);
  TestDatabase db(services);
  for (const char* role : {"outbox_writer", "outbox_relay", "outbox_consumer"}) {
    EXPECT_EQ(
        db.Scalar(std::string("SELECT count(*) FROM pg_roles WHERE rolname = '") + role + "'"), "1")
        << role;
  }
}

}  // namespace
}  // namespace outboxd::testing
