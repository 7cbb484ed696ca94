// What the write functions (outbox.publish, its delayed form, outbox.prepare, with every payload
// overload) refuse and how they hold a message back behind a delayed one of its key, read straight
// from PostgreSQL: the exact error each refusal gives, that a refusal writes nothing, and where a
// held-back message lands with which due time. Schema/009 moved these checks into shared helpers;
// these tests pin the behaviour that must not change with it.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

class WriteChecksIntegration : public ServicesTest {
 protected:
  // Rows in the three tables a write function may add to.
  std::string Written() {
    return db_->Scalar(
        "SELECT (SELECT count(*) FROM outbox.messages) || '/' || "
        "(SELECT count(*) FROM outbox.delayed) || '/' || (SELECT count(*) FROM outbox.prepared)");
  }
  // `sql` must fail with `error` (the whole primary message) and SQLSTATE 22023, writing nothing.
  void ExpectRefused(const std::string& sql, const std::string& error) {
    const std::string before = Written();
    pg::Connection app = db_->Connect();
    Status s = app.Exec(sql);
    ASSERT_FALSE(s.ok()) << sql << " was accepted";
    EXPECT_NE(s.message().find("ERROR:  " + error), std::string::npos)
        << sql << ": " << s.message();
    EXPECT_NE(s.message().find("SQLSTATE 22023"), std::string::npos) << sql << ": " << s.message();
    EXPECT_EQ(Written(), before) << sql;
  }
};

TEST_F(WriteChecksIntegration, EveryWriteFunctionRefusesAnEmptyTopicAndNonObjectHeaders) {
  const std::string later = "clock_timestamp() + interval '1 hour'";
  const std::string earlier = "clock_timestamp() - interval '1 hour'";
  const std::vector<std::string> payloads = {"'v'::text", "'\\x00ff'::bytea",
                                             "'{\"a\": 1}'::jsonb"};
  for (const std::string& p : payloads) {
    for (const std::string& topic : {std::string("''"), std::string("NULL")}) {
      const std::string publish_empty = "outbox.publish: topic must not be empty";
      const std::string prepare_empty = "outbox.prepare: topic must not be empty";
      ExpectRefused("SELECT outbox.publish(" + topic + ", 'k', " + p + ")", publish_empty);
      ExpectRefused("SELECT outbox.publish(" + topic + ", 'k', " + p + ", '{}', " + later + ")",
                    publish_empty);
      ExpectRefused("SELECT outbox.publish(" + topic + ", 'k', " + p + ", '{}', " + earlier + ")",
                    publish_empty);
      ExpectRefused("SELECT outbox.prepare(" + topic + ", 'k', " + p + ")", prepare_empty);
      ExpectRefused(
          "SELECT outbox.prepare(" + topic + ", 'k', " + p + ", '{}', NULL, " + later + ")",
          prepare_empty);
    }
    for (const std::string& headers : {std::string("'[1]'"), std::string("'\"s\"'")}) {
      const std::string h = headers + "::jsonb";
      const std::string publish_bad = "outbox.publish: headers must be a JSON object";
      const std::string prepare_bad = "outbox.prepare: headers must be a JSON object";
      ExpectRefused("SELECT outbox.publish('" + topic_ + "', 'k', " + p + ", " + h + ")",
                    publish_bad);
      ExpectRefused(
          "SELECT outbox.publish('" + topic_ + "', 'k', " + p + ", " + h + ", " + later + ")",
          publish_bad);
      ExpectRefused("SELECT outbox.prepare('" + topic_ + "', 'k', " + p + ", " + h + ")",
                    prepare_bad);
      ExpectRefused(
          "SELECT outbox.prepare('" + topic_ + "', 'k', " + p + ", " + h + ", NULL, " + later + ")",
          prepare_bad);
    }
    ExpectRefused("SELECT outbox.prepare('" + topic_ + "', 'k', " + p + ", '{}', interval '-1 s')",
                  "outbox.prepare: check_immunity must not be negative");
  }
  // The topic is checked before the headers.
  ExpectRefused("SELECT outbox.publish('', 'k', 'v', '[1]'::jsonb)",
                "outbox.publish: topic must not be empty");
  ExpectRefused("SELECT outbox.prepare('', 'k', 'v', '[1]'::jsonb)",
                "outbox.prepare: topic must not be empty");
  // What they accept: NULL headers mean {}.
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'v'::text, NULL)");
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'v'::text, NULL, " + later + ")");
  db_->Exec("SELECT outbox.prepare('" + topic_ + "', 'k', 'v'::text, NULL)");
  EXPECT_EQ(Written(), "1/1/1");
  EXPECT_EQ(db_->Scalar("SELECT string_agg(headers::text, ',') FROM (SELECT headers FROM "
                        "outbox.messages UNION ALL SELECT headers FROM outbox.delayed UNION ALL "
                        "SELECT headers FROM outbox.prepared) h"),
            "{},{},{}");
}

// A message of a key that has one waiting in outbox.delayed waits behind it (due no earlier);
// other keys and messages without a key do not.
TEST_F(WriteChecksIntegration, HoldBackBehindAWaitingMessageOfTheSameKey) {
  auto publish = [&](const std::string& key, const std::string& deliver_at = "") {
    return db_->Scalar("SELECT outbox.publish('" + topic_ + "', " + key + ", 'v'::text, '{}'" +
                       (deliver_at.empty() ? "" : ", " + deliver_at) + ")");
  };
  auto due_of = [&](const std::string& id) {
    return db_->Scalar("SELECT due_at AT TIME ZONE 'UTC' FROM outbox.delayed WHERE id = " + id);
  };
  const std::string first = publish("'k'", "'2100-01-01 00:00:00+00'");
  const std::string plain = publish("'k'");
  const std::string sooner = publish("'k'", "'2099-01-01 00:00:00+00'");
  const std::string later = publish("'k'", "'2101-01-01 00:00:00+00'");
  const std::string other_key = publish("'other'");
  const std::string no_key = publish("NULL");
  const std::string past = publish("'k'", "'2000-01-01 00:00:00+00'");
  EXPECT_EQ(due_of(first), "2100-01-01 00:00:00");
  EXPECT_EQ(due_of(plain), "2100-01-01 00:00:00") << "not held back behind its key";
  EXPECT_EQ(due_of(sooner), "2100-01-01 00:00:00") << "due before an earlier one of its key";
  EXPECT_EQ(due_of(later), "2101-01-01 00:00:00");
  EXPECT_EQ(due_of(past), "2101-01-01 00:00:00") << "a past deliver_at skipped its key";
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.delayed"), "5");
  EXPECT_EQ(db_->Scalar("SELECT string_agg(id::text, ',' ORDER BY id) FROM outbox.messages"),
            other_key + "," + no_key);
  // The same key in another topic is not held.
  const std::string other_topic = NewTopic("t2", 1);
  const std::string elsewhere =
      db_->Scalar("SELECT outbox.publish('" + other_topic + "', 'k', 'v'::text)");
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.messages WHERE id = " + elsewhere), "1");
}

// A REPEATABLE READ or SERIALIZABLE writer whose snapshot was taken before a delayed message of
// its key committed cannot see that message; publish() must not let it overtake. It refuses with
// a serialization failure (40001), and the retry, with a new snapshot, waits behind the message.
// Without a waiting message of the key such a writer publishes at once and leaves nothing behind;
// when the snapshot saw the waiting message, it is held back without a refusal.
TEST_F(WriteChecksIntegration, HoldBackHoldsForRepeatableReadAndSerializableWriters) {
  const std::string delayed_at = "'2100-01-01 00:00:00+00'";
  for (const std::string isolation : {"REPEATABLE READ", "SERIALIZABLE"}) {
    for (const bool with_delay : {false, true}) {
      SCOPED_TRACE(isolation + (with_delay ? ", a delayed publish" : ", a plain publish"));
      const std::string key = "'" + UniqueName("k") + "'";
      const std::string publish_sql = "SELECT outbox.publish('" + topic_ + "', " + key +
                                      ", 'v'::text" + (with_delay ? ", '{}', " + delayed_at : "") +
                                      ")";
      pg::Connection writer = db_->Connect();
      ASSERT_TRUE(writer.Exec("BEGIN ISOLATION LEVEL " + isolation).ok());
      ASSERT_TRUE(writer.Exec("SELECT 1").ok());  // the snapshot
      // Another transaction delays a message of the key and commits after that snapshot.
      const std::string first = db_->Scalar("SELECT outbox.publish('" + topic_ + "', " + key +
                                            ", 'first'::text, '{}', " + delayed_at + ")");
      Status s = writer.Exec(publish_sql);
      ASSERT_FALSE(s.ok()) << "the writer overtook the waiting message of its key";
      EXPECT_NE(s.message().find("SQLSTATE 40001"), std::string::npos) << s.message();
      EXPECT_NE(s.message().find("started waiting (delayed delivery) after this transaction's "
                                 "snapshot was taken"),
                std::string::npos)
          << s.message();
      ASSERT_TRUE(writer.Exec("ROLLBACK").ok());
      // The retry sees the message and waits behind it.
      ASSERT_TRUE(writer.Exec("BEGIN ISOLATION LEVEL " + isolation).ok());
      auto again = writer.Query(publish_sql);
      ASSERT_TRUE(again.ok()) << again.status().message();
      ASSERT_TRUE(writer.Exec("COMMIT").ok());
      const std::string second(again->Get(0, 0));
      EXPECT_GT(std::stoll(second), std::stoll(first));
      EXPECT_EQ(db_->Scalar("SELECT string_agg(id::text || '@' || (due_at AT TIME ZONE 'UTC'), "
                            "',' ORDER BY id) FROM outbox.delayed WHERE key = " +
                            key),
                first + "@2100-01-01 00:00:00," + second + "@2100-01-01 00:00:00");
    }
    // No waiting message of the key: published at once, no key row left behind.
    const std::string key = "'" + UniqueName("free") + "'";
    pg::Connection writer = db_->Connect();
    ASSERT_TRUE(writer.Exec("BEGIN ISOLATION LEVEL " + isolation).ok());
    auto id = writer.Query("SELECT outbox.publish('" + topic_ + "', " + key + ", 'v'::text)");
    ASSERT_TRUE(id.ok()) << id.status().message();
    ASSERT_TRUE(writer.Exec("COMMIT").ok());
    EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.messages WHERE id = " +
                          std::string(id->Get(0, 0))),
              "1");
    EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.delayed_keys WHERE key = " + key), "0");
  }
}

// The release removes the key rows of the keys it emptied, and only those.
TEST_F(WriteChecksIntegration, ReleaseRemovesTheKeyRowsOfKeysItEmptied) {
  db_->Exec("SELECT outbox.publish('" + topic_ +
            "', 'soon', 'v'::text, '{}', clock_timestamp() + interval '1 s')");
  db_->Exec("SELECT outbox.publish('" + topic_ +
            "', 'later', 'v'::text, '{}', clock_timestamp() + interval '1 hour')");
  db_->Exec("SELECT outbox.publish('" + topic_ +
            "', 'both', 'v'::text, '{}', clock_timestamp() + interval '1 s')");
  db_->Exec("SELECT outbox.publish('" + topic_ +
            "', 'both', 'v'::text, '{}', clock_timestamp() + interval '1 hour')");
  EXPECT_EQ(db_->Scalar("SELECT string_agg(key, ',' ORDER BY key) FROM outbox.delayed_keys"),
            "both,later,soon");
  ASSERT_TRUE(WaitFor(
      [&] {
        return db_->Scalar(
                   "SELECT count(*) FROM outbox.delayed WHERE due_at <= clock_timestamp()") == "2";
      },
      std::chrono::seconds(10)));
  EXPECT_EQ(db_->Scalar("SELECT outbox.release_due(100)"), "2");
  EXPECT_EQ(db_->Scalar("SELECT string_agg(key, ',' ORDER BY key) FROM outbox.delayed_keys"),
            "both,later");
}

// PostgreSQL 15 plans a LANGUAGE sql function's statements at every call when it cannot inline
// it, and SECURITY DEFINER or a SET clause prevents inlining (schema/011: a text publish() cost
// 112 microseconds of CPU, 74 in PL/pgSQL). No outbox function may be such a function.
TEST_F(WriteChecksIntegration, NoOutboxFunctionIsPlannedAtEveryCall) {
  EXPECT_EQ(db_->Scalar("SELECT coalesce(string_agg(p.oid::regprocedure::text, ', '), '') "
                        "FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                        "WHERE p.pronamespace = 'outbox'::regnamespace AND l.lanname = 'sql' "
                        "AND (p.prosecdef OR p.proconfig IS NOT NULL)"),
            "");
}

}  // namespace
}  // namespace outboxd::testing
