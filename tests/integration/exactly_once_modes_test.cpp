// Exactly-once mode (relay.delivery = "exactly_once") against real PostgreSQL and a real Kafka
// broker, with the features the README promises in both modes: a SIGTERM while transactions run
// back to back, half messages, delayed messages. The witness is a read_committed consumer
// (librdkafka's default): each committed row must arrive exactly once, aborted records stay
// invisible, and per key the first copies keep id order.
#include <signal.h>

#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class ExactlyOnceModes : public ServicesTest {
 protected:
  void SetUp() override {
    ServicesTest::SetUp();
    if (HasFatalFailure() || IsSkipped()) return;
    // outboxd creates its checkpoint topic itself (compacted, one partition); the test's own.
    checkpoints_ = UniqueName("eo_checkpoints");
    topics_.push_back(checkpoints_);
  }
  std::string RelayToml(const std::string& more = "") const {
    return "delivery = \"exactly_once\"\ntransactional_id = \"eo-" + topic_ +
           "\"\ncheckpoint_topic = \"" + checkpoints_ + "\"\nbatch_size = 200\n" + more;
  }
  int64_t Count(const std::string& from_where) const {
    return std::stoll(db_->Scalar("SELECT count(*) FROM " + from_where));
  }
  std::set<int64_t> OutboxIds() const {
    std::set<int64_t> ids;
    pg::Connection c = db_->Connect();
    auto r = c.Query("SELECT id FROM outbox.messages");
    EXPECT_TRUE(r.ok()) << r.status().message();
    if (r.ok()) {
      for (int i = 0; i < r->rows(); ++i) ids.insert(r->GetInt(i, 0));
    }
    return ids;
  }
  // Each expected message exactly once, in key order, nothing else.
  static void ExpectExactlyOnce(const ExpectedMessages& expected, const std::vector<Record>& got,
                                const std::string& log) {
    DeliveryCheck check = CheckDelivery(expected, got, kPartitions);
    std::cout << check.Summary() << "\n";
    EXPECT_TRUE(check.ok()) << check.Summary() << "\n" << log;
    EXPECT_EQ(check.duplicates, 0u) << check.Summary() << "\n" << log;
    EXPECT_EQ(check.lost, 0u);
  }

  std::string checkpoints_;
};

// SIGTERM while a backlog of 20,000 rows goes out in transactions of 200 back to back: outboxd
// ends its transaction, removes what was committed and exits 0. What it left in the outbox is
// exactly what no consumer saw; a second run delivers the rest, and every row arrives once.
TEST_F(ExactlyOnceModes, SigtermMidStreamEndsCleanAndTheNextRunSendsNothingTwice) {
  constexpr int kRows = 20'000;
  ExpectedMessages expected = PublishMany(kRows, 50, topic_);
  Consumer consumer(services_, topic_);
  OutboxdProcess first(services_, *db_, RelayToml());
  first.Start();
  ASSERT_GE(consumer.ReadUntil(2000, seconds(120)).size(), 2000u) << first.Log();
  first.Kill(SIGTERM);
  ASSERT_EQ(first.Wait(seconds(60)), 0) << first.Log();
  consumer.ReadFor(seconds(2));

  std::set<int64_t> seen;
  for (const Record& r : consumer.records()) seen.insert(r.outbox_id());
  const std::set<int64_t> left = OutboxIds();
  ASSERT_FALSE(left.empty()) << "the signal came after the backlog was gone: nothing to test";
  size_t both = 0;
  for (int64_t id : left) both += seen.count(id);
  EXPECT_EQ(both, 0u) << "rows delivered in a committed transaction were left in the outbox";
  EXPECT_EQ(seen.size() + left.size(), static_cast<size_t>(kRows))
      << "rows neither delivered nor left in the outbox";
  std::cout << "SIGTERM after " << seen.size() << " of " << kRows << " rows; " << left.size()
            << " left in the outbox\n";

  OutboxdProcess second(services_, *db_, RelayToml());
  second.Start();
  consumer.ReadUntil(kRows, seconds(180));
  ASSERT_TRUE(WaitFor([&] { return Count("outbox.messages") == 0; }, seconds(60))) << second.Log();
  ExpectedMessages markers = PublishMarkers(topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(markers), seconds(60))) << second.Log();
  expected.insert(markers.begin(), markers.end());
  ExpectExactlyOnce(expected, consumer.records(), second.Log());
  second.Kill(SIGTERM);
  EXPECT_EQ(second.Wait(seconds(30)), 0) << second.Log();
}

// Half messages in exactly-once mode: the committed one arrives once (with its prepared id), the
// rolled-back one and the unresolved one never, across a restart of outboxd too.
TEST_F(ExactlyOnceModes, HalfMessagesCommittedArriveOnceRolledBackNever) {
  pg::Connection app = db_->Connect();
  auto prepare = [&](const std::string& key, const std::string& value) {
    auto r = app.Query("SELECT outbox.prepare('" + topic_ + "', '" + key + "', '" + value + "')");
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? r->GetInt(0, 0) : int64_t{-1};
  };
  const int64_t committed = prepare("k1", "to be committed");
  const int64_t rolled_back = prepare("k2", "to be rolled back");
  const int64_t waiting = prepare("k3", "left prepared");
  OutboxdProcess first(services_, *db_, RelayToml());
  first.Start();
  ASSERT_TRUE(first.WaitForLog("leading the outbox", seconds(30))) << first.Log();
  Consumer consumer(services_, topic_);

  auto c = app.Query("SELECT outbox.commit(" + std::to_string(committed) + ")");
  ASSERT_TRUE(c.ok()) << c.status().message();
  const int64_t delivered_id = c->GetInt(0, 0);
  ASSERT_TRUE(app.Exec("SELECT outbox.rollback(" + std::to_string(rolled_back) + ")").ok());
  ExpectedMessages plain = PublishMany(50, 5, topic_);
  std::set<int64_t> want = Ids(plain);
  want.insert(delivered_id);
  ASSERT_TRUE(consumer.ReadUntilIds(want, seconds(60))) << first.Log();
  first.Kill(SIGTERM);
  ASSERT_EQ(first.Wait(seconds(30)), 0) << first.Log();

  OutboxdProcess second(services_, *db_, RelayToml());
  second.Start();
  ExpectedMessages markers = PublishMarkers(topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(markers), seconds(60))) << second.Log();
  consumer.ReadFor(seconds(1));
  std::map<int64_t, int> copies;
  for (const Record& r : consumer.records()) ++copies[r.outbox_id()];
  EXPECT_EQ(copies[delivered_id], 1) << second.Log();
  for (const Record& r : consumer.records()) {
    if (r.outbox_id() != delivered_id) {
      EXPECT_FALSE(r.Header("outbox-prepared-id").has_value())
          << "a prepared message that was not committed arrived: "
          << *r.Header("outbox-prepared-id");
      continue;
    }
    EXPECT_EQ(r.key, "k1");
    EXPECT_EQ(r.value, "to be committed");
    EXPECT_EQ(r.Header("outbox-prepared-id"), std::to_string(committed));
  }
  ExpectedMessages rest = plain;
  rest.insert(markers.begin(), markers.end());
  std::vector<Record> others;
  for (const Record& r : consumer.records()) {
    if (r.outbox_id() != delivered_id) others.push_back(r);
  }
  ExpectExactlyOnce(rest, others, second.Log());
  EXPECT_EQ(db_->Scalar("SELECT state FROM outbox.prepared WHERE id = " + std::to_string(waiting)),
            "prepared");
  EXPECT_EQ(
      db_->Scalar("SELECT state FROM outbox.prepared WHERE id = " + std::to_string(rolled_back)),
      "rolled_back");
}

// Delayed messages in exactly-once mode: each arrives once, no earlier than its time, and holds
// back the later messages of its key; outboxd restarts (SIGTERM) while they wait.
TEST_F(ExactlyOnceModes, DelayedMessagesArriveOnceAfterTheirTimeAcrossARestart) {
  pg::Connection app = db_->Connect();
  auto publish = [&](const std::string& key, const std::string& value, const std::string& at) {
    auto r = app.Query("SELECT outbox.publish('" + topic_ + "', '" + key + "', '" + value + "'" +
                       (at.empty() ? "" : ", '{}', " + at) + ")");
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? r->GetInt(0, 0) : int64_t{-1};
  };
  OutboxdProcess first(services_, *db_, RelayToml(), "[delay]\npoll_interval = \"200ms\"\n");
  first.Start();
  ASSERT_TRUE(first.WaitForLog("leading the outbox", seconds(30))) << first.Log();
  Consumer consumer(services_, topic_);
  const auto published_at = std::chrono::steady_clock::now();
  std::vector<int64_t> order;  // key "late": a delayed message, then two without a delay
  order.push_back(publish("late", "delayed", "now() + interval '6 seconds'"));
  order.push_back(publish("late", "after-1", ""));
  order.push_back(publish("late", "after-2", ""));
  const int64_t other = publish("free", "not held", "");
  // The other key flows at once, the held key does not.
  ASSERT_TRUE(WaitFor(
      [&] {
        for (const Record& r : consumer.ReadFor(milliseconds(100))) {
          if (r.key == "free") return true;
        }
        return false;
      },
      seconds(30)))
      << first.Log();
  for (const Record& r : consumer.records()) {
    EXPECT_NE(r.key, "late") << "a message of the delayed key arrived before its time";
  }
  first.Kill(SIGTERM);
  ASSERT_EQ(first.Wait(seconds(30)), 0) << first.Log();

  OutboxdProcess second(services_, *db_, RelayToml(), "[delay]\npoll_interval = \"200ms\"\n");
  second.Start();
  std::optional<std::chrono::steady_clock::duration> first_late;  // after publishing
  ASSERT_TRUE(WaitFor(
      [&] {
        consumer.ReadFor(milliseconds(100));
        int late = 0;
        for (const Record& r : consumer.records()) late += r.key == "late" ? 1 : 0;
        if (late > 0 && !first_late) first_late = std::chrono::steady_clock::now() - published_at;
        return late >= 3;
      },
      seconds(60)))
      << second.Log();
  EXPECT_GE(*first_late, seconds(6)) << "the delayed message's key arrived before its time";
  consumer.ReadFor(seconds(1));
  std::vector<std::string> late_values;
  std::map<std::string, int> copies;
  for (const Record& r : consumer.records()) {
    ++copies[r.value.value_or("")];
    if (r.key == "late") late_values.push_back(r.value.value_or(""));
  }
  EXPECT_EQ(late_values, (std::vector<std::string>{"delayed", "after-1", "after-2"}));
  for (const char* v : {"delayed", "after-1", "after-2", "not held"}) {
    EXPECT_EQ(copies[v], 1) << v << "\n" << second.Log();
  }
  EXPECT_EQ(Count("outbox.delayed"), 0);
  EXPECT_EQ(Count("outbox.messages"), 0);
  (void)other;
}

}  // namespace
}  // namespace outboxd::testing
