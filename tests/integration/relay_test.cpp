// The outboxd binary against real PostgreSQL and real Kafka, as a user runs it.
#include <signal.h>

#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "../support/integration.h"
#include "migrate.h"

namespace outboxd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class RelayIntegration : public ServicesTest {
 protected:
  // Ids and keys of every row now in the outbox: what must arrive.
  std::map<int64_t, std::optional<std::string>> Expected() {
    std::map<int64_t, std::optional<std::string>> out;
    pg::Connection c = db_->Connect();
    auto r = c.Query("SELECT id, key FROM outbox.messages");
    for (int i = 0; i < r->rows(); ++i) {
      out[r->GetInt(i, 0)] =
          r->IsNull(i, 1) ? std::nullopt : std::optional<std::string>(std::string(r->Get(i, 1)));
    }
    return out;
  }

  void PublishMany(int n, int keys, const std::string& topic) {
    db_->Exec("SELECT outbox.publish('" + topic + "', 'key-' || (i % " + std::to_string(keys) +
              "), 'payload-' || i) FROM generate_series(1, " + std::to_string(n) + ") AS i");
  }

  int64_t Remaining() { return std::stoll(db_->Scalar("SELECT count(*) FROM outbox.messages")); }
};

TEST_F(RelayIntegration, EveryCommittedRowArrivesOnceWithExactKeyValueAndHeaders) {
  pg::Connection app = db_->Connect();
  auto publish = [&](const std::string& sql) {
    auto r = app.Query(sql);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? std::string(r->Get(0, 0)) : "";
  };
  ASSERT_TRUE(app.Exec("BEGIN").ok());
  std::string text_id = publish("SELECT outbox.publish('" + topic_ +
                                "', 'order-42', '{\"event\":\"paid\"}', '{\"trace-id\":\"abc\"}')");
  std::string jsonb_id = publish("SELECT outbox.publish('" + topic_ +
                                 "', 'order-42', jsonb_build_object('event', 'shipped'))");
  ASSERT_TRUE(app.Exec("COMMIT").ok());
  std::string bytea_id =
      publish("SELECT outbox.publish('" + topic_ + "', 'bin', decode('00ff10', 'hex'))");
  std::string nokey_id = publish("SELECT outbox.publish('" + topic_ + "', NULL, 'no key')");
  std::string tombstone_id = publish("SELECT outbox.publish('" + topic_ + "', 'gone', NULL)");
  ASSERT_TRUE(app.Exec("BEGIN").ok());
  publish("SELECT outbox.publish('" + topic_ + "', 'order-42', 'rolled back')");
  ASSERT_TRUE(app.Exec("ROLLBACK").ok());

  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(5, seconds(30));
  consumer.ReadFor(milliseconds(1500));  // nothing else may arrive
  const auto& records = consumer.records();
  ASSERT_EQ(records.size(), 5u) << outboxd.Log();
  std::map<std::string, Record> by_id;
  for (const auto& r : records) by_id[*r.Header("outbox-id")] = r;

  const Record& text = by_id.at(text_id);
  EXPECT_EQ(text.key, "order-42");
  EXPECT_EQ(text.value, "{\"event\":\"paid\"}");
  ASSERT_EQ(text.headers.size(), 2u);
  EXPECT_EQ(text.headers[0].first, "outbox-id");
  EXPECT_EQ(text.Header("trace-id"), "abc");
  EXPECT_EQ(by_id.at(jsonb_id).value, "{\"event\": \"shipped\"}");  // jsonb's own text form
  EXPECT_EQ(by_id.at(bytea_id).value, std::string("\x00\xff\x10", 3));
  EXPECT_EQ(by_id.at(nokey_id).key, std::nullopt);
  EXPECT_EQ(by_id.at(tombstone_id).key, "gone");
  EXPECT_EQ(by_id.at(tombstone_id).value, std::nullopt);
  // Same key, same partition, in commit order.
  EXPECT_EQ(text.partition, by_id.at(jsonb_id).partition);
  EXPECT_LT(text.offset, by_id.at(jsonb_id).offset);
  EXPECT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(10)));

  outboxd.Kill(SIGTERM);
  EXPECT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();
}

// A transaction that took a lower id commits after a higher id was delivered: it still arrives.
TEST_F(RelayIntegration, LateCommitOfALowerIdIsNotSkipped) {
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  pg::Connection slow = db_->Connect();
  ASSERT_TRUE(slow.Exec("BEGIN").ok());
  auto low = slow.Query("SELECT outbox.publish('" + topic_ + "', 'a', 'first id, commits last')");
  ASSERT_TRUE(low.ok());
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'b', 'second id, commits first')");
  Consumer consumer(services_, topic_);
  ASSERT_EQ(consumer.ReadUntil(1, seconds(20)).size(), 1u) << outboxd.Log();
  EXPECT_EQ(consumer.records()[0].value, "second id, commits first");
  consumer.ReadFor(milliseconds(500));
  ASSERT_EQ(consumer.records().size(), 1u);
  ASSERT_TRUE(slow.Exec("COMMIT").ok());
  ASSERT_EQ(consumer.ReadUntil(2, seconds(20)).size(), 2u) << outboxd.Log();
  EXPECT_EQ(consumer.records()[1].value, "first id, commits last");
  EXPECT_EQ(std::to_string(consumer.records()[1].outbox_id()), std::string(low->Get(0, 0)));
}

// Many writers whose transactions commit in a different order than they took their ids; writers
// of one key serialize on a lock, as the README asks of applications.
TEST_F(RelayIntegration, ConcurrentWritersCommittingOutOfIdOrderLoseNothing) {
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  constexpr int kWriters = 8, kTxPerWriter = 150, kKeys = 20;
  std::vector<std::thread> writers;
  std::atomic<int> errors{0};
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      std::mt19937 rng(w);
      pg::Connection c = db_->Connect();
      for (int t = 0; t < kTxPerWriter; ++t) {
        std::string key = "k" + std::to_string(rng() % kKeys);
        bool ok = c.Exec("BEGIN").ok() &&
                  c.Exec("SELECT pg_advisory_xact_lock(hashtext('" + key + "'))").ok();
        int rows = 1 + static_cast<int>(rng() % 3);
        for (int i = 0; ok && i < rows; ++i) {
          ok = c.Exec("SELECT outbox.publish('" + topic_ + "', '" + key + "', 'w" +
                      std::to_string(w) + "')")
                   .ok();
        }
        if (rng() % 2) std::this_thread::sleep_for(milliseconds(rng() % 5));
        bool rollback = rng() % 10 == 0;
        ok = ok && c.Exec(rollback ? "ROLLBACK" : "COMMIT").ok();
        if (!ok) ++errors;
      }
    });
  }
  for (auto& t : writers) t.join();
  ASSERT_EQ(errors, 0);
  // Everything committed is either still in the outbox or delivered; collect what was committed
  // from Kafka's side by reading until the outbox is empty.
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(60)))
      << outboxd.Log() << "\nleft: "
      << db_->Scalar("SELECT string_agg(id::text || '/' || txid::text, ',') FROM outbox.messages");
  Consumer consumer(services_, topic_);
  consumer.ReadFor(seconds(3));
  std::map<int64_t, std::optional<std::string>> expected;
  for (const Record& r : consumer.records()) expected[r.outbox_id()] = r.key;
  // The outbox was emptied only by acknowledged deliveries; nothing may be missing in between.
  pg::Connection c = db_->Connect();
  auto seq = c.Query("SELECT last_value FROM outbox.messages_id_seq");
  int64_t max_id = seq->GetInt(0, 0);
  int64_t committed = 0;
  for (auto& [id, k] : expected) committed += id <= max_id;
  DeliveryCheck check = CheckDelivery(expected, consumer.records());
  EXPECT_EQ(check.duplicates, 0u) << check.Summary();
  EXPECT_EQ(check.out_of_order, 0u) << check.Summary();
  EXPECT_GT(committed, kWriters * kTxPerWriter * 8 / 10);
  std::cout << "concurrent writers: " << check.Summary() << "\n";
}

TEST_F(RelayIntegration, SigkillMidStreamOf100kLosesNothing) {
  PublishMany(100'000, 1000, topic_);
  auto expected = Expected();
  ASSERT_EQ(expected.size(), 100'000u);
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(20'000, seconds(60));
  ASSERT_GE(consumer.records().size(), 20'000u) << outboxd.Log();
  outboxd.Kill(SIGKILL);
  ASSERT_EQ(outboxd.Wait(seconds(10)), 128 + SIGKILL);
  int64_t left = Remaining();
  EXPECT_GT(left, 0) << "killed too late to show anything";
  outboxd.Start();
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(120))) << outboxd.Log();
  consumer.ReadUntil(100'000, seconds(60));
  consumer.ReadFor(seconds(1));
  DeliveryCheck check = CheckDelivery(expected, consumer.records());
  std::cout << "SIGKILL after " << 100'000 - left << " removed: " << check.Summary() << "\n";
  EXPECT_EQ(check.lost, 0u) << check.Summary();
  EXPECT_EQ(check.out_of_order, 0u) << check.Summary();
  EXPECT_EQ(check.unexpected, 0u) << check.Summary();
}

TEST_F(RelayIntegration, PostgresRestartMidStreamLosesNothing) {
  PublishMany(50'000, 500, topic_);
  auto expected = Expected();
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(5'000, seconds(60));
  ASSERT_GE(consumer.records().size(), 5'000u) << outboxd.Log();
  int rc = std::system(
      (std::string(OUTBOXD_SOURCE_DIR) + "/scripts/pg.sh restart >/dev/null 2>&1").c_str());
  ASSERT_EQ(rc, 0) << "scripts/pg.sh restart failed";
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(120))) << outboxd.Log();
  consumer.ReadUntil(50'000, seconds(60));
  consumer.ReadFor(seconds(1));
  DeliveryCheck check = CheckDelivery(expected, consumer.records());
  std::cout << "PostgreSQL restart: " << check.Summary() << "\n";
  EXPECT_EQ(check.lost, 0u) << check.Summary();
  EXPECT_EQ(check.out_of_order, 0u) << check.Summary();
  EXPECT_NE(outboxd.Log().find("PostgreSQL"), std::string::npos);
  EXPECT_TRUE(outboxd.running());
}

TEST_F(RelayIntegration, OneOfThreeInstancesDeliversAndAnotherTakesOverAfterSigkill) {
  std::vector<std::unique_ptr<OutboxdProcess>> instances;
  for (int i = 0; i < 3; ++i) {
    instances.push_back(std::make_unique<OutboxdProcess>(services_, *db_));
    instances.back()->Start();
  }
  auto leading = [&] {
    std::vector<int> out;
    for (int i = 0; i < 3; ++i) {
      if (instances[i]->running() &&
          instances[i]->Log().find("leading the outbox") != std::string::npos) {
        out.push_back(i);
      }
    }
    return out;
  };
  ASSERT_TRUE(WaitFor([&] { return leading().size() == 1; }, seconds(20)));
  int leader = leading()[0];
  for (int i = 0; i < 3; ++i) {
    if (i != leader) {
      EXPECT_TRUE(instances[i]->WaitForLog("standing by", seconds(10)));
    }
  }
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"),
            "1");

  std::atomic<bool> writing{true};
  std::map<int64_t, std::optional<std::string>> expected;
  std::mutex mu;
  std::thread writer([&] {
    pg::Connection c = db_->Connect();
    for (int i = 0; writing; ++i) {
      std::string key = "k" + std::to_string(i % 50);
      auto r = c.Query("SELECT outbox.publish('" + topic_ + "', '" + key +
                       "', 'v') FROM generate_series(1, 20)");
      if (!r.ok()) continue;
      std::lock_guard l(mu);
      for (int j = 0; j < r->rows(); ++j) expected[r->GetInt(j, 0)] = key;
      std::this_thread::sleep_for(milliseconds(5));
    }
  });
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(2'000, seconds(30));
  // Never two: only the first leader has said so while it lives.
  EXPECT_EQ(leading(), std::vector<int>{leader});
  auto killed_at = std::chrono::steady_clock::now();
  instances[leader]->Kill(SIGKILL);
  instances[leader]->Wait(seconds(5));
  ASSERT_TRUE(WaitFor([&] { return leading().size() == 1; }, seconds(15)));
  double takeover =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  std::cout << "takeover after SIGKILL of the leader: about " << takeover << " s\n";
  consumer.ReadUntil(consumer.records().size() + 2'000, seconds(30));
  writing = false;
  writer.join();
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(30)));
  consumer.ReadUntil(expected.size(), seconds(30));
  consumer.ReadFor(seconds(1));
  DeliveryCheck check = CheckDelivery(expected, consumer.records());
  std::cout << "failover: " << check.Summary() << "\n";
  EXPECT_EQ(check.lost, 0u) << check.Summary();
  EXPECT_EQ(check.out_of_order, 0u) << check.Summary();
  EXPECT_EQ(check.unexpected, 0u) << check.Summary();
  EXPECT_EQ(leading().size(), 1u);
}

TEST_F(RelayIntegration, PoisonRowIsDeadLetteredWhileTheRestFlows) {
  std::string dlq = topic_ + "_dlq";
  CreateTopic(services_, dlq, 1);
  db_->Exec("SELECT outbox.publish('" + topic_ +
            "', 'k' || i, 'ok') FROM generate_series(1, 50) i");
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k1', repeat('x', 1200000))");  // > 1 MB
  db_->Exec("INSERT INTO outbox.messages (topic, key, payload, headers) VALUES ('" + topic_ +
            "', 'k2', 'bad headers', '[\"not\", \"an object\"]')");
  db_->Exec("SELECT outbox.publish('" + topic_ +
            "', 'k' || i, 'after') FROM generate_series(1, 50) i");
  OutboxdProcess outboxd(services_, *db_, "dead_letter_topic = \"" + dlq + "\"");
  outboxd.Start();
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(100, seconds(30));
  ASSERT_EQ(consumer.records().size(), 100u) << outboxd.Log();
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(20))) << outboxd.Log();
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.dead_letters"), "2");
  std::string big_error = db_->Scalar("SELECT error FROM outbox.dead_letters WHERE key = 'k1'");
  EXPECT_NE(big_error.find("too large"), std::string::npos) << big_error;
  std::string header_error = db_->Scalar("SELECT error FROM outbox.dead_letters WHERE key = 'k2'");
  EXPECT_NE(header_error.find("headers must be a JSON object"), std::string::npos) << header_error;
  Consumer dead(services_, dlq);
  dead.ReadUntil(1, seconds(20));
  ASSERT_GE(dead.records().size(), 1u);
  EXPECT_EQ(dead.records()[0].Header("outbox-topic"), topic_);
  EXPECT_TRUE(dead.records()[0].Header("outbox-error").has_value());
}

TEST_F(RelayIntegration, RetainModeMarksRowsAndTheCleanerRemovesThemAfterRetention) {
  PublishMany(200, 10, topic_);
  OutboxdProcess outboxd(services_, *db_,
                         "on_sent = \"retain\"\nretention = \"2s\"\ncleanup_interval = \"1s\"");
  outboxd.Start();
  Consumer consumer(services_, topic_);
  ASSERT_EQ(consumer.ReadUntil(200, seconds(30)).size(), 200u) << outboxd.Log();
  ASSERT_TRUE(WaitFor(
      [&] {
        return db_->Scalar("SELECT count(*) FROM outbox.messages WHERE sent_at IS NOT NULL") ==
               "200";
      },
      seconds(10)));
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(20))) << outboxd.Log();
  consumer.ReadFor(milliseconds(500));
  EXPECT_EQ(consumer.records().size(), 200u);  // marked rows are not sent again
}

// When idle, the relay sleeps on LISTEN; a commit wakes it long before the 30 s poll interval.
TEST_F(RelayIntegration, NotifyWakesTheSleepingRelay) {
  OutboxdProcess outboxd(services_, *db_, "poll_interval = \"30s\"");
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("leading the outbox", seconds(20)));
  ASSERT_TRUE(WaitFor([&] { return db_->Scalar("SELECT sleeping FROM outbox.relay_state") == "t"; },
                      seconds(10)));
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'wake up')");
  Consumer consumer(services_, topic_);
  EXPECT_EQ(consumer.ReadUntil(1, seconds(10)).size(), 1u) << outboxd.Log();
}

// Issue 14: the server's end of every outboxd session gets the [leadership] TCP settings (the OS
// defaults let PostgreSQL keep a dead client's session, and its lock, for hours).
TEST_F(RelayIntegration, SessionsCarryTheTcpSettingsOnTheServersEnd) {
  pg::TcpSettings tcp{milliseconds(3000), milliseconds(1000), 2, milliseconds(7000)};
  auto c = pg::Connection::Open(db_->conninfo(), "outboxd-test", tcp);
  ASSERT_TRUE(c.ok()) << c.status().message();
  auto r = c->Query(
      "SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'), "
      "current_setting('tcp_keepalives_count'), current_setting('tcp_user_timeout')");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->Get(0, 0), "3");
  EXPECT_EQ(r->Get(0, 1), "1");
  EXPECT_EQ(r->Get(0, 2), "2");
  EXPECT_EQ(r->Get(0, 3), "7000");  // milliseconds
  // (The leader's lease, idle_session_timeout, is shown by the NetFault tests: the takeover
  // comes when it ends the silent session.)
}

TEST_F(RelayIntegration, RunRefusesAnUnmigratedDatabaseWithAClearMessage) {
  TestDatabase empty(services_, /*migrate=*/false);
  OutboxdProcess outboxd(services_, empty);
  outboxd.Start();
  EXPECT_TRUE(outboxd.WaitForLog("run `outboxd migrate", seconds(20))) << outboxd.Log();
  auto [rc, out] = RunOutboxd({"migrate", "--config", outboxd.config_path()});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find(std::to_string(EmbeddedMigrations().size()) + " migration(s) applied"),
            std::string::npos)
      << out;
  auto [rc2, out2] = RunOutboxd({"migrate", "--config", outboxd.config_path()});
  EXPECT_EQ(rc2, 0);
  EXPECT_NE(out2.find("0 migration(s) applied"), std::string::npos) << out2;
  EXPECT_TRUE(outboxd.WaitForLog("leading the outbox", seconds(20))) << outboxd.Log();
}

}  // namespace
}  // namespace outboxd::testing
