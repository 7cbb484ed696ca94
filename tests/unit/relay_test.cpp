// The relay against a fake store and a fake broker: what it removes, re-sends and keeps in order.
#include "relay.h"

#include <thread>

#include <gtest/gtest.h>

#include "../support/fakes.h"

namespace outboxd {
namespace {

using testing::Eventually;
using testing::FakeBroker;
using testing::FakeFactory;
using testing::FakeStore;
using Outcome = DeliveryReport::Outcome;

Config TestConfig() { return testing::FastRelayConfig(); }

// Runs a relay on its own thread for the life of the object.
class RunningRelay {
 public:
  RunningRelay(const Config& c, FakeStore& store, FakeBroker& broker)
      : relay_(c, store, FakeFactory(broker)), thread_([this] { status_ = relay_.Run(stop_); }) {}
  ~RunningRelay() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  const Relay::Stats& stats() const { return relay_.stats(); }

 private:
  std::atomic<bool> stop_{false};
  Relay relay_;
  Status status_;
  std::thread thread_;
};

// Per key, the order in which the broker first stored each outbox id must be ascending.
void ExpectPerKeyOrder(const std::vector<testing::Sent>& persisted) {
  std::map<std::string, int64_t> last;
  std::set<int64_t> seen;
  for (const auto& s : persisted) {
    int64_t id = s.outbox_id();
    if (!seen.insert(id).second || !s.key) continue;  // duplicates are allowed, order is by first
    auto it = last.find(*s.key);
    if (it != last.end()) {
      EXPECT_LT(it->second, id) << "key " << *s.key << " reordered";
    }
    last[*s.key] = id;
  }
}

TEST(MessageHeaders, OutboxIdFirstThenRowHeaders) {
  auto h = MessageHeaders(42, R"({"trace-id": "abc", "n": 5, "z": null})");
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(h->size(), 4u);
  EXPECT_EQ((*h)[0], (std::pair<std::string, std::optional<std::string>>{"outbox-id", "42"}));
  EXPECT_EQ((*h)[1].second, "5");
  EXPECT_EQ((*h)[2].second, "abc");  // the row's headers follow in key order
  EXPECT_EQ((*h)[3].second, std::optional<std::string>());
  EXPECT_EQ(MessageHeaders(1, "[1,2]").status().code(), Status::Code::kPermanent);
}

TEST(Relay, DeliversEveryRowOnceInIdOrderAndRemovesItAfterTheAck) {
  FakeStore store;
  FakeBroker broker;
  for (int i = 1; i <= 500; ++i)
    store.Add(i, "t", "k" + std::to_string(i % 7), "v" + std::to_string(i));
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  auto persisted = broker.Persisted();
  ASSERT_EQ(persisted.size(), 500u);
  for (int i = 0; i < 500; ++i) {
    EXPECT_EQ(persisted[i].outbox_id(), i + 1);
    EXPECT_EQ(persisted[i].payload, "v" + std::to_string(i + 1));
  }
  EXPECT_EQ(store.Removed().size(), 500u);
}

TEST(Relay, NothingIsRemovedWithoutAPersistedReport) {
  FakeStore store;
  FakeBroker broker;
  broker.hold_reports = true;  // the broker never answers
  for (int i = 1; i <= 50; ++i) store.Add(i, "t", "k", "v");
  RunningRelay relay(TestConfig(), store, broker);
  std::this_thread::sleep_for(Millis(100));
  relay.Stop();  // shutdown_timeout passes, the messages are purged
  EXPECT_EQ(store.Remaining().size(), 50u);
  EXPECT_TRUE(store.Removed().empty());
}

TEST(Relay, RetriableFailureResendsAndKeepsPerKeyOrder) {
  FakeStore store;
  FakeBroker broker;
  std::atomic<int> failures{0};
  // id 10 (key "a") fails twice; later rows of key "a" are acknowledged in between.
  broker.decide = [&](const testing::Sent& s) {
    if (s.outbox_id() == 10 && failures < 2) {
      ++failures;
      return Outcome::kRetriable;
    }
    return Outcome::kPersisted;
  };
  for (int i = 1; i <= 60; ++i) store.Add(i, "t", i % 2 ? "b" : "a", "v");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  EXPECT_EQ(failures, 2);
  // Row 12 (key "a", after 10) was acknowledged before 10 went through, but it was removed only
  // after 10: it was sent again after 10.
  auto removed = store.Removed();
  auto pos = [&](int64_t id) {
    return std::find(removed.begin(), removed.end(), id) - removed.begin();
  };
  EXPECT_LT(pos(10), pos(12));
  auto persisted = broker.Persisted();
  std::map<int64_t, size_t> last_index;
  for (size_t i = 0; i < persisted.size(); ++i) last_index[persisted[i].outbox_id()] = i;
  for (int64_t id = 12; id <= 60; id += 2) EXPECT_LT(last_index[10], last_index[id]) << id;
  EXPECT_GE(relay.stats().rewinds, 2);
}

TEST(Relay, PoisonMessagesAreDeadLetteredWhileOthersFlow) {
  FakeStore store;
  FakeBroker broker;
  broker.decide = [](const testing::Sent& s) {
    return s.payload == "too big" ? Outcome::kPermanent : Outcome::kPersisted;
  };
  for (int i = 1; i <= 30; ++i) store.Add(i, "t", "k", i == 7 ? "too big" : "ok");
  store.Add(31, "t", "k", "ok", "[\"not an object\"]");
  store.Add(32, "t", "k", "ok");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  auto dead = store.DeadLetters();
  ASSERT_EQ(dead.size(), 2u);
  EXPECT_EQ(dead.count(7), 1u);
  EXPECT_NE(dead[31].find("headers must be a JSON object"), std::string::npos);
  EXPECT_EQ(store.Removed().size(), 30u);
}

TEST(Relay, PoisonGoesToTheDeadLetterTopicWhenConfigured) {
  FakeStore store;
  FakeBroker broker;
  broker.on_produce = [](const testing::Sent& s) {
    return s.payload == "bad" && s.topic == "orders" ? Status::Permanent("Message size too large")
                                                     : Status::Ok();
  };
  store.Add(1, "orders", "k", "bad");
  store.Add(2, "orders", "k", "good");
  Config c = TestConfig();
  c.relay.dead_letter_topic = "orders.dlq";
  RunningRelay relay(c, store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  auto persisted = broker.Persisted();
  ASSERT_EQ(persisted.size(), 2u);
  auto copy = std::find_if(persisted.begin(), persisted.end(),
                           [](const testing::Sent& s) { return s.topic == "orders.dlq"; });
  ASSERT_NE(copy, persisted.end());
  EXPECT_EQ(copy->outbox_id(), 1);
  bool has_error = false;
  for (auto& [k, v] : copy->headers) has_error |= (k == "outbox-error");
  EXPECT_TRUE(has_error);
  EXPECT_EQ(store.DeadLetters().count(1), 1u);
}

TEST(Relay, FatalProducerErrorRebuildsTheProducerAndLosesNothing) {
  FakeStore store;
  FakeBroker broker;
  std::atomic<bool> fired{false};
  broker.on_produce = [&](const testing::Sent& s) {
    if (s.outbox_id() == 40 && !fired.exchange(true)) {
      return Status::Fatal("OUT_OF_ORDER_SEQUENCE_NUMBER (injected)");
    }
    return Status::Ok();
  };
  for (int i = 1; i <= 100; ++i) store.Add(i, "t", "k" + std::to_string(i % 3), "v");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  EXPECT_EQ(broker.producers_built, 2);
  std::set<int64_t> ids;
  for (auto& s : broker.Persisted()) ids.insert(s.outbox_id());
  EXPECT_EQ(ids.size(), 100u);
  ExpectPerKeyOrder(broker.Persisted());
}

TEST(Relay, StoreFailureReconnectsAndResumes) {
  FakeStore store;
  FakeBroker broker;
  for (int i = 1; i <= 300; ++i) store.Add(i, "t", "k", "v");
  store.FailNext(3);
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  store.FailNext(1);
  for (int i = 301; i <= 400; ++i) store.Add(i, "t", "k", "v");
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  std::set<int64_t> ids;
  for (auto& s : broker.Persisted()) ids.insert(s.outbox_id());
  EXPECT_EQ(ids.size(), 400u);
  ExpectPerKeyOrder(broker.Persisted());
}

TEST(Relay, StandbyDoesNotDeliverUntilItLeads) {
  FakeStore store;
  FakeBroker broker;
  store.SetLeaderElsewhere(true);
  store.Add(1, "t", "k", "v");
  RunningRelay relay(TestConfig(), store, broker);
  std::this_thread::sleep_for(Millis(50));
  EXPECT_TRUE(broker.Log().empty());
  store.SetLeaderElsewhere(false);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
}

TEST(Relay, QueueFullIsBackPressureNotAnError) {
  FakeStore store;
  FakeBroker broker;
  broker.queue_capacity = 3;
  for (int i = 1; i <= 200; ++i) store.Add(i, "t", "k", "v");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  EXPECT_EQ(broker.Persisted().size(), 200u);
  EXPECT_EQ(relay.stats().rewinds, 0);
}

TEST(Relay, ShutdownMidBatchRemovesOnlyWhatWasAcknowledged) {
  FakeStore store;
  FakeBroker broker;
  std::atomic<int> served{0};
  broker.decide = [&](const testing::Sent&) {
    ++served;
    return Outcome::kPersisted;
  };
  for (int i = 1; i <= 100; ++i) store.Add(i, "t", "k", "v");
  broker.hold_reports = true;
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return !broker.Log().empty() || relay.stats().produced >= 100; }));
  relay.Stop();  // nothing acknowledged: purged at the timeout
  EXPECT_EQ(store.Remaining().size(), 100u);
  EXPECT_EQ(served, 0);
}

// Issue 14: stalled on Kafka (max_in_flight reached, no reports) the relay sends no round, but it
// still proves its leadership to the store (PostgreSQL would end a silent session); when the proof
// fails (its session was ended meanwhile) it steps down at once and removes nothing.
TEST(Relay, StalledOnKafkaItStillProvesLeadershipAndStepsDownWhenTheProofFails) {
  FakeStore store;
  FakeBroker broker;
  broker.hold_reports = true;
  for (int i = 1; i <= 3000; ++i) store.Add(i, "t", "k" + std::to_string(i % 7), "v");
  Config c = TestConfig();
  RunningRelay relay(c, store, broker);
  ASSERT_TRUE(Eventually([&] { return relay.stats().produced >= c.relay.max_in_flight; }));
  std::this_thread::sleep_for(Millis(50));  // stalled: nothing more is fetched or produced
  ASSERT_EQ(store.leads(), 1);
  store.FailNext(1, Status::Unavailable("injected: the session was ended"));
  EXPECT_TRUE(Eventually([&] { return store.leads() >= 2; }, Millis(2000)))
      << "the stalled relay never noticed that it lost its session";
  relay.Stop();
  EXPECT_TRUE(store.Removed().empty());
}

}  // namespace
}  // namespace outboxd
