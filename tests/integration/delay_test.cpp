// Delayed delivery (outbox.publish(..., deliver_at), schema/005): the outboxd binary against real
// PostgreSQL and Kafka, with a Kafka consumer as the witness. A delayed message arrives no earlier
// than its time and within the poll interval after it; the later messages of its key wait behind
// it; other keys are not held; nothing is lost across a restart of outboxd while messages wait.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "../support/integration.h"
#include "pg/connection.h"

namespace outboxd::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// The id publish() returned: a delayed (or held-back) message carries it as outbox-delayed-id, its
// outbox-id being the id of the row the release wrote.
int64_t PublishedId(const Record& r) {
  if (auto d = r.Header("outbox-delayed-id")) return std::stoll(*d);
  return r.outbox_id();
}

// What the witness saw, by the id publish() returned: the first copy's arrival, and per key the
// published ids in the order they arrived (first copies, partition offset order).
struct Witness {
  std::map<int64_t, Clock::time_point> arrived;
  std::map<std::string, std::vector<int64_t>> order_by_key;
  std::map<int64_t, std::string> value;
  size_t duplicates = 0;
  size_t seen = 0;  // consumer records taken into account
};

class DelayIntegration : public ServicesTest {
 protected:
  int64_t Publish(pg::Connection& c, const std::string& key, const std::string& value,
                  const std::string& deliver_at = "") {
    std::string sql = "SELECT outbox.publish('" + topic_ + "', " +
                      (key.empty() ? "NULL" : "'" + key + "'") + ", '" + value + "'" +
                      (deliver_at.empty() ? "" : ", '{}', " + deliver_at) + ")";
    auto r = c.Query(sql);
    if (!r.ok()) throw std::runtime_error(r.status().message());
    return r->GetInt(0, 0);
  }

  // Polls the consumer until every id in `ids` arrived or `timeout` passed, noting arrivals.
  bool ReadUntil(Consumer& consumer, Witness* w, const std::set<int64_t>& ids,
                 milliseconds timeout) {
    auto until = Clock::now() + timeout;
    for (;;) {
      const auto& records = consumer.ReadFor(milliseconds(50));
      auto now = Clock::now();
      for (; w->seen < records.size(); ++w->seen) {
        const Record& r = records[w->seen];
        int64_t id = PublishedId(r);
        if (w->arrived.count(id)) {
          ++w->duplicates;
          continue;
        }
        w->arrived[id] = now;
        w->value[id] = r.value.value_or("");
        w->order_by_key[r.key.value_or("")].push_back(id);
      }
      bool all = true;
      for (int64_t id : ids) all = all && w->arrived.count(id);
      if (all) return true;
      if (now >= until) return false;
    }
  }

  // Per key, published ids arrived in publish (id) order.
  static std::string OrderBreaks(const Witness& w) {
    std::string out;
    for (const auto& [key, ids] : w.order_by_key) {
      for (size_t i = 1; i < ids.size(); ++i) {
        if (ids[i] < ids[i - 1]) {
          out += "key " + key + ": " + std::to_string(ids[i]) + " after " +
                 std::to_string(ids[i - 1]) + "\n";
        }
      }
    }
    return out;
  }
};

// A delayed message arrives after its time, within the poll interval, and holds back the later
// messages of its key (also those published without a delay); another key is not held.
TEST_F(DelayIntegration, DelayedMessageHoldsBackItsKeyOnly) {
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  pg::Connection app = db_->Connect();
  constexpr int kDelayMs = 3000;
  int64_t a = Publish(app, "k", "a-before");
  auto delayed_published = Clock::now();
  int64_t b = Publish(app, "k", "b-delayed",
                      "clock_timestamp() + interval '" + std::to_string(kDelayMs) + " ms'");
  int64_t c = Publish(app, "k", "c-after-no-delay");
  int64_t d = Publish(app, "other", "d-other-key");
  int64_t e = Publish(app, "", "e-no-key");
  int64_t f = Publish(app, "k", "f-after-past-time", "clock_timestamp() - interval '1 s'");

  Witness w;
  ASSERT_TRUE(ReadUntil(consumer, &w, {a, d, e}, seconds(20))) << outboxd.Log();
  // Nothing of k after `a` may arrive before b's time.
  auto before_due = delayed_published + milliseconds(kDelayMs - 300);
  consumer.ReadFor(std::max(milliseconds(0),
                            std::chrono::duration_cast<milliseconds>(before_due - Clock::now())));
  ReadUntil(consumer, &w, {}, milliseconds(0));
  EXPECT_EQ(w.arrived.count(b) + w.arrived.count(c) + w.arrived.count(f), 0u)
      << "a message of key k arrived before the delayed one's time\n"
      << outboxd.Log();
  EXPECT_EQ(std::stoll(db_->Scalar("SELECT count(*) FROM outbox.delayed")), 3);

  ASSERT_TRUE(ReadUntil(consumer, &w, {b, c, f}, seconds(30))) << outboxd.Log();
  EXPECT_EQ(w.order_by_key["k"], (std::vector<int64_t>{a, b, c, f}));
  EXPECT_EQ(w.value[b], "b-delayed");
  auto late = std::chrono::duration_cast<milliseconds>(w.arrived[b] - delayed_published) -
              milliseconds(kDelayMs);
  std::cout << "[ delay    ] delayed message arrived " << late.count()
            << " ms after its time (delay.poll_interval 1 s)\n";
  EXPECT_GE(late.count(), 0);
  // Within the poll interval (1 s), with slack for a loaded 2-core machine.
  EXPECT_LT(late.count(), 2500) << outboxd.Log();
  EXPECT_EQ(w.duplicates, 0u);
  EXPECT_TRUE(WaitFor(
      [&] {
        return db_->Scalar("SELECT count(*) FROM outbox.delayed") == "0" &&
               db_->Scalar("SELECT count(*) FROM outbox.messages") == "0";
      },
      seconds(10)));
}

// Messages wait while outboxd is killed and restarted (and is down when their time comes); every
// one arrives, per key in publish order, and far-future messages neither block others nor leave.
TEST_F(DelayIntegration, RestartWhileMessagesWaitLosesNothingAndKeepsKeyOrder) {
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  pg::Connection app = db_->Connect();
  // Far-future messages of their own keys: they must not stop anything else.
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ +
                       "', 'far-' || i, 'far', '{}', now() + interval '1 hour') "
                       "FROM generate_series(1, 2000) i")
                  .ok());
  constexpr int kKeys = 20, kPerKey = 15;
  std::mt19937 rng(13);
  std::set<int64_t> all, free_keys_ids;
  std::set<int> held_keys;
  for (int i = 0; i < kKeys * kPerKey; ++i) {
    int k = i % kKeys;
    std::string key = "key-" + std::to_string(k);
    // Keys 0..9 get a delayed message early (2-4 s); later ones wait behind it.
    bool delayed = k < 10 && i / kKeys == 2;
    int64_t id = Publish(
        app, key, "v" + std::to_string(i),
        delayed ? "clock_timestamp() + interval '" + std::to_string(2000 + rng() % 2000) + " ms'"
                : "");
    all.insert(id);
    if (k >= 10) free_keys_ids.insert(id);
  }
  Witness w;
  ASSERT_TRUE(ReadUntil(consumer, &w, free_keys_ids, seconds(30))) << outboxd.Log();
  outboxd.Kill(SIGKILL);
  outboxd.Wait(seconds(10));
  // Written while outboxd is down; their keys' delayed messages come due meanwhile.
  for (int k = 0; k < kKeys; ++k) {
    all.insert(Publish(app, "key-" + std::to_string(k), "while-down"));
  }
  std::this_thread::sleep_for(seconds(2));
  outboxd.Start();
  ASSERT_TRUE(ReadUntil(consumer, &w, all, seconds(60)))
      << "missing " << all.size() - w.arrived.size() << "\n"
      << outboxd.Log();
  EXPECT_EQ(OrderBreaks(w), "");
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.delayed"), "2000");
  std::cout << "[ delay    ] " << all.size() << " messages, " << w.duplicates
            << " duplicates after SIGKILL (allowed), far-future waiting: 2000\n";
}

// Hostile timing: writers of each key (serialized by a row lock, as the README asks) publish while
// the release runs, with random short delays; per-key order holds in Kafka. (It caught a release
// that read the clock per row: a held message, due at the same time as the one before it, went
// out first when the clock passed that time during the scan; seen once in 11 runs before the fix.)
TEST_F(DelayIntegration, ConcurrentWritersAndReleasesKeepKeyOrder) {
  OutboxdProcess outboxd(services_, *db_, "", "[delay]\npoll_interval = \"50ms\"\n");
  outboxd.Start();
  Consumer consumer(services_, topic_);
  db_->Exec("CREATE TABLE keys (k text PRIMARY KEY)");
  db_->Exec("INSERT INTO keys SELECT 'key-' || i FROM generate_series(0, 4) i");
  constexpr int kWriters = 4, kPerWriter = 150;
  std::mutex mu;
  std::set<int64_t> all;  // GUARDED_BY(mu)
  std::atomic<int> errors{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < kWriters; ++t) {
    writers.emplace_back([&, t] {
      pg::Connection c = db_->Connect();
      std::mt19937 rng(t);
      for (int i = 0; i < kPerWriter; ++i) {
        std::string key = "key-" + std::to_string(rng() % 5);
        int roll = rng() % 10;
        std::string at =
            roll < 3 ? "clock_timestamp() + interval '" + std::to_string(rng() % 300) + " ms'" : "";
        bool ok = c.Exec("BEGIN").ok() &&
                  c.Exec("SELECT 1 FROM keys WHERE k = '" + key + "' FOR UPDATE").ok();
        int64_t id = -1;
        if (ok) {
          try {
            id = Publish(c, key, "w" + std::to_string(t) + "-" + std::to_string(i), at);
          } catch (const std::exception&) {
            ok = false;
          }
        }
        ok = ok && c.Exec("COMMIT").ok();
        if (!ok) {
          ++errors;
          (void)c.Exec("ROLLBACK");
          continue;
        }
        std::lock_guard<std::mutex> lock(mu);
        all.insert(id);
      }
    });
  }
  for (auto& t : writers) t.join();
  EXPECT_EQ(errors.load(), 0);
  Witness w;
  ASSERT_TRUE(ReadUntil(consumer, &w, all, seconds(60))) << outboxd.Log();
  EXPECT_EQ(OrderBreaks(w), "");
  if (!OrderBreaks(w).empty()) {
    for (const Record& r : consumer.records()) {
      std::cout << r.key.value_or("") << " p" << r.partition << "@" << r.offset << " id "
                << r.outbox_id() << " published " << PublishedId(r) << " " << r.value.value_or("")
                << "\n";
    }
  }
  EXPECT_EQ(w.arrived.size(), all.size());
  EXPECT_EQ(w.duplicates, 0u);
}

// Writers of a key at REPEATABLE READ or SERIALIZABLE, serialized by an advisory lock or by
// SELECT ... FOR UPDATE on an aggregate row that the first one only locks: the second one's
// snapshot is taken before the first one (which delays its message) commits, then it waits for
// the lock and publishes. Its message must still arrive after the delayed one. Such writers retry
// on a serialization failure (40001), as they must anyway.
TEST_F(DelayIntegration, RepeatableReadAndSerializableWritersWaitBehindADelayedMessage) {
  OutboxdProcess outboxd(services_, *db_, "", "[delay]\npoll_interval = \"200ms\"\n");
  outboxd.Start();
  Consumer consumer(services_, topic_);
  db_->Exec("CREATE TABLE aggregates (k text PRIMARY KEY, n int NOT NULL DEFAULT 0)");
  struct Variant {
    std::string isolation;
    bool row_lock;  // SELECT ... FOR UPDATE on the aggregate; else pg_advisory_xact_lock
  };
  const std::vector<Variant> variants = {{"REPEATABLE READ", false},
                                         {"SERIALIZABLE", false},
                                         {"REPEATABLE READ", true},
                                         {"SERIALIZABLE", true}};
  constexpr int kKeysPerVariant = 5;
  std::set<int64_t> all;
  int retries = 0;
  for (size_t v = 0; v < variants.size(); ++v) {
    for (int i = 0; i < kKeysPerVariant; ++i) {
      const Variant& variant = variants[v];
      const std::string key = "key-" + std::to_string(v) + "-" + std::to_string(i);
      db_->Exec("INSERT INTO aggregates (k) VALUES ('" + key + "')");
      const std::string lock = variant.row_lock
                                   ? "SELECT n FROM aggregates WHERE k = '" + key + "' FOR UPDATE"
                                   : "SELECT pg_advisory_xact_lock(hashtext('" + key + "'))";
      pg::Connection first = db_->Connect();
      ASSERT_TRUE(first.Exec("BEGIN ISOLATION LEVEL " + variant.isolation).ok());
      ASSERT_TRUE(first.Exec(lock).ok());
      all.insert(Publish(first, key, "first", "clock_timestamp() + interval '2 s'"));
      // The second writer: its snapshot is taken by the lock statement, which waits for `first`.
      pg::Connection second = db_->Connect();
      const std::string second_pid(second.Query("SELECT pg_backend_pid()")->Get(0, 0));
      int64_t second_id = -1;
      std::string error;
      std::thread writer([&] {
        for (int attempt = 0; attempt < 5; ++attempt) {
          if (!second.Exec("BEGIN ISOLATION LEVEL " + variant.isolation).ok() ||
              !second.Exec(lock).ok()) {
            error = "lock failed";
            return;
          }
          try {
            second_id = Publish(second, key, "second");
          } catch (const std::exception& e) {
            (void)second.Exec("ROLLBACK");
            if (std::string(e.what()).find("SQLSTATE 40001") == std::string::npos) {
              error = e.what();
              return;
            }
            ++retries;
            continue;
          }
          if (second.Exec("COMMIT").ok()) return;
          error = "commit failed";
          return;
        }
        error = "still refused after 5 attempts";
      });
      // Commit the first writer only once the second one waits for the lock.
      bool waiting = WaitFor(
          [&] {
            return db_->Scalar("SELECT wait_event_type FROM pg_stat_activity WHERE pid = " +
                               second_pid) == "Lock";
          },
          seconds(10));
      ASSERT_TRUE(first.Exec("COMMIT").ok());
      writer.join();
      ASSERT_TRUE(waiting) << "the second writer never waited for the key's lock";
      ASSERT_EQ(error, "") << key;
      all.insert(second_id);
    }
  }
  Witness w;
  ASSERT_TRUE(ReadUntil(consumer, &w, all, seconds(60))) << outboxd.Log();
  const std::string breaks = OrderBreaks(w);
  size_t keys_out_of_order = 0;
  for (const auto& [key, ids] : w.order_by_key)
    keys_out_of_order += !std::is_sorted(ids.begin(), ids.end());
  std::cout << "[ delay    ] " << w.order_by_key.size() << " keys, " << keys_out_of_order
            << " out of order; " << retries << " writers refused with 40001 and retried\n";
  EXPECT_EQ(breaks, "");
  EXPECT_EQ(w.arrived.size(), all.size());
}

// PostgreSQL crashes (pg_ctl -m immediate, then crash recovery) twice: while delayed messages
// wait, and as their time comes and they are released. Every message arrives, per key in publish
// order, and none is released twice (a second release would carry a new outbox-id).
TEST_F(DelayIntegration, DelayedMessagesSurviveAPostgresCrash) {
  OutboxdProcess outboxd(services_, *db_, "", "[delay]\npoll_interval = \"200ms\"\n");
  outboxd.Start();
  Consumer consumer(services_, topic_);
  pg::Connection app = db_->Connect();
  ASSERT_TRUE(app.Exec("SELECT outbox.publish('" + topic_ +
                       "', 'far-' || i, 'far', '{}', now() + interval '1 hour') "
                       "FROM generate_series(1, 100) i")
                  .ok());
  constexpr int kKeys = 10;
  std::set<int64_t> all;
  for (int k = 0; k < kKeys; ++k) {
    const std::string key = "key-" + std::to_string(k);
    all.insert(Publish(app, key, "before"));
    all.insert(Publish(app, key, "delayed",
                       "clock_timestamp() + interval '" + std::to_string(4000 + 300 * k) + " ms'"));
    all.insert(Publish(app, key, "held"));
  }
  auto crash = [] {
    return std::system(
        (std::string(OUTBOXD_SOURCE_DIR) + "/scripts/pg.sh crash >/dev/null 2>&1").c_str());
  };
  ASSERT_EQ(crash(), 0) << "scripts/pg.sh crash failed";
  Witness w;
  // The second crash once releases have begun (the first delayed message arrived).
  ASSERT_TRUE(WaitFor(
      [&] {
        ReadUntil(consumer, &w, {}, milliseconds(0));
        for (const Record& r : consumer.records()) {
          if (r.Header("outbox-delayed-id")) return true;
        }
        return false;
      },
      seconds(60)))
      << outboxd.Log();
  ASSERT_EQ(crash(), 0) << "scripts/pg.sh crash failed";
  ASSERT_TRUE(ReadUntil(consumer, &w, all, seconds(90)))
      << "missing " << all.size() - w.arrived.size() << "\n"
      << outboxd.Log();
  EXPECT_EQ(OrderBreaks(w), "");
  std::map<int64_t, std::set<int64_t>> outbox_ids;  // by the id publish() returned
  for (const Record& r : consumer.records()) outbox_ids[PublishedId(r)].insert(r.outbox_id());
  size_t released_twice = 0;
  for (const auto& [id, ids] : outbox_ids) released_twice += ids.size() > 1;
  EXPECT_EQ(released_twice, 0u);
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.delayed"), "100");
  EXPECT_TRUE(outboxd.running());
  std::cout << "[ delay    ] 2 PostgreSQL crashes: " << all.size() << " messages arrived, "
            << w.duplicates << " duplicates (same outbox-id, allowed), " << released_twice
            << " released twice\n";
}

// With delay.enabled = false nothing is released: a due message and the later messages of its key
// keep waiting while other keys flow. Enabled again, they arrive in order.
TEST_F(DelayIntegration, DisabledDelayKeepsDueMessagesWaiting) {
  pg::Connection app = db_->Connect();
  int64_t delayed = Publish(app, "k", "delayed", "clock_timestamp() + interval '200 ms'");
  int64_t held = Publish(app, "k", "held");
  Consumer consumer(services_, topic_);
  Witness w;
  {
    OutboxdProcess outboxd(services_, *db_, "",
                           "[delay]\nenabled = false\npoll_interval = \"100ms\"\n");
    outboxd.Start();
    int64_t other = Publish(app, "other", "free");
    ASSERT_TRUE(ReadUntil(consumer, &w, {other}, seconds(30))) << outboxd.Log();
    // Well past the due time and many poll intervals.
    ReadUntil(consumer, &w, {delayed}, seconds(3));
    EXPECT_EQ(w.arrived.count(delayed) + w.arrived.count(held), 0u) << outboxd.Log();
    EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.delayed"), "2");
    outboxd.Kill(SIGTERM);
    EXPECT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();
  }
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  ASSERT_TRUE(ReadUntil(consumer, &w, {delayed, held}, seconds(30))) << outboxd.Log();
  EXPECT_EQ(w.order_by_key["k"], (std::vector<int64_t>{delayed, held}));
}

// A half message with a delivery time: committed at once, delivered at its time, and it holds
// back its key like a plain delayed message.
TEST_F(DelayIntegration, HalfMessageWithDeliveryTime) {
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  pg::Connection app = db_->Connect();
  auto r = app.Query("SELECT outbox.prepare('" + topic_ +
                     "', 'h', 'half', '{}', NULL, clock_timestamp() + interval '2 s')");
  ASSERT_TRUE(r.ok()) << r.status().message();
  int64_t prepared = r->GetInt(0, 0);
  auto committed_at = Clock::now();
  auto c = app.Query("SELECT outbox.commit(" + std::to_string(prepared) + ")");
  ASSERT_TRUE(c.ok()) << c.status().message();
  int64_t half = c->GetInt(0, 0);
  int64_t after = Publish(app, "h", "after-half");
  Witness w;
  ASSERT_TRUE(ReadUntil(consumer, &w, {half, after}, seconds(30))) << outboxd.Log();
  EXPECT_GE(w.arrived[half] - committed_at, milliseconds(1700));
  EXPECT_EQ(w.order_by_key["h"], (std::vector<int64_t>{half, after}));
  ASSERT_FALSE(consumer.records().empty());
  EXPECT_EQ(consumer.records()[0].Header("outbox-prepared-id"), std::to_string(prepared));
}

}  // namespace
}  // namespace outboxd::testing
