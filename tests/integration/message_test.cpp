// What a message carries and what a bad one does, against real PostgreSQL and Kafka: headers
// exactly as PostgreSQL prints them, the message identity (outbox-id, outbox-created-at), poison
// rows that cannot stop the others, and publish() refusing headers that are not an object.
#include <signal.h>

#include <cstdlib>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

using HeaderList = std::vector<std::pair<std::string, std::optional<std::string>>>;

class MessageIntegration : public ServicesTest {
 protected:
  int64_t Remaining() { return std::stoll(db_->Scalar("SELECT count(*) FROM outbox.messages")); }

  // What jsonb_each_text gives for `headers_sql`, in its order: the values Kafka must carry.
  HeaderList EachText(const std::string& headers_sql) {
    pg::Connection c = db_->Connect();
    auto r = c.Query("SELECT key, value FROM jsonb_each_text(" + headers_sql + ")");
    EXPECT_TRUE(r.ok()) << r.status().message();
    HeaderList out;
    for (int i = 0; r.ok() && i < r->rows(); ++i) {
      out.emplace_back(std::string(r->Get(i, 0)),
                       r->IsNull(i, 1) ? std::nullopt : std::optional<std::string>(r->Get(i, 1)));
    }
    return out;
  }

  // The record's headers after outbox-id and outbox-created-at.
  static HeaderList RowHeaders(const Record& r) {
    if (r.headers.size() < 2) return {};
    return HeaderList(r.headers.begin() + 2, r.headers.end());
  }

  static int Count(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }
};

// publish() checks the headers as prepare() does (schema/003).
TEST_F(MessageIntegration, PublishRefusesHeadersThatAreNotAJsonObject) {
  pg::Connection app = db_->Connect();
  for (const std::string& headers :
       {std::string("('\"' || repeat('é', 150) || '\"')::jsonb"),
        std::string("'[\"a\", \"b\"]'::jsonb"), std::string("'42'::jsonb")}) {
    auto r = app.Query("SELECT outbox.publish('" + topic_ + "', 'k', 'x', " + headers + ")");
    ASSERT_FALSE(r.ok()) << headers << " was accepted";
    EXPECT_NE(r.status().message().find("headers must be a JSON object"), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find("SQLSTATE 22023"), std::string::npos)
        << r.status().message();
  }
  EXPECT_EQ(Remaining(), 0);
  // Objects and NULL (meaning {}) are still accepted, by every overload.
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'x', '{\"a\": 1}')");
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'x'::bytea, NULL)");
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k', '{\"p\": 1}'::jsonb)");
  EXPECT_EQ(Remaining(), 3);
}

// A row whose headers are a long multibyte string (written before schema/003,
// or straight into the table) is dead-lettered with a valid error text, in the first leadership
// term, and every other row is delivered once.
TEST_F(MessageIntegration, PoisonRowWithMultibyteHeadersIsDeadLetteredWhileTheRestFlows) {
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k' || (i % 5), 'before') " +
            "FROM generate_series(1, 50) i");
  db_->Exec("INSERT INTO outbox.messages (topic, key, payload, headers) VALUES ('" + topic_ +
            "', 'k1', 'poison', ('\"' || repeat('é', 150) || '\"')::jsonb)");
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k' || (i % 5), 'after') " +
            "FROM generate_series(1, 50) i");
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(30))) << outboxd.Log();
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(100, seconds(30));
  consumer.ReadFor(milliseconds(1000));
  EXPECT_EQ(consumer.records().size(), 100u);  // no term re-sent its batch
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.dead_letters"), "1");
  std::string error = db_->Scalar("SELECT error FROM outbox.dead_letters");
  EXPECT_NE(error.find("headers must be a JSON object, got: \"éé"), std::string::npos) << error;
  EXPECT_EQ(Count(outboxd.Log(), "leading the outbox"), 1) << outboxd.Log();
  EXPECT_EQ(Count(outboxd.Log(), "stopped delivering"), 0) << outboxd.Log();
}

// A poison row that PostgreSQL refuses to move to outbox.dead_letters whatever the error text (here
// a trigger refuses it) is logged and set aside for the term: it stays in the outbox, every other
// row is delivered, and the leadership is kept.
TEST_F(MessageIntegration, RowThatCannotBeDeadLetteredStaysAndTheRestFlows) {
  db_->Exec(R"sql(
    CREATE FUNCTION outbox.refuse_cursed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'dead letter refused by a trigger'; END $$;
    CREATE TRIGGER refuse_cursed BEFORE INSERT ON outbox.dead_letters
      FOR EACH ROW WHEN (NEW.key = 'cursed') EXECUTE FUNCTION outbox.refuse_cursed())sql");
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k' || (i % 5), 'before') " +
            "FROM generate_series(1, 50) i");
  db_->Exec("INSERT INTO outbox.messages (topic, key, payload, headers) VALUES ('" + topic_ +
            "', 'cursed', 'poison', '[\"not an object\"]')");
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k' || (i % 5), 'after') " +
            "FROM generate_series(1, 50) i");
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 1; }, seconds(30))) << outboxd.Log();
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(100, seconds(30));
  consumer.ReadFor(milliseconds(1000));
  EXPECT_EQ(consumer.records().size(), 100u);
  EXPECT_EQ(db_->Scalar("SELECT key FROM outbox.messages"), "cursed");
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.dead_letters"), "0");
  ASSERT_TRUE(outboxd.WaitForLog("cannot be moved to outbox.dead_letters", seconds(5)));
  EXPECT_EQ(Count(outboxd.Log(), "leading the outbox"), 1) << outboxd.Log();
  EXPECT_EQ(Count(outboxd.Log(), "stopped delivering"), 0) << outboxd.Log();
}

// Every header value is the text jsonb_each_text gives, numbers included
// (1e400 is beyond a double; 12345678901234567890123 beyond a 64-bit integer).
TEST_F(MessageIntegration, HeaderValuesAreExactlyThePostgresText) {
  const std::string wide =
      R"('{"n": 1e400, "big": 12345678901234567890123, "f": 1.50, "neg": -0.0, "t": true,)"
      R"( "z": null, "o": {"a": [1, "é", {"b": null}]}, "s": "é \"q\"\n\\ \u00e9"}'::jsonb)";
  const std::string big = R"('{"big": 12345678901234567890123}'::jsonb)";
  HeaderList wide_expected = EachText(wide);
  HeaderList big_expected = EachText(big);
  ASSERT_EQ(wide_expected.size(), 8u);
  ASSERT_EQ(big_expected, (HeaderList{{"big", "12345678901234567890123"}}));
  std::string wide_id =
      db_->Scalar("SELECT outbox.publish('" + topic_ + "', 'k', 'wide', " + wide + ")");
  std::string big_id =
      db_->Scalar("SELECT outbox.publish('" + topic_ + "', 'k', 'big', " + big + ")");

  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  ASSERT_EQ(consumer.ReadUntil(2, seconds(30)).size(), 2u)
      << outboxd.Log() << db_->Scalar("SELECT string_agg(error, '; ') FROM outbox.dead_letters");
  for (const Record& r : consumer.records()) {
    if (r.Header("outbox-id") == wide_id) {
      EXPECT_EQ(RowHeaders(r), wide_expected);
    } else {
      EXPECT_EQ(r.Header("outbox-id"), big_id);
      EXPECT_EQ(RowHeaders(r), big_expected);
    }
  }
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.dead_letters"), "0");
}

// outbox-created-at is the row's created_at (microseconds since 1970), the
// same on every delivery of the row, across a PostgreSQL restart; a message that gets the same id
// again (as after a crash that lost a commit made with synchronous_commit = off, or a failover
// to an asynchronous standby) carries a different pair.
TEST_F(MessageIntegration, CreatedAtHeaderIsStableAcrossARestartAndTellsAReusedIdApart) {
  std::string id = db_->Scalar("SELECT outbox.publish('" + topic_ + "', 'k', 'first')");
  std::string created =
      db_->Scalar("SELECT (extract(epoch FROM created_at) * 1000000)::bigint FROM outbox.messages");
  const std::string relay_toml = "on_sent = \"retain\"";
  auto all_sent = [&] {
    return db_->Scalar("SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL") == "0";
  };
  Consumer consumer(services_, topic_);
  {
    OutboxdProcess outboxd(services_, *db_, relay_toml);
    outboxd.Start();
    ASSERT_EQ(consumer.ReadUntil(1, seconds(30)).size(), 1u) << outboxd.Log();
    ASSERT_TRUE(WaitFor(all_sent, seconds(10)));
    outboxd.Kill(SIGTERM);
    ASSERT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();
  }
  EXPECT_EQ(consumer.records()[0].Header("outbox-id"), id);
  EXPECT_EQ(consumer.records()[0].Header("outbox-created-at"), created);

  // As if the acknowledgement had not been recorded: the row goes again after a restart.
  db_->Exec("UPDATE outbox.messages SET sent_at = NULL");
  int rc = std::system(
      (std::string(OUTBOXD_SOURCE_DIR) + "/scripts/pg.sh restart >/dev/null 2>&1").c_str());
  ASSERT_EQ(rc, 0) << "scripts/pg.sh restart failed";
  {
    OutboxdProcess outboxd(services_, *db_, relay_toml);
    outboxd.Start();
    ASSERT_TRUE(WaitFor(all_sent, seconds(30))) << outboxd.Log();
    outboxd.Kill(SIGTERM);
    ASSERT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();
  }
  // The id comes back (the relay's connection broke in the crash, so it scans from the start):
  // the row is gone and the sequence hands the id out again.
  db_->Exec("DELETE FROM outbox.messages");
  db_->Exec("SELECT setval('outbox.messages_id_seq', " + id + ", false)");
  std::string again = db_->Scalar("SELECT outbox.publish('" + topic_ + "', 'k', 'second')");
  ASSERT_EQ(again, id);
  OutboxdProcess outboxd(services_, *db_, relay_toml);
  outboxd.Start();
  ASSERT_EQ(consumer.ReadUntil(3, seconds(30)).size(), 3u) << outboxd.Log();
  const auto& records = consumer.records();
  // The redelivery: the same pair. The new message with the reused id: a different pair.
  EXPECT_EQ(records[1].value, "first");
  EXPECT_EQ(records[1].Header("outbox-id"), id);
  EXPECT_EQ(records[1].Header("outbox-created-at"), created);
  EXPECT_EQ(records[2].value, "second");
  EXPECT_EQ(records[2].Header("outbox-id"), id);
  ASSERT_TRUE(records[2].Header("outbox-created-at").has_value());
  EXPECT_GT(std::stoll(*records[2].Header("outbox-created-at")), std::stoll(created));
}

}  // namespace
}  // namespace outboxd::testing
