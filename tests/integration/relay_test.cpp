// The outboxd binary against real PostgreSQL and real Kafka, as a user runs it.
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>

#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "../support/integration.h"
#include "migrate.h"
#include "pg/connection.h"

namespace outboxd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class RelayIntegration : public ServicesTest {
 protected:
  int64_t Remaining() { return std::stoll(db_->Scalar("SELECT count(*) FROM outbox.messages")); }

  // Everything in `expected` (and nothing else, up to the markers) arrived exactly as written.
  DeliveryCheck ReadAndCheck(Consumer& consumer, ExpectedMessages expected) {
    ExpectedMessages markers = PublishMarkers(topic_);
    expected.insert(markers.begin(), markers.end());
    EXPECT_TRUE(consumer.ReadUntilIds(Ids(expected), seconds(60)))
        << "not everything arrived within 60 s";
    return CheckDelivery(expected, consumer.records(), kPartitions);
  }
};

TEST_F(RelayIntegration, EveryCommittedRowArrivesOnceWithExactKeyValueAndHeaders) {
  pg::Connection app = db_->Connect();
  ExpectedMessages expected;
  auto publish = [&](const std::string& args) {
    auto r = app.Query("SELECT outbox.publish('" + topic_ + "', " + args + ")");
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? r->GetInt(0, 0) : -1;
  };
  ASSERT_TRUE(app.Exec("BEGIN").ok());
  int64_t text_id =
      publish("'order-42', '{\"event\":\"paid\"}', '{\"trace-id\":\"abc\", \"n\": 5}'");
  int64_t jsonb_id = publish("'order-42', jsonb_build_object('event', 'shipped')");
  ASSERT_TRUE(app.Exec("COMMIT").ok());
  expected[text_id] = {"order-42", "{\"event\":\"paid\"}", {{"n", "5"}, {"trace-id", "abc"}}};
  expected[jsonb_id] = {"order-42", "{\"event\": \"shipped\"}", {}};  // jsonb's own text form
  int64_t bytea_id = publish("'bin', decode('00ff10', 'hex')");
  expected[bytea_id] = {"bin", std::string("\x00\xff\x10", 3), {}};
  int64_t nokey_id = publish("NULL, 'no key'");
  expected[nokey_id] = {std::nullopt, "no key", {}};
  int64_t tombstone_id = publish("'gone', NULL::text");
  expected[tombstone_id] = {"gone", std::nullopt, {}};
  ASSERT_TRUE(app.Exec("BEGIN").ok());
  int64_t rolled_back = publish("'order-42', 'rolled back'");
  ASSERT_TRUE(app.Exec("ROLLBACK").ok());

  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  DeliveryCheck check = ReadAndCheck(consumer, expected);
  EXPECT_TRUE(check.ok()) << check.Summary() << "\n" << outboxd.Log();
  EXPECT_EQ(check.duplicates, 0u) << check.Summary();
  std::map<int64_t, Record> by_id;
  for (const auto& r : consumer.records()) by_id[r.outbox_id()] = r;
  EXPECT_EQ(by_id.count(rolled_back), 0u);
  ASSERT_EQ(by_id.count(text_id), 1u);
  EXPECT_EQ(by_id[text_id].headers[0].first, "outbox-id");
  EXPECT_EQ(by_id[text_id].headers[1].first, "outbox-created-at");
  // Same key, same partition (murmur2's), in commit order.
  EXPECT_EQ(by_id[text_id].partition, JavaPartition("order-42", kPartitions));
  EXPECT_EQ(by_id[text_id].partition, by_id[jsonb_id].partition);
  EXPECT_LT(by_id[text_id].offset, by_id[jsonb_id].offset);
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
  int64_t low_id = low->GetInt(0, 0);
  db_->Exec("SELECT outbox.publish('" + topic_ + "', 'b', 'second id, commits first')");
  Consumer consumer(services_, topic_);
  ASSERT_EQ(consumer.ReadUntil(1, seconds(20)).size(), 1u) << outboxd.Log();
  EXPECT_EQ(consumer.records()[0].value, "second id, commits first");
  // Rows committed later still pass the open transaction's row.
  ExpectedMessages markers = PublishMarkers(topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(markers), seconds(20))) << outboxd.Log();
  ASSERT_EQ(consumer.records().size(), 1 + markers.size());
  ASSERT_TRUE(slow.Exec("COMMIT").ok());
  ASSERT_TRUE(consumer.ReadUntilIds({low_id}, seconds(20))) << outboxd.Log();
  EXPECT_EQ(consumer.records().back().value, "first id, commits last");
  EXPECT_EQ(consumer.records().back().outbox_id(), low_id);
}

// Many writers whose transactions commit in a different order than they took their ids; writers
// of one key serialize on a lock, as the README asks of applications. What must arrive is what
// publish() returned in transactions whose COMMIT succeeded; rolled-back rows must not.
TEST_F(RelayIntegration, ConcurrentWritersCommittingOutOfIdOrderLoseNothing) {
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  constexpr int kWriters = 8, kTxPerWriter = 150, kKeys = 20;
  std::vector<std::thread> writers;
  std::atomic<int> errors{0};
  std::mutex mu;
  ExpectedMessages committed;     // GUARDED_BY(mu)
  std::set<int64_t> rolled_back;  // GUARDED_BY(mu)
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      std::mt19937 rng(w);
      pg::Connection c = db_->Connect();
      for (int t = 0; t < kTxPerWriter; ++t) {
        std::string key = "k" + std::to_string(rng() % kKeys);
        bool ok = c.Exec("BEGIN").ok() &&
                  c.Exec("SELECT pg_advisory_xact_lock(hashtext('" + key + "'))").ok();
        int rows = 1 + static_cast<int>(rng() % 3);
        ExpectedMessages tx;
        for (int i = 0; ok && i < rows; ++i) {
          std::string value =
              "w" + std::to_string(w) + "-t" + std::to_string(t) + "-" + std::to_string(i);
          auto r = c.Query("SELECT outbox.publish('" + topic_ + "', '" + key + "', '" + value +
                           "', '{\"writer\": \"" + std::to_string(w) + "\"}')");
          ok = r.ok();
          if (ok) tx[r->GetInt(0, 0)] = {key, value, {{"writer", std::to_string(w)}}};
        }
        if (rng() % 2) std::this_thread::sleep_for(milliseconds(rng() % 5));
        bool rollback = rng() % 10 == 0;
        ok = ok && c.Exec(rollback ? "ROLLBACK" : "COMMIT").ok();
        if (!ok) {
          ++errors;
          continue;
        }
        std::lock_guard l(mu);
        for (auto& [id, m] : tx) {
          if (rollback) {
            rolled_back.insert(id);
          } else {
            committed[id] = m;
          }
        }
      }
    });
  }
  for (auto& t : writers) t.join();
  ASSERT_EQ(errors, 0);
  ASSERT_GT(committed.size(), static_cast<size_t>(kWriters * kTxPerWriter));  // 1-3 rows each
  ASSERT_FALSE(rolled_back.empty());
  Consumer consumer(services_, topic_);
  DeliveryCheck check = ReadAndCheck(consumer, committed);
  std::cout << "concurrent writers: " << check.Summary() << "\n";
  EXPECT_TRUE(check.ok()) << check.Summary() << "\n" << outboxd.Log();
  EXPECT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(30)))
      << db_->Scalar("SELECT string_agg(id::text, ',') FROM outbox.messages");
}

// SIGKILL while a backlog of 100,000 rows drains; a second run delivers the rest.
TEST_F(RelayIntegration, SigkillMidStreamOf100kLosesNothing) {
  ExpectedMessages expected = PublishMany(100'000, 1000, topic_);
  ASSERT_EQ(expected.size(), 100'000u);
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  // Killed when a fifth of the backlog is gone, not after a time: whatever the drain rate, the
  // kill lands mid-stream.
  ASSERT_TRUE(WaitFor([&] { return Remaining() <= 80'000; }, seconds(60))) << outboxd.Log();
  outboxd.Kill(SIGKILL);
  ASSERT_EQ(outboxd.Wait(seconds(10)), 128 + SIGKILL);
  int64_t left = Remaining();
  ASSERT_GT(left, 0) << "killed too late to show anything";
  outboxd.Start();
  Consumer consumer(services_, topic_);
  DeliveryCheck check = ReadAndCheck(consumer, expected);
  std::cout << "SIGKILL with " << left << " rows left: " << check.Summary() << "\n";
  EXPECT_TRUE(check.ok()) << check.Summary() << "\n" << outboxd.Log();
  EXPECT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(60)));
}

// PostgreSQL crashes (pg_ctl -m immediate: no checkpoint, crash recovery on start) while a backlog
// drains. The relay is slowed (50 rows per round) so that the crash lands on a backlog.
TEST_F(RelayIntegration, PostgresCrashMidStreamLosesNothing) {
  ExpectedMessages expected = PublishMany(20'000, 500, topic_);
  OutboxdProcess outboxd(services_, *db_, "batch_size = 50");
  outboxd.Start();
  ASSERT_TRUE(WaitFor([&] { return Remaining() <= 18'000; }, seconds(60))) << outboxd.Log();
  int64_t backlog = Remaining();
  auto crash_at = std::chrono::steady_clock::now();
  int rc = std::system(
      (std::string(OUTBOXD_SOURCE_DIR) + "/scripts/pg.sh crash >/dev/null 2>&1").c_str());
  ASSERT_EQ(rc, 0) << "scripts/pg.sh crash failed";
  auto back_at = std::chrono::steady_clock::now();
  int64_t after = Remaining();
  ASSERT_GE(backlog, 5'000) << "the backlog drained before the crash";
  ASSERT_GT(after, 0) << "the backlog drained before the crash";
  Consumer consumer(services_, topic_);
  DeliveryCheck check = ReadAndCheck(consumer, expected);
  auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  std::cout << "PostgreSQL crashed with " << backlog << " rows left (" << after
            << " when it was back after "
            << std::chrono::duration<double>(back_at - crash_at).count() << " s); all read "
            << seconds_since(back_at) << " s later: " << check.Summary() << "\n";
  EXPECT_TRUE(check.ok()) << check.Summary() << "\n" << outboxd.Log();
  EXPECT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(60)));
  EXPECT_NE(outboxd.Log().find("PostgreSQL"), std::string::npos);
  EXPECT_TRUE(outboxd.running());
}

// Three instances, one leader. README: a standby takes over within about
// leadership.retry_interval (1 s, set here as the default) after the leader dies.
TEST_F(RelayIntegration, OneOfThreeInstancesDeliversAndAnotherTakesOverAfterSigkill) {
  const std::string leadership = "[leadership]\nretry_interval = \"1s\"\n";
  std::vector<std::unique_ptr<OutboxdProcess>> instances;
  for (int i = 0; i < 3; ++i) {
    instances.push_back(std::make_unique<OutboxdProcess>(services_, *db_, "", leadership));
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
  // Advisory locks held in this test's database only (other outboxd processes, such as the
  // demo's, may hold theirs elsewhere in the cluster).
  const std::string locks =
      "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
      "(SELECT oid FROM pg_database WHERE datname = current_database())";
  EXPECT_EQ(db_->Scalar(locks), "1");

  std::atomic<bool> writing{true};
  ExpectedMessages expected;
  std::mutex mu;
  std::thread writer([&] {
    pg::Connection c = db_->Connect();
    for (int i = 0; writing; ++i) {
      std::string key = "k" + std::to_string(i % 50);
      auto r = c.Query("SELECT outbox.publish('" + topic_ + "', '" + key +
                       "', 'v') FROM generate_series(1, 20)");
      if (!r.ok()) continue;
      std::lock_guard l(mu);
      for (int j = 0; j < r->rows(); ++j) expected[r->GetInt(j, 0)] = {key, "v", {}};
      std::this_thread::sleep_for(milliseconds(5));
    }
  });
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(2'000, seconds(30));
  // Never two: only the first leader has said so while it lives.
  EXPECT_EQ(leading(), std::vector<int>{leader});
  size_t written_before_kill = 0;
  {
    std::lock_guard l(mu);
    written_before_kill = expected.size();
  }
  auto killed_at = std::chrono::steady_clock::now();
  instances[leader]->Kill(SIGKILL);
  instances[leader]->Wait(seconds(5));
  ASSERT_TRUE(WaitFor([&] { return leading().size() == 1; }, seconds(15)));
  double takeover =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  std::cout << "takeover after SIGKILL of the leader: " << takeover << " s\n";
  // "About retry_interval": one interval, plus starting to deliver; 1 s of slack for a loaded
  // machine.
  EXPECT_LT(takeover, 2.0);
  consumer.ReadUntil(consumer.records().size() + 2'000, seconds(30));
  writing = false;
  writer.join();
  DeliveryCheck check = ReadAndCheck(consumer, expected);
  std::cout << "failover: " << check.Summary() << "\n";
  EXPECT_TRUE(check.ok()) << check.Summary();
  EXPECT_GT(written_before_kill, 0u);
  EXPECT_GT(expected.size(), written_before_kill) << "nothing written after the kill";
  EXPECT_EQ(leading().size(), 1u);
  EXPECT_EQ(db_->Scalar(locks), "1");
}

TEST_F(RelayIntegration, PoisonRowIsDeadLetteredWhileTheRestFlows) {
  std::string dlq = NewTopic("dlq", 1);
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
  ExpectedMessages expected = PublishMany(200, 10, topic_);
  OutboxdProcess outboxd(services_, *db_,
                         "on_sent = \"retain\"\nretention = \"3s\"\ncleanup_interval = \"1s\"");
  outboxd.Start();
  // Marked, not removed: every row is still there with sent_at set (retention has not passed for
  // rows marked moments ago, so this does not wait on the consumer).
  ASSERT_TRUE(WaitFor(
      [&] {
        return db_->Scalar(
                   "SELECT count(*) FILTER (WHERE sent_at IS NOT NULL) || '/' || count(*) "
                   "FROM outbox.messages") == "200/200";
      },
      seconds(30)))
      << outboxd.Log();
  auto marked_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(30))) << outboxd.Log();
  double removed_after =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - marked_at).count();
  EXPECT_GT(removed_after, 2.0) << "removed long before the 3 s retention";
  EXPECT_LT(removed_after, 3.0 + 1.0 + 2.0) << "not removed after retention + cleanup_interval";
  Consumer consumer(services_, topic_);
  DeliveryCheck check = ReadAndCheck(consumer, expected);
  EXPECT_TRUE(check.ok()) << check.Summary();
  EXPECT_EQ(check.duplicates, 0u) << "marked rows were sent again: " << check.Summary();
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

// Notifications on `channel` and on "test_marker" that `c` (LISTENing) receives until a
// "test_marker" one arrives or `timeout` passes.
std::map<std::string, int> NotificationsUntilMarker(pg::Connection& c, milliseconds timeout) {
  std::map<std::string, int> count;
  auto until = std::chrono::steady_clock::now() + timeout;
  while (count["test_marker"] == 0 && std::chrono::steady_clock::now() < until) {
    pollfd pfd{PQsocket(c.raw()), POLLIN, 0};
    ::poll(&pfd, 1, 100);
    if (PQconsumeInput(c.raw()) == 0) break;
    while (PGnotify* n = PQnotifies(c.raw())) {
      ++count[n->relname];
      PQfreemem(n);
    }
  }
  return count;
}

// publish() notifies only while outboxd sleeps (README, Limits): commits that arrive while it
// is awake (faster than idle_grace apart) send no NOTIFY, which would serialize them.
TEST_F(RelayIntegration, PublishNotifiesOnlyWhileTheRelaySleeps) {
  // (sleep_below_rate = 0: the first of the 200 commits comes long after the one before, and
  // would send the relay to sleep at once; see SlowCommitsPutTheRelayToSleepAtOnce.)
  OutboxdProcess outboxd(services_, *db_,
                         "poll_interval = \"30s\"\nidle_grace = \"2s\"\nsleep_below_rate = 0");
  outboxd.Start();
  pg::Connection listener = db_->Connect();
  ASSERT_TRUE(listener.Exec("LISTEN outbox; LISTEN test_marker").ok());
  auto sleeping = [&] { return db_->Scalar("SELECT sleeping FROM outbox.relay_state") == "t"; };
  ASSERT_TRUE(WaitFor(sleeping, seconds(20))) << outboxd.Log();
  pg::Connection app = db_->Connect();
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'wakes it')").ok());
  ASSERT_TRUE(WaitFor([&] { return !sleeping(); }, seconds(10))) << outboxd.Log();
  ASSERT_TRUE(app.Exec("NOTIFY test_marker").ok());
  auto asleep = NotificationsUntilMarker(listener, seconds(10));
  EXPECT_EQ(asleep["outbox"], 1) << "the commit that woke the relay notified once";

  // Awake: 200 commits, each its own transaction, a few ms apart (idle_grace is 2 s).
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'awake')").ok());
    std::this_thread::sleep_for(milliseconds(2));
  }
  EXPECT_FALSE(sleeping());
  ASSERT_TRUE(app.Exec("NOTIFY test_marker").ok());
  auto awake = NotificationsUntilMarker(listener, seconds(10));
  EXPECT_EQ(awake["test_marker"], 1);
  EXPECT_EQ(awake["outbox"], 0) << "commits notified while the relay was awake";

  // Asleep again after idle_grace: the next commit notifies.
  ASSERT_TRUE(WaitFor(sleeping, seconds(20))) << outboxd.Log();
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'wakes it again')").ok());
  ASSERT_TRUE(app.Exec("NOTIFY test_marker").ok());
  EXPECT_EQ(NotificationsUntilMarker(listener, seconds(10))["outbox"], 1);
  Consumer consumer(services_, topic_);
  EXPECT_EQ(consumer.ReadUntil(202, seconds(30)).size(), 202u) << outboxd.Log();
}

// Waking without a pause: commits slower than relay.sleep_below_rate put the relay to
// sleep on LISTEN as soon as it caught up, long before idle_grace, so the next commit notifies and
// wakes it at once (instead of waiting for the next poll).
TEST_F(RelayIntegration, SlowCommitsPutTheRelayToSleepAtOnce) {
  OutboxdProcess outboxd(services_, *db_,
                         "poll_interval = \"30s\"\nidle_grace = \"30s\"\nsleep_below_rate = 30");
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("leading the outbox", seconds(20))) << outboxd.Log();
  pg::Connection listener = db_->Connect();
  ASSERT_TRUE(listener.Exec("LISTEN outbox; LISTEN test_marker").ok());
  auto sleeping = [&] { return db_->Scalar("SELECT sleeping FROM outbox.relay_state") == "t"; };
  pg::Connection app = db_->Connect();
  // Two commits 300 ms apart (3 a second, or fewer on a loaded machine): the second one measures
  // the rate.
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'first')").ok());
  std::this_thread::sleep_for(milliseconds(300));
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'second')").ok());
  // Asleep well before idle_grace (30 s) ends.
  ASSERT_TRUE(WaitFor(sleeping, seconds(10))) << outboxd.Log();
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ + "', 'k', 'third')").ok());
  ASSERT_TRUE(app.Exec("NOTIFY test_marker").ok());
  EXPECT_EQ(NotificationsUntilMarker(listener, seconds(10))["outbox"], 1)
      << "the commit after the sleep notified once";
  Consumer consumer(services_, topic_);
  // poll_interval is 30 s: only the NOTIFY brings the third row this soon.
  EXPECT_EQ(consumer.ReadUntil(3, seconds(10)).size(), 3u) << outboxd.Log();
}

// The roles of the README: outbox_writer may call publish() and nothing else; outbox_relay is
// all outboxd needs.
TEST_F(RelayIntegration, WriterRoleMayOnlyPublishAndRelayRoleIsEnoughForOutboxd) {
  const std::string writer = UniqueName("writer"), relay = UniqueName("relay");
  db_->Exec("CREATE ROLE " + writer + " LOGIN IN ROLE outbox_writer");
  db_->Exec("CREATE ROLE " + relay + " LOGIN IN ROLE outbox_relay");
  struct DropRoles {
    const TestDatabase& db;
    std::string names;
    ~DropRoles() {
      try {
        db.Exec("DROP ROLE IF EXISTS " + names);
      } catch (const std::exception& e) {
        std::cerr << "drop roles: " << e.what() << "\n";
      }
    }
  } drop{*db_, writer + ", " + relay};
  auto as = [&](const std::string& role) {
    auto c = pg::Connection::Open(db_->conninfo() + " user=" + role, "outboxd-test");
    if (!c.ok()) throw std::runtime_error(c.status().message());
    return std::move(*c);
  };
  pg::Connection app = as(writer);
  auto id = app.Query("SELECT outbox.publish('" + topic_ + "', 'k', 'from the writer role')");
  ASSERT_TRUE(id.ok()) << id.status().message();
  for (const char* sql :
       {"SELECT count(*) FROM outbox.messages", "DELETE FROM outbox.messages",
        "UPDATE outbox.messages SET key = 'x'",
        "INSERT INTO outbox.messages (topic, key, payload, headers) VALUES ('t', 'k', 'v', '{}')",
        "UPDATE outbox.relay_state SET sleeping = true", "SELECT count(*) FROM outbox.dead_letters",
        "SELECT count(*) FROM outbox.prepared"}) {
    Status s = app.Exec(sql);
    EXPECT_FALSE(s.ok()) << "the writer role may: " << sql;
    EXPECT_NE(s.message().find("permission denied"), std::string::npos)
        << sql << ": " << s.message();
  }

  OutboxdProcess outboxd(services_, *db_, "", "", db_->conninfo() + " user=" + relay);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  ExpectedMessages expected{{id->GetInt(0, 0), {"k", "from the writer role", {}}}};
  DeliveryCheck check = ReadAndCheck(consumer, expected);
  EXPECT_TRUE(check.ok()) << check.Summary() << "\n" << outboxd.Log();
  EXPECT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(10))) << outboxd.Log();
  EXPECT_EQ(outboxd.Log().find("permission denied"), std::string::npos) << outboxd.Log();
  outboxd.Kill(SIGTERM);
  EXPECT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();
}

// The checker's partition function: the vectors of Kafka's UtilsTest.testMurmur2.
TEST(JavaPartition, Murmur2MatchesTheJavaClient) {
  EXPECT_EQ(Murmur2("21"), -973932308);
  EXPECT_EQ(Murmur2("foobar"), -790332482);
  EXPECT_EQ(Murmur2("a-little-bit-long-string"), -985981536);
  EXPECT_EQ(Murmur2("a-little-bit-longer-string"), -1486304829);
  EXPECT_EQ(Murmur2("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
  EXPECT_EQ(Murmur2("abc"), 479470107);
  EXPECT_EQ(JavaPartition("21", 7), (-973932308 & 0x7fffffff) % 7);
}

// Exit codes through the binary: 2 for bad configuration or usage, 0 for a good file.
TEST(OutboxdBinary, BadConfigurationOrUsageExitsWithCodeTwo) {
  const std::string good =
      "[postgres]\nconninfo = \"host=127.0.0.1 dbname=x\"\n"
      "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n";
  auto [ok_rc, ok_out] = RunOutboxd({"check-config", "--config", TestFile("good", good)});
  EXPECT_EQ(ok_rc, 0) << ok_out;
  std::string unknown = TestFile("unknown", good + "[relay]\nbatch_szie = 5\n");
  for (const char* command : {"check-config", "run", "migrate"}) {
    auto [rc, out] = RunOutboxd({command, "--config", unknown});
    EXPECT_EQ(rc, 2) << command << ": " << out;
    EXPECT_NE(out.find(":6: relay.batch_szie: unknown key"), std::string::npos) << out;
  }
  for (const std::string& bad :
       {good + "[relay]\nbatch_size = \"many\"\n", good + "[relay]\npoll_interval = \"1 week\"\n",
        good + "[kafka.properties]\n\"transactional.id\" = \"x\"\n", std::string("[postgres]\n")}) {
    auto [rc, out] = RunOutboxd({"run", "--config", TestFile("bad", bad)});
    EXPECT_EQ(rc, 2) << bad << "\n" << out;
  }
  EXPECT_EQ(RunOutboxd({"run", "--config", "/nonexistent/outboxd.toml"}).first, 2);
  EXPECT_EQ(RunOutboxd({"no-such-command"}).first, 2);
  EXPECT_EQ(RunOutboxd({"run", "--no-such-flag"}).first, 2);
}

// The server's end of every outboxd session gets the [leadership] TCP settings (the OS
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
