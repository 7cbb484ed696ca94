// Least privilege, proven against the project's PostgreSQL: what the outbox_writer and
// outbox_relay roles (schema/001, 002, 006) may and may not do, a role with neither, and who may
// run the migrations.
#include <csignal>
#include <iostream>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::seconds;

class PrivilegeIntegration : public ServicesTest {
 protected:
  void TearDown() override {
    for (const std::string& role : roles_) {
      try {
        db_->Exec("DROP ROLE IF EXISTS " + role);
      } catch (const std::exception& e) {
        std::cerr << "drop role " << role << ": " << e.what() << "\n";
      }
    }
    ServicesTest::TearDown();
  }
  // A login role that is a member of `member_of` ("" for none).
  std::string LoginRole(const std::string& prefix, const std::string& member_of) {
    std::string role = UniqueName(prefix);
    db_->Exec("CREATE ROLE " + role + " LOGIN" +
              (member_of.empty() ? "" : " IN ROLE " + member_of));
    roles_.push_back(role);
    return role;
  }
  pg::Connection As(const std::string& role) {
    auto c = pg::Connection::Open(db_->conninfo() + " user=" + role, "outboxd-test");
    if (!c.ok()) throw std::runtime_error(c.status().message());
    return std::move(*c);
  }
  // Each statement must fail with "permission denied".
  void ExpectDenied(pg::Connection& conn, const std::string& role,
                    const std::vector<std::string>& statements) {
    for (const std::string& sql : statements) {
      Status s = conn.Exec(sql);
      EXPECT_FALSE(s.ok()) << role << " may: " << sql;
      EXPECT_NE(s.message().find("permission denied"), std::string::npos)
          << role << ": " << sql << ": " << s.message();
    }
  }
  // A row to refer to: a message, a dead letter and a prepared message exist.
  void SeedRows() {
    db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'v')");
    db_->Exec(
        "INSERT INTO outbox.dead_letters (id, topic, key, payload, headers, created_at, "
        "error) VALUES (-1, 't', 'k', 'v', '{}', now(), 'seed')");
    db_->Exec("SELECT outbox.prepare('" + topic_ + "', 'k', 'v')");
  }
  std::string PreparedId() { return db_->Scalar("SELECT min(id) FROM outbox.prepared"); }

  std::vector<std::string> roles_;
};

// The application's role: the write functions, nothing else.
TEST_F(PrivilegeIntegration, WriterMayOnlyCallTheWriteFunctions) {
  SeedRows();
  const std::string writer = LoginRole("writer", "outbox_writer");
  pg::Connection app = As(writer);
  for (const std::string& sql :
       {"SELECT outbox.publish('" + topic_ + "', 'k', 'text')",
        "SELECT outbox.publish('" + topic_ + "', 'k', '\\x00ff'::bytea, '{\"h\": \"v\"}')",
        "SELECT outbox.publish('" + topic_ + "', 'k', '{\"a\": 1}'::jsonb)",
        "SELECT outbox.rollback(outbox.prepare('" + topic_ + "', 'k', 'half'))",
        "SELECT outbox.commit(outbox.prepare('" + topic_ + "', 'k', 'half'))"}) {
    Status s = app.Exec(sql);
    EXPECT_TRUE(s.ok()) << sql << ": " << s.message();
  }
  const std::string id = PreparedId();
  ExpectDenied(
      app, writer,
      {"SELECT count(*) FROM outbox.messages", "SELECT id FROM outbox.messages LIMIT 1",
       "UPDATE outbox.messages SET key = 'x'", "UPDATE outbox.messages SET sent_at = now()",
       "DELETE FROM outbox.messages", "TRUNCATE outbox.messages",
       "INSERT INTO outbox.messages (topic, key, payload, headers) VALUES ('t', 'k', 'v', '{}')",
       "SELECT count(*) FROM outbox.dead_letters", "DELETE FROM outbox.dead_letters",
       "SELECT count(*) FROM outbox.prepared", "UPDATE outbox.prepared SET check_count = 0",
       "UPDATE outbox.relay_state SET sleeping = true", "SELECT * FROM outbox.schema_migrations",
       "SELECT outbox.settle(" + id + ", 'commit', 'check', NULL)",
       "SELECT outbox.apply_verdict(" + id + ", 'commit', 'check', NULL)",
       "SELECT outbox.next_message_id()", "SELECT nextval('outbox.messages_id_seq')",
       "CREATE TABLE outbox.mine (x int)",
       "CREATE FUNCTION outbox.publish(a int) RETURNS int LANGUAGE sql AS 'SELECT 1'"});
  // Nothing the writer tried changed the prepared row it may not settle.
  EXPECT_EQ(db_->Scalar("SELECT state FROM outbox.prepared WHERE id = " + id), "prepared");
}

// A role granted neither outbox role can't touch the schema at all.
TEST_F(PrivilegeIntegration, RoleWithNeitherCannotTouchTheSchema) {
  SeedRows();
  const std::string stranger = LoginRole("stranger", "");
  pg::Connection conn = As(stranger);
  const std::string id = PreparedId();
  ExpectDenied(conn, stranger,
               {"SELECT outbox.publish('" + topic_ + "', 'k', 'v')",
                "SELECT outbox.prepare('" + topic_ + "', 'k', 'v')",
                "SELECT outbox.commit(" + id + ")", "SELECT outbox.rollback(" + id + ")",
                "SELECT outbox.settle(" + id + ", 'commit', 'check', NULL)",
                "SELECT count(*) FROM outbox.messages", "DELETE FROM outbox.messages",
                "SELECT count(*) FROM outbox.dead_letters", "SELECT count(*) FROM outbox.prepared",
                "UPDATE outbox.relay_state SET sleeping = true",
                "SELECT * FROM outbox.schema_migrations", "CREATE TABLE outbox.mine (x int)"});
  // And it can't apply migrations either (below: nor can the relay role, on a new database).
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.messages"), "1");
}

// outboxd as a login role with outbox_relay only: delivers, retains (sent_at), dead-letters the
// poison rows with their reasons, and reports no permission error. Then what the relay role may
// not do.
TEST_F(PrivilegeIntegration, RelayRoleIsEnoughForOutboxdAndNoMore) {
  const std::string relay = LoginRole("relay", "outbox_relay");
  ExpectedMessages expected = PublishMany(40, 4, topic_);
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'big', repeat('x', 1200000))");  // > 1 MB
  db_->Exec("INSERT INTO outbox.messages (topic, key, payload, headers) VALUES ('" + topic_ +
            "', 'array', 'bad headers', '[\"not\", \"an object\"]')");
  ExpectedMessages after = PublishMany(40, 4, topic_);
  expected.insert(after.begin(), after.end());
  // Check-back as the relay role: one prepared message the checker commits, one it can't answer
  // (counted, re-checked).
  db_->Exec("SELECT outbox.prepare('" + topic_ + "', 'commit-me', 'half')");
  db_->Exec("SELECT outbox.prepare('" + topic_ + "', 'unknown', 'half')");
  OutboxdProcess outboxd(services_, *db_, "on_sent = \"retain\"\nretention = \"1h\"",
                         "[checkback]\nchecker = \"sql\"\ntransaction_timeout = \"0s\"\n"
                         "check_interval = \"10ms\"\npoll_interval = \"50ms\"\n"
                         "sql_conninfo = \"" +
                             db_->conninfo() +
                             "\"\n"
                             "sql_query = \"SELECT CASE WHEN $2 = 'commit-me' THEN 'commit' "
                             "ELSE 'unknown' END\"\n",
                         db_->conninfo() + " user=" + relay);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(expected), seconds(30))) << outboxd.Log();
  DeliveryCheck check = CheckDelivery(expected, consumer.records(), kPartitions);
  EXPECT_TRUE(check.ok()) << check.Summary();
  EXPECT_TRUE(WaitFor(
      [&] {
        return db_->Scalar("SELECT count(*) FROM outbox.dead_letters") == "2" &&
               db_->Scalar("SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL") == "0";
      },
      seconds(20)))
      << "dead letters: " << db_->Scalar("SELECT count(*) FROM outbox.dead_letters")
      << ", unsent: " << db_->Scalar("SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL")
      << "\n"
      << outboxd.Log();
  EXPECT_NE(
      db_->Scalar("SELECT error FROM outbox.dead_letters WHERE key = 'big'").find("too large"),
      std::string::npos);
  EXPECT_NE(db_->Scalar("SELECT error FROM outbox.dead_letters WHERE key = 'array'")
                .find("headers must be a JSON object"),
            std::string::npos);
  EXPECT_TRUE(WaitFor(
      [&] {
        return db_->Scalar("SELECT state FROM outbox.prepared WHERE key = 'commit-me'") ==
                   "committed" &&
               std::stoi(db_->Scalar(
                   "SELECT check_count FROM outbox.prepared WHERE key = 'unknown'")) >= 2;
      },
      seconds(20)))
      << db_->Scalar(
             "SELECT string_agg(key || ' ' || state || ' ' || check_count, ', ') "
             "FROM outbox.prepared")
      << "\n"
      << outboxd.Log();
  EXPECT_EQ(outboxd.Log().find("permission denied"), std::string::npos) << outboxd.Log();
  outboxd.Kill(SIGTERM);
  EXPECT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();

  pg::Connection conn = As(relay);
  SeedRows();
  const std::string id = PreparedId();
  ExpectDenied(
      conn, relay,
      {"SELECT outbox.publish('" + topic_ + "', 'k', 'v')",
       "SELECT outbox.prepare('" + topic_ + "', 'k', 'v')", "SELECT outbox.commit(" + id + ")",
       "SELECT outbox.rollback(" + id + ")",
       "SELECT outbox.apply_verdict(" + id + ", 'commit', 'check', NULL)",
       "SELECT outbox.next_message_id()", "SELECT nextval('outbox.messages_id_seq')",
       "INSERT INTO outbox.messages (topic, key, payload, headers) VALUES ('t', 'k', 'v', '{}')",
       "UPDATE outbox.messages SET payload = 'forged'", "UPDATE outbox.messages SET topic = 'x'",
       "TRUNCATE outbox.messages", "DELETE FROM outbox.dead_letters",
       "UPDATE outbox.dead_letters SET payload = 'forged'",
       "UPDATE outbox.prepared SET payload = 'forged'",
       "INSERT INTO outbox.prepared (topic, key, payload) VALUES ('t', 'k', 'v')",
       "DELETE FROM outbox.schema_migrations",
       "INSERT INTO outbox.schema_migrations (version, name) VALUES (999, 'x')",
       "CREATE TABLE outbox.mine (x int)"});
  // Check-back's own function is the relay's.
  Status settle = conn.Exec("SELECT outbox.settle(" + id + ", 'commit', 'check', NULL)");
  EXPECT_TRUE(settle.ok()) << settle.message();
}

// Migrations need the owner (here the superuser that created the database); the relay role may
// run `outboxd migrate` once the schema is current, and is refused while one is pending.
TEST_F(PrivilegeIntegration, MigrateAsOwnerRunAsRelay) {
  const std::string relay = LoginRole("relay", "outbox_relay");
  TestDatabase fresh(services_, /*migrate=*/false);
  auto config = [&](const std::string& conninfo) {
    return TestFile(UniqueName("migrate") + ".toml", "[postgres]\nconninfo = \"" + conninfo +
                                                         "\"\n[kafka]\nbootstrap_servers = \"" +
                                                         services_.kafka_bootstrap + "\"\n");
  };
  const std::string as_relay = config(fresh.conninfo() + " user=" + relay);
  auto [denied_rc, denied_out] = RunOutboxd({"migrate", "--config", as_relay});
  EXPECT_EQ(denied_rc, 1) << denied_out;
  EXPECT_NE(denied_out.find("permission denied"), std::string::npos) << denied_out;
  auto [owner_rc, owner_out] = RunOutboxd({"migrate", "--config", config(fresh.conninfo())});
  ASSERT_EQ(owner_rc, 0) << owner_out;
  auto [relay_rc, relay_out] = RunOutboxd({"migrate", "--config", as_relay});
  EXPECT_EQ(relay_rc, 0) << relay_out;
  EXPECT_NE(relay_out.find("schema current: 0 migration(s) applied"), std::string::npos)
      << relay_out;
}

// The write functions' shared helpers (schema/009) are theirs alone: no role may call them, and
// they run with the caller's rights (not SECURITY DEFINER), so a grant by mistake would still
// not open outbox.delayed. Through outbox.publish the writer still gets the hold-back they read.
TEST_F(PrivilegeIntegration, WriteFunctionHelpersAreCallableByNoRole) {
  SeedRows();
  const std::vector<std::string> helpers = {
      "SELECT outbox.check_message('outbox.publish', 't', '{}')",
      "SELECT outbox.held_until('t', 'k')",
      "SELECT outbox.check_key_snapshot('outbox.publish', 't', 'k')"};
  for (const char* member_of : {"outbox_writer", "outbox_relay", ""}) {
    const std::string role = LoginRole("helper", member_of);
    pg::Connection conn = As(role);
    ExpectDenied(conn, role, helpers);
  }
  EXPECT_EQ(db_->Scalar("SELECT string_agg(proname || '=' || prosecdef, ',' ORDER BY proname) "
                        "FROM pg_proc WHERE oid IN ('outbox.check_message(text,text,jsonb)'::"
                        "regprocedure, 'outbox.held_until(text,text)'::regprocedure, "
                        "'outbox.check_key_snapshot(text,text,text)'::regprocedure)"),
            "check_key_snapshot=false,check_message=false,held_until=false");
  const std::string writer = LoginRole("writer", "outbox_writer");
  pg::Connection app = As(writer);
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ +
                       "', 'held', 'v'::text, '{}', now() + interval '1 hour')")
                  .ok());
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ + "', 'held', 'v'::text)").ok());
  // Under REPEATABLE READ publish() also checks the key's row in outbox.delayed_keys, which the
  // writer may not read itself.
  ASSERT_TRUE(app.Exec("BEGIN ISOLATION LEVEL REPEATABLE READ").ok());
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ + "', 'held', 'v'::text)").ok());
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ + "', 'free', 'v'::text)").ok());
  ASSERT_TRUE(app.Exec("COMMIT").ok());
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.delayed WHERE key = 'held'"), "3");
  ExpectDenied(app, writer, {"SELECT * FROM outbox.delayed_keys"});
}

}  // namespace
}  // namespace outboxd::testing
